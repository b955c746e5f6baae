//! Config of the Kafka backend.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Secret;

/// `kind = "kafka"`.
///
/// ```toml
/// [brokers.kafka]
/// kind = "kafka"
/// bootstrap_servers = "127.0.0.1:9092"
/// properties = { "fetch.wait.max.ms" = "10" }
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list. Required.
    pub bootstrap_servers: String,
    /// Partitions of the topics the backend creates. Default 1.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Any librdkafka property, passed through; values are secrets-safe in Debug.
    #[serde(default)]
    pub properties: BTreeMap<String, Secret>,
}

fn default_partitions() -> i32 {
    1
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("partitions", &self.partitions)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KafkaConfig {
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
        Ok(())
    }
}
