//! `Broker`: every backend behind one enum, and `BrokerConfig`: how one is configured.

use serde::{Deserialize, Serialize};

use std::time::Duration;

// The dispatching impl that enum_dispatch writes here names these types.
use crate::core::{
    BrokerKind, Capabilities, Envelope, Error, MessagePublisher, Result, SubscribeOptions,
    Subscription,
};
use crate::kafka::config::KafkaConfig;
use crate::memory::{MemoryBroker, MemoryConfig};
use crate::nats::config::NatsConfig;
use crate::rabbitmq::config::RabbitMqConfig;
use crate::redis::config::RedisConfig;

/// One `[brokers.<name>]` table; `kind` selects the backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[non_exhaustive]
pub enum BrokerConfig {
    /// `kind = "memory"`.
    Memory(MemoryConfig),
    /// `kind = "kafka"`.
    Kafka(KafkaConfig),
    /// `kind = "redis"`.
    Redis(RedisConfig),
    /// `kind = "rabbitmq"`.
    RabbitMq(RabbitMqConfig),
    /// `kind = "nats"`.
    Nats(NatsConfig),
}

impl BrokerConfig {
    /// The backend this config selects.
    pub fn kind(&self) -> BrokerKind {
        match self {
            BrokerConfig::Memory(_) => BrokerKind::Memory,
            BrokerConfig::Kafka(_) => BrokerKind::Kafka,
            BrokerConfig::Redis(_) => BrokerKind::Redis,
            BrokerConfig::RabbitMq(_) => BrokerKind::RabbitMq,
            BrokerConfig::Nats(_) => BrokerKind::Nats,
        }
    }

    /// How this backend carries channels, in a word: `embedded` (memory), `topics`
    /// (Kafka), `queues` (RabbitMQ), `streams` or `pubsub` (Redis), `jetstream` or
    /// `core` (NATS). For tables and logs; the guarantees are in [`Capabilities`].
    pub fn mode(&self) -> &'static str {
        match self {
            BrokerConfig::Memory(_) => "embedded",
            BrokerConfig::Kafka(_) => "topics",
            BrokerConfig::Redis(c) => c.mode.name(),
            BrokerConfig::RabbitMq(_) => "queues",
            BrokerConfig::Nats(c) => c.mode.name(),
        }
    }

    /// Checks values serde cannot; the message names the key within the table.
    pub fn validate(&self) -> std::result::Result<(), String> {
        match self {
            BrokerConfig::Memory(_) => Ok(()),
            BrokerConfig::Kafka(c) => c.validate(),
            BrokerConfig::Redis(c) => c.validate(),
            BrokerConfig::RabbitMq(c) => c.validate(),
            BrokerConfig::Nats(c) => c.validate(),
        }
    }
}

/// Every backend this build includes, dispatched without boxing.
#[enum_dispatch::enum_dispatch(MessagePublisher)]
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Broker {
    /// The embedded broker.
    Memory(MemoryBroker),
    /// Kafka.
    #[cfg(feature = "kafka")]
    Kafka(crate::kafka::KafkaBroker),
    /// Redis Streams or pub/sub.
    #[cfg(feature = "redis")]
    Redis(crate::redis::RedisBroker),
    /// RabbitMQ.
    #[cfg(feature = "rabbitmq")]
    RabbitMq(crate::rabbitmq::RabbitMqBroker),
    /// NATS JetStream or core NATS.
    #[cfg(feature = "nats")]
    Nats(crate::nats::NatsBroker),
}

impl Broker {
    /// Connects the broker named `name` (the key under `[brokers]`), as configured.
    /// A kind whose cargo feature is off is a `ConfigInvalid` error naming the feature.
    pub async fn connect(name: &str, config: &BrokerConfig) -> Result<Broker> {
        let kind = config.kind();
        if !kind.is_built() {
            return Err(Error::config(format!(
                "brokers.{name}: kind \"{kind}\" needs the cargo feature \"{kind}\" of anybroker, which this build does not have"
            ))
            .with_broker(name));
        }
        match config {
            BrokerConfig::Memory(c) => Ok(Broker::Memory(MemoryBroker::new(c))),
            #[cfg(feature = "redis")]
            BrokerConfig::Redis(c) => crate::redis::RedisBroker::connect(c)
                .await
                .map(Broker::Redis)
                .map_err(|e| e.with_broker(name)),
            #[cfg(feature = "kafka")]
            BrokerConfig::Kafka(c) => crate::kafka::KafkaBroker::connect(c)
                .await
                .map(Broker::Kafka)
                .map_err(|e| e.with_broker(name)),
            #[cfg(feature = "rabbitmq")]
            BrokerConfig::RabbitMq(c) => crate::rabbitmq::RabbitMqBroker::connect(c)
                .await
                .map(Broker::RabbitMq)
                .map_err(|e| e.with_broker(name)),
            #[cfg(feature = "nats")]
            BrokerConfig::Nats(c) => crate::nats::NatsBroker::connect(c)
                .await
                .map(Broker::Nats)
                .map_err(|e| e.with_broker(name)),
            #[allow(unreachable_patterns)]
            _ => Err(Error::config(format!(
                "brokers.{name}: kind \"{kind}\" is not built into this version"
            ))
            .with_broker(name)),
        }
    }
}
