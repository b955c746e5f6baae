//! What [`MessageRouter::health`](crate::MessageRouter::health) reports: per configured
//! broker, whether it can be reached now, the last error the router met on it, and the
//! consumers running on it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anybroker_brokers::{BrokerKind, Error};

/// The router's health, one entry per configured broker (by name).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Health {
    /// Every configured broker, sorted by name.
    pub brokers: Vec<BrokerHealth>,
}

impl Health {
    /// Ready to serve: every broker the router connected can be reached. A broker it
    /// has not used yet (brokers connect at their first use) does not count.
    pub fn is_ready(&self) -> bool {
        self.brokers
            .iter()
            .all(|b| !matches!(b.connection, ConnectionState::Unreachable(_)))
    }
}

/// One broker's health.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BrokerHealth {
    /// Its name under `[brokers]`.
    pub name: String,
    /// Which backend it is.
    pub kind: BrokerKind,
    /// Whether it can be reached now.
    pub connection: ConnectionState,
    /// The last error the router met on this broker (publishing, fetching, settling),
    /// and when, whether or not the broker has recovered since.
    pub last_error: Option<(String, SystemTime)>,
    /// Consumers (group members) running on it.
    pub consumers: usize,
}

/// Whether a broker can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Not connected yet: no route or handler has used it.
    NotConnected,
    /// It answered (or its client holds a live connection).
    Connected,
    /// It did not: why.
    Unreachable(String),
}

/// What the router keeps per broker for its health: updated where an operation fails
/// and where a consumer starts and ends, read by `health`.
#[derive(Default)]
pub(crate) struct BrokerStatus {
    last_error: Mutex<Option<(String, SystemTime)>>,
    consumers: AtomicUsize,
}

impl BrokerStatus {
    #[cold]
    pub(crate) fn failed(&self, error: &Error) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((error.to_string(), SystemTime::now()));
    }

    pub(crate) fn last_error(&self) -> Option<(String, SystemTime)> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn consumers(&self) -> usize {
        self.consumers.load(Ordering::Relaxed)
    }

    /// Counts a consumer as running until the returned guard drops.
    pub(crate) fn consumer_running(self: &Arc<Self>) -> RunningConsumer {
        self.consumers.fetch_add(1, Ordering::Relaxed);
        RunningConsumer(self.clone())
    }
}

/// A running consumer, counted on its broker while it lives.
pub(crate) struct RunningConsumer(Arc<BrokerStatus>);

impl Drop for RunningConsumer {
    fn drop(&mut self) {
        self.0.consumers.fetch_sub(1, Ordering::Relaxed);
    }
}
