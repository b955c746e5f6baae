//! The NATS broker: connecting, and opening channels in the configured mode.

use std::sync::Arc;

use super::channel::{JetStreamChannel, NatsChannel};
use super::connection::Connection;
use super::core_mode::CoreChannel;
use super::error::from_nats;
use super::config::{NatsConfig, NatsMode};
use crate::core::{
    Backend, BackendChannel, Backlog, ChannelSpec, Error, ErrorKind, Presence, Result,
};

/// A connection to a NATS server, in the configured mode. Cloning shares it.
#[derive(Clone)]
pub struct NatsBroker {
    connection: Arc<Connection>,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("config", &self.connection.config)
            .finish_non_exhaustive()
    }
}

impl Backend for NatsBroker {
    type Config = NatsConfig;
    type Channel = NatsChannel;

    async fn connect(config: &NatsConfig) -> Result<Self> {
        Ok(NatsBroker {
            connection: Arc::new(Connection::open(config).await?),
        })
    }

    async fn open_channel(&self, spec: &ChannelSpec) -> Result<NatsChannel> {
        Connection::validate_subject(&spec.name)?;
        let connection = self.connection.clone();
        Ok(match self.connection.config.mode {
            NatsMode::Jetstream => {
                NatsChannel::JetStream(JetStreamChannel::open(connection, &spec.name).await?)
            }
            NatsMode::Core => NatsChannel::Core(CoreChannel::new(connection, &spec.name)),
        })
    }

    fn is_closed(&self) -> bool {
        self.connection.is_closed()
    }

    async fn check_connection(&self) -> Result<()> {
        // The client keeps its connection's state (it reconnects on its own).
        match self.connection.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(Error::new(
                ErrorKind::Unreachable,
                format!("not connected to the server ({state}); the client is reconnecting"),
            )
            .set_retryable(true)),
        }
    }

    async fn leftover(&self, spec: &ChannelSpec, group: &str) -> Result<Option<Backlog>> {
        if self.connection.config.mode != NatsMode::Jetstream {
            return Err(Error::unsupported("leftover: core NATS keeps nothing for a group"));
        }
        // Opened only where the stream exists (opening creates it).
        if !self.connection.stream_exists(&spec.name, "").await? {
            return Ok(None);
        }
        let channel = JetStreamChannel::open(self.connection.clone(), &spec.name).await?;
        BackendChannel::backlog(&channel, group).await.map(Some)
    }

    async fn announce(&self, spec: &ChannelSpec, instance: &str) -> Result<Presence> {
        if self.connection.config.mode != NatsMode::Jetstream {
            return Err(Error::unsupported("announce: core NATS keeps nothing to move"));
        }
        Connection::validate_subject(&spec.name)?;
        super::presence::announce(&self.connection, &spec.name, instance).await
    }

    async fn announced(&self, spec: &ChannelSpec) -> Result<u64> {
        if self.connection.config.mode != NatsMode::Jetstream {
            return Err(Error::unsupported("announced: core NATS keeps nothing to move"));
        }
        Connection::validate_subject(&spec.name)?;
        super::presence::announced(&self.connection, &spec.name).await
    }

    async fn shutdown(&self) -> Result<()> {
        self.connection.closed.close();
        self.connection
            .client
            .flush()
            .await
            .map_err(|e| from_nats(e, "shutdown"))
    }
}
