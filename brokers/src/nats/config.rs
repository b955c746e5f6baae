//! Config of the NATS backend.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Secret, SecretUrl};

/// How the NATS backend carries channels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NatsMode {
    /// JetStream: persistent streams, durable pull consumers, acks, retry with
    /// `nak(delay)`, dead letters, delay, deduplication. The default.
    #[default]
    Jetstream,
    /// Core NATS: plain subjects and queue groups; fire-and-forget, nothing kept.
    Core,
}

impl NatsMode {
    /// The mode's name as written in config.
    pub fn name(self) -> &'static str {
        match self {
            NatsMode::Jetstream => "jetstream",
            NatsMode::Core => "core",
        }
    }
}

/// `kind = "nats"`.
///
/// ```toml
/// [brokers.nats]
/// kind = "nats"
/// url = "nats://127.0.0.1:4222"   # nats://[user:password@]host:port
/// mode = "jetstream"              # or "core"
/// stream_prefix = "ANYBROKER"     # JetStream streams are <prefix>_<channel>
/// max_age = "7d"                  # stream retention; 0 = unlimited
/// max_bytes = -1                  # stream size limit; -1 = unlimited
/// duplicate_window = "2m"         # publishes with the same message id within it are stored once
/// deduplicate = true              # false: no Nats-Msg-Id, the server keeps no ids (faster publishes)
/// ack_wait = "30s"                # unacknowledged deliveries come back after this
/// content_type_header = true      # the standard content-type header on every publish
/// token = "..."                   # optional; never printed
/// tls_ca = "/etc/ssl/nats-ca.pem"  # optional: trust this CA (PEM) for tls:// servers
/// tls_client_cert = "client.pem"  # optional: client certificate and key (PEM)
/// tls_client_key = "client-key.pem"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NatsConfig {
    /// `nats://[user:password@]host:port`, or `tls://…` to require TLS. Required.
    pub url: SecretUrl,
    /// `jetstream` (default) or `core`.
    #[serde(default)]
    pub mode: NatsMode,
    /// Prefix of the JetStream stream names. Default `ANYBROKER`.
    #[serde(default = "default_prefix")]
    pub stream_prefix: String,
    /// Retention of each stream; 0 keeps messages until limits apply. Default 7 days.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// Size limit of each stream in bytes; -1 for none. Default -1.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: i64,
    /// Deduplication window of `Nats-Msg-Id`. Default 2 min.
    #[serde(default = "default_duplicate_window", with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Whether JetStream publishes carry the message id as `Nats-Msg-Id`, so the
    /// server stores a publish repeated within `duplicate_window` once (a publish made
    /// again after a lost acknowledgement, a replay cut short). Default true. With
    /// false the id travels in `Anybroker-Message-Id` and the server tracks no ids:
    /// publishing costs it less, and a repeated publish is stored twice (handled twice,
    /// as at-least-once allows).
    #[serde(default = "default_deduplicate")]
    pub deduplicate: bool,
    /// Redelivery of unacknowledged deliveries after this. Default 30 s.
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Whether every publish carries the standard `content-type` header, so other
    /// frameworks decode without guessing. Default true. With false it is written only
    /// for a content type other than JSON, which saves the client a header a message
    /// (about 7,000 instructions a message end to end on core NATS, measured) where no
    /// other framework reads the channels.
    #[serde(default = "default_content_type_header")]
    pub content_type_header: bool,
    /// Authentication token, if the server wants one.
    #[serde(default)]
    pub token: Option<Secret>,
    /// A CA certificate (PEM file) to trust, e.g. for a server with a private CA.
    #[serde(default)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM file) for servers that verify clients.
    #[serde(default)]
    pub tls_client_cert: Option<std::path::PathBuf>,
    /// Key of `tls_client_cert` (PEM file).
    #[serde(default)]
    pub tls_client_key: Option<std::path::PathBuf>,
}

fn default_prefix() -> String {
    "ANYBROKER".into()
}
fn default_max_age() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_max_bytes() -> i64 {
    -1
}
fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}
fn default_content_type_header() -> bool {
    true
}
fn default_deduplicate() -> bool {
    true
}
fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}

impl NatsConfig {
    /// A config for `url` with every default.
    pub fn new(url: SecretUrl) -> Self {
        NatsConfig {
            url,
            mode: NatsMode::default(),
            stream_prefix: default_prefix(),
            max_age: default_max_age(),
            max_bytes: default_max_bytes(),
            duplicate_window: default_duplicate_window(),
            deduplicate: default_deduplicate(),
            ack_wait: default_ack_wait(),
            content_type_header: default_content_type_header(),
            token: None,
            tls_ca: None,
            tls_client_cert: None,
            tls_client_key: None,
        }
    }

    /// Checks values that serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        match self.url.scheme() {
            "nats" | "tls" => {}
            other => {
                return Err(format!(
                    "url: expected a nats:// or tls:// URL, got scheme {other:?}"
                ))
            }
        }
        crate::tls_files::validate_tls_files(
            &self.tls_ca,
            &self.tls_client_cert,
            &self.tls_client_key,
            None,
        )?;
        if self.stream_prefix.is_empty()
            || !self
                .stream_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "stream_prefix: expected letters, digits, '_' or '-', got {:?}",
                self.stream_prefix
            ));
        }
        if self.ack_wait.is_zero() {
            return Err("ack_wait: expected a positive duration".into());
        }
        Ok(())
    }
}

impl crate::backends::BackendConfig for NatsConfig {
    fn mode(&self) -> &'static str {
        self.mode.name()
    }
    fn validate(&self) -> Result<(), String> {
        NatsConfig::validate(self)
    }
}
