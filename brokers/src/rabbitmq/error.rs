//! The one place lapin errors become anybroker errors.

use crate::core::{Error, ErrorKind};

/// Converts a lapin error. Connection-level failures are retryable (the backend
/// reconnects); an error the server sent about the request itself is not.
pub(crate) fn from_lapin(e: lapin::Error, operation: &'static str) -> Error {
    use lapin::ErrorKind as K;
    let kind = match e.kind() {
        K::MissingHeartbeatError => ErrorKind::Timeout,
        K::IOError(_)
        | K::InvalidChannelState(..)
        | K::InvalidConnectionState(_)
        | K::InvalidChannel(_)
        | K::RuntimeShutdownError(_) => ErrorKind::Unreachable,
        K::ProtocolError(_) if e.is_amqp_hard_error() => ErrorKind::Unreachable,
        _ => ErrorKind::Broker,
    };
    Error::new(kind, "RabbitMQ operation failed")
        .set_retryable(kind != ErrorKind::Broker)
        .with_operation(operation)
        .with_source(e)
}
