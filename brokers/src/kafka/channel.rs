//! A Kafka channel: its topic, validated and known to exist once it opens.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::codec::DUE;
use super::connection::{client_config, committed_offsets, Client, Connection, CALL_TIMEOUT};
use super::error::from_kafka;
use super::dead_letters::with_dead_letters;
use super::subscription::KafkaSubscription;
use super::names::Topics;
use crate::core::{
    Backlog, DeadLetterAction, DeadLetterSelector,
    unix_micros, BackendChannel, Capabilities, NewGroupStart, Envelope, Error, Result,
    SubscribeOptions, Subscription,
};

/// What Kafka guarantees.
const CAPABILITIES: Capabilities = Capabilities {
    persistent: true,
    survives_broker_restart: true,
    groups: true,
    ordering_by_key: true,
    ordering_across_members: false,
    retry: true,
    dead_letters: true,
    delay: true,
    native_redelivery_count: false,
    request_reply: false,
    presence: true,
    new_group_start: NewGroupStart::Retained,
};

/// A channel: its topic (and, once used, its delay and dead-letter topics).
pub struct KafkaChannel {
    connection: Arc<Connection>,
    name: Arc<str>,
    delay_topic: String,
}

/// Checks `channel` can be a Kafka topic name.
fn validate_name(channel: &str) -> Result<()> {
    let ok = !channel.is_empty()
        && channel.len() <= 200
        && channel != "."
        && channel != ".."
        && channel
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(Error::config(format!(
            "channel {channel:?} is not a valid Kafka topic name (1 to 200 of a-z A-Z 0-9 . _ -)"
        )));
    }
    Ok(())
}

impl KafkaChannel {
    /// Validates the name and makes sure the topic exists.
    pub(crate) async fn open(connection: Arc<Connection>, name: &Arc<str>) -> Result<Self> {
        validate_name(name)?;
        connection.ensure_topics(&[name.to_string()]).await?;
        Ok(KafkaChannel {
            delay_topic: Topics::delay(name),
            name: name.clone(),
            connection,
        })
    }

    /// A client of `group` that joins nothing: it reads and commits the group's offsets.
    fn group_client(&self, group: &str, operation: &'static str) -> Result<BaseConsumer> {
        client_config(
            &self.connection.config,
            Client::Consumer,
            &[
                ("group.id", &Topics::group_id(group, &self.name)),
                ("enable.auto.commit", "false"),
            ],
        )
        .create()
        .map_err(|e| from_kafka(e, operation))
    }

    /// Commits `group`'s offset at the end of every partition of `topics` where it has
    /// none: with `auto_offset_reset = "latest"`, a group's first member would start
    /// at the end as it is when the member joins, missing what was published since the
    /// group was provisioned. A partition with a committed offset keeps it.
    async fn commit_start_at_end(&self, group: &str, topics: Vec<String>) -> Result<()> {
        let consumer = self.group_client(group, "provision")?;
        tokio::task::spawn_blocking(move || -> rdkafka::error::KafkaResult<()> {
            let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
            let mut start = TopicPartitionList::new();
            for (topic, p, committed) in committed_offsets(&consumer, &topics)? {
                if committed.is_none() {
                    let (_, high) = consumer.fetch_watermarks(&topic, p, CALL_TIMEOUT)?;
                    start.add_partition_offset(&topic, p, Offset::Offset(high))?;
                }
            }
            if start.count() > 0 {
                consumer.commit(&start, CommitMode::Sync)?;
            }
            Ok(())
        })
        .await
        .expect("provisioning task")
        .map_err(|e| from_kafka(e, "provision"))
    }

}

impl BackendChannel for KafkaChannel {
    fn capabilities(&self) -> Capabilities {
        // A group without a committed offset starts where `auto_offset_reset` says.
        if self.connection.config.auto_offset_reset == "latest" {
            return Capabilities {
                new_group_start: NewGroupStart::Provisioned,
                ..CAPABILITIES
            };
        }
        CAPABILITIES
    }

    async fn provision(&self, options: &SubscribeOptions) -> Result<()> {
        let (topics, _) =
            super::subscription::group_topics(&self.connection, &self.name, options).await?;
        if self.connection.config.auto_offset_reset == "latest" {
            self.commit_start_at_end(&options.group, topics).await?;
        }
        Ok(())
    }

    fn publish(&self, envelope: Envelope) -> impl Future<Output = Result<()>> + Send {
        // Boxed: the record borrows the envelope, so the future holds both (~700
        // bytes), and every backend's publish future through the registry would be
        // that size (see docs/backends.md).
        Box::pin(async move { self.connection.produce(&self.name, &envelope, &[]).await })
    }

    async fn backlog(&self, group: &str) -> Result<Backlog> {
        // Per partition of the channel's topic, the high watermark minus the group's
        // committed offset (a group without one starts where `auto_offset_reset` says).
        let consumer = self.group_client(group, "backlog")?;
        // The channel's topic, its delay topic and its retry topics (shared by the
        // channel's groups: another group's retries count too, never too few).
        let mut topics = vec![self.name.to_string(), Topics::delay(&self.name)];
        topics.extend(self.connection.retry_topics_of(&self.name).await?);
        let from_start = self.connection.config.auto_offset_reset != "latest";
        tokio::task::spawn_blocking(move || -> rdkafka::error::KafkaResult<u64> {
            let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
            let mut waiting = 0;
            for (topic, p, committed) in committed_offsets(&consumer, &topics)? {
                let (low, high) = consumer.fetch_watermarks(&topic, p, CALL_TIMEOUT)?;
                let start = match committed {
                    Some(offset) => offset,
                    None if from_start => low,
                    None => high,
                };
                waiting += (high - start.max(low)).max(0) as u64;
            }
            Ok(waiting)
        })
        .await
        .expect("backlog task")
        .map(|waiting| Backlog::new(waiting, None))
        .map_err(|e| from_kafka(e, "backlog"))
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        Ok(Box::new(
            KafkaSubscription::start(self.connection.clone(), self.name.clone(), options).await?,
        ))
    }

    async fn publish_delayed(&self, envelope: Envelope, delay: Duration) -> Result<()> {
        self.connection
            .ensure_topics(std::slice::from_ref(&self.delay_topic))
            .await?;
        let due = unix_micros(std::time::SystemTime::now() + delay).to_string();
        self.connection
            .produce(&self.delay_topic, &envelope, &[(DUE, &due)])
            .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<Envelope>> {
        let all = DeadLetterSelector::All;
        let read = with_dead_letters(&self.connection, &self.name, &all, None, limit).await?;
        Ok(read.0)
    }

    async fn settle_dead_letters(
        &self,
        selector: &DeadLetterSelector,
        action: DeadLetterAction,
        limit: usize,
    ) -> Result<usize> {
        let settled =
            with_dead_letters(&self.connection, &self.name, selector, Some(action), limit).await?;
        Ok(settled.1)
    }
}
