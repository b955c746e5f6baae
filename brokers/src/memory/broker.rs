//! The embedded broker: opening its channels.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::channel::MemoryChannel;
use super::connection::Connection;
use super::topic::Work;
use super::config::MemoryConfig;
use crate::core::{Backend, ChannelSpec, Presence, Result};

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

    /// Where this broker is on the way to rest, looking as far as `until` (tokio's
    /// clock): `Busy` while a message is being handled or waits for a member of a group
    /// that exists, else `Due` with the earliest retry or delayed message due by
    /// `until`, else `AtRest`. A test drives a paused clock with it
    /// (`anybroker::testing::run_until_settled`).
    pub fn settling(&self, until: tokio::time::Instant) -> Settling {
        let work = self.connection.work_until(until);
        if let Some((channel, _)) = work.iter().find(|(_, w)| matches!(w, Work::Busy)) {
            return Settling::Busy {
                channel: channel.to_string(),
            };
        }
        work.into_iter()
            .filter_map(|(channel, w)| match w {
                Work::Due(at) => Some((at, channel)),
                Work::Busy => None,
            })
            .min()
            .map_or(Settling::AtRest, |(at, channel)| Settling::Due {
                at,
                channel: channel.to_string(),
            })
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

/// Where an embedded broker is on the way to rest ([`MemoryBroker::settling`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settling {
    /// Nothing is being handled or waiting, and nothing falls due by then.
    AtRest,
    /// A message of `channel` is being handled or waits for a member of a group.
    Busy {
        /// The channel.
        channel: String,
    },
    /// Nothing is busy; a retry or delayed message of `channel` falls due `at`.
    Due {
        /// When, on tokio's clock.
        at: tokio::time::Instant,
        /// The channel.
        channel: String,
    },
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

    async fn check_connection(&self) -> Result<()> {
        // In the process: reachable while it is open.
        Ok(())
    }

    async fn shutdown(&self) -> Result<()> {
        self.connection.close();
        Ok(())
    }

    async fn announce(&self, spec: &ChannelSpec, _instance: &str) -> Result<Presence> {
        let topic = self.connection.topic(&spec.name);
        topic.announced.fetch_add(1, Ordering::SeqCst);
        Ok(Presence::counted(topic))
    }

    async fn announced(&self, spec: &ChannelSpec) -> Result<u64> {
        Ok(self
            .connection
            .topic(&spec.name)
            .announced
            .load(Ordering::SeqCst))
    }
}

