//! The dead-letter topic `C-dlt`, read through a cursor: the committed offset of the
//! group `anybroker-dlt-C`, per partition, before which everything is settled.
//!
//! Taking dead letters out of order (by id or reason) leaves older ones in place, so the
//! cursor cannot move past what is taken. Each one taken is marked instead: a marker
//! record in the same partition, after it, names its offset (header
//! `x-anybroker-settles`). Readers skip marked records and the markers; the cursor moves
//! past every leading record that is settled. A crash between replaying a record and
//! writing its marker replays it once more: a copy, never a loss.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use super::codec::{from_record, SETTLES};
use super::connection::{client_config, committed_offsets, Client, Connection, CALL_TIMEOUT};
use super::error::from_kafka;
use super::names::Topics;
use super::reading::{read_ranges, Ranges};
use crate::core::{DeadLetterAction, DeadLetterSelector, Envelope, Result};

/// One dead letter not settled yet, where it is.
struct Unsettled {
    partition: i32,
    offset: i64,
    envelope: Envelope,
}

/// Reads the dead letters of `channel` past the cursor that are not settled, oldest
/// first per partition; of those `selector` picks (up to `limit`), returns them
/// (`action` `None`), or replays or discards them; returns how many it settled.
pub(crate) async fn with_dead_letters(
    connection: &Connection,
    channel: &Arc<str>,
    selector: &DeadLetterSelector,
    action: Option<DeadLetterAction>,
    limit: usize,
) -> Result<(Vec<Envelope>, usize)> {
    let operation = action.map_or("dead_letters", DeadLetterAction::operation);
    let topic = Topics::dead_letters(channel);
    connection
        .ensure_topics(std::slice::from_ref(&topic))
        .await?;
    let consumer: Arc<StreamConsumer> = Arc::new(
        client_config(
            &connection.config,
            Client::Consumer,
            &[
                ("group.id", &Topics::replay_group(channel)),
                ("enable.auto.commit", "false"),
                ("auto.offset.reset", "earliest"),
            ],
        )
        .create()
        .map_err(|e| from_kafka(e, operation))?,
    );
    let ranges = ranges_from_cursor(&consumer, &topic, operation).await?;
    let what = format!("dead letters of {channel:?}");
    let messages = read_ranges(&consumer, &topic, &ranges, &what, operation).await?;

    // What the markers read settle, then what is left, in the order read.
    let mut settled: HashSet<(i32, i64)> = HashSet::new();
    let mut unsettled = Vec::new();
    for record in records(channel, messages) {
        match record {
            Record::Marker { partition, settles } => {
                settled.insert((partition, settles));
            }
            Record::DeadLetter(d) => unsettled.push(d),
        }
    }
    unsettled.retain(|d| !settled.contains(&(d.partition, d.offset)));

    let (mut read, mut taken) = (Vec::new(), 0);
    let mut still_unsettled: HashMap<i32, i64> = HashMap::new();
    for d in unsettled {
        let picked = read.len() + taken < limit && selector.matches(&d.envelope);
        match action {
            _ if !picked => {}
            None => read.push(d.envelope.clone()),
            Some(action) => {
                if action == DeadLetterAction::Replay {
                    connection
                        .produce(channel, &d.envelope.clone().into_replayed(), &[])
                        .await?;
                }
                connection.produce_marker(&topic, d.partition, d.offset).await?;
                taken += 1;
                continue;
            }
        }
        let first = still_unsettled.entry(d.partition).or_insert(d.offset);
        *first = (*first).min(d.offset);
    }
    if action.is_some() {
        // Past every leading settled record and marker: to the first record left, or
        // to where the partition ended when the call began.
        let mut cursor = TopicPartitionList::new();
        for (partition, (start, end)) in ranges {
            let to = still_unsettled.get(&partition).copied().unwrap_or(end);
            if to > start {
                cursor
                    .add_partition_offset(&topic, partition, Offset::Offset(to))
                    .map_err(|e| from_kafka(e, operation))?;
            }
        }
        if cursor.count() > 0 {
            let c = consumer.clone();
            tokio::task::spawn_blocking(move || c.commit(&cursor, CommitMode::Sync))
                .await
                .expect("commit")
                .map_err(|e| from_kafka(e, operation))?;
        }
    }
    Ok((read, taken))
}

enum Record {
    DeadLetter(Unsettled),
    Marker { partition: i32, settles: i64 },
}

/// Per partition of `topic`, where reading starts (the cursor: the committed offset,
/// else the oldest retained record) and where the partition ends now (reading stops
/// there).
async fn ranges_from_cursor(
    consumer: &Arc<StreamConsumer>,
    topic: &str,
    operation: &'static str,
) -> Result<Ranges> {
    let (consumer, topic) = (consumer.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || -> rdkafka::error::KafkaResult<_> {
        let mut ranges = Ranges::new();
        for (_, p, committed) in committed_offsets(&*consumer, &[&topic])? {
            let (low, high) = consumer.fetch_watermarks(&topic, p, CALL_TIMEOUT)?;
            ranges.insert(p, (committed.map_or(low, |o| o.max(low)), high));
        }
        Ok(ranges)
    })
    .await
    .expect("dead-letter reader")
    .map_err(|e| from_kafka(e, operation))
}

/// The dead letters and markers of `messages`, in their order.
fn records(channel: &Arc<str>, messages: Vec<OwnedMessage>) -> Vec<Record> {
    messages
        .into_iter()
        .map(|m| {
            let settles = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == SETTLES)
                    .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
            });
            match settles {
                Some(settles) => Record::Marker {
                    partition: m.partition(),
                    settles,
                },
                None => Record::DeadLetter(Unsettled {
                    partition: m.partition(),
                    offset: m.offset(),
                    envelope: from_record(channel, &m).0,
                }),
            }
        })
        .collect()
}
