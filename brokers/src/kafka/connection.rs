//! What the broker's channels and subscriptions share: the producer, the admin client,
//! the topics known to exist, the config and whether the broker was shut down.

use std::collections::HashSet;
use std::sync::RwLock;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::codec::{to_headers, SETTLES};
use super::error::from_kafka;
use super::config::KafkaConfig;
use super::names::Topics;
use crate::core::{Envelope, Error, ErrorKind, Result, ShutdownFlag};

/// How long metadata, watermark and commit calls may block.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Connection {
    pub(crate) config: KafkaConfig,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Topics known to exist.
    topics: RwLock<HashSet<String>>,
    closed: ShutdownFlag,
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
        c.set(k, v);
    }
    c
}

/// Each partition of `topics`, with the committed offset there of the group `consumer`
/// belongs to, if it has one. Blocking: a metadata request per topic and an offsets
/// request, `CALL_TIMEOUT` each.
pub(crate) fn committed_offsets(
    consumer: &impl Consumer,
    topics: &[&str],
) -> KafkaResult<Vec<(String, i32, Option<i64>)>> {
    let mut all = TopicPartitionList::new();
    for topic in topics {
        for p in partitions(consumer, topic)? {
            all.add_partition(topic, p);
        }
    }
    let committed = consumer.committed_offsets(all, CALL_TIMEOUT)?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (e.topic().to_string(), e.partition(), offset)
        })
        .collect())
}

/// The partitions of `topic`, from its metadata. Blocking, up to `CALL_TIMEOUT`.
pub(crate) fn partitions(consumer: &impl Consumer, topic: &str) -> KafkaResult<Vec<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), CALL_TIMEOUT)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

fn unreachable(config: &KafkaConfig, e: KafkaError) -> Error {
    Error::new(
        ErrorKind::Unreachable,
        format!("cannot reach Kafka at {}", config.bootstrap_servers),
    )
    .set_retryable(true)
    .with_source(e)
}

impl Connection {
    /// Creates the producer and admin client and checks the cluster answers.
    pub(crate) async fn open(config: &KafkaConfig) -> Result<Self> {
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
        .map_err(|e| from_kafka(e, "connect"))?;
        let admin: AdminClient<DefaultClientContext> = client_config(config, Client::Admin, &[])
            .create()
            .map_err(|e| from_kafka(e, "connect"))?;
        let connection = Connection {
            config: config.clone(),
            producer,
            admin,
            topics: RwLock::new(HashSet::new()),
            closed: ShutdownFlag::default(),
        };
        // librdkafka connects lazily: ask for metadata so an unreachable cluster fails here.
        connection.ask_metadata(Duration::from_secs(5)).await?;
        Ok(connection)
    }

    pub(crate) fn config(&self) -> &KafkaConfig {
        &self.config
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_closed()
    }

    /// Asks the cluster for its metadata, within 2 s.
    pub(crate) async fn check_connection(&self) -> Result<()> {
        self.ask_metadata(Duration::from_secs(2)).await
    }

    /// Asks the cluster for its metadata within `timeout`: `Unreachable` if it does not
    /// answer.
    async fn ask_metadata(&self, timeout: Duration) -> Result<()> {
        let probe = self.producer.clone();
        tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, timeout).map(drop))
            .await
            .map_err(|e| Error::new(ErrorKind::Broker, format!("the metadata probe failed: {e}")))?
            .map_err(|e| unreachable(&self.config, e))
    }

    /// Marks the broker closed and waits for the producer to deliver what it holds.
    pub(crate) async fn close(&self) -> Result<()> {
        self.closed.close();
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(CALL_TIMEOUT))
            .await
            .expect("flush")
            .map_err(|e| from_kafka(e, "shutdown"))
    }

    /// Creates the topics not known to exist yet (with `create_topics`) and waits until
    /// their metadata is visible, so producing and subscribing right after works.
    /// Without `create_topics` the cluster creates them on first use (the metadata
    /// request asks it to) or they were provisioned; either way they must exist before
    /// a consumer subscribes, since librdkafka notices a topic that appears later only
    /// at its next metadata refresh (minutes).
    pub(crate) async fn ensure_topics(&self, names: &[String]) -> Result<()> {
        let missing: Vec<&String> = {
            let known = self.topics.read().unwrap();
            names.iter().filter(|n| !known.contains(*n)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        if self.config.create_topics {
            self.create_topics(&missing).await?;
        }
        for name in &missing {
            self.wait_visible(name).await?;
        }
        self
            .topics
            .write()
            .unwrap()
            .extend(missing.into_iter().cloned());
        Ok(())
    }

    /// Creates `names` with the admin API; one that exists already is fine.
    async fn create_topics(&self, names: &[&String]) -> Result<()> {
        let c = &self.config;
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
                    .with_operation("create topics"))
                }
            }
        }
        Ok(())
    }

    /// The retry topics of `channel` the cluster has (`C-retry-<n>`).
    pub(crate) async fn retry_topics_of(&self, channel: &str) -> Result<Vec<String>> {
        let channel = channel.to_string();
        self.topics_named(move |name| Topics::is_retry_of(name, &channel), "list retry topics")
            .await
    }

    /// Whether the cluster has the topic `name` (asked without creating it).
    pub(crate) async fn topic_exists(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        let found = self.topics_named(move |t| t == name, "look up topic").await?;
        Ok(!found.is_empty())
    }

    /// The cluster's topics whose names `wanted` picks, from metadata of all topics
    /// (a request naming a topic can create it on a broker that auto-creates).
    async fn topics_named(
        &self,
        wanted: impl Fn(&str) -> bool + Send + 'static,
        operation: &'static str,
    ) -> Result<Vec<String>> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, CALL_TIMEOUT)
                .map(|m| {
                    m.topics()
                        .iter()
                        .map(|t| t.name())
                        .filter(|name| wanted(name))
                        .map(String::from)
                        .collect()
                })
        })
        .await
        .expect("metadata call")
        .map_err(|e| from_kafka(e, operation))
    }

    async fn wait_visible(&self, topic: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        loop {
            let producer = self.producer.clone();
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
                let what = if self.config.create_topics {
                    "created but not visible"
                } else {
                    "does not exist and the cluster did not create it on first use (create_topics = false)"
                };
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("topic {topic:?} {what} within {CALL_TIMEOUT:?}"),
                ));
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
        self.send(record).await
    }

    /// Produces a record of `payload` with `key` and no headers to `topic` and waits for
    /// its delivery report.
    pub(crate) async fn produce_keyed(&self, topic: &str, key: &[u8], payload: &[u8]) -> Result<()> {
        self.send(FutureRecord::to(topic).key(key).payload(payload)).await
    }

    /// Writes to `partition` of the dead-letter topic `topic` a marker saying the
    /// record at `offset` there is settled (see `dead_letters`).
    pub(crate) async fn produce_marker(&self, topic: &str, partition: i32, offset: i64) -> Result<()> {
        let offset = offset.to_string();
        let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: SETTLES,
            value: Some(offset.as_bytes()),
        });
        let record = FutureRecord::<[u8], [u8]>::to(topic)
            .partition(partition)
            .payload(&[])
            .headers(headers);
        self.send(record).await
    }

    /// Sends `record` and waits for the broker's acknowledgement, waiting for room
    /// while the producer's local queue is full.
    async fn send(&self, mut record: FutureRecord<'_, [u8], [u8]>) -> Result<()> {
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    return match delivery.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => Err(from_kafka(e, "publish")),
                        Err(_) => {
                            Err(Error::closed("the producer was dropped"))
                        }
                    };
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // The local queue is full: wait for deliveries to drain it.
                    record = r;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => return Err(from_kafka(e, "publish")),
            }
        }
    }
}
