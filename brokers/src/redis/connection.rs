//! What the broker's channels and subscriptions share: the client, the connection
//! that reconnects by itself, the config and whether the broker was shut down.

use std::future::Future;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::codec::{fields_size, write_fields};
use super::error::from_redis;
use super::config::RedisConfig;
use crate::core::{Envelope, Error, Result, ShutdownFlag};

pub(crate) struct Connection {
    pub(crate) config: RedisConfig,
    pub(crate) client: redis::Client,
    conn: ConnectionManager,
    pub(crate) closed: ShutdownFlag,
}

impl Connection {
    /// Connects (with reconnection on later failures) and checks the server answers.
    pub(crate) async fn open(config: &RedisConfig) -> Result<Self> {
        let client = Self::client(config).map_err(|e| {
            Error::config(format!("url: {} is not a usable Redis URL", config.url)).with_source(e)
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
        Ok(Connection {
            config: config.clone(),
            client,
            conn,
            closed: ShutdownFlag::default(),
        })
    }

    /// The client for the configured URL; with `rediss://`, TLS through rustls, trusting
    /// `tls_ca` if given (else the system's roots), with the client certificate if given.
    fn client(config: &RedisConfig) -> redis::RedisResult<redis::Client> {
        if config.url.scheme() != "rediss" {
            return redis::Client::open(config.url.expose());
        }
        // No process-wide crypto provider is installed here: that is the application's
        // setting. rustls picks one from its crate features, and this crate turns on
        // `ring` alone; an application that builds in a second provider installs its
        // choice (`CryptoProvider::install_default`) before connecting.
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
        self.conn.clone()
    }

    /// Sends `command` and waits for the reply, whatever its value. The command is
    /// written before the future is made, so the future holds it and a connection
    /// handle, not what it was written from (see docs/backends.md on publish futures).
    pub(crate) fn send(
        &self,
        command: redis::Cmd,
        operation: &'static str,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        let mut conn = self.conn();
        async move {
            command
                .query_async::<redis::Value>(&mut conn)
                .await
                .map(drop)
                .map_err(|e| from_redis(e, operation))
        }
    }

    /// `XADD <stream> MAXLEN ~ max_len * fields…`
    pub(crate) fn xadd(&self, stream: &str, envelope: &Envelope) -> redis::Cmd {
        let (field_args, field_bytes) = fields_size(envelope);
        let mut cmd = redis::Cmd::with_capacity(6 + field_args, 32 + stream.len() + field_bytes);
        cmd.arg("XADD")
            .arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.config.max_len)
            .arg("*");
        write_fields(&mut cmd, envelope);
        cmd
    }
}
