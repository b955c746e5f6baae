//! RabbitMQ-specific tests against the real broker on 127.0.0.1:5672: connections cut
//! under load, and poison bodies published around the library.
#![cfg(feature = "rabbitmq")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alarm_domain::AlarmToLog;
use anybroker::{handler_fn, header, MessageContext, MessageRouter, RouterConfig};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};

mod common;
use common::{unique_channel, wait_until, wait_until_async};

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

/// 1,000 bodies that are not the channel's JSON, published with lapin straight to the
/// channel's routing key, all end as dead letters; the valid messages around them are
/// handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_poison_payloads_are_dead_lettered() {
    const POISON: usize = 1000;
    const VALID: usize = 200;
    let ch = unique_channel::<AlarmToLog>("poison");
    let handled = Arc::new(AtomicUsize::new(0));
    let handler = {
        let handled = handled.clone();
        handler_fn(move |_m: AlarmToLog, _cx: MessageContext| {
            handled.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        })
    };
    let router = MessageRouter::builder(router_config("anybroker-poison-test"))
        .handle(ch, handler)
        .start()
        .await
        .unwrap();
    let connection = Connection::connect(URL, ConnectionProperties::default())
        .await
        .unwrap();
    let raw = connection.create_channel().await.unwrap();
    raw.confirm_select(Default::default()).await.unwrap();
    for i in 0..POISON {
        let body: &[u8] = if i % 2 == 0 {
            b"\x01not json"
        } else {
            br#"{"message": 7}"#
        };
        raw.basic_publish(
            "anybroker".into(),
            ch.name().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        if i % 5 == 0 {
            router
                .publish(ch, &alarm_domain::sample_alarm_to_log(i))
                .await
                .unwrap();
        }
    }
    wait_until("valid messages handled", Duration::from_secs(60), || {
        handled.load(Ordering::SeqCst) == VALID
    })
    .await;
    wait_until_async("poison dead-lettered", Duration::from_secs(60), || {
        let router = router.clone();
        async move { router.dead_letters(ch, 10_000).await.unwrap().len() >= POISON }
    })
    .await;
    let dead = router.dead_letters(ch, 10_000).await.unwrap();
    router.shutdown().await.unwrap();
    connection.close(200, "done".into()).await.unwrap();
    assert_eq!(dead.len(), POISON, "every poison body is a dead letter");
    assert!(dead
        .iter()
        .all(|d| d.headers[header::DEAD_LETTER_REASON] == "undecodable"));
    assert_eq!(handled.load(Ordering::SeqCst), VALID);
}
