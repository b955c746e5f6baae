//! Broker backends of [anybroker](https://docs.rs/anybroker): the core contract
//! every backend implements ([`MessagePublisher`], [`Subscription`], [`Envelope`],
//! [`Capabilities`], [`Error`]) and one module per broker. Applications use the
//! `anybroker` crate, which re-exports what they need from here.
#![deny(missing_docs)]

// The trait first: enum_dispatch writes the dispatching impl where it meets the second
// of trait (`core`) and enum (`Broker`, below), and only here is every type the trait's
// methods name in scope.
pub mod core;
#[macro_use]
pub mod backends;
mod redact;
mod tls_files;

pub use core::*;
pub use redact::{Secret, SecretUrl};

// Named by the dispatching impl.
use std::time::Duration;

backends! {
    /// The embedded in-memory broker.
    Memory = "memory", cfg(all()), memory::{MemoryConfig, MemoryBroker};
    /// Apache Kafka (and Kafka-protocol brokers).
    Kafka = "kafka", cfg(feature = "kafka"), kafka::{KafkaConfig, KafkaBroker};
    /// Redis Streams or pub/sub.
    Redis = "redis", cfg(feature = "redis"), redis::{RedisConfig, RedisBroker};
    /// RabbitMQ (AMQP 0-9-1).
    RabbitMq = "rabbitmq", cfg(feature = "rabbitmq"), rabbitmq::{RabbitMqConfig, RabbitMqBroker};
    /// NATS JetStream or core NATS.
    Nats = "nats", cfg(feature = "nats"), nats::{NatsConfig, NatsBroker};
}
