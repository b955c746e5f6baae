//! The same work with the raw `lapin` crate: a durable direct exchange and a durable
//! queue per round; persistent, mandatory publishes with publisher confirms, `window`
//! confirms outstanding; one consumer (QoS = window, manual ack) decoding each payload
//! and acking it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alarm_domain::{sample_alarm_to_log, AlarmToLog};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use crate::{percentile, Args, Figures};

const EXCHANGE: &str = "bench.raw";

fn micros_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

async fn queue(ch: &Channel) -> String {
    let name = format!("bench.raw.{}", uuid::Uuid::new_v4().simple());
    ch.exchange_declare(
        EXCHANGE.into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        name.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        name.as_str().into(),
        EXCHANGE.into(),
        name.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    name
}

async fn publish_all(ch: &Channel, routing_key: &str, messages: &[AlarmToLog], window: usize) {
    futures::stream::iter(messages)
        .map(|m| async move {
            let mut headers = FieldTable::default();
            headers.insert("published-at".into(), AMQPValue::LongLongInt(micros_now()));
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(uuid::Uuid::new_v4().hyphenated().to_string().into())
                .with_content_type("application/json".into())
                .with_headers(headers);
            let payload = serde_json::to_vec(m).unwrap();
            let confirm = ch
                .basic_publish(
                    EXCHANGE.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &payload,
                    properties,
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(matches!(confirm, Confirmation::Ack(None)));
        })
        .buffer_unordered(window)
        .for_each(|_| async {})
        .await;
}

pub async fn round(url: &str, args: &Args) -> Figures {
    let n = args.messages;
    let messages: Vec<AlarmToLog> = (0..n).map(sample_alarm_to_log).collect();
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = connection.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();

    let q = queue(&ch).await;
    let start = Instant::now();
    publish_all(&ch, &q, &messages, args.window).await;
    let publish = n as f64 / start.elapsed().as_secs_f64();
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();

    let q = queue(&ch).await;
    let consuming = connection.create_channel().await.unwrap();
    consuming
        .basic_qos(args.window as u16, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consuming
        .basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let reader = {
        let (handled, latencies) = (handled.clone(), latencies.clone());
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let _alarm: AlarmToLog = serde_json::from_slice(&d.data).unwrap();
                let ts = d
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| match h.inner().get("published-at") {
                        Some(AMQPValue::LongLongInt(ts)) => Some(*ts),
                        _ => None,
                    })
                    .unwrap();
                latencies.lock().unwrap().push(Duration::from_micros(
                    micros_now().saturating_sub(ts).max(0) as u64,
                ));
                d.acker.ack(BasicAckOptions::default()).await.unwrap();
                if handled.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    return;
                }
            }
        })
    };
    let start = Instant::now();
    publish_all(&ch, &q, &messages, args.window).await;
    tokio::time::timeout(Duration::from_secs(300), reader)
        .await
        .expect("raw consumer finished")
        .unwrap();
    let end_to_end = n as f64 / start.elapsed().as_secs_f64();
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    connection.close(200, "done".into()).await.unwrap();
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

/// Deletes the queues anybroker's rounds created (their channels start with `bench.`);
/// AMQP cannot list queues, so `rabbitmqctl` does.
pub async fn delete_bench_queues(url: &str) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name"])
        .output()
        .expect("rabbitmqctl runs");
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with("bench."))
        .map(str::to_string)
        .collect();
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = connection.create_channel().await.unwrap();
    for name in names {
        let _ = ch
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
}
