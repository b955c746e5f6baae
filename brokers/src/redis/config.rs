//! Config of the Redis backend.

use serde::{Deserialize, Serialize};

use crate::SecretUrl;

/// `kind = "redis"`.
///
/// ```toml
/// [brokers.redis]
/// kind = "redis"
/// url = "redis://127.0.0.1:6379"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` for TLS. Required.
    pub url: SecretUrl,
}

impl RedisConfig {
    /// Checks values that serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        match self.url.url().scheme() {
            "redis" | "rediss" => Ok(()),
            other => Err(format!(
                "url: expected a redis:// or rediss:// URL, got scheme {other:?}"
            )),
        }
    }
}
