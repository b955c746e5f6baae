//! Reading a stretch of a topic by offsets, outside any consumer group: what the
//! dead-letter and presence topics are read with.

use std::collections::HashMap;

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use super::connection::CALL_TIMEOUT;
use super::error::from_kafka;
use crate::core::{Error, ErrorKind, Result};

/// Where reading starts in each partition and where it stops (the record before `end`
/// is the last read).
pub(crate) type Ranges = HashMap<i32, (i64, i64)>;

/// Assigns `consumer` the partitions of `topic` at the starts of `ranges` and returns
/// every record up to their ends, in offset order per partition. `what` names the
/// records in the error when they do not arrive within `CALL_TIMEOUT`.
pub(crate) async fn read_ranges(
    consumer: &StreamConsumer,
    topic: &str,
    ranges: &Ranges,
    what: &str,
    operation: &'static str,
) -> Result<Vec<OwnedMessage>> {
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for (&partition, &(start, end)) in ranges.iter().filter(|(_, (start, end))| start < end) {
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(start))
            .map_err(|e| from_kafka(e, operation))?;
        remaining.insert(partition, end);
    }
    if remaining.is_empty() {
        return Ok(Vec::new());
    }
    consumer
        .assign(&assignment)
        .map_err(|e| from_kafka(e, operation))?;
    let mut records = Vec::new();
    let mut messages = consumer.stream();
    while !remaining.is_empty() {
        let m: OwnedMessage = match tokio::time::timeout(CALL_TIMEOUT, messages.next()).await {
            Ok(Some(Ok(m))) => m.detach(),
            Ok(Some(Err(e))) => return Err(from_kafka(e, operation)),
            Ok(None) => break,
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("{what} did not arrive within {CALL_TIMEOUT:?}"),
                )
                .with_operation(operation))
            }
        };
        let Some(&end) = remaining.get(&m.partition()) else {
            continue;
        };
        if m.offset() + 1 >= end {
            remaining.remove(&m.partition());
        }
        if m.offset() < end {
            records.push(m);
        }
    }
    Ok(records)
}
