//! RabbitMQ-specific tests against the real broker on 127.0.0.1:5672: connections cut
//! under load. (Bodies published around the library: the conformance case
//! `foreign_payloads_dead_lettered_among_valid_ones`.)
#![cfg(feature = "rabbitmq")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anybroker::RouterConfig;

mod common;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn router_config(connection_name: &str) -> RouterConfig {
    RouterConfig::from_toml_str(&format!(
        "default_broker = \"rabbitmq\"\n[defaults]\nretry = {{ attempts = 5, initial = \"50ms\" }}\n\
         [brokers.rabbitmq]\nkind = \"rabbitmq\"\nurl = \"{URL}\"\nconnection_name = \"{connection_name}\"\n"
    ))
    .unwrap()
}

fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Closes, on the server, every connection whose client named itself `name`; returns
/// how many. Other tests' connections are left alone.
fn close_connections_named(name: &str) -> usize {
    let listing = rabbitmqctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "pid",
        "client_properties",
    ]);
    let pids: Vec<&str> = listing
        .lines()
        .filter(|line| line.contains(name))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for pid in &pids {
        rabbitmqctl(&["close_connection", pid, "anybroker restart test"]);
    }
    pids.len()
}

/// Publishing 10,000 messages while consuming, with the router's connections closed by
/// the server twice mid-stream: the backend reconnects, every message is handled at
/// least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restart_connections_under_load_loses_none() {
    let name = format!("anybroker-restart-{}", uuid::Uuid::new_v4().simple());
    let closed = Arc::new(AtomicUsize::new(0));
    let counter = closed.clone();
    common::restart_under_load("rabbitmq", router_config(&name), async || {
        let name = name.clone();
        let n = tokio::task::spawn_blocking(move || close_connections_named(&name))
            .await
            .unwrap();
        counter.fetch_add(n, Ordering::SeqCst);
    })
    .await;
    assert!(
        closed.load(Ordering::SeqCst) >= 2,
        "the outages closed the router's connection each time"
    );
}
