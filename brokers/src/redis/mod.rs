//! The Redis backend.
//!
//! Streams mode (default), per channel `C` and group `G`:
//! - `C`: the channel's stream; publish is `XADD C MAXLEN ~ max_len`; every group is an
//!   `XGROUP` on it, created at `0` so a group that joins later starts at the oldest
//!   retained entry.
//! - `C:retry:G:s`: the group's retry stream. A failed message is acked on the stream it
//!   came from and, in the same `MULTI`, stored in the hash `C:retry:G:m:<id>` and
//!   scheduled in the sorted set `C:retry:G` by due time; when due, a script moves it to
//!   the retry stream, so only group `G` sees it again, with its attempt count.
//! - `C:delayed` + hashes `C:delayed:<id>`: delayed publishes, moved to `C` when due
//!   (atomically, by a Lua script: no message promoted twice or lost).
//! - `C:dlt`: dead letters (a stream), written in the same `MULTI` that acks the original.
//! - Entries left pending by a consumer that went away are reclaimed with `XAUTOCLAIM`
//!   after `claim_idle`.
//! - A member whose connection was lost reads its own pending entries first once
//!   connected again: a read the server answered while the connection went down left
//!   entries pending to it that it never received.
//!
//! Pub/sub mode: `PUBLISH C <frame>` / `SUBSCRIBE C`; fire-and-forget, declared as such.
//!
//! The config is always compiled; the client only with the `redis` feature.

pub mod config;

#[cfg(feature = "redis")]
mod broker;
#[cfg(feature = "redis")]
mod channel;
#[cfg(feature = "redis")]
mod codec;
#[cfg(feature = "redis")]
mod connection;
#[cfg(feature = "redis")]
mod error;
#[cfg(feature = "redis")]
mod names;
#[cfg(feature = "redis")]
mod pubsub;
#[cfg(feature = "redis")]
mod presence;
#[cfg(feature = "redis")]
mod subscription;

#[cfg(feature = "redis")]
pub use broker::RedisBroker;
#[cfg(feature = "redis")]
pub use channel::{RedisChannel, StreamChannel};
pub use config::{RedisConfig, RedisMode};
#[cfg(feature = "redis")]
pub use pubsub::PubSubChannel;
