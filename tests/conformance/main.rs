//! The conformance suite: one set of cases (`cases.rs`), run against every backend
//! this build includes. A backend joins with one module calling `conformance_cases!`
//! with the capabilities it lacks: the cases needing them show as skipped (ignored),
//! and `declared_lacks_match_capabilities` checks the list against the backend.

#[path = "../common/mod.rs"]
mod common;
#[macro_use]
mod support;
#[macro_use]
mod cases;
mod outage;
mod raw;
mod telemetry;

/// The embedded broker, on every `cargo test`.
mod memory {
    conformance_cases!(
        crate::support::Target::memory(),
        lacks [request_reply, survives_broker_restart, outage]
    );
}

/// The test harness (feature `testing`): the embedded broker reached through
/// `on_embedded_broker` with a recorder attached keeps the same promises.
mod harness {
    conformance_cases!(
        crate::support::Target::harness(),
        lacks [request_reply, survives_broker_restart, outage]
    );
}

/// Redis Streams, against the real Redis on 127.0.0.1:6379.
#[cfg(feature = "redis")]
mod redis {
    conformance_cases!(
        crate::support::Target::server(
            "redis",
            "kind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nclaim_idle = \"5s\""
        )
        .with_raw_publish(crate::raw::redis("redis://127.0.0.1:6379"))
        .with_outage(crate::outage::redis()),
        lacks [native_redelivery_count, ordering_across_members, request_reply]
    );
}

/// Redis pub/sub: the cases its capabilities allow; the rest must be refused.
#[cfg(feature = "redis")]
mod redis_pubsub {
    conformance_cases!(
        crate::support::Target::server(
            "redis-pubsub",
            "kind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nmode = \"pubsub\""
        )
        .without_retry(),
        lacks [
            dead_letters, delay, groups, native_redelivery_count, ordering_across_members,
            persistent, presence, request_reply, retry, survives_broker_restart, outage
        ]
    );
}

/// NATS JetStream, against the real nats-server on 127.0.0.1:4222.
#[cfg(feature = "nats")]
mod nats {
    conformance_cases!(
        crate::support::Target::server(
            "nats",
            "kind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nmax_age = \"1h\""
        )
        .with_raw_publish(crate::raw::nats("nats://127.0.0.1:4222"))
        .with_outage(crate::outage::nats()),
        lacks[ordering_across_members]
    );
}

/// Core NATS: the cases its capabilities allow; the rest must be refused.
#[cfg(feature = "nats")]
mod nats_core {
    conformance_cases!(
        crate::support::Target::server(
            "nats-core",
            "kind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nmode = \"core\""
        )
        .without_retry(),
        lacks [
            dead_letters, delay, native_redelivery_count, ordering_across_members, persistent,
            presence, retry, survives_broker_restart, outage
        ]
    );
}

/// RabbitMQ, against the real broker on 127.0.0.1:5672.
#[cfg(feature = "rabbitmq")]
mod rabbitmq {
    conformance_cases!(
        crate::support::Target::server(
            "rabbitmq",
            "kind = \"rabbitmq\"\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\""
        )
        .with_raw_publish(crate::raw::rabbitmq("amqp://guest:guest@127.0.0.1:5672/%2f"))
        .with_outage(crate::outage::rabbitmq()),
        lacks [native_redelivery_count, ordering_across_members]
    );
}

/// Kafka, against the Kafka-protocol broker (tansu) on 127.0.0.1:9092, with the
/// settings tansu needs (see `KAFKA_TANSU_TABLE`).
#[cfg(feature = "kafka")]
mod kafka {
    conformance_cases!(
        crate::support::Target::server("kafka", crate::common::KAFKA_TANSU_TABLE)
            .with_raw_publish(crate::raw::kafka("127.0.0.1:9092".into())),
        // tansu is shared by every case of the run: it is not restarted.
        lacks [native_redelivery_count, ordering_across_members, request_reply, outage]
    );
}

/// Kafka on librdkafka's mock cluster (in-process, real Kafka protocol on loopback).
#[cfg(feature = "kafka")]
mod kafka_mock {
    conformance_cases!(
        crate::support::Target::kafka_mock().with_outage(crate::outage::kafka_mock()),
        lacks [native_redelivery_count, ordering_across_members, request_reply]
    );
}
