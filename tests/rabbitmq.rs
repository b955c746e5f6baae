//! RabbitMQ-specific tests against real servers: a node of the test's own shut down
//! and started again under load. (Connections closed by the server under load: the
//! conformance case `outage_under_load_loses_none`; messages other clients send: the
//! interop tests.)
#![cfg(feature = "rabbitmq")]

use anybroker::RouterConfig;

mod common;
use common::{restart_under_load, OwnRabbitMq};

/// 10,000 messages published while consumed; the RabbitMQ node is shut down and
/// started again twice mid-stream (its durable queues and persistent messages kept on
/// its disk): every message is handled, the duplicates counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_broker_restarted_under_load_loses_none() {
    let node = std::sync::Arc::new(std::sync::Mutex::new(OwnRabbitMq::start()));
    let url = node.lock().unwrap().url();
    let config = RouterConfig::from_toml_str(&format!(
        "default_broker = \"rabbitmq\"\n[brokers.rabbitmq]\nkind = \"rabbitmq\"\nurl = \"{url}\"\n\
         reconnect_timeout = \"60s\"\n"
    ))
    .unwrap();
    restart_under_load("rabbitmq", config, async || {
        let node = node.clone();
        tokio::task::spawn_blocking(move || {
            let mut node = node.lock().unwrap();
            node.stop();
            node.up();
        })
        .await
        .unwrap();
    })
    .await;
}

/// A retry queue the server removed (idle past its `x-expires`, here deleted to stand
/// for that) is declared again by the next retry that needs it, on the same
/// connection: the message is retried, not refused as unroutable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_its_retry_queue_expired_is_retried() {
    use std::sync::{Arc, Mutex};
    const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let ch = common::unique_channel::<common::Numbered>("rabbit-expired");
    let config = RouterConfig::from_toml_str(&format!(
        "default_broker = \"rabbitmq\"\n[brokers.rabbitmq]\nkind = \"rabbitmq\"\nurl = \"{URL}\"\n\
         [channels.\"{}\"]\nretry = {{ attempts = 3, initial = \"300ms\", multiplier = 1.0 }}\n",
        ch.name()
    ))
    .unwrap();
    let handled: Arc<Mutex<Vec<(u64, u32)>>> = Arc::default();
    let handler = {
        let handled = handled.clone();
        anybroker::handler_fn(move |m: common::Numbered, cx: anybroker::MessageContext| {
            let handled = handled.clone();
            async move {
                if cx.attempt() == 1 {
                    return Err(anybroker::HandlerError::retryable("first attempt"));
                }
                handled.lock().unwrap().push((m.seq, cx.attempt()));
                Ok(())
            }
        })
    };
    let router = anybroker::MessageRouter::builder(config)
        .handle_with(ch, handler, anybroker::HandlerOptions::new().group("g"))
        .start()
        .await
        .unwrap();
    let long = std::time::Duration::from_secs(30);
    router
        .publish(ch, &common::Numbered { seq: 1 })
        .await
        .unwrap();
    common::wait_until("the first message retried", long, || {
        handled.lock().unwrap().contains(&(1, 2))
    })
    .await;
    let raw = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let raw_channel = raw.create_channel().await.unwrap();
    let retry_queue = format!("{}:g:retry:300", ch.name());
    raw_channel
        .queue_delete(retry_queue.as_str().into(), Default::default())
        .await
        .unwrap();
    router
        .publish(ch, &common::Numbered { seq: 2 })
        .await
        .unwrap();
    common::wait_until("the second message retried", long, || {
        handled.lock().unwrap().contains(&(2, 2))
    })
    .await;
    router.shutdown().await.unwrap();
    let _ = raw.close(200, "done".into()).await;
}
