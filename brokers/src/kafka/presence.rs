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
use std::time::SystemTime;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;

use super::connection::{client_config, Client, Connection, CALL_TIMEOUT};
use super::error::from_kafka;
use super::names::Topics;
use super::reading::{read_ranges, Ranges};
use crate::core::{unix_millis, Presence, Result, PRESENCE_TTL};

/// How many records of a partition the first read takes from its end: a router writes
/// about three within `PRESENCE_TTL`.
const FIRST_STRETCH: i64 = 64;

fn now() -> u64 {
    unix_millis(SystemTime::now())
}

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
    let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut stretch = FIRST_STRETCH;
    let mut to_read: Ranges = watermarks
        .iter()
        .map(|(&p, &(low, high))| (p, ((high - stretch).max(low), high)))
        .collect();
    while !to_read.is_empty() {
        let read = read_ranges(&consumer, &topic, &to_read, &what, OPERATION).await?;
        // Within a pass records come oldest first, so the last one of an instance is its
        // latest; a pass reads older records than the pass before, which wins.
        let mut oldest_written: HashMap<i32, Option<u64>> = HashMap::new();
        let mut in_pass: HashMap<Vec<u8>, u64> = HashMap::new();
        for m in &read {
            let expires = m
                .payload()
                .and_then(|p| std::str::from_utf8(p).ok()?.parse::<u64>().ok())
                .unwrap_or(0);
            oldest_written
                .entry(m.partition())
                .or_insert(m.timestamp().to_millis().map(|t| t.max(0) as u64));
            if let Some(instance) = m.key() {
                in_pass.insert(instance.to_vec(), expires);
            }
        }
        for (instance, expires) in in_pass {
            latest.entry(instance).or_insert(expires);
        }
        stretch *= 4;
        let now = now();
        let ttl = PRESENCE_TTL.as_millis() as u64;
        to_read = to_read
            .into_iter()
            .filter(|(p, (start, _))| {
                let (low, _) = watermarks[p];
                // Read on until a record written at least a TTL ago (or the start).
                let old_enough = oldest_written
                    .get(p)
                    .is_some_and(|w| w.is_some_and(|w| w + ttl <= now));
                *start > low && !old_enough
            })
            .map(|(p, (start, _))| {
                let (low, _) = watermarks[&p];
                (p, ((start - stretch).max(low), start))
            })
            .collect();
    }
    let now = now();
    Ok(latest.values().filter(|&&expires| expires > now).count() as u64)
}

/// Each partition of `topic` with its low and high watermarks.
async fn watermarks(consumer: &Arc<StreamConsumer>, topic: &str) -> Result<Ranges> {
    let (consumer, topic) = (consumer.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || -> rdkafka::error::KafkaResult<_> {
        let metadata = consumer.fetch_metadata(Some(&topic), CALL_TIMEOUT)?;
        let mut ranges = Ranges::new();
        for t in metadata.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                ranges.insert(p.id(), consumer.fetch_watermarks(&topic, p.id(), CALL_TIMEOUT)?);
            }
        }
        Ok(ranges)
    })
    .await
    .expect("presence reader")
    .map_err(|e| from_kafka(e, "announced"))
}
