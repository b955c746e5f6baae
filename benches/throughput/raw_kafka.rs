//! The same work with the raw `rdkafka` crate: a topic per round (created with the
//! admin API); an idempotent producer (`acks=all`, lz4, linger 5 ms) with `window`
//! deliveries outstanding; one group consumer (no auto-commit) decoding each payload and
//! committing its offset asynchronously.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alarm_domain::{sample_alarm_to_log, AlarmToLog};
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::{percentile, Args, Figures};

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn base(servers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", servers)
        .set("fetch.wait.max.ms", "10")
        .set("session.timeout.ms", "6000");
    c
}

async fn topic(servers: &str) -> String {
    let name = format!("bench.raw.{}", uuid::Uuid::new_v4().simple());
    let admin: AdminClient<DefaultClientContext> = base(servers).create().unwrap();
    admin
        .create_topics(
            &[NewTopic::new(&name, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    name
}

async fn publish_all(
    producer: &FutureProducer,
    topic: &str,
    messages: &[AlarmToLog],
    window: usize,
) {
    futures::stream::iter(messages)
        .map(|m| async move {
            let payload = serde_json::to_vec(m).unwrap();
            let id = uuid::Uuid::new_v4().hyphenated().to_string();
            let ts = micros_now().to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "id",
                    value: Some(id.as_bytes()),
                })
                .insert(Header {
                    key: "published-at",
                    value: Some(ts.as_bytes()),
                });
            let record = FutureRecord::<[u8], [u8]>::to(topic)
                .payload(&payload)
                .headers(headers);
            match producer.send_result(record) {
                Ok(delivery) => {
                    delivery.await.unwrap().unwrap();
                }
                Err((e, _)) => panic!("produce: {e}"),
            }
        })
        .buffer_unordered(window)
        .for_each(|_| async {})
        .await;
}

pub async fn round(servers: &str, args: &Args) -> Figures {
    let n = args.messages;
    let messages: Vec<AlarmToLog> = (0..n).map(sample_alarm_to_log).collect();
    let producer: FutureProducer = base(servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .create()
        .unwrap();

    let t = topic(servers).await;
    let start = Instant::now();
    publish_all(&producer, &t, &messages, args.window).await;
    let publish = n as f64 / start.elapsed().as_secs_f64();

    let t = topic(servers).await;
    let group = format!("bench-raw-{}", uuid::Uuid::new_v4().simple());
    let consumer: Arc<StreamConsumer> = Arc::new(
        base(servers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap(),
    );
    consumer.subscribe(&[&t]).unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let reader = {
        let (handled, latencies, consumer) = (handled.clone(), latencies.clone(), consumer.clone());
        tokio::spawn(async move {
            let mut stream = consumer.stream();
            while let Some(Ok(m)) = stream.next().await {
                let _alarm: AlarmToLog = serde_json::from_slice(m.payload().unwrap()).unwrap();
                let ts: u64 = m
                    .headers()
                    .unwrap()
                    .iter()
                    .find(|h| h.key == "published-at")
                    .and_then(|h| std::str::from_utf8(h.value.unwrap()).ok()?.parse().ok())
                    .unwrap();
                latencies
                    .lock()
                    .unwrap()
                    .push(Duration::from_micros(micros_now().saturating_sub(ts)));
                consumer.commit_message(&m, CommitMode::Async).unwrap();
                if handled.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    return;
                }
            }
        })
    };
    // As anybroker's subscribe does: timing starts once the group assigned the partition
    // (the reader's polling drives the join).
    let joined = Instant::now();
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        assert!(
            joined.elapsed() < Duration::from_secs(30),
            "raw consumer got no partition"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = Instant::now();
    publish_all(&producer, &t, &messages, args.window).await;
    tokio::time::timeout(Duration::from_secs(300), reader)
        .await
        .expect("raw consumer finished")
        .unwrap();
    let end_to_end = n as f64 / start.elapsed().as_secs_f64();
    let mut l = std::mem::take(&mut *latencies.lock().unwrap());
    l.sort();
    Figures {
        publish,
        end_to_end,
        p50: percentile(&l, 0.5),
        p99: percentile(&l, 0.99),
        ..Default::default()
    }
}
