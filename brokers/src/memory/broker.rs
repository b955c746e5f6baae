//! The embedded broker: opening its channels.

use std::sync::Arc;

use super::channel::MemoryChannel;
use super::connection::Connection;
use super::config::MemoryConfig;
use crate::core::{Backend, ChannelSpec, Result};

/// The embedded broker. Cloning gives another handle to the same broker, so several
/// routers in one process can share it.
#[derive(Clone)]
pub struct MemoryBroker {
    connection: Arc<Connection>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new(&MemoryConfig::default())
    }
}

impl MemoryBroker {
    /// A new, empty broker.
    pub fn new(config: &MemoryConfig) -> Self {
        MemoryBroker {
            connection: Arc::new(Connection::new(config)),
        }
    }

    /// Messages published on `channel` that some group has not handed to a consumer
    /// yet (the most any one group has parked behind a busy key included), plus
    /// delayed ones: what `max_backlog` bounds, and the delayed messages beside it.
    pub fn backlog(&self, channel: &str) -> usize {
        let topic = self.connection.topic(channel);
        let state = topic.lock();
        state.held() + state.delayed.len()
    }
}

impl Backend for MemoryBroker {
    type Config = MemoryConfig;
    type Channel = MemoryChannel;

    async fn connect(config: &MemoryConfig) -> Result<Self> {
        Ok(Self::new(config))
    }

    async fn open_channel(&self, spec: &ChannelSpec) -> Result<MemoryChannel> {
        Ok(MemoryChannel::new(self.connection.clone(), &spec.name))
    }

    fn is_closed(&self) -> bool {
        self.connection.is_closed()
    }

    async fn shutdown(&self) -> Result<()> {
        self.connection.close();
        Ok(())
    }
}
