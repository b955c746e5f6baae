//! Config of the embedded broker.

use serde::{Deserialize, Serialize};

/// `kind = "memory"`: the embedded broker, inside the process, no server needed.
///
/// ```toml
/// [brokers.memory]
/// kind = "memory"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MemoryConfig {}
