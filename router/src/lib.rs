#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod channel;
pub mod config;
mod consumer;
mod handler;
mod router;

/// The embedded broker, to share one instance between routers with
/// [`RouterBuilder::with_broker`].
pub use anybroker_brokers::memory::MemoryBroker;
pub use anybroker_brokers::{
    header, Broker, BrokerConfig, BrokerKind, Capabilities, DeadLetterReason, Envelope, Error,
    ErrorKind, Headers, OpenChannel, Result, RetryPolicy,
};
/// Each backend's config (`RedisConfig`, `KafkaConfig`, …), to build a config in code,
/// and its broker type.
pub use anybroker_brokers::{kafka, memory, nats, rabbitmq, redis};
pub use anybroker_brokers::{message_id_time, new_message_id, MESSAGE_ID_LEN};
pub use anybroker_brokers::{Secret, SecretUrl};
pub use channel::{Channel, ChannelSet, Message};
pub use config::{ChannelConfig, ChannelDefaults, RouterConfig};
pub use handler::{handler_fn, FnHandler, HandlerError, MessageContext, MessageHandler};
pub use router::{HandlerOptions, MessageRouter, PublishOptions, RouterBuilder};
