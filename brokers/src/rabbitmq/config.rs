//! Config of the RabbitMQ backend.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SecretUrl;

/// `kind = "rabbitmq"`.
///
/// ```toml
/// [brokers.rabbitmq]
/// kind = "rabbitmq"
/// url = "amqp://guest:guest@127.0.0.1:5672/%2f"   # or amqps://
/// exchange = "anybroker"            # the direct exchange channels are routed through
/// park_unroutable = true            # the exchange parks what no queue takes (see below)
/// connect_timeout = "5s"
/// reconnect_timeout = "30s"         # how long an operation waits for a lost connection to come back
/// connection_name = "billing-api"   # optional: shown in the management UI
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RabbitMqConfig {
    /// `amqp://user:password@host:port/vhost` or `amqps://`. Required.
    pub url: SecretUrl,
    /// The durable direct exchange every channel is published to, with the channel
    /// name as routing key. Default `anybroker`.
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// Whether the exchange, when this client creates it, gets the alternate exchange
    /// `<exchange>.unroutable` that parks what no queue takes (a message another client
    /// sends to a channel before it has a queue), delivered once a router opens the
    /// channel. Default true. anybroker versions before it declare the exchange
    /// without one and refuse to start on one that has it: set false while such
    /// instances share the exchange (an existing exchange is used as it is, either way).
    #[serde(default = "default_park_unroutable")]
    pub park_unroutable: bool,
    /// Longest wait for one connection attempt. Default 5 s.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// When the connection drops, operations wait up to this long for it to be
    /// re-established (with backoff) before they fail. Default 30 s.
    #[serde(default = "default_reconnect_timeout", with = "humantime_serde")]
    pub reconnect_timeout: Duration,
    /// The connection name the server shows for this client (management UI,
    /// `rabbitmqctl list_connections client_properties`).
    #[serde(default)]
    pub connection_name: Option<String>,
}

fn default_exchange() -> String {
    "anybroker".into()
}
fn default_park_unroutable() -> bool {
    true
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_reconnect_timeout() -> Duration {
    Duration::from_secs(30)
}

impl RabbitMqConfig {
    /// A config for `url` with every default.
    pub fn new(url: SecretUrl) -> Self {
        RabbitMqConfig {
            url,
            exchange: default_exchange(),
            park_unroutable: default_park_unroutable(),
            connect_timeout: default_connect_timeout(),
            reconnect_timeout: default_reconnect_timeout(),
            connection_name: None,
        }
    }

    /// Checks values that serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        match self.url.scheme() {
            "amqp" | "amqps" => {}
            other => {
                return Err(format!(
                    "url: expected an amqp:// or amqps:// URL, got scheme {other:?}"
                ))
            }
        }
        if self.exchange.is_empty() || self.exchange.starts_with("amq.") {
            return Err(format!(
                "exchange: expected a name that is not empty and does not start with \"amq.\" (reserved by RabbitMQ), got {:?}",
                self.exchange
            ));
        }
        if self.exchange.len() > 200 {
            return Err("exchange: expected at most 200 bytes".into());
        }
        if self.connect_timeout.is_zero() {
            return Err("connect_timeout: expected a positive duration".into());
        }
        Ok(())
    }
}

impl crate::backends::BackendConfig for RabbitMqConfig {
    fn mode(&self) -> &'static str {
        "queues"
    }
    fn validate(&self) -> Result<(), String> {
        RabbitMqConfig::validate(self)
    }
}
