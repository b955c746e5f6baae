//! The "was this broker shut down?" state every backend keeps.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set once by `shutdown`. The registry answers every later call with `Closed`; a
/// backend reads it to stop its own loops.
#[derive(Default)]
pub(crate) struct ShutdownFlag {
    closed: AtomicBool,
}

impl ShutdownFlag {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}
