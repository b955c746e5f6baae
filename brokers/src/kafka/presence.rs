//! Routers' presence on a channel: the topic `C-presence`, where each router writes a
//! record keyed by its instance whose value is when its presence expires (unix
//! milliseconds), again before that, and `0` to withdraw. A router that died stops
//! counting when its last record expires.
//!
//! Counting reads each partition backwards from its end, in growing stretches, until
//! the oldest record read was written (its timestamp) at least `PRESENCE_TTL` ago:
//! every router still present renewed after that, so its latest record is in what was
//! read.

use std::collections::HashMap;
use std::sync::Arc;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;

use super::connection::{client_config, partitions, Client, Connection, CALL_TIMEOUT};
use super::error::from_kafka;
use super::names::Topics;
use super::reading::{read_ranges, Ranges};
use crate::core::{presence_clock as now, Presence, Result, PRESENCE_TTL};

/// How many records of a partition the first read takes from its end: a router writes
/// about three within `PRESENCE_TTL`.
const FIRST_STRETCH: i64 = 64;

/// Writes `instance`'s presence on `channel`, renewed until withdrawn.
pub(crate) async fn announce(
    connection: &Arc<Connection>,
    channel: &str,
    instance: &str,
) -> Result<Presence> {
    let topic = Topics::presence(channel);
    connection
        .ensure_topics(std::slice::from_ref(&topic))
        .await?;
    let renew = {
        let (connection, topic, instance) =
            (connection.clone(), topic.clone(), instance.to_string());
        move || {
            let (connection, topic, instance) =
                (connection.clone(), topic.clone(), instance.clone());
            async move {
                let expires = now() + PRESENCE_TTL.as_millis() as u64;
                connection
                    .produce_keyed(&topic, instance.as_bytes(), expires.to_string().as_bytes())
                    .await
                    .map_err(|e| e.with_operation("announce"))
            }
        }
    };
    renew().await?;
    let (connection, instance) = (connection.clone(), instance.to_string());
    Ok(Presence::renewed(renew, move || async move {
        connection
            .produce_keyed(&topic, instance.as_bytes(), b"0")
            .await
            .map_err(|e| e.with_operation("withdraw presence"))
    }))
}

/// The routers whose latest record on `channel`'s presence topic has not expired.
pub(crate) async fn announced(connection: &Connection, channel: &str) -> Result<u64> {
    const OPERATION: &str = "announced";
    let topic = Topics::presence(channel);
    if !connection.topic_exists(&topic).await? {
        return Ok(0);
    }
    let consumer: Arc<StreamConsumer> = Arc::new(
        client_config(
            &connection.config,
            Client::Consumer,
            // Assigned, never subscribed, never committing: the group is not joined.
            &[
                ("group.id", "anybroker-presence-reader"),
                ("enable.auto.commit", "false"),
            ],
        )
        .create()
        .map_err(|e| from_kafka(e, OPERATION))?,
    );
    let watermarks = watermarks(&consumer, &topic).await?;
    let what = format!("the presence records of {channel:?}");
    let mut tally = Tally::default();
    let mut stretch = FIRST_STRETCH;
    let mut to_read: Ranges = watermarks
        .iter()
        .map(|(&p, &(low, high))| (p, ((high - stretch).max(low), high)))
        .collect();
    while !to_read.is_empty() {
        let read = read_ranges(&consumer, &topic, &to_read, &what, OPERATION).await?;
        let oldest_written = tally.add_pass(read.iter().map(|m| PresenceRecord {
            partition: m.partition(),
            instance: m.key(),
            expires: m
                .payload()
                .and_then(|p| std::str::from_utf8(p).ok()?.parse().ok())
                .unwrap_or(0),
            written: m.timestamp().to_millis().map(|t| t.max(0) as u64),
        }));
        stretch *= 4;
        let now = now();
        to_read = to_read
            .into_iter()
            .filter(|(p, (start, _))| {
                *start > watermarks[p].0 && read_further(oldest_written.get(p).copied().flatten(), now)
            })
            .map(|(p, (start, _))| (p, ((start - stretch).max(watermarks[&p].0), start)))
            .collect();
    }
    Ok(tally.present(now()))
}

/// What counting needs of one record of the presence topic.
struct PresenceRecord<'a> {
    partition: i32,
    instance: Option<&'a [u8]>,
    /// Unix ms; 0 for a withdrawal (or a record that is not a presence).
    expires: u64,
    /// The record's timestamp, unix ms.
    written: Option<u64>,
}

/// The latest record of each instance, gathered over passes that each read older
/// records than the pass before.
#[derive(Default)]
struct Tally {
    latest: HashMap<Vec<u8>, u64>,
}

impl Tally {
    /// Takes one pass's records, oldest first per partition; returns when the oldest
    /// record of each partition read was written (`None` if its timestamp is unknown).
    fn add_pass<'a>(
        &mut self,
        records: impl Iterator<Item = PresenceRecord<'a>>,
    ) -> HashMap<i32, Option<u64>> {
        let mut oldest_written = HashMap::new();
        let mut in_pass = HashMap::new();
        for r in records {
            oldest_written.entry(r.partition).or_insert(r.written);
            if let Some(instance) = r.instance {
                // Later in the pass is newer.
                in_pass.insert(instance, r.expires);
            }
        }
        for (instance, expires) in in_pass {
            // A pass before this one read newer records: those win.
            self.latest.entry(instance.to_vec()).or_insert(expires);
        }
        oldest_written
    }

    /// The instances whose latest record has not expired at `now`.
    fn present(&self, now: u64) -> u64 {
        self.latest.values().filter(|&&expires| expires > now).count() as u64
    }
}

/// Whether a partition whose oldest record read was written at `oldest_written` must be
/// read further back: yes, unless that record is at least `PRESENCE_TTL` old, since a
/// router still present has renewed after it.
fn read_further(oldest_written: Option<u64>, now: u64) -> bool {
    oldest_written.is_none_or(|w| w + (PRESENCE_TTL.as_millis() as u64) > now)
}

/// Each partition of `topic` with its low and high watermarks.
async fn watermarks(consumer: &Arc<StreamConsumer>, topic: &str) -> Result<Ranges> {
    let (consumer, topic) = (consumer.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || -> rdkafka::error::KafkaResult<_> {
        let mut ranges = Ranges::new();
        for p in partitions(&*consumer, &topic)? {
            ranges.insert(p, consumer.fetch_watermarks(&topic, p, CALL_TIMEOUT)?);
        }
        Ok(ranges)
    })
    .await
    .expect("presence reader")
    .map_err(|e| from_kafka(e, "announced"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, instance: &str, expires: u64, written: u64) -> PresenceRecord<'_> {
        PresenceRecord {
            partition,
            instance: Some(instance.as_bytes()),
            expires,
            written: Some(written),
        }
    }

    #[test]
    fn the_latest_record_of_an_instance_counts() {
        let mut tally = Tally::default();
        // The newest records, read first: `a` withdrew, `b` renewed.
        tally.add_pass(
            [
                record(0, "a", 2_000, 1_000),
                record(0, "b", 5_000, 2_000),
                record(0, "a", 0, 2_500),
            ]
            .into_iter(),
        );
        // Older ones, read next: `a` present then, `c` long expired.
        tally.add_pass([record(0, "c", 500, 0), record(0, "a", 1_900, 900)].into_iter());
        assert_eq!(tally.present(3_000), 1, "b only");
        assert_eq!(tally.present(5_000), 0, "b expired");
    }

    #[test]
    fn reading_goes_back_until_a_record_a_ttl_old() {
        let ttl = PRESENCE_TTL.as_millis() as u64;
        let now = 100_000;
        assert!(read_further(Some(now - ttl + 1), now));
        assert!(!read_further(Some(now - ttl), now));
        assert!(read_further(None, now), "no timestamp: read on");
        let mut tally = Tally::default();
        let oldest = tally.add_pass([record(1, "a", 0, 7), record(1, "b", 0, 9)].into_iter());
        assert_eq!(oldest[&1], Some(7));
    }
}
