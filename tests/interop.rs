//! Messages other frameworks write, handled the way they meant them; messages anybroker
//! writes, readable by them. Each test writes with the broker's own client the way
//! another framework does (FastStream, Spring Cloud Stream: a JSON body, the standard
//! `content-type`, a `correlation_id`, the framework's own message id) on the real
//! servers, and reads what a handler is given.
#![cfg(any(
    feature = "redis",
    feature = "nats",
    feature = "rabbitmq",
    feature = "kafka"
))]
#![allow(dead_code)] // each backend's tests use some of the helpers

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anybroker::{
    handler_fn, Channel, DeadLetterReason, Envelope, MessageContext, MessageRouter, RouterConfig,
};

mod common;
use common::{unique_channel, wait_until, Numbered};

const LONG: Duration = Duration::from_secs(30);

/// What handlers of a channel were given.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(Numbered, Envelope)>>>);

impl Seen {
    fn router(&self, config: RouterConfig, ch: Channel<Numbered>) -> anybroker::RouterBuilder {
        let seen = self.clone();
        MessageRouter::builder(config).handle(
            ch,
            handler_fn(move |m: Numbered, cx: MessageContext| {
                let seen = seen.clone();
                async move {
                    seen.0.lock().unwrap().push((m, cx.envelope().clone()));
                    Ok(())
                }
            }),
        )
    }

    fn of(&self, seq: u64) -> Option<Envelope> {
        let all = self.0.lock().unwrap();
        all.iter()
            .find(|(m, _)| m.seq == seq)
            .map(|(_, e)| e.clone())
    }
}

/// The dead letters of `ch` once there are at least `n` (or whatever there is at
/// the deadline).
async fn dead_letters_once(
    router: &MessageRouter,
    ch: Channel<Numbered>,
    n: usize,
) -> Vec<anybroker::DeadLetterRecord<Numbered>> {
    let last = Mutex::new(Vec::new());
    common::holds_within_async(LONG, || async {
        let dead = router.dead_letters(ch, 10).await.unwrap();
        let enough = dead.len() >= n;
        *last.lock().unwrap() = dead;
        enough
    })
    .await;
    last.into_inner().unwrap()
}

fn json(seq: u64) -> Vec<u8> {
    serde_json::to_vec(&Numbered { seq }).unwrap()
}

/// The framework's message 1 is handled with the framework's id, its headers and
/// its content type; the publish time is the broker's (at or before `stored_by`).
/// Message 2, sent with a content type the channel cannot decode (its body is JSON
/// all the same), is a dead letter whose error names the content type.
async fn assert_framework_messages(
    router: &MessageRouter,
    seen: &Seen,
    ch: Channel<Numbered>,
    id: &str,
    stored_by: SystemTime,
) {
    wait_until("the framework's message handled", LONG, || {
        seen.of(1).is_some()
    })
    .await;
    let e = seen.of(1).unwrap();
    assert_eq!(&*e.id, id, "the publisher's own id");
    assert_eq!(
        e.headers.get("correlation_id").map(String::as_str),
        Some("corr-1"),
        "{:?}",
        e.headers
    );
    assert_eq!(
        e.headers.get("tenant").map(String::as_str),
        Some("acme"),
        "{:?}",
        e.headers
    );
    assert_eq!(&*e.content_type, "application/json");
    assert!(
        e.published_at <= stored_by,
        "published at the broker's time ({:?}), not when received (after {:?})",
        e.published_at,
        stored_by
    );
    let dead = dead_letters_once(router, ch, 1).await;
    assert_eq!(dead.len(), 1, "the protobuf-typed message is a dead letter");
    assert_eq!(dead[0].reason, Some(DeadLetterReason::Undecodable));
    let error = dead[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("application/x-protobuf"),
        "the reason names the content type: {error}"
    );
    assert_eq!(&dead[0].payload()[..], &json(2)[..], "its bytes are kept");
    assert!(seen.of(2).is_none(), "never handed to the handler");
}

#[cfg(feature = "rabbitmq")]
mod rabbitmq {
    use super::*;
    use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
    use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
    use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};

    const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

    fn config(exchange: &str) -> RouterConfig {
        config_with(exchange, "")
    }

    /// The RabbitMQ config on `exchange`, with `extra` lines in its table.
    fn config_with(exchange: &str, extra: &str) -> RouterConfig {
        RouterConfig::from_toml_str(&format!(
            "default_broker = \"rabbitmq\"\n[brokers.rabbitmq]\nkind = \"rabbitmq\"\nurl = \"{URL}\"\n\
             exchange = \"{exchange}\"\n{extra}"
        ))
        .unwrap()
    }

    async fn client() -> (Connection, lapin::Channel) {
        let connection = Connection::connect(URL, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel.confirm_select(Default::default()).await.unwrap();
        (connection, channel)
    }

    /// A confirmed, mandatory publish; `true` when the broker took it, `false` when
    /// it came back unroutable.
    async fn publish(
        c: &lapin::Channel,
        exchange: &str,
        key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> bool {
        let confirm = c
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        matches!(confirm, Confirmation::Ack(None))
    }

    /// Declares `exchange` as anybroker versions before the parking did: durable,
    /// direct, no arguments.
    async fn declare_as_earlier_versions(c: &lapin::Channel, exchange: &str) -> lapin::Result<()> {
        c.exchange_declare(
            exchange.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
    }

    fn text(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
    }

    /// A FastStream-style message: properties for id, content type, correlation id,
    /// reply-to, type, app id and timestamp; headers of every AMQP type.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rabbitmq_framework_messages_are_handled_with_their_id_headers_and_properties() {
        let ch = unique_channel::<Numbered>("interop");
        let exchange = "anybroker";
        // The channel's queue exists (a router opened it), nobody consumes yet.
        let publisher = MessageRouter::builder(config(exchange))
            .start()
            .await
            .unwrap();
        publisher.provision(ch, &["default"]).await.unwrap();
        let (_connection, c) = client().await;
        let mut table = FieldTable::default();
        table.insert("region".into(), text("eu"));
        let mut headers = FieldTable::default();
        headers.insert("tenant".into(), text("acme"));
        headers.insert("ratio".into(), AMQPValue::Double(0.5));
        headers.insert(
            "tags".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![text("a"), AMQPValue::LongInt(2)])),
        );
        headers.insert("origin".into(), AMQPValue::FieldTable(table));
        let properties = BasicProperties::default()
            .with_message_id("fw-1".into())
            .with_content_type("application/json".into())
            .with_correlation_id("corr-1".into())
            .with_reply_to("answers".into())
            .with_type("order.created".into())
            .with_app_id("shop".into())
            .with_timestamp(1_700_000_000)
            .with_headers(headers);
        assert!(publish(&c, exchange, ch.name(), &json(1), properties).await);
        let protobuf = BasicProperties::default()
            .with_message_id("fw-2".into())
            .with_content_type("application/x-protobuf".into());
        assert!(publish(&c, exchange, ch.name(), &json(2), protobuf).await);
        let stored_by = SystemTime::now();
        publisher.shutdown().await.unwrap();

        let seen = Seen::default();
        let router = seen.router(config(exchange), ch).start().await.unwrap();
        assert_framework_messages(&router, &seen, ch, "fw-1", stored_by).await;
        let e = seen.of(1).unwrap();
        let header = |name: &str| e.headers.get(name).map(String::as_str);
        assert_eq!(header("ratio"), Some("0.5"), "a float header is kept");
        assert_eq!(
            header("tags"),
            Some(r#"["a",2]"#),
            "an array header is kept"
        );
        assert_eq!(
            header("origin"),
            Some(r#"{"region":"eu"}"#),
            "a table header is kept"
        );
        assert_eq!(header("reply_to"), Some("answers"));
        assert_eq!(header("type"), Some("order.created"));
        assert_eq!(header("app_id"), Some("shop"));
        assert_eq!(
            e.published_at,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            "the AMQP timestamp"
        );
        router.shutdown().await.unwrap();
    }

    /// A publisher that does not use anybroker sends to a channel no anybroker
    /// instance has used yet (its exchange exists: another channel's router made it).
    /// The broker takes the message (parked, not returned as unroutable), and the
    /// first router that handles the channel handles it. An exchange an earlier
    /// version made without the parking is used as it is (a router starts).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rabbitmq_messages_sent_before_the_channel_has_a_queue_are_kept() {
        let ch = unique_channel::<Numbered>("early");
        let exchange = format!("{}.x", ch.name());
        let other = MessageRouter::builder(config(&exchange))
            .start()
            .await
            .unwrap();
        let (_connection, c) = client().await;
        for seq in 1..=3 {
            let properties =
                BasicProperties::default().with_message_id(format!("early-{seq}").into());
            assert!(
                publish(&c, &exchange, ch.name(), &json(seq), properties).await,
                "message {seq} taken by the broker, not returned"
            );
        }
        // Another channel's parked message stays parked meanwhile.
        let stranger = format!("{}.other", ch.name());
        assert!(
            publish(
                &c,
                &exchange,
                &stranger,
                &json(9),
                BasicProperties::default()
            )
            .await
        );
        other.shutdown().await.unwrap();

        let seen = Seen::default();
        let router = seen.router(config(&exchange), ch).start().await.unwrap();
        wait_until("the early messages handled", LONG, || {
            seen.0.lock().unwrap().len() == 3
        })
        .await;
        let ids: Vec<String> = (1..=3)
            .map(|s| seen.of(s).unwrap().id.to_string())
            .collect();
        assert_eq!(ids, ["early-1", "early-2", "early-3"]);
        router.shutdown().await.unwrap();
        let parked = common::rabbitmq_queue_length(&c, &format!("{exchange}.unroutable")).await;
        assert_eq!(parked, 1, "the other channel's message is still parked");

        // An exchange declared without an alternate exchange (as before): the router
        // starts on it and works.
        let before = format!("{}.before", ch.name());
        declare_as_earlier_versions(&c, &before).await.unwrap();
        let seen = Seen::default();
        let router = seen.router(config(&before), ch).start().await.unwrap();
        router.publish(ch, &Numbered { seq: 7 }).await.unwrap();
        wait_until("handled on the older exchange", LONG, || {
            seen.of(7).is_some()
        })
        .await;
        router.shutdown().await.unwrap();

        // `park_unroutable = false` declares the exchange as versions before the
        // parking did, so their declaration (no arguments) still succeeds on it.
        let compat = format!("{}.compat", ch.name());
        let router = MessageRouter::builder(config_with(&compat, "park_unroutable = false\n"))
            .start()
            .await
            .unwrap();
        declare_as_earlier_versions(&c, &compat)
            .await
            .expect("an earlier version's declaration");
        router.shutdown().await.unwrap();
        for name in [exchange.clone(), before, compat] {
            c.exchange_delete(name.as_str().into(), Default::default())
                .await
                .unwrap();
        }
    }
}

#[cfg(feature = "nats")]
mod nats {
    use super::*;
    use async_nats::HeaderMap;

    const URL: &str = "nats://127.0.0.1:4222";

    fn config(mode: &str) -> RouterConfig {
        RouterConfig::from_toml_str(&format!(
            "default_broker = \"nats\"\n[brokers.nats]\nkind = \"nats\"\nurl = \"{URL}\"\n\
             mode = \"{mode}\"\n"
        ))
        .unwrap()
    }

    fn stream_of(ch: Channel<Numbered>) -> String {
        format!("ANYBROKER_{}", ch.name().replace('.', "_"))
    }

    /// JetStream: a framework's message with `Nats-Msg-Id`, one with its id only in
    /// `correlation_id`, one with no id at all; the publish time is the stream's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats_framework_messages_are_handled_with_their_id_and_headers() {
        let ch = unique_channel::<Numbered>("interop");
        let publisher = MessageRouter::builder(config("jetstream"))
            .start()
            .await
            .unwrap();
        publisher.provision(ch, &["default"]).await.unwrap();
        let js = async_nats::jetstream::new(async_nats::connect(URL).await.unwrap());
        let send = |headers: HeaderMap, body: Vec<u8>| {
            let js = js.clone();
            async move {
                js.publish_with_headers(ch.name().to_string(), headers, body.into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        };
        let framework = |id: Option<&str>, content_type: &str| {
            let mut h = HeaderMap::new();
            if let Some(id) = id {
                h.insert("Nats-Msg-Id", id);
            }
            h.insert("content-type", content_type);
            h.insert("correlation_id", "corr-1");
            h.insert("tenant", "acme");
            h
        };
        send(framework(Some("fw-1"), "application/json"), json(1)).await;
        send(framework(Some("fw-2"), "application/x-protobuf"), json(2)).await;
        let mut by_correlation = HeaderMap::new();
        by_correlation.insert("correlation_id", "corr-3");
        send(by_correlation, json(3)).await;
        send(HeaderMap::new(), json(4)).await;
        let stored_by = SystemTime::now();
        publisher.shutdown().await.unwrap();

        let seen = Seen::default();
        let router = seen.router(config("jetstream"), ch).start().await.unwrap();
        assert_framework_messages(&router, &seen, ch, "fw-1", stored_by).await;
        wait_until("all handled", LONG, || seen.0.lock().unwrap().len() == 3).await;
        assert_eq!(&*seen.of(3).unwrap().id, "corr-3", "the correlation id");
        let bare = seen.of(4).unwrap();
        assert!(
            bare.id.starts_with(&format!("{}/4@", stream_of(ch))),
            "stream, sequence and stored time: {}",
            bare.id
        );
        assert!(bare.published_at <= stored_by, "the stream's time");
        router.shutdown().await.unwrap();

        // The stream deleted and made again: the same sequence is another id.
        js.delete_stream(stream_of(ch)).await.unwrap();
        let seen_again = Seen::default();
        let router = seen_again
            .router(config("jetstream"), ch)
            .start()
            .await
            .unwrap();
        for seq in [5, 6, 7, 8] {
            send(HeaderMap::new(), json(seq)).await;
        }
        wait_until("handled after the stream was made again", LONG, || {
            seen_again.of(8).is_some()
        })
        .await;
        let fourth = seen_again.of(8).unwrap();
        assert!(fourth.id.starts_with(&format!("{}/4@", stream_of(ch))));
        assert_ne!(fourth.id, bare.id, "sequence 4 again, another id");
        router.shutdown().await.unwrap();
    }

    /// What anybroker publishes carries the standard `content-type`, in either mode,
    /// for a subscriber that is not anybroker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats_publishes_say_their_content_type() {
        use futures::StreamExt;
        for mode in ["core", "jetstream"] {
            let ch = unique_channel::<Numbered>("content-type");
            let client = async_nats::connect(URL).await.unwrap();
            let mut raw = client.subscribe(ch.name().to_string()).await.unwrap();
            client.flush().await.unwrap();
            let router = MessageRouter::builder(config(mode)).start().await.unwrap();
            router.publish(ch, &Numbered { seq: 1 }).await.unwrap();
            let m = tokio::time::timeout(LONG, raw.next())
                .await
                .unwrap()
                .unwrap();
            let ct = m.headers.as_ref().and_then(|h| h.get("content-type"));
            assert_eq!(ct.map(|v| v.as_str()), Some("application/json"), "{mode}");
            router.shutdown().await.unwrap();
        }
    }
}

#[cfg(feature = "kafka")]
mod kafka {
    use super::*;
    use common::KAFKA_TANSU_TABLE;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::ClientConfig;

    fn config() -> RouterConfig {
        RouterConfig::from_toml_str(&format!(
            "default_broker = \"kafka\"\n[brokers.kafka]\n{KAFKA_TANSU_TABLE}"
        ))
        .unwrap()
    }

    /// A Spring- or FastStream-style record: JSON value, `content-type`,
    /// `correlation_id` and the framework's `message_id` headers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kafka_framework_messages_are_handled_with_their_id_and_headers() {
        let ch = unique_channel::<Numbered>("interop");
        let publisher = MessageRouter::builder(config()).start().await.unwrap();
        publisher.provision(ch, &["default"]).await.unwrap();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9092")
            .create()
            .unwrap();
        for (seq, id, content_type) in [
            (1, "fw-1", "application/json"),
            (2, "fw-2", "application/x-protobuf"),
        ] {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "content-type",
                    value: Some(content_type),
                })
                .insert(Header {
                    key: "correlation_id",
                    value: Some("corr-1"),
                })
                .insert(Header {
                    key: "message_id",
                    value: Some(id),
                })
                .insert(Header {
                    key: "tenant",
                    value: Some("acme"),
                });
            let body = json(seq);
            producer
                .send(
                    FutureRecord::<(), _>::to(ch.name())
                        .payload(&body)
                        .headers(headers),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
        let stored_by = SystemTime::now();
        publisher.shutdown().await.unwrap();

        let seen = Seen::default();
        let router = seen.router(config(), ch).start().await.unwrap();
        assert_framework_messages(&router, &seen, ch, "fw-1", stored_by).await;
        router.shutdown().await.unwrap();
    }
}

#[cfg(feature = "redis")]
mod redis_streams {
    use super::*;

    const URL: &str = "redis://127.0.0.1:6379";

    fn config() -> RouterConfig {
        RouterConfig::from_toml_str(&format!(
            "default_broker = \"redis\"\n[brokers.redis]\nkind = \"redis\"\nurl = \"{URL}\"\n"
        ))
        .unwrap()
    }

    /// FastStream's binary message format: `__data__` holding its headers and body.
    fn faststream_binary(headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut raw = b"\x89BIN\r\n\x1a\n".to_vec();
        raw.extend_from_slice(&1u16.to_be_bytes());
        let headers_at = raw.len() + 8;
        let size: usize = headers.iter().map(|(k, v)| 4 + k.len() + v.len()).sum();
        raw.extend_from_slice(&(headers_at as u32).to_be_bytes());
        raw.extend_from_slice(&((headers_at + 2 + size) as u32).to_be_bytes());
        raw.extend_from_slice(&(headers.len() as u16).to_be_bytes());
        for (k, v) in headers {
            raw.extend_from_slice(&(k.len() as u16).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u16).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        raw.extend_from_slice(body);
        raw
    }

    /// Entries another client wrote: FastStream's (handled with its correlation id and
    /// headers), FastStream's with a body of another shape, and plain fields. The last
    /// two are dead letters that keep everything the entry carried, and a replay
    /// sends it all again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_foreign_entries_are_read_and_their_dead_letters_keep_every_field() {
        let ch = unique_channel::<Numbered>("interop");
        let seen = Seen::default();
        let router = seen.router(config(), ch).start().await.unwrap();
        let mut conn = ::redis::Client::open(URL)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let framework = [
            ("correlation_id", "corr-1"),
            ("content-type", "application/json"),
            ("tenant", "acme"),
        ];
        let entries: Vec<Vec<(&str, Vec<u8>)>> = vec![
            vec![("__data__", faststream_binary(&framework, &json(1)))],
            vec![(
                "__data__",
                faststream_binary(&framework, br#"{"other": true}"#),
            )],
            vec![("order", b"17".to_vec()), ("amount", b"30".to_vec())],
        ];
        for fields in entries {
            let mut cmd = ::redis::cmd("XADD");
            cmd.arg(ch.name()).arg("*");
            for (name, value) in fields {
                cmd.arg(name).arg(value);
            }
            let _: String = cmd.query_async(&mut conn).await.unwrap();
        }
        wait_until("FastStream's message handled", LONG, || {
            seen.of(1).is_some()
        })
        .await;
        let e = seen.of(1).unwrap();
        assert_eq!(&*e.id, "corr-1");
        assert_eq!(e.headers.get("tenant").map(String::as_str), Some("acme"));

        let check = |dead: &[anybroker::DeadLetterRecord<Numbered>]| {
            assert_eq!(dead.len(), 2, "two dead letters");
            assert_eq!(
                &dead[0].payload()[..],
                br#"{"other": true}"#,
                "FastStream's body kept"
            );
            assert_eq!(
                dead[0].envelope.headers.get("tenant").map(String::as_str),
                Some("acme")
            );
            let fields = &dead[1].envelope.headers;
            assert_eq!(
                fields.get("order").map(String::as_str),
                Some("17"),
                "{fields:?}"
            );
            assert_eq!(
                fields.get("amount").map(String::as_str),
                Some("30"),
                "{fields:?}"
            );
        };
        let dead = dead_letters_once(&router, ch, 2).await;
        check(&dead);
        let ids: Vec<_> = dead.iter().map(|d| d.id.clone()).collect();
        // Replayed, they fail again the same way: what comes back is all they carried.
        assert_eq!(router.replay_dead_letters(ch, 10).await.unwrap(), 2);
        let again = dead_letters_once(&router, ch, 2).await;
        check(&again);
        assert_eq!(again.iter().map(|d| d.id.clone()).collect::<Vec<_>>(), ids);
        router.shutdown().await.unwrap();
    }
}
