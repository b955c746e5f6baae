//! Outage hooks: per target, a broker the case can take away twice under load and give
//! back — a server of the case's own restarted, or the case's connections cut.

#[allow(unused_imports)]
use std::sync::Arc;

#[allow(unused_imports)]
use crate::support::{Outage, OutageHook};

/// A redis-server of the case's own (AOF, fsync always), shut down and started again.
#[cfg(feature = "redis")]
pub fn redis() -> OutageHook {
    Arc::new(|| {
        own_server_restarted(crate::common::own_redis(), "TERM", |port| {
            format!(
                "kind = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\nclaim_idle = \"1s\"\n\
                 block = \"100ms\"\nresponse_timeout = \"2s\""
            )
        })
    })
}

/// A nats-server of the case's own (JetStream), killed and started again.
#[cfg(feature = "nats")]
pub fn nats() -> OutageHook {
    Arc::new(|| {
        own_server_restarted(crate::common::own_nats(), "KILL", |port| {
            format!(
                "kind = \"nats\"\nurl = \"nats://127.0.0.1:{port}\"\nmax_age = \"1h\"\nack_wait = \"2s\""
            )
        })
    })
}

/// An outage that stops `server` with `signal` and starts it again (`common::restart`);
/// `table` makes the `[brokers.x]` body from the server's port.
#[allow(dead_code)]
fn own_server_restarted(
    server: crate::common::OwnServer,
    signal: &'static str,
    table: impl FnOnce(u16) -> String,
) -> Outage {
    let table = table(server.port);
    let server = std::rc::Rc::new(tokio::sync::Mutex::new(server));
    Outage {
        table,
        cut: Box::new(move || {
            let server = server.clone();
            Box::pin(async move { crate::common::restart(&mut *server.lock().await, signal).await })
        }),
    }
}

/// The shared RabbitMQ closing, on the server, the connections the case's router named
/// itself by (`rabbitmqctl close_connection`); other cases' connections are left alone.
#[cfg(feature = "rabbitmq")]
pub fn rabbitmq() -> OutageHook {
    Arc::new(|| {
        let name = format!("anybroker-outage-{}", uuid::Uuid::new_v4().simple());
        Outage {
            table: format!(
                "kind = \"rabbitmq\"\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n\
                 connection_name = \"{name}\""
            ),
            cut: Box::new(move || {
                let name = name.clone();
                Box::pin(async move {
                    let closed = tokio::task::spawn_blocking(move || {
                        crate::common::close_connections_named(&name)
                    })
                    .await
                    .unwrap();
                    assert!(closed > 0, "the outage closed the router's connections");
                })
            }),
        }
    })
}

/// librdkafka's mock cluster of the case's own, every broker of it taken down for
/// longer than the session timeout (the coordinator drops the member, which must
/// rejoin) and brought up again.
#[cfg(feature = "kafka")]
pub fn kafka_mock() -> OutageHook {
    Arc::new(|| {
        const BROKERS: i32 = 3;
        let cluster = std::rc::Rc::new(rdkafka::mocking::MockCluster::new(BROKERS).unwrap());
        // The case's publisher awaits each message: lingering for a batch only slows it.
        let table = format!(
            "{}producer_properties = {{ \"linger.ms\" = \"0\" }}\n",
            crate::common::kafka_mock_table(&cluster.bootstrap_servers())
        );
        Outage {
            table,
            cut: Box::new(move || {
                let cluster = cluster.clone();
                Box::pin(async move {
                    for id in 1..=BROKERS {
                        cluster.broker_down(id).unwrap();
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
                    for id in 1..=BROKERS {
                        cluster.broker_up(id).unwrap();
                    }
                })
            }),
        }
    })
}
