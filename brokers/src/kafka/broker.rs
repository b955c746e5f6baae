//! The Kafka broker: connecting, and opening channels.

use std::sync::Arc;

use super::channel::KafkaChannel;
use super::connection::Connection;
use super::config::KafkaConfig;
use crate::core::{Backend, BackendChannel, Backlog, ChannelSpec, Presence, Result};

/// A connection to a Kafka cluster. Cloning shares it.
#[derive(Clone)]
pub struct KafkaBroker {
    connection: Arc<Connection>,
}

impl std::fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBroker")
            .field("config", self.connection.config())
            .finish_non_exhaustive()
    }
}

impl Backend for KafkaBroker {
    type Config = KafkaConfig;
    type Channel = KafkaChannel;

    async fn connect(config: &KafkaConfig) -> Result<Self> {
        Ok(KafkaBroker {
            connection: Arc::new(Connection::open(config).await?),
        })
    }

    async fn open_channel(&self, spec: &ChannelSpec) -> Result<KafkaChannel> {
        KafkaChannel::open(self.connection.clone(), &spec.name).await
    }

    fn is_closed(&self) -> bool {
        self.connection.is_closed()
    }

    async fn check_connection(&self) -> Result<()> {
        self.connection.check_connection().await
    }

    async fn shutdown(&self) -> Result<()> {
        self.connection.close().await
    }

    async fn announce(&self, spec: &ChannelSpec, instance: &str) -> Result<Presence> {
        super::presence::announce(&self.connection, &spec.name, instance).await
    }

    async fn announced(&self, spec: &ChannelSpec) -> Result<u64> {
        super::presence::announced(&self.connection, &spec.name).await
    }

    async fn leftover(&self, spec: &ChannelSpec, group: &str) -> Result<Option<Backlog>> {
        // Opened only where the topic exists (opening creates it).
        if !self.connection.topic_exists(&spec.name).await? {
            return Ok(None);
        }
        let channel = KafkaChannel::open(self.connection.clone(), &spec.name).await?;
        BackendChannel::backlog(&channel, group).await.map(Some)
    }
}
