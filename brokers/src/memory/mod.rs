//! The embedded in-memory broker: every promise of DESIGN §3 inside the process.
//!
//! Each channel is a log. Each group has a cursor into it, a ready queue (released
//! messages and retries that came due), a timer heap of retries not yet due, its
//! in-flight deliveries, and per-key queues. A keyed message holds its key from the
//! moment it is delivered until it is acked or dead-lettered (retries included), so
//! same-key messages are handled strictly in publish order by a group, even when its
//! members handle other keys concurrently. Log entries are dropped once every group
//! has taken them; before any group exists they are kept, so a group that joins later
//! starts at the oldest retained message.

mod broker;
mod channel;
pub mod config;
mod connection;
mod subscription;
mod topic;

pub use broker::{MemoryBroker, Settling};
pub use channel::MemoryChannel;
pub use config::MemoryConfig;
