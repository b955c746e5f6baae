//! The NATS backend.
//!
//! JetStream mode (default), per channel `C` (a NATS subject):
//! - stream `<prefix>_<C>` on subject `C`; publish awaits the PubAck and sets
//!   `Nats-Msg-Id` to the envelope id, so a repeated publish within `duplicate_window`
//!   is stored once;
//! - each group is a durable pull consumer (explicit ack, `max_ack_pending` = 2 ×
//!   prefetch);
//! - attempts: a first delivery is attempt 1. Past that the server's delivery count
//!   is not used, since it also counts deliveries no handler saw (one lost on the wire
//!   to a closing member, one given back unhandled). Each message's attempts are
//!   counted per group in the stream `<prefix>_<C>_ATTEMPTS` (one message per subject
//!   `anybroker-attempts.<stream>.<group>.<stream sequence>`): written when a
//!   redelivered message is handed to a handler and when a first attempt fails, taken
//!   back when a handed-out message is given back, dropped once it is settled;
//! - retry: `nak` with the backoff as delay;
//! - release (a closing member gives back what it had not started): `nak`. A closing
//!   member stops pulling before it gives anything back, so nothing it gives back can
//!   come back to it, and gives back only what it received before that (see
//!   `puller.rs`);
//! - dead letters: published to `C.dlt` (stream `<prefix>_<C>_DLT`), then the original is
//!   terminated (`term`); replay moves them back and deletes them;
//! - delay: published to `C.delayed` (stream `<prefix>_<C>_DELAYED`) with a due time; a
//!   mover consumer (run by the channel's subscribers) naks each with the time left and
//!   moves it to `C` when due, with the same `Nats-Msg-Id` so a mover crash between
//!   publish and ack cannot duplicate it.
//!
//! Core mode: plain subjects, a queue group per consumer group; fire-and-forget. The
//! id and publish time travel in one `Anybroker-Message-Id` header (see `codec`); a
//! reader takes either layout, and the header's earlier name.
//!
//! The config is always compiled; the client only with the `nats` feature.

pub mod config;

#[cfg(feature = "nats")]
mod attempts;
#[cfg(feature = "nats")]
mod broker;
#[cfg(feature = "nats")]
mod channel;
#[cfg(feature = "nats")]
mod codec;
#[cfg(feature = "nats")]
mod connection;
#[cfg(feature = "nats")]
mod core_mode;
#[cfg(feature = "nats")]
mod error;
#[cfg(feature = "nats")]
mod puller;
#[cfg(feature = "nats")]
mod presence;
#[cfg(feature = "nats")]
mod subscription;

#[cfg(feature = "nats")]
pub use broker::NatsBroker;
#[cfg(feature = "nats")]
pub use channel::{JetStreamChannel, NatsChannel};
pub use config::{NatsConfig, NatsMode};
#[cfg(feature = "nats")]
pub use core_mode::CoreChannel;
