//! The Redis broker handle: connections, publishing, dead letters.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::codec::{fields_size, parse_entries, to_fields, write_fields};
use super::consumer::StreamSubscription;
use super::error::from_redis;
use super::pubsub::PubSubSubscription;
use super::{Keys, RedisConfig, RedisMode};
use crate::core::{
    unix_millis, BrokerKind, Capabilities, Envelope, Error, MessagePublisher, Result,
    SubscribeOptions, Subscription,
};

/// A connection to one Redis server, in the configured mode. Cloning shares it.
#[derive(Clone)]
pub struct RedisBroker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: RedisConfig,
    pub(crate) client: redis::Client,
    pub(crate) conn: ConnectionManager,
    closed: crate::core::ShutdownFlag,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects (with reconnection on later failures) and checks the server answers.
    pub async fn connect(config: &RedisConfig) -> Result<Self> {
        let client = Self::client(config).map_err(|e| {
            Error::config(format!("url: {} is not a usable Redis URL", config.url))
                .with_broker("redis")
                .with_source(e)
        })?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_with_config(client.clone(), manager_config)
            .await
            .map_err(|e| {
                from_redis(e, "connect").with_message(format!("cannot connect to {}", config.url))
            })?;
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                config: config.clone(),
                client,
                conn,
                closed: crate::core::ShutdownFlag::new("redis"),
            }),
        })
    }

    /// The client for the configured URL; with `rediss://`, TLS through rustls, trusting
    /// `tls_ca` if given (else the system's roots), with the client certificate if given.
    fn client(config: &RedisConfig) -> redis::RedisResult<redis::Client> {
        if config.url.url().scheme() != "rediss" {
            return redis::Client::open(config.url.expose());
        }
        // rustls needs one process-wide crypto provider; keep one installed by the app.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let read = |p: &std::path::PathBuf| {
            std::fs::read(p).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "cannot read a TLS file",
                    format!("{}: {e}", p.display()),
                ))
            })
        };
        let root_cert = config.tls_ca.as_ref().map(read).transpose()?;
        let client_tls = match (&config.tls_client_cert, &config.tls_client_key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            _ => None,
        };
        redis::Client::build_with_tls(
            config.url.expose(),
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
    }

    pub(crate) fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    fn check_open(&self, operation: &'static str) -> Result<()> {
        self.inner.closed.check(operation)
    }

    fn streams_only(&self, operation: &'static str) -> Result<()> {
        if self.inner.config.mode == RedisMode::Pubsub {
            return Err(Error::unsupported(format!(
                "{operation} needs mode = \"streams\"; Redis pub/sub keeps nothing"
            ))
            .with_broker("redis")
            .with_operation(operation));
        }
        Ok(())
    }

    /// `XADD <stream> MAXLEN ~ max_len * fields…`
    pub(crate) fn xadd(&self, stream: &str, envelope: &Envelope) -> redis::Cmd {
        let (field_args, field_bytes) = fields_size(envelope);
        let mut cmd = redis::Cmd::with_capacity(6 + field_args, 32 + stream.len() + field_bytes);
        cmd.arg("XADD")
            .arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.inner.config.max_len)
            .arg("*");
        write_fields(&mut cmd, envelope);
        cmd
    }
}

#[async_trait]
impl MessagePublisher for RedisBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Redis
    }

    fn capabilities(&self) -> Capabilities {
        match self.inner.config.mode {
            RedisMode::Streams => Capabilities {
                persistent: true,
                survives_broker_restart: true,
                groups: true,
                ordering_by_key: true,
                ordering_across_members: false,
                retry: true,
                dead_letters: true,
                delay: true,
                native_redelivery_count: false,
                request_reply: false,
            },
            RedisMode::Pubsub => Capabilities::NONE,
        }
    }

    async fn publish(&self, envelope: Envelope) -> Result<()> {
        self.check_open("publish")?;
        let mut conn = self.conn();
        let result: redis::RedisResult<redis::Value> = match self.inner.config.mode {
            RedisMode::Streams => {
                self.xadd(&envelope.channel, &envelope)
                    .query_async(&mut conn)
                    .await
            }
            RedisMode::Pubsub => {
                redis::cmd("PUBLISH")
                    .arg(&*envelope.channel)
                    .arg(super::codec::frame(&to_fields(&envelope)))
                    .query_async(&mut conn)
                    .await
            }
        };
        result
            .map(|_| ())
            .map_err(|e| from_redis(e, "publish").with_channel(&*envelope.channel))
    }

    async fn publish_delayed(&self, envelope: Envelope, delay: Duration) -> Result<()> {
        self.check_open("publish_delayed")?;
        self.streams_only("publish_delayed")?;
        let channel = envelope.channel.clone();
        let due = unix_millis(SystemTime::now() + delay);
        let mut hset = redis::cmd("HSET");
        hset.arg(Keys::delayed_message(&channel, &envelope.id));
        write_fields(&mut hset, &envelope);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(hset)
            .ignore()
            .cmd("ZADD")
            .arg(Keys::delayed(&channel))
            .arg(due)
            .arg(&*envelope.id)
            .ignore();
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| from_redis(e, "publish_delayed").with_channel(&*channel))
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        self.check_open("subscribe")?;
        match self.inner.config.mode {
            RedisMode::Streams => Ok(Box::new(
                StreamSubscription::start(self.clone(), options).await?,
            )),
            RedisMode::Pubsub => Ok(Box::new(
                PubSubSubscription::start(self.clone(), options).await?,
            )),
        }
    }

    async fn dead_letters(&self, channel: &str, limit: usize) -> Result<Vec<Envelope>> {
        self.check_open("dead_letters")?;
        self.streams_only("dead_letters")?;
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(Keys::dead_letters(channel))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| from_redis(e, "dead_letters").with_channel(channel))?;
        let channel_arc: Arc<str> = Arc::from(channel);
        Ok(parse_entries(reply)?
            .into_iter()
            .map(|(id, fields)| super::codec::from_fields(&channel_arc, &id, fields))
            .collect())
    }

    async fn replay_dead_letters(&self, channel: &str, limit: usize) -> Result<usize> {
        self.check_open("replay_dead_letters")?;
        self.streams_only("replay_dead_letters")?;
        let dlt = Keys::dead_letters(channel);
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(&dlt)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| from_redis(e, "replay_dead_letters").with_channel(channel))?;
        let entries = parse_entries(reply)?;
        if entries.is_empty() {
            return Ok(0);
        }
        let channel_arc: Arc<str> = Arc::from(channel);
        // Each entry moves in one MULTI: added to the channel, then deleted from the
        // dead letters. A concurrent replay may add one twice (a duplicate), never lose it.
        let mut pipe = redis::pipe();
        pipe.atomic();
        let moved = entries.len();
        for (id, fields) in entries {
            let envelope = super::codec::from_fields(&channel_arc, &id, fields).into_replayed();
            pipe.add_command(self.xadd(channel, &envelope)).ignore();
            pipe.cmd("XDEL").arg(&dlt).arg(&id).ignore();
        }
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| from_redis(e, "replay_dead_letters").with_channel(channel))?;
        Ok(moved)
    }

    async fn request(&self, _envelope: Envelope, _timeout: Duration) -> Result<Envelope> {
        Err(
            Error::unsupported("request/reply is not offered by the Redis backend")
                .with_broker("redis")
                .with_operation("request"),
        )
    }

    async fn serve(&self, _options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        Err(
            Error::unsupported("request/reply is not offered by the redis backend")
                .with_broker("redis")
                .with_operation("serve"),
        )
    }

    async fn shutdown(&self) -> Result<()> {
        self.inner.closed.close();
        Ok(())
    }
}
