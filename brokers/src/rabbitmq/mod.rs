//! The RabbitMQ backend (AMQP 0-9-1, with lapin).
//!
//! Topology, per channel `C` and group `G`, on the configured direct exchange `X`:
//! - queue `C:G` (durable, one per group; the group's members share it), bound to `X`
//!   with routing key `C`, and to `X.delayed` likewise;
//! - publish: to `X` with routing key `C`, persistent, `mandatory`, publisher confirms
//!   on; returns after the confirm. A publish that can come back unroutable waits on
//!   an AMQP channel lent to it alone (`publishers`), so a return is known for whose it
//!   is (see `connection`). A channel no group has subscribed to yet has no queue:
//!   with `park_unroutable` (the default) `X`'s alternate exchange parks such a
//!   publish in the queue `X.unroutable`, delivered once a router opens the channel;
//!   without it (or on an exchange declared earlier without one) the publish is
//!   refused as unroutable. Never silently dropped either way;
//! - retry: the failed message is published (attempt + 1, error headers) to the delay
//!   queue `C:G:retry:<ms>`, whose every message has the same TTL, so expiry at the head
//!   of the queue is expiry in order; on expiry RabbitMQ dead-letters it back to `C:G`
//!   through the default exchange: only group `G` sees it again. The original is acked
//!   after the confirm;
//! - dead letters: queue `C.dlq`, published (confirm) before the original is acked;
//!   reading them takes them without ack and gives them back, replay re-publishes and acks;
//! - delay: queue `C.delay.<ms>` whose messages expire into `X.delayed` with routing key
//!   `C`. `X.delayed`'s alternate exchange parks what no group queue takes in the queue
//!   `X.unroutable`, so a delayed message due when no group exists is kept, not lost;
//! - request/reply: requests go to `X` with routing key `C.rpc` (queue `C.rpc`, shared by
//!   the serving members); replies come back by direct reply-to (`amq.rabbitmq.reply-to`).
//!
//! Delay queues are declared on demand, one per distinct delay in milliseconds, and
//! expire (`x-expires`) a while after their last use.
//!
//! The config is always compiled; the client only with the `rabbitmq` feature.

pub mod config;

#[cfg(feature = "rabbitmq")]
mod broker;
#[cfg(feature = "rabbitmq")]
mod channel;
#[cfg(feature = "rabbitmq")]
mod codec;
#[cfg(feature = "rabbitmq")]
mod connection;
#[cfg(feature = "rabbitmq")]
mod error;
#[cfg(feature = "rabbitmq")]
mod names;
#[cfg(feature = "rabbitmq")]
mod presence;
#[cfg(feature = "rabbitmq")]
mod publishers;
#[cfg(feature = "rabbitmq")]
mod subscription;
#[cfg(feature = "rabbitmq")]
mod topology;

#[cfg(feature = "rabbitmq")]
pub use broker::RabbitMqBroker;
#[cfg(feature = "rabbitmq")]
pub use channel::RabbitMqChannel;
pub use config::RabbitMqConfig;
