//! Broker backends of [anybroker](https://docs.rs/anybroker): the core contract
//! every backend implements ([`Backend`], [`BackendChannel`], [`Subscription`], [`Envelope`],
//! [`Capabilities`], [`Error`]) and one module per broker. Applications use the
//! `anybroker` crate, which re-exports what they need from here.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod core;
#[macro_use]
pub mod backends;
mod open_channel;
mod redact;
mod tls_files;

pub use core::*;
pub use open_channel::OpenChannel;
pub use redact::{Secret, SecretUrl};

backends! {
    /// The embedded in-memory broker.
    Memory = "memory", cfg(all()), memory::{MemoryConfig, MemoryBroker, MemoryChannel};
    /// Apache Kafka (and Kafka-protocol brokers).
    Kafka = "kafka", cfg(feature = "kafka"), kafka::{KafkaConfig, KafkaBroker, KafkaChannel};
    /// Redis Streams or pub/sub.
    Redis = "redis", cfg(feature = "redis"), redis::{RedisConfig, RedisBroker, RedisChannel};
    /// RabbitMQ (AMQP 0-9-1).
    RabbitMq = "rabbitmq", cfg(feature = "rabbitmq"), rabbitmq::{RabbitMqConfig, RabbitMqBroker, RabbitMqChannel};
    /// NATS JetStream or core NATS.
    Nats = "nats", cfg(feature = "nats"), nats::{NatsConfig, NatsBroker, NatsChannel};
}
