//! Config of the RabbitMQ backend.

use serde::{Deserialize, Serialize};

use crate::SecretUrl;

/// `kind = "rabbitmq"`.
///
/// ```toml
/// [brokers.rabbitmq]
/// kind = "rabbitmq"
/// url = "amqp://guest:guest@127.0.0.1:5672/%2f"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RabbitMqConfig {
    /// `amqp://user:password@host:port/vhost` or `amqps://`. Required.
    pub url: SecretUrl,
}

impl RabbitMqConfig {
    /// Checks values that serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        match self.url.url().scheme() {
            "amqp" | "amqps" => Ok(()),
            other => Err(format!(
                "url: expected an amqp:// or amqps:// URL, got scheme {other:?}"
            )),
        }
    }
}
