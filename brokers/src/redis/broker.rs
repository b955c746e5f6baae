//! The Redis broker: connecting, and opening channels in the configured mode.

use std::sync::Arc;

use super::channel::{RedisChannel, StreamChannel};
use super::connection::Connection;
use super::pubsub::PubSubChannel;
use super::config::{RedisConfig, RedisMode};
use crate::core::{Backend, BackendChannel, Backlog, ChannelSpec, Error, Presence, Result};

/// A connection to one Redis server, in the configured mode. Cloning shares it.
#[derive(Clone)]
pub struct RedisBroker {
    connection: Arc<Connection>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("config", &self.connection.config)
            .finish_non_exhaustive()
    }
}

impl Backend for RedisBroker {
    type Config = RedisConfig;
    type Channel = RedisChannel;

    async fn connect(config: &RedisConfig) -> Result<Self> {
        Ok(RedisBroker {
            connection: Arc::new(Connection::open(config).await?),
        })
    }

    async fn open_channel(&self, spec: &ChannelSpec) -> Result<RedisChannel> {
        let connection = self.connection.clone();
        Ok(match self.connection.config.mode {
            RedisMode::Streams => RedisChannel::Streams(StreamChannel::new(connection, &spec.name)),
            RedisMode::Pubsub => RedisChannel::PubSub(PubSubChannel::new(connection, &spec.name)),
        })
    }

    fn is_closed(&self) -> bool {
        self.connection.closed.is_closed()
    }

    async fn check_connection(&self) -> Result<()> {
        // One PING, within the connection's response timeout.
        let mut conn = self.connection.conn();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| super::error::from_redis(e, "check connection"))
    }

    async fn shutdown(&self) -> Result<()> {
        self.connection.closed.close();
        Ok(())
    }

    async fn leftover(&self, spec: &ChannelSpec, group: &str) -> Result<Option<Backlog>> {
        if self.connection.config.mode != RedisMode::Streams {
            return Err(Error::unsupported("leftover: pub/sub keeps nothing for a group"));
        }
        // The channel's stream is its name; opening a stream channel declares nothing.
        let mut conn = self.connection.conn();
        let exists: bool = redis::cmd("EXISTS")
            .arg(&*spec.name)
            .query_async(&mut conn)
            .await
            .map_err(|e| super::error::from_redis(e, "leftover"))?;
        if !exists {
            return Ok(None);
        }
        let channel = StreamChannel::new(self.connection.clone(), &spec.name);
        BackendChannel::backlog(&channel, group).await.map(Some)
    }

    async fn announce(&self, spec: &ChannelSpec, instance: &str) -> Result<Presence> {
        if self.connection.config.mode != RedisMode::Streams {
            return Err(Error::unsupported("announce: pub/sub keeps nothing to move"));
        }
        super::presence::announce(&self.connection, &spec.name, instance).await
    }

    async fn announced(&self, spec: &ChannelSpec) -> Result<u64> {
        if self.connection.config.mode != RedisMode::Streams {
            return Err(Error::unsupported("announced: pub/sub keeps nothing to move"));
        }
        super::presence::announced(&self.connection, &spec.name).await
    }
}
