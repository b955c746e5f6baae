//! Config of the Redis backend.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SecretUrl;

/// How the Redis backend carries channels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RedisMode {
    /// Redis Streams with consumer groups: persistent, acknowledged, retried,
    /// dead-lettered, delayed. The default.
    #[default]
    Streams,
    /// `PUBLISH`/`SUBSCRIBE`: fire-and-forget, only subscribers connected at publish
    /// time receive, no groups, no retry, no dead letters, no delay.
    Pubsub,
}

impl RedisMode {
    /// The mode's name as written in config.
    pub fn name(self) -> &'static str {
        match self {
            RedisMode::Streams => "streams",
            RedisMode::Pubsub => "pubsub",
        }
    }
}

/// `kind = "redis"`.
///
/// ```toml
/// [brokers.redis]
/// kind = "redis"
/// url = "redis://127.0.0.1:6379"     # redis://[user:password@]host:port[/db]
/// mode = "streams"                   # or "pubsub"
/// max_len = 1000000                  # approximate cap of each stream (XADD MAXLEN ~)
/// claim_idle = "30s"                 # pending entries of a vanished consumer are reclaimed after this
/// block = "250ms"                    # longest wait of one XREADGROUP
/// response_timeout = "5s"
/// tls_ca = "/etc/ssl/redis-ca.pem"  # optional, rediss:// only: trust this CA (PEM)
/// tls_client_cert = "client.pem"   # optional, rediss:// only: client certificate and key
/// tls_client_key = "client-key.pem"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS. Required.
    pub url: SecretUrl,
    /// `streams` (default) or `pubsub`.
    #[serde(default)]
    pub mode: RedisMode,
    /// Approximate maximum entries per stream (`XADD MAXLEN ~`). Default 1,000,000.
    #[serde(default = "default_max_len")]
    pub max_len: u64,
    /// Idle time after which a pending entry of a consumer that went away is
    /// reclaimed by a live member of its group. Default 30 s.
    #[serde(default = "default_claim_idle", with = "humantime_serde")]
    pub claim_idle: Duration,
    /// Longest wait of one blocking read. Default 250 ms.
    #[serde(default = "default_block", with = "humantime_serde")]
    pub block: Duration,
    /// Longest wait for a reply to any other command. Default 5 s.
    #[serde(default = "default_response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    /// With `rediss://`: a CA certificate (PEM file) to trust instead of the system's.
    #[serde(default)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// With `rediss://`: client certificate (PEM file) for servers that verify clients.
    #[serde(default)]
    pub tls_client_cert: Option<std::path::PathBuf>,
    /// Key of `tls_client_cert` (PEM file).
    #[serde(default)]
    pub tls_client_key: Option<std::path::PathBuf>,
}

fn default_max_len() -> u64 {
    1_000_000
}
fn default_claim_idle() -> Duration {
    Duration::from_secs(30)
}
fn default_block() -> Duration {
    Duration::from_millis(250)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(5)
}

impl RedisConfig {
    /// A config for `url` with every default.
    pub fn new(url: SecretUrl) -> Self {
        RedisConfig {
            url,
            mode: RedisMode::default(),
            max_len: default_max_len(),
            claim_idle: default_claim_idle(),
            block: default_block(),
            response_timeout: default_response_timeout(),
            tls_ca: None,
            tls_client_cert: None,
            tls_client_key: None,
        }
    }

    /// Checks values that serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let tls = match self.url.scheme() {
            "redis" => false,
            "rediss" => true,
            other => {
                return Err(format!(
                    "url: expected a redis:// or rediss:// URL, got scheme {other:?}"
                ))
            }
        };
        crate::tls_files::validate_tls_files(
            &self.tls_ca,
            &self.tls_client_cert,
            &self.tls_client_key,
            (!tls).then_some("only used with a rediss:// url"),
        )?;
        if self.max_len == 0 {
            return Err("max_len: expected at least 1".into());
        }
        if self.block.is_zero() {
            return Err("block: expected a positive duration".into());
        }
        Ok(())
    }
}

impl crate::backends::BackendConfig for RedisConfig {
    fn mode(&self) -> &'static str {
        self.mode.name()
    }
    fn validate(&self) -> Result<(), String> {
        RedisConfig::validate(self)
    }
}
