//! Redis-specific tests against real servers: a broker restarted under load, a
//! connection lost mid-reply, pub/sub resubscribing. (Entries written around the
//! library: the conformance case `foreign_payloads_dead_lettered_among_valid_ones`.)
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::time::Duration;

use anybroker::{handler_fn, MessageContext, MessageRouter, RouterConfig};
use tokio::time::Instant;

mod common;
use common::{
    counting_handler, own_redis, unique_channel, wait_until, wait_until_async, HandledCounts,
    Numbered, OwnServer,
};

fn url(server: &OwnServer) -> String {
    format!("redis://127.0.0.1:{}", server.port)
}

/// Entries the server handed to a live member whose reply the network lost (the
/// connection cut mid-reply, as a server restart does) are handled as soon as the
/// member has connected again, not only once `claim_idle` (here 60 s) lets them be
/// reclaimed: the member reads its own pending entries first after a reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_entries_read_when_the_connection_was_lost_are_handled_on_reconnect() {
    const N: u64 = 50;
    let ch = unique_channel::<Numbered>("lost-reply");
    let proxy = common::CutProxy::start(6379).await;
    let config = |port: u16| {
        RouterConfig::from_toml_str(&format!(
            "default_broker = \"redis\"\n[brokers.redis]\nkind = \"redis\"\n\
             url = \"redis://127.0.0.1:{port}\"\nclaim_idle = \"60s\"\nblock = \"5s\"\n"
        ))
        .unwrap()
    };
    let seen: HandledCounts = Arc::default();
    let handler = counting_handler(&seen, Duration::ZERO);
    let member = MessageRouter::builder(config(proxy.port))
        .handle(ch, handler)
        .start()
        .await
        .unwrap();
    let publisher = MessageRouter::builder(config(6379)).start().await.unwrap();
    publisher.publish(ch, &Numbered { seq: 0 }).await.unwrap();
    wait_until(
        "the member handles a first message",
        Duration::from_secs(10),
        || seen.lock().unwrap().contains_key(&0),
    )
    .await;
    proxy.lose_replies();
    for seq in 1..=N {
        publisher.publish(ch, &Numbered { seq }).await.unwrap();
    }
    // The member's blocked read took entries; its reply is lost on the way.
    let redis = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pending = || {
        let mut redis = redis.clone();
        async move {
            let summary: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
                .arg(ch.name())
                .arg("default")
                .query_async(&mut redis)
                .await
                .unwrap();
            summary.0
        }
    };
    wait_until_async(
        "entries pending to the member",
        Duration::from_secs(10),
        || {
            let pending = pending();
            async move { pending.await > 0 }
        },
    )
    .await;
    let lost = pending().await;
    proxy.cut();
    wait_until(
        "every message handled after the reconnect",
        Duration::from_secs(20),
        || seen.lock().unwrap().len() as u64 == N + 1,
    )
    .await;
    member.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
    let seen = seen.lock().unwrap();
    println!("redis lost reply: {lost} entries pending to the member when its connection was cut");
    assert!(
        seen.values().all(|&n| n == 1),
        "each message handled once: {seen:?}"
    );
}

/// Messages a consumer took but never settled (it crashed) are reclaimed by a live
/// member of the group after `claim_idle`, with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crashed_consumer_messages_are_reclaimed() {
    use anybroker_brokers::redis::{RedisBroker, RedisConfig};
    use anybroker_brokers::{Backend, Broker, ChannelSpec, SecretUrl, SubscribeOptions};
    const N: u64 = 300;
    let ch = unique_channel::<Numbered>("crash");
    let table = "kind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nclaim_idle = \"1s\"\n";
    let config = RouterConfig::from_toml_str(&format!(
        "default_broker = \"redis\"\n[brokers.redis]\n{table}"
    ))
    .unwrap();
    let publisher = MessageRouter::builder(config.clone())
        .start()
        .await
        .unwrap();
    for seq in 0..N {
        publisher.publish(ch, &Numbered { seq }).await.unwrap();
    }

    // A member that takes 100 messages and vanishes without acking or closing.
    let crashed: Broker = RedisBroker::connect(&RedisConfig::new(
        SecretUrl::parse("redis://127.0.0.1:6379").unwrap(),
    ))
    .await
    .unwrap()
    .into();
    let sub = crashed
        .open_channel("crashed", &ChannelSpec::new(ch.name(), "default"))
        .await
        .unwrap()
        .subscribe(SubscribeOptions::new("default"))
        .await
        .unwrap();
    let taken = sub.recv(100).await.unwrap();
    assert_eq!(taken.len(), 100);
    drop(sub);

    let seen: HandledCounts = Arc::default();
    let handler = counting_handler(&seen, Duration::ZERO);
    let started = Instant::now();
    let survivor = MessageRouter::builder(config)
        .handle(ch, handler)
        .start()
        .await
        .unwrap();
    wait_until("all messages handled", Duration::from_secs(30), || {
        seen.lock().unwrap().len() as u64 == N
    })
    .await;
    survivor.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "the crashed member's messages came back only after claim_idle ({elapsed:?})"
    );
    assert!(
        seen.lock().unwrap().values().all(|&c| c == 1),
        "each handled once by the survivor"
    );
}

/// With `url = "rediss://…"` and `tls_ca` naming a private CA, messages travel over TLS
/// to a server that only speaks TLS; without the CA the server is not trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_private_ca() {
    const N: u64 = 100;
    let certs =
        std::env::temp_dir().join(format!("anybroker-tls-{}", uuid::Uuid::new_v4().simple()));
    let (ca, cert, key) = common::make_tls_certs(&certs);
    let (ca_arg, cert_arg, key_arg) = (
        ca.display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    let server = OwnServer::start("redis-server", move |port, dir| {
        vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            cert_arg.clone(),
            "--tls-key-file".into(),
            key_arg.clone(),
            "--tls-ca-cert-file".into(),
            ca_arg.clone(),
            "--tls-auth-clients".into(),
            "no".into(),
            "--save".into(),
            "".into(),
            "--dir".into(),
            dir.display().to_string(),
        ]
    });
    let config = |with_ca: bool| {
        let ca_line = if with_ca {
            format!("tls_ca = \"{}\"\n", ca.display())
        } else {
            String::new()
        };
        RouterConfig::from_toml_str(&format!(
            "default_broker = \"redis\"\n[brokers.redis]\nkind = \"redis\"\nurl = \"rediss://127.0.0.1:{}\"\n{ca_line}",
            server.port
        ))
        .unwrap()
    };
    let err = MessageRouter::builder(config(false))
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            anybroker::ErrorKind::Unreachable | anybroker::ErrorKind::Broker
        ),
        "{err}"
    );

    let ch = unique_channel::<Numbered>("tls");
    let seen: HandledCounts = Arc::default();
    let handler = counting_handler(&seen, Duration::ZERO);
    let router = MessageRouter::builder(config(true))
        .handle(ch, handler)
        .start()
        .await
        .unwrap();
    for seq in 0..N {
        router.publish(ch, &Numbered { seq }).await.unwrap();
    }
    wait_until("all delivered over TLS", Duration::from_secs(30), || {
        seen.lock().unwrap().len() as u64 == N
    })
    .await;
    router.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&certs);
}

/// An unreachable Redis fails `start` with one `Unreachable` error that names the URL
/// (password hidden) and the operation once.
#[tokio::test]
async fn redis_unreachable_is_one_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // bound, then released: nothing listens there now
    let ch = unique_channel::<Numbered>("unreachable");
    let config = RouterConfig::from_toml_str(&format!(
        "default_broker = \"redis\"\n[brokers.redis]\nkind = \"redis\"\n\
         url = \"redis://:hunter2@127.0.0.1:{port}\"\n"
    ))
    .unwrap();
    let err = MessageRouter::builder(config)
        .handle(
            ch,
            handler_fn(|_m: Numbered, _cx: MessageContext| async { Ok(()) }),
        )
        .start()
        .await
        .expect_err("nothing listens there");
    let text = err.to_string();
    assert_eq!(err.kind(), anybroker::ErrorKind::Unreachable, "{text}");
    assert!(
        text.contains(&format!("cannot connect to redis://:***@127.0.0.1:{port}")),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert_eq!(text.matches("unreachable").count(), 1, "{text}");
}

/// Redis pub/sub: after the server restarts, the subscription subscribes again and
/// messages published after that arrive (what was published during the outage is lost
/// by the mode's nature). Three restarts, 100 messages after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pubsub_subscribes_again_after_restart() {
    const PER_ROUND: u64 = 100;
    let mut server = own_redis();
    let config = RouterConfig::from_toml_str(&format!(
        "default_broker = \"redis\"\n[defaults]\nretry = {{ attempts = 1 }}\n[brokers.redis]\nkind = \"redis\"\nurl = \"{}\"\nmode = \"pubsub\"\n",
        url(&server)
    ))
    .unwrap();
    let ch = unique_channel::<Numbered>("pubsub-restart");
    let seen: HandledCounts = Arc::default();
    let handler = counting_handler(&seen, Duration::ZERO);
    let router = MessageRouter::builder(config)
        .handle(ch, handler)
        .start()
        .await
        .unwrap();
    let received = |seq: u64| seen.lock().unwrap().contains_key(&seq);
    for round in 0..4u64 {
        if round > 0 {
            common::restart(&mut server, "TERM").await;
            // Probe until the subscription is back: probes published before it are lost.
            let probe_base = 1_000_000 * round;
            let mut probe = probe_base;
            wait_until_async(
                "subscribed again after the restart",
                Duration::from_secs(30),
                || {
                    probe += 1;
                    let (router, seq) = (router.clone(), probe);
                    let back = (probe_base..seq).any(received);
                    async move {
                        let _ = router.publish(ch, &Numbered { seq }).await;
                        back
                    }
                },
            )
            .await;
        }
        let first = round * PER_ROUND;
        for seq in first..first + PER_ROUND {
            router.publish(ch, &Numbered { seq }).await.unwrap();
        }
        wait_until(
            "every message of the round",
            Duration::from_secs(30),
            || (first..first + PER_ROUND).all(received),
        )
        .await;
    }
    router.shutdown().await.unwrap();
}
