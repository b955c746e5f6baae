//! The RabbitMQ broker: connecting, and opening channels.

use std::sync::Arc;

use super::channel::RabbitMqChannel;
use super::connection::Link;
use super::config::RabbitMqConfig;
use crate::core::{Backend, Backlog, ChannelSpec, Presence, Result};

/// A connection to RabbitMQ. Cloning shares it.
#[derive(Clone)]
pub struct RabbitMqBroker {
    link: Arc<Link>,
}

impl std::fmt::Debug for RabbitMqBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqBroker")
            .field("config", self.link.config())
            .finish_non_exhaustive()
    }
}

impl Backend for RabbitMqBroker {
    type Config = RabbitMqConfig;
    type Channel = RabbitMqChannel;

    /// Connects, and declares the exchanges; later connection losses are recovered.
    async fn connect(config: &RabbitMqConfig) -> Result<Self> {
        Ok(RabbitMqBroker {
            link: Arc::new(Link::connect(config).await?),
        })
    }

    async fn open_channel(&self, spec: &ChannelSpec) -> Result<RabbitMqChannel> {
        RabbitMqChannel::open(self.link.clone(), spec).await
    }

    fn is_closed(&self) -> bool {
        self.link.is_closed()
    }

    async fn check_connection(&self) -> Result<()> {
        self.link.check_connection()
    }

    async fn shutdown(&self) -> Result<()> {
        self.link.close().await
    }

    async fn leftover(&self, spec: &ChannelSpec, group: &str) -> Result<Option<Backlog>> {
        // The group queue's ready messages, looked at passively (this process has
        // declared none of the channel's delay queues, and AMQP cannot list them).
        let queue = super::names::Names::group_queue(&spec.name, group);
        Ok(self
            .link
            .ready_messages(&queue)
            .await?
            .map(|ready| Backlog::new(ready, None)))
    }

    async fn announce(&self, spec: &ChannelSpec, instance: &str) -> Result<Presence> {
        super::presence::announce(&self.link, &spec.name, instance).await
    }

    async fn announced(&self, spec: &ChannelSpec) -> Result<u64> {
        super::presence::announced(&self.link, &spec.name).await
    }
}
