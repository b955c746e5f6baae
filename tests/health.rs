//! `MessageRouter::health` while a broker goes away and comes back: a server of the
//! test's own stopped (Redis: its connection answers no PING; NATS: its client leaves
//! the connected state), then started again.

#![cfg(any(feature = "redis", feature = "nats"))]

use std::time::Duration;

use anybroker::{handler_fn, ConnectionState, MessageContext, MessageRouter, RouterConfig};

mod common;
use common::{unique_channel, wait_until_async, Numbered, OwnServer};

/// Long enough for a loaded machine to notice a server gone or back.
const NOTICE: Duration = Duration::from_secs(30);

async fn connection_of(router: &MessageRouter) -> ConnectionState {
    let health = router.health().await;
    health
        .brokers
        .iter()
        .find(|b| b.name == "own")
        .map(|b| b.connection.clone())
        .unwrap()
}

/// Healthy with one consumer; unreachable (and not ready, with the failed publish as
/// its last error) while the server is down; connected again once it is back.
async fn health_follows_the_server(mut server: OwnServer, table: String) {
    let config =
        RouterConfig::from_toml_str(&format!("default_broker = \"own\"\n[brokers.own]\n{table}"))
            .unwrap();
    let ch = unique_channel::<Numbered>("health");
    let router = MessageRouter::builder(config)
        .handle(
            ch,
            handler_fn(|_: Numbered, _: MessageContext| async { Ok(()) }),
        )
        .start()
        .await
        .unwrap();
    let health = router.health().await;
    assert!(health.is_ready(), "{health:?}");
    assert_eq!(health.brokers[0].consumers, 1, "{health:?}");

    server.stop("KILL");
    wait_until_async("the broker reported unreachable", NOTICE, || async {
        matches!(
            connection_of(&router).await,
            ConnectionState::Unreachable(_)
        )
    })
    .await;
    let publish = tokio::time::timeout(NOTICE, router.publish(ch, &Numbered { seq: 1 })).await;
    assert!(
        matches!(publish, Ok(Err(_))),
        "a publish with the server down fails in time: {publish:?}"
    );
    let health = router.health().await;
    assert!(!health.is_ready(), "{health:?}");
    // The publish's error, or a later one of the consumer's (fetching meanwhile).
    let (last, _) = health.brokers[0].last_error.clone().expect("an error kept");
    assert!(last.contains("broker own"), "{last}");

    server.up();
    wait_until_async("the broker reported connected again", NOTICE, || async {
        connection_of(&router).await == ConnectionState::Connected
    })
    .await;
    assert!(router.health().await.is_ready());
    router.shutdown().await.unwrap();
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_health_follows_the_server() {
    let server = common::own_redis();
    let table = format!(
        "kind = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\nresponse_timeout = \"1s\"",
        server.port
    );
    health_follows_the_server(server, table).await;
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_health_follows_the_server() {
    let server = common::own_nats();
    let table = format!(
        "kind = \"nats\"\nurl = \"nats://127.0.0.1:{}\"\nmax_age = \"1h\"",
        server.port
    );
    health_follows_the_server(server, table).await;
}
