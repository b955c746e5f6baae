//! Config of the NATS backend.

use serde::{Deserialize, Serialize};

use crate::SecretUrl;

/// `kind = "nats"`.
///
/// ```toml
/// [brokers.nats]
/// kind = "nats"
/// url = "nats://127.0.0.1:4222"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NatsConfig {
    /// `nats://[user:password@]host:port` or `tls://`. Required.
    pub url: SecretUrl,
}

impl NatsConfig {
    /// Checks values that serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        match self.url.url().scheme() {
            "nats" | "tls" => Ok(()),
            other => Err(format!(
                "url: expected a nats:// or tls:// URL, got scheme {other:?}"
            )),
        }
    }
}
