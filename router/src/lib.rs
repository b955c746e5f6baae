// In a document the first definition of a link label wins: these send the README's links
// to the broker pages, which point at files in the repository, to the pages' copies in
// `guide` when rustdoc renders the README.
#![doc = "[redis-guide]: crate::guide::redis"]
#![doc = "[nats-guide]: crate::guide::nats"]
#![doc = "[rabbitmq-guide]: crate::guide::rabbitmq"]
#![doc = "[kafka-guide]: crate::guide::kafka"]
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod channel;
mod codec;
pub mod config;
mod consumer;
mod dead_letter;
mod handled_ids;
mod handler;
mod health;
mod json_reader;
mod json_text;
mod json_writer;
mod leftovers;
mod message_metrics;
mod moving;
mod presence;
mod router;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod trace_context;

/// The embedded broker, to share one instance between routers with
/// [`RouterBuilder::with_broker`].
pub use anybroker_brokers::memory::MemoryBroker;
pub use anybroker_brokers::{
    header, Backlog, Broker, BrokerConfig, BrokerKind, Capabilities, ChannelSpec, DeadLetterReason,
    DeadLetterSelector, Envelope, Error, ErrorKind, Headers, Jitter, NewGroupStart, OpenChannel,
    Presence, Result, RetryPolicy, PRESENCE_TTL,
};
/// Each backend's config (`RedisConfig`, `KafkaConfig`, …), to build a config in code,
/// and its broker type.
pub use anybroker_brokers::{kafka, memory, nats, rabbitmq, redis};
pub use anybroker_brokers::{message_id_time, new_message_id, MessageId, MESSAGE_ID_LEN};
pub use anybroker_brokers::{Secret, SecretUrl};
pub use channel::{Channel, ChannelSet, Message};
pub use config::{ChannelConfig, ChannelDefaults, RouterConfig};
pub use dead_letter::DeadLetterRecord;
pub use handler::{handler_fn, FnHandler, HandlerError, MessageContext, MessageHandler};
pub use health::{BrokerHealth, ConnectionState, Health};
pub use leftovers::Leftover;
/// The names of the metrics the router records (feature `metrics`).
pub use message_metrics::names as metric_names;
pub use moving::MoveStatus;
pub use router::{HandlerOptions, MessageRouter, PublishOptions, RouterBuilder};

/// One page per backend: how it keeps each promise, its wire format, its config keys,
/// TLS, and the servers it is tested against.
pub mod guide {
    // As in the crate's page, the first definition wins: the pages' link to the README's
    // promises goes to the crate's front page.
    #[doc = "[promises]: crate#promises-every-backend-every-mode-that-declares-the-capability"]
    #[doc = include_str!("../guide/redis.md")]
    pub mod redis {}
    #[doc = "[promises]: crate#promises-every-backend-every-mode-that-declares-the-capability"]
    #[doc = include_str!("../guide/nats.md")]
    pub mod nats {}
    #[doc = "[promises]: crate#promises-every-backend-every-mode-that-declares-the-capability"]
    #[doc = include_str!("../guide/rabbitmq.md")]
    pub mod rabbitmq {}
    #[doc = "[promises]: crate#promises-every-backend-every-mode-that-declares-the-capability"]
    #[doc = include_str!("../guide/kafka.md")]
    pub mod kafka {}
}
