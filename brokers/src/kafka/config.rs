//! Config of the Kafka backend.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::redact::REDACTED;

/// `kind = "kafka"`.
///
/// ```toml
/// [brokers.kafka]
/// kind = "kafka"
/// bootstrap_servers = "127.0.0.1:9092"
/// partitions = 6                     # of the topics the backend creates
/// replication_factor = 3
/// create_topics = true              # false: the cluster creates or has them
/// auto_offset_reset = "earliest"     # where a new group starts
/// properties = { "security.protocol" = "SASL_SSL", "sasl.password" = "…" }   # every client
/// producer_properties = { "compression.type" = "zstd", "linger.ms" = "20" }
/// consumer_properties = { "fetch.min.bytes" = "1024" }
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list. Required.
    pub bootstrap_servers: String,
    /// Partitions of the topics the backend creates. Default 6: a group shares a
    /// channel among at most as many members as the channel's topic has partitions
    /// (a member past that gets none and waits idle for a rebalance), so one
    /// partition would leave every member but one idle.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of the topics the backend creates. Default 1.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Whether the backend creates the topics it uses (main, `-delay`, `-retry-<n>`,
    /// `-dlt`) with the admin API. Default true; false where clients may not create
    /// topics and the cluster creates them on first use or they are provisioned.
    #[serde(default = "default_true")]
    pub create_topics: bool,
    /// Where a group without a committed offset starts: `earliest` (default) or `latest`.
    #[serde(default = "default_auto_offset_reset")]
    pub auto_offset_reset: String,
    /// Any librdkafka property, given to every client the backend makes (producer,
    /// consumers, admin) after the backend's own defaults. The value of a property
    /// whose name says it is a secret (`password`, `secret`, `token`, `jaas`, `ssl.key`,
    /// `oauthbearer.config`) never appears in Debug output or serialized config.
    #[serde(default, serialize_with = "serialize_properties")]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only (librdkafka warns when a consumer
    /// gets a producer property), applied after `properties` and the backend's
    /// producer defaults (`compression.type = lz4`, `linger.ms = 5`, idempotence,
    /// `acks = all`).
    #[serde(default, serialize_with = "serialize_properties")]
    pub producer_properties: BTreeMap<String, String>,
    /// librdkafka properties for the consumers only, applied after `properties`.
    #[serde(default, serialize_with = "serialize_properties")]
    pub consumer_properties: BTreeMap<String, String>,
}

/// Whether a librdkafka property's value is a secret, by its name (`sasl.password`,
/// `ssl.key.password`, `ssl.key.pem`, `sasl.oauthbearer.client.secret`,
/// `sasl.oauthbearer.config`, `sasl.jaas.config`, any `*token*`).
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "token", "jaas", "ssl.key", "oauthbearer.config"]
        .iter()
        .any(|part| name.contains(part))
}

/// The properties with each secret value replaced by `***`.
fn redacted(properties: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    properties
        .iter()
        .map(|(name, value)| {
            let shown = if is_secret_property(name) {
                REDACTED
            } else {
                value.as_str()
            };
            (name.as_str(), shown)
        })
        .collect()
}

fn serialize_properties<S: serde::Serializer>(
    properties: &BTreeMap<String, String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&redacted(properties), serializer)
}

fn default_partitions() -> i32 {
    6
}
fn default_true() -> bool {
    true
}
fn default_replication_factor() -> i32 {
    1
}
fn default_auto_offset_reset() -> String {
    "earliest".into()
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("create_topics", &self.create_topics)
            .field("auto_offset_reset", &self.auto_offset_reset)
            .field("properties", &redacted(&self.properties))
            .field("producer_properties", &redacted(&self.producer_properties))
            .field("consumer_properties", &redacted(&self.consumer_properties))
            .finish()
    }
}

impl KafkaConfig {
    /// A config reaching the cluster at `bootstrap_servers` (`host:port[,host:port…]`),
    /// everything else at its default; set fields to change them.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            partitions: default_partitions(),
            replication_factor: default_replication_factor(),
            create_topics: default_true(),
            auto_offset_reset: default_auto_offset_reset(),
            properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
        }
    }

    /// Checks values that serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let servers: Vec<&str> = self.bootstrap_servers.split(',').map(str::trim).collect();
        for s in &servers {
            let ok = s
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(format!(
                    "bootstrap_servers: expected comma-separated host:port entries, got {s:?}"
                ));
            }
        }
        if self.partitions < 1 {
            return Err("partitions: expected at least 1".into());
        }
        if self.replication_factor < 1 {
            return Err("replication_factor: expected at least 1".into());
        }
        if !matches!(self.auto_offset_reset.as_str(), "earliest" | "latest") {
            return Err(format!(
                "auto_offset_reset: expected \"earliest\" or \"latest\", got {:?}",
                self.auto_offset_reset
            ));
        }
        for (table, properties) in [
            ("properties", &self.properties),
            ("producer_properties", &self.producer_properties),
            ("consumer_properties", &self.consumer_properties),
        ] {
            for owned in ["enable.auto.commit", "group.id", "bootstrap.servers"] {
                if properties.contains_key(owned) {
                    return Err(format!(
                        "{table}.\"{owned}\": set by the backend (commits follow handling; groups come from handlers; servers from bootstrap_servers)"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl crate::backends::BackendConfig for KafkaConfig {
    fn mode(&self) -> &'static str {
        "topics"
    }
    fn validate(&self) -> Result<(), String> {
        KafkaConfig::validate(self)
    }
}
