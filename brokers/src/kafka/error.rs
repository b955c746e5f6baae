//! The one place rdkafka errors become anybroker errors.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::core::{Error, ErrorKind};

/// Converts an rdkafka error; retryability follows librdkafka's own classification
/// where it gives one.
pub(crate) fn from_kafka(e: KafkaError, operation: &'static str) -> Error {
    let code = e.rdkafka_error_code();
    let kind = match code {
        Some(RDKafkaErrorCode::MessageTimedOut)
        | Some(RDKafkaErrorCode::RequestTimedOut)
        | Some(RDKafkaErrorCode::OperationTimedOut) => ErrorKind::Timeout,
        Some(RDKafkaErrorCode::AllBrokersDown)
        | Some(RDKafkaErrorCode::BrokerTransportFailure)
        | Some(RDKafkaErrorCode::NetworkException)
        | Some(RDKafkaErrorCode::BrokerNotAvailable)
        | Some(RDKafkaErrorCode::LeaderNotAvailable)
        | Some(RDKafkaErrorCode::NotLeaderForPartition) => ErrorKind::Unreachable,
        _ => ErrorKind::Broker,
    };
    let retryable = kind != ErrorKind::Broker
        || matches!(
            code,
            Some(RDKafkaErrorCode::QueueFull) | Some(RDKafkaErrorCode::UnknownTopicOrPartition)
        );
    Error::new(kind, "Kafka operation failed")
        .set_retryable(retryable)
        .with_operation(operation)
        .with_source(e)
}
