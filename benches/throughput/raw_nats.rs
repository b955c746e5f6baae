//! The same work with the raw `async-nats` crate on JetStream: a stream per round, a
//! publish with `Nats-Msg-Id` and publish time, `window` PubAcks outstanding; one
//! durable pull consumer (batch = window) decoding each payload and acking it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alarm_domain::{sample_alarm_to_log, AlarmToLog};
use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;

use crate::{percentile, Args, Figures};

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

async fn stream(js: &jetstream::Context, subject: &str) -> jetstream::stream::Stream {
    js.get_or_create_stream(jetstream::stream::Config {
        name: subject.replace('.', "_"),
        subjects: vec![subject.to_string()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn publish_all(
    js: &jetstream::Context,
    subject: &str,
    messages: &[AlarmToLog],
    window: usize,
) {
    futures::stream::iter(messages)
        .map(|m| {
            let js = js.clone();
            let subject = subject.to_string();
            async move {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", uuid::Uuid::new_v4().hyphenated().to_string());
                headers.insert("Published-At", micros_now().to_string());
                let payload = serde_json::to_vec(m).unwrap();
                let ack = js
                    .send_publish(
                        subject,
                        jetstream::message::PublishMessage::build()
                            .payload(payload.into())
                            .headers(headers),
                    )
                    .await
                    .unwrap();
                ack.await.unwrap();
            }
        })
        .buffer_unordered(window)
        .for_each(|_| async {})
        .await;
}

pub async fn round(url: &str, args: &Args) -> Figures {
    let n = args.messages;
    let messages: Vec<AlarmToLog> = (0..n).map(sample_alarm_to_log).collect();
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);

    let subject = crate::fresh_channel_name();
    let s = stream(&js, &subject).await;
    let start = Instant::now();
    publish_all(&js, &subject, &messages, args.window).await;
    let publish = n as f64 / start.elapsed().as_secs_f64();
    js.delete_stream(&s.cached_info().config.name)
        .await
        .unwrap();

    let subject = crate::fresh_channel_name();
    let s = stream(&js, &subject).await;
    let consumer = s
        .get_or_create_consumer(
            "g",
            pull::Config {
                durable_name: Some("g".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: (args.window * 2) as i64,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let reader = {
        let (handled, latencies) = (handled.clone(), latencies.clone());
        let mut stream = consumer
            .stream()
            .max_messages_per_batch(args.window)
            .messages()
            .await
            .unwrap();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let _alarm: AlarmToLog = serde_json::from_slice(&m.payload).unwrap();
                let ts: u64 = m
                    .headers
                    .as_ref()
                    .unwrap()
                    .get("Published-At")
                    .unwrap()
                    .as_str()
                    .parse()
                    .unwrap();
                latencies
                    .lock()
                    .unwrap()
                    .push(Duration::from_micros(micros_now().saturating_sub(ts)));
                m.ack().await.unwrap();
                if handled.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    return;
                }
            }
        })
    };
    let start = Instant::now();
    publish_all(&js, &subject, &messages, args.window).await;
    tokio::time::timeout(Duration::from_secs(300), reader)
        .await
        .expect("raw consumer finished")
        .unwrap();
    let end_to_end = n as f64 / start.elapsed().as_secs_f64();
    js.delete_stream(&s.cached_info().config.name)
        .await
        .unwrap();
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

/// Deletes the streams anybroker's rounds created (their channels start with `bench.`).
pub async fn delete_bench_streams(url: &str) {
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    let names: Vec<String> = js
        .stream_names()
        .filter_map(|n| async { n.ok() })
        .collect()
        .await;
    for name in names
        .into_iter()
        .filter(|n| n.starts_with("ANYBROKER_bench_"))
    {
        let _ = js.delete_stream(&name).await;
    }
}

/// Core NATS: publish with the publish time in a header, no acknowledgement; one queue
/// subscriber decoding every message.
pub async fn core_round(url: &str, args: &Args) -> Figures {
    let n = args.messages;
    let messages: Vec<AlarmToLog> = (0..n).map(sample_alarm_to_log).collect();
    let client = async_nats::connect(url).await.unwrap();
    let publish_all = |subject: String| {
        let client = client.clone();
        let messages = &messages;
        async move {
            for m in messages {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Published-At", micros_now().to_string());
                let payload = serde_json::to_vec(m).unwrap();
                client
                    .publish_with_headers(subject.clone(), headers, payload.into())
                    .await
                    .unwrap();
            }
        }
    };
    let start = Instant::now();
    publish_all(crate::fresh_channel_name()).await;
    let publish = n as f64 / start.elapsed().as_secs_f64();
    client.flush().await.unwrap();

    let subject = crate::fresh_channel_name();
    let mut subscriber = client
        .queue_subscribe(subject.clone(), "g".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let reader = {
        let (handled, latencies, done) = (handled.clone(), latencies.clone(), done.clone());
        tokio::spawn(async move {
            while let Some(m) = subscriber.next().await {
                let _alarm: AlarmToLog = serde_json::from_slice(&m.payload).unwrap();
                let ts: u64 = m
                    .headers
                    .as_ref()
                    .unwrap()
                    .get("Published-At")
                    .unwrap()
                    .as_str()
                    .parse()
                    .unwrap();
                latencies
                    .lock()
                    .unwrap()
                    .push(Duration::from_micros(micros_now().saturating_sub(ts)));
                if handled.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    done.notify_one();
                }
            }
        })
    };
    let start = Instant::now();
    publish_all(subject).await;
    let delivered = crate::anybroker_runs::wait_for_all(&handled, &done, n).await;
    let end_to_end = delivered as f64 / start.elapsed().as_secs_f64();
    reader.abort();
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
