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
