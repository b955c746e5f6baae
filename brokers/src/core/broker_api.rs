//! The trait every backend implements, and the enum that dispatches to them.

use std::time::Duration;

use async_trait::async_trait;
use enum_dispatch::enum_dispatch;

use super::{Capabilities, Envelope, Result, SubscribeOptions, Subscription};
pub use crate::BrokerKind;
#[cfg(doc)]
use crate::ErrorKind;

impl std::fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Publishing and consuming on one broker. Backends implement the few required
/// methods; anything a mode lacks answers [`ErrorKind::Unsupported`].
#[async_trait]
#[enum_dispatch]
pub trait MessagePublisher: Send + Sync {
    /// Which broker this is.
    fn kind(&self) -> BrokerKind;

    /// What this backend, in its configured mode, guarantees.
    fn capabilities(&self) -> Capabilities;

    /// Gets `channel` ready before its first use. A broker that keeps messages only
    /// for groups that exist (RabbitMQ: a queue per group) declares `default_group`'s
    /// queue, so what is published before the group's first member subscribes is kept.
    /// Brokers that keep messages per channel whatever the groups (Redis Streams,
    /// JetStream, the embedded broker) or keep nothing (fire-and-forget modes) have
    /// nothing to do.
    async fn prepare_channel(&self, channel: &str, default_group: &str) -> Result<()> {
        let _ = (channel, default_group);
        Ok(())
    }

    /// Publishes and returns once the broker accepted the message.
    async fn publish(&self, envelope: Envelope) -> Result<()>;

    /// Publishes so the message is delivered no earlier than `delay` from now.
    async fn publish_delayed(&self, envelope: Envelope, delay: Duration) -> Result<()>;

    /// Starts consuming `options.channel` as a member of `options.group`.
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>>;

    /// Reads up to `limit` dead letters of `channel`, oldest first, without removing them.
    async fn dead_letters(&self, channel: &str, limit: usize) -> Result<Vec<Envelope>>;

    /// Moves up to `limit` dead letters of `channel` back to the channel, oldest first,
    /// as fresh messages (attempt 1); returns how many moved.
    async fn replay_dead_letters(&self, channel: &str, limit: usize) -> Result<usize>;

    /// Sends a request and waits up to `timeout` for the reply of a handler. A reply
    /// carrying the handler's error has the header [`header::REPLY_ERROR`](crate::header::REPLY_ERROR).
    async fn request(&self, envelope: Envelope, timeout: Duration) -> Result<Envelope>;

    /// Starts answering requests on `options.channel`; members of one group share them.
    /// Deliveries are settled with [`Settlement::Reply`](crate::Settlement::Reply).
    async fn serve(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>>;

    /// Closes connections; later calls fail with `Closed`.
    async fn shutdown(&self) -> Result<()>;
}
