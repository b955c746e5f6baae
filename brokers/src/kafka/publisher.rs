//! The Kafka broker handle: producer, topics, dead letters.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::codec::{from_record, to_headers};
use super::consumer::KafkaSubscription;
use super::error::from_kafka;
use super::{KafkaConfig, Topics};
use crate::core::{
    BrokerKind, Capabilities, Envelope, Error, ErrorKind, MessagePublisher, Result,
    SubscribeOptions, Subscription,
};

/// How long metadata, watermark and commit calls may block.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to a Kafka cluster. Cloning shares it.
#[derive(Clone)]
pub struct KafkaBroker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: KafkaConfig,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Topics known to exist.
    topics: RwLock<HashSet<String>>,
    closed: crate::core::ShutdownFlag,
}

impl std::fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBroker")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Which kind of client a [`client_config`] is for: each gets the shared
/// `properties` and its own table.
#[derive(Clone, Copy)]
pub(crate) enum Client {
    Producer,
    Consumer,
    Admin,
}

/// The settings of one client: servers, the backend's `defaults`, then the user's
/// `properties` and the table of this kind of client (which may override defaults).
pub(crate) fn client_config(
    config: &KafkaConfig,
    client: Client,
    defaults: &[(&str, &str)],
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap_servers);
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    let own = match client {
        Client::Producer => Some(&config.producer_properties),
        Client::Consumer => Some(&config.consumer_properties),
        Client::Admin => None,
    };
    for (k, v) in config.properties.iter().chain(own.into_iter().flatten()) {
        c.set(k, v.expose());
    }
    c
}

fn unreachable(config: &KafkaConfig, e: KafkaError) -> Error {
    Error::new(
        ErrorKind::Unreachable,
        format!("cannot reach Kafka at {}", config.bootstrap_servers),
    )
    .set_retryable(true)
    .with_broker("kafka")
    .with_source(e)
}

impl KafkaBroker {
    /// Creates the producer and admin client and checks the cluster answers.
    pub async fn connect(config: &KafkaConfig) -> Result<Self> {
        let producer: FutureProducer = client_config(
            config,
            Client::Producer,
            &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("compression.type", "lz4"),
                ("linger.ms", "5"),
                ("message.timeout.ms", "30000"),
            ],
        )
        .create()
        .map_err(|e| from_kafka(e, "connect").with_broker("kafka"))?;
        let admin: AdminClient<DefaultClientContext> = client_config(config, Client::Admin, &[])
            .create()
            .map_err(|e| from_kafka(e, "connect"))?;
        // librdkafka connects lazily: ask for metadata so an unreachable cluster fails here.
        let probe = producer.clone();
        tokio::task::spawn_blocking(move || {
            probe
                .client()
                .fetch_metadata(None, Duration::from_secs(5))
                .map(drop)
        })
        .await
        .expect("metadata probe")
        .map_err(|e| unreachable(config, e))?;
        Ok(KafkaBroker {
            inner: Arc::new(Inner {
                config: config.clone(),
                producer,
                admin,
                topics: RwLock::new(HashSet::new()),
                closed: crate::core::ShutdownFlag::new("kafka"),
            }),
        })
    }

    pub(crate) fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner.closed.is_closed()
    }

    fn check_open(&self, operation: &'static str) -> Result<()> {
        self.inner.closed.check(operation)
    }

    pub(crate) fn validate_name(channel: &str) -> Result<()> {
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
            ))
            .with_broker("kafka"));
        }
        Ok(())
    }

    /// Creates the topics not known to exist yet (with `create_topics`) and waits until
    /// their metadata is visible, so producing and subscribing right after works.
    /// Without `create_topics` the cluster creates them on first use (the metadata
    /// request asks it to) or they were provisioned; either way they must exist before
    /// a consumer subscribes, since librdkafka notices a topic that appears later only
    /// at its next metadata refresh (minutes).
    pub(crate) async fn ensure_topics(&self, names: &[String]) -> Result<()> {
        let missing: Vec<&String> = {
            let known = self.inner.topics.read().unwrap();
            names.iter().filter(|n| !known.contains(*n)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        if self.inner.config.create_topics {
            self.create_topics(&missing).await?;
        }
        for name in &missing {
            self.wait_visible(name).await?;
        }
        self.inner
            .topics
            .write()
            .unwrap()
            .extend(missing.into_iter().cloned());
        Ok(())
    }

    /// Creates `names` with the admin API; one that exists already is fine.
    async fn create_topics(&self, names: &[&String]) -> Result<()> {
        let c = &self.inner.config;
        let new: Vec<NewTopic> = names
            .iter()
            .map(|n| {
                NewTopic::new(
                    n.as_str(),
                    c.partitions,
                    TopicReplication::Fixed(c.replication_factor),
                )
            })
            .collect();
        let results = self
            .inner
            .admin
            .create_topics(
                &new,
                &AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT)),
            )
            .await
            .map_err(|e| from_kafka(e, "create topics"))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(Error::new(
                        ErrorKind::Broker,
                        format!("cannot create topic {name:?}: {code}"),
                    )
                    .with_broker("kafka")
                    .with_operation("create topics"))
                }
            }
        }
        Ok(())
    }

    /// The retry topics of `channel` the cluster has (`C-retry-<n>`).
    pub(crate) async fn retry_topics_of(&self, channel: &str) -> Result<Vec<String>> {
        let producer = self.inner.producer.clone();
        let channel = channel.to_string();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, CALL_TIMEOUT)
                .map(|m| {
                    m.topics()
                        .iter()
                        .map(|t| t.name())
                        .filter(|name| Topics::is_retry_of(name, &channel))
                        .map(String::from)
                        .collect()
                })
        })
        .await
        .expect("metadata call")
        .map_err(|e| from_kafka(e, "list retry topics"))
    }

    async fn wait_visible(&self, topic: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        loop {
            let producer = self.inner.producer.clone();
            let name = topic.to_string();
            let visible = tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(Some(&name), Duration::from_secs(2))
                    .map(|m| {
                        m.topics().iter().any(|t| {
                            t.name() == name && t.error().is_none() && !t.partitions().is_empty()
                        })
                    })
            })
            .await
            .expect("metadata call")
            .map_err(|e| from_kafka(e, "create topics"))?;
            if visible {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let what = if self.inner.config.create_topics {
                    "created but not visible"
                } else {
                    "does not exist and the cluster did not create it on first use (create_topics = false)"
                };
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("topic {topic:?} {what} within {CALL_TIMEOUT:?}"),
                )
                .with_broker("kafka"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Produces `envelope` to `topic` and waits for its delivery report. The record is
    /// enqueued at once, so concurrent calls batch.
    pub(crate) async fn produce(
        &self,
        topic: &str,
        envelope: &Envelope,
        extra: &[(&str, &str)],
    ) -> Result<()> {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(&envelope.payload[..])
            .headers(to_headers(envelope, extra));
        if let Some(k) = &envelope.key {
            record = record.key(k.as_bytes());
        }
        loop {
            match self.inner.producer.send_result(record) {
                Ok(delivery) => {
                    return match delivery.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => {
                            Err(from_kafka(e, "publish").with_channel(&*envelope.channel))
                        }
                        Err(_) => {
                            Err(Error::closed("the producer was dropped").with_broker("kafka"))
                        }
                    };
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // The local queue is full: wait for deliveries to drain it.
                    record = r;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => {
                    return Err(from_kafka(e, "publish").with_channel(&*envelope.channel))
                }
            }
        }
    }

    async fn main_topic(&self, channel: &str) -> Result<()> {
        Self::validate_name(channel)?;
        if self.inner.topics.read().unwrap().contains(channel) {
            return Ok(());
        }
        self.ensure_topics(&[channel.to_string()]).await
    }

    /// Reads the dead letters past the replay cursor, up to `limit`; with `replay`,
    /// produces each to the channel as a fresh message and moves the cursor past it.
    async fn with_dead_letters(
        &self,
        channel: &str,
        limit: usize,
        replay: bool,
    ) -> Result<(Vec<Envelope>, usize)> {
        Self::validate_name(channel)?;
        let topic = Topics::dead_letters(channel);
        self.ensure_topics(&[topic.clone(), channel.to_string()])
            .await?;
        let group = Topics::replay_group(channel);
        let consumer: Arc<StreamConsumer> = Arc::new(
            client_config(
                &self.inner.config,
                Client::Consumer,
                &[
                    ("group.id", &group),
                    ("enable.auto.commit", "false"),
                    ("auto.offset.reset", "earliest"),
                ],
            )
            .create()
            .map_err(|e| from_kafka(e, "dead letters"))?,
        );
        // Per partition: where the cursor is (committed offset, else the oldest
        // retained record) and where the partition ends now; reading stops there.
        let ranges: Vec<(i32, i64, i64)> = {
            let (consumer, topic) = (consumer.clone(), topic.clone());
            tokio::task::spawn_blocking(
                move || -> rdkafka::error::KafkaResult<Vec<(i32, i64, i64)>> {
                    let metadata = consumer.fetch_metadata(Some(&topic), CALL_TIMEOUT)?;
                    let partitions: Vec<i32> = metadata
                        .topics()
                        .iter()
                        .filter(|t| t.name() == topic)
                        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                        .collect();
                    let mut all = TopicPartitionList::new();
                    for p in &partitions {
                        all.add_partition(&topic, *p);
                    }
                    let committed = consumer.committed_offsets(all, CALL_TIMEOUT)?;
                    let mut ranges = Vec::new();
                    let mut assignment = TopicPartitionList::new();
                    for p in partitions {
                        let (low, high) = consumer.fetch_watermarks(&topic, p, CALL_TIMEOUT)?;
                        let start = match committed.find_partition(&topic, p).map(|e| e.offset()) {
                            Some(Offset::Offset(o)) => o.max(low),
                            _ => low,
                        };
                        assignment.add_partition_offset(&topic, p, Offset::Offset(start))?;
                        if start < high {
                            ranges.push((p, start, high));
                        }
                    }
                    consumer.assign(&assignment)?;
                    Ok(ranges)
                },
            )
            .await
            .expect("dead-letter reader")
            .map_err(|e| from_kafka(e, "dead letters").with_channel(channel))?
        };
        let channel_arc: Arc<str> = Arc::from(channel);
        let mut remaining: std::collections::HashMap<i32, i64> =
            ranges.into_iter().map(|(p, _, high)| (p, high)).collect();
        let mut read = Vec::new();
        let mut moved = 0;
        let mut cursor = TopicPartitionList::new();
        let mut messages = consumer.stream();
        // What was dead-lettered when the call began: up to each partition's high
        // watermark; a record written since is left to the next call.
        while read.len() + moved < limit && !remaining.is_empty() {
            let m = match tokio::time::timeout(CALL_TIMEOUT, messages.next()).await {
                Ok(Some(Ok(m))) => m.detach(),
                Ok(Some(Err(e))) => return Err(from_kafka(e, "dead letters").with_channel(channel)),
                Ok(None) => break,
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "dead letters of {channel:?} did not arrive within {CALL_TIMEOUT:?}"
                        ),
                    )
                    .with_broker("kafka"))
                }
            };
            let Some(&high) = remaining.get(&m.partition()) else {
                continue;
            };
            if m.offset() + 1 >= high {
                remaining.remove(&m.partition());
            }
            if m.offset() >= high {
                continue;
            }
            let (envelope, _) = from_record(&channel_arc, &m);
            if replay {
                let replayed = envelope.into_replayed();
                self.produce(channel, &replayed, &[]).await?;
                cursor
                    .add_partition_offset(&topic, m.partition(), Offset::Offset(m.offset() + 1))
                    .map_err(|e| from_kafka(e, "replay dead letters"))?;
                moved += 1;
            } else {
                read.push(envelope);
            }
        }
        drop(messages);
        if moved > 0 {
            let c = consumer.clone();
            tokio::task::spawn_blocking(move || c.commit(&cursor, CommitMode::Sync))
                .await
                .expect("commit")
                .map_err(|e| from_kafka(e, "replay dead letters").with_channel(channel))?;
        }
        Ok((read, moved))
    }
}

#[async_trait]
impl MessagePublisher for KafkaBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Kafka
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
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
        }
    }

    async fn prepare_channel(&self, channel: &str, _default_group: &str) -> Result<()> {
        self.check_open("prepare_channel")?;
        self.main_topic(channel).await
    }

    async fn publish(&self, envelope: Envelope) -> Result<()> {
        self.check_open("publish")?;
        self.main_topic(&envelope.channel).await?;
        self.produce(&envelope.channel, &envelope, &[]).await
    }

    async fn publish_delayed(&self, envelope: Envelope, delay: Duration) -> Result<()> {
        self.check_open("publish_delayed")?;
        Self::validate_name(&envelope.channel)?;
        let topic = Topics::delay(&envelope.channel);
        self.ensure_topics(std::slice::from_ref(&topic)).await?;
        let due = crate::unix_micros(std::time::SystemTime::now() + delay).to_string();
        self.produce(&topic, &envelope, &[(super::codec::DUE, &due)])
            .await
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        self.check_open("subscribe")?;
        Self::validate_name(&options.channel)?;
        Ok(Box::new(
            KafkaSubscription::start(self.clone(), options).await?,
        ))
    }

    async fn dead_letters(&self, channel: &str, limit: usize) -> Result<Vec<Envelope>> {
        self.check_open("dead_letters")?;
        Ok(self.with_dead_letters(channel, limit, false).await?.0)
    }

    async fn replay_dead_letters(&self, channel: &str, limit: usize) -> Result<usize> {
        self.check_open("replay_dead_letters")?;
        Ok(self.with_dead_letters(channel, limit, true).await?.1)
    }

    async fn request(&self, _envelope: Envelope, _timeout: Duration) -> Result<Envelope> {
        Err(
            Error::unsupported("request/reply is not offered by the Kafka backend")
                .with_broker("kafka")
                .with_operation("request"),
        )
    }

    async fn serve(&self, _options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        Err(
            Error::unsupported("request/reply is not offered by the Kafka backend")
                .with_broker("kafka")
                .with_operation("serve"),
        )
    }

    async fn shutdown(&self) -> Result<()> {
        self.inner.closed.close();
        let producer = self.inner.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(CALL_TIMEOUT))
            .await
            .expect("flush")
            .map_err(|e| from_kafka(e, "shutdown"))
    }
}
