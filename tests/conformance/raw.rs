//! Raw-publish hooks: each broker's own client writing a payload to a channel, as a
//! producer that does not use anybroker does. The client is made on first use, on the
//! case's runtime.

use std::sync::Arc;

use crate::support::RawPublish;

/// Makes a hook from a client maker and a send: the client is made once per target.
#[allow(dead_code)] // a build without the server backends has no hook
fn hook<C, M, S>(make: M, send: S) -> RawPublish
where
    C: Send + Sync + 'static,
    M: Fn() -> futures::future::BoxFuture<'static, C> + Send + Sync + 'static,
    S: Fn(Arc<C>, String, Vec<u8>) -> futures::future::BoxFuture<'static, ()>
        + Send
        + Sync
        + 'static,
{
    let client: Arc<tokio::sync::OnceCell<Arc<C>>> = Arc::default();
    let (make, send) = (Arc::new(make), Arc::new(send));
    Arc::new(move |channel, payload| {
        let (client, make, send) = (client.clone(), make.clone(), send.clone());
        Box::pin(async move {
            let c = client
                .get_or_init(|| async { Arc::new(make().await) })
                .await
                .clone();
            send(c, channel, payload).await;
        })
    })
}

/// `XADD <channel> * p <payload>`; an empty payload is an entry without the payload
/// field at all.
#[cfg(feature = "redis")]
pub fn redis(url: &'static str) -> RawPublish {
    hook(
        move || {
            Box::pin(async move {
                redis::Client::open(url)
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap()
            })
        },
        |conn: Arc<redis::aio::MultiplexedConnection>, channel, payload| {
            Box::pin(async move {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(channel).arg("*");
                if payload.is_empty() {
                    cmd.arg("unrelated").arg("field");
                } else {
                    cmd.arg("p").arg(payload);
                }
                let _: String = cmd.query_async(&mut (*conn).clone()).await.unwrap();
            })
        },
    )
}

/// A JetStream publish on the channel's subject, acknowledged.
#[cfg(feature = "nats")]
pub fn nats(url: &'static str) -> RawPublish {
    hook(
        move || {
            Box::pin(
                async move { async_nats::jetstream::new(async_nats::connect(url).await.unwrap()) },
            )
        },
        |js: Arc<async_nats::jetstream::Context>, channel, payload| {
            Box::pin(async move {
                js.publish(channel, payload.into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            })
        },
    )
}

/// A confirmed publish to the `anybroker` exchange with the channel as routing key.
#[cfg(feature = "rabbitmq")]
pub fn rabbitmq(url: &'static str) -> RawPublish {
    use lapin::options::BasicPublishOptions;
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    hook(
        move || {
            Box::pin(async move {
                let connection = Connection::connect(url, ConnectionProperties::default())
                    .await
                    .unwrap();
                let channel = connection.create_channel().await.unwrap();
                channel.confirm_select(Default::default()).await.unwrap();
                (connection, channel)
            })
        },
        |c: Arc<(lapin::Connection, lapin::Channel)>, channel, payload| {
            Box::pin(async move {
                c.1.basic_publish(
                    "anybroker".into(),
                    channel.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &payload,
                    BasicProperties::default(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            })
        },
    )
}

/// A record produced to the channel's topic, no key, no headers.
#[cfg(feature = "kafka")]
pub fn kafka(servers: String) -> RawPublish {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    hook(
        move || {
            let servers = servers.clone();
            Box::pin(async move {
                rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", servers)
                    .create::<FutureProducer>()
                    .unwrap()
            })
        },
        |producer: Arc<FutureProducer>, channel, payload| {
            Box::pin(async move {
                producer
                    .send(
                        FutureRecord::<[u8], [u8]>::to(&channel).payload(&payload),
                        std::time::Duration::from_secs(10),
                    )
                    .await
                    .unwrap();
            })
        },
    )
}
