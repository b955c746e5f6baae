//! Broker backends of [anybroker](https://docs.rs/anybroker): the core contract
//! every backend implements ([`MessagePublisher`], [`Subscription`], [`Envelope`],
//! [`Capabilities`], [`Error`]) and one module per broker. Applications use the
//! `anybroker` crate, which re-exports what they need from here.
#![deny(missing_docs)]

pub mod core;
pub mod kafka;
pub mod memory;
pub mod nats;
pub mod rabbitmq;
mod redact;
pub mod redis;
mod tls_files;

pub use broker::{Broker, BrokerConfig};
pub use core::*;
pub use redact::{Secret, SecretUrl};

// Declared last on purpose: enum_dispatch writes the dispatching impl where it meets
// the second of trait (`core`) and enum (`broker`), and only `broker` has every
// backend type in scope.
mod broker;
