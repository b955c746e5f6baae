//! Config of the embedded broker.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `kind = "memory"`: the embedded broker, inside the process, no server needed.
///
/// ```toml
/// [brokers.memory]
/// kind = "memory"
/// max_backlog = 1024       # per channel; 0 = no bound
/// publish_timeout = "30s"  # longest a publish waits for room
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Messages a channel holds that some consuming group has not handed out yet
    /// (messages waiting behind a busy key included). At the bound, publish waits
    /// until the slowest group hands one out (backpressure: the
    /// process's memory stays flat however fast it publishes). Applies once the channel
    /// has a consumer group; before that messages are kept without bound, waiting for
    /// one. `0` = no bound. Default 1,024 (4 default windows).
    #[serde(default = "default_max_backlog")]
    pub max_backlog: usize,
    /// Longest a publish waits for room before failing with `Timeout`. Default 30 s.
    #[serde(default = "default_publish_timeout", with = "humantime_serde")]
    pub publish_timeout: Duration,
}

fn default_max_backlog() -> usize {
    1_024
}
fn default_publish_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            max_backlog: default_max_backlog(),
            publish_timeout: default_publish_timeout(),
        }
    }
}

impl crate::backends::BackendConfig for MemoryConfig {
    fn mode(&self) -> &'static str {
        "embedded"
    }
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}
