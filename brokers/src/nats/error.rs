//! The one place NATS client errors become anybroker errors.

use crate::core::{Error, ErrorKind};

/// Converts any async-nats error. Timeouts and connection problems are retryable; the
/// client reconnects by itself.
pub(crate) fn from_nats<E>(e: E, operation: &'static str) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    let text = e.to_string().to_ascii_lowercase();
    let kind = if text.contains("timed out") || text.contains("timeout") {
        ErrorKind::Timeout
    } else if text.contains("no responders")
        || text.contains("disconnect")
        || text.contains("connection")
    {
        ErrorKind::Unreachable
    } else {
        ErrorKind::Broker
    };
    Error::new(kind, "NATS operation failed")
        .set_retryable(kind != ErrorKind::Broker || text.contains("timed out"))
        
        .with_operation(operation)
        .with_source(e)
}
