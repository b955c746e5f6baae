//! The Kafka backend (rdkafka / librdkafka).
//!
//! Topics, per channel `C` (created by the backend with the admin API when first used,
//! with `partitions` and `replication_factor` from config):
//! - `C`: publish = produce with the envelope key as record key (same key → same
//!   partition → order), metadata in headers, idempotent producer with `acks=all`;
//!   returns after the delivery report;
//! - each group is a consumer group `<G>.<C>` (`enable.auto.commit=false`, eager
//!   assignment by default). Offsets are committed only up to the first message not yet finished
//!   in each partition, so a crash never skips unfinished work; on revocation the
//!   finished prefix of the revoked partitions is committed and their in-flight
//!   messages are left to the new owner;
//! - retry: `C-retry-<n>`, one topic per distinct backoff delay of the group's policy
//!   (n = 0 the shortest; at most 32, see `retry_topics`), with the due time and the
//!   group in headers; every member of the group reads them (and any other
//!   `C-retry-<n>` the cluster has, left by an earlier policy), the other groups skip
//!   them; a record not yet due pauses its partition (seeked back to it) until due
//!   instead of holding a handler;
//! - dead letters: `C-dlt`, produced (delivery report) before the original's offset
//!   counts as finished; the headers carry reason, error, attempts and the original
//!   topic/partition/offset. Records cannot be deleted from a topic, so reading and
//!   replaying go through a cursor (the committed offset of the group
//!   `anybroker-dlt-<C>`): replay produces what is past it to `C` and moves it; one
//!   taken out of order (by id or reason) is marked settled by a marker record after
//!   it, which readers skip (`dead_letters.rs`);
//! - delay: `C-delay`, read by every group with the same due-time pause;
//! - presence: `C-presence`, a record per router keyed by its instance saying until
//!   when it uses the channel, renewed before then (`presence.rs`).
//!
//! The config is always compiled; the client only with the `kafka` feature.

pub mod config;

#[cfg(feature = "kafka")]
mod broker;
#[cfg(feature = "kafka")]
mod channel;
#[cfg(feature = "kafka")]
mod codec;
#[cfg(feature = "kafka")]
mod connection;
#[cfg(feature = "kafka")]
mod dead_letters;
#[cfg(feature = "kafka")]
mod error;
#[cfg(feature = "kafka")]
mod names;
#[cfg(feature = "kafka")]
mod offsets;
#[cfg(feature = "kafka")]
mod presence;
#[cfg(feature = "kafka")]
mod reading;
#[cfg(feature = "kafka")]
mod retry_topics;
#[cfg(feature = "kafka")]
mod subscription;

#[cfg(feature = "kafka")]
pub use broker::KafkaBroker;
#[cfg(feature = "kafka")]
pub use channel::KafkaChannel;
pub use config::KafkaConfig;
