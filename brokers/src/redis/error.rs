//! The one place Redis client errors become anybroker errors.

use crate::core::{Error, ErrorKind};

/// Converts a Redis error; retryability follows the client's own retry advice.
pub(crate) fn from_redis(e: redis::RedisError, operation: &'static str) -> Error {
    use redis::RetryMethod;
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        ErrorKind::Unreachable
    } else {
        ErrorKind::Broker
    };
    let retryable = !matches!(e.retry_method(), RetryMethod::NoRetry) || kind != ErrorKind::Broker;
    Error::new(kind, "Redis command failed")
        .set_retryable(retryable)
        .with_operation(operation)
        .with_source(e)
}
