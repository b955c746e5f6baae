//! The "was this broker shut down?" state every backend keeps.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{Error, Result};

/// Set once by `shutdown`; every later operation fails with `Closed`.
pub(crate) struct ShutdownFlag {
    closed: AtomicBool,
    broker: &'static str,
}

impl ShutdownFlag {
    pub(crate) fn new(broker: &'static str) -> Self {
        ShutdownFlag {
            closed: AtomicBool::new(false),
            broker,
        }
    }

    /// `Ok` while open; a `Closed` error naming the broker and `operation` after.
    pub(crate) fn check(&self, operation: &'static str) -> Result<()> {
        if self.is_closed() {
            return Err(
                Error::closed(format!("the {} broker was shut down", self.broker))
                    .with_broker(self.broker)
                    .with_operation(operation),
            );
        }
        Ok(())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}
