//! The embedded broker's handle and its `MessagePublisher` implementation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rustc_hash::FxHashMap as HashMap;
use tokio::time::Instant;

use super::consumer::MemorySubscription;
use super::topic::{Group, Timed, Topic};
use super::MemoryConfig;
use crate::core::{
    BrokerKind, Capabilities, Envelope, Error, MessagePublisher, Result, SubscribeOptions,
    Subscription,
};

/// The embedded broker. Cloning gives another handle to the same broker, so several
/// routers in one process can share it.
#[derive(Clone)]
pub struct MemoryBroker {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    topics: RwLock<HashMap<Arc<str>, Arc<Topic>>>,
    closed: crate::core::ShutdownFlag,
    next_member: AtomicU64,
    /// 0 = unbounded.
    max_backlog: usize,
    publish_timeout: Duration,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new(&MemoryConfig::default())
    }
}

impl MemoryBroker {
    /// A new, empty broker, as the registry connects one.
    pub async fn connect(config: &MemoryConfig) -> crate::Result<Self> {
        Ok(Self::new(config))
    }

    /// A new, empty broker.
    pub fn new(config: &MemoryConfig) -> Self {
        MemoryBroker {
            shared: Arc::new(Shared {
                topics: RwLock::new(HashMap::default()),
                closed: crate::core::ShutdownFlag::new("memory"),
                next_member: AtomicU64::new(1),
                max_backlog: config.max_backlog,
                publish_timeout: config.publish_timeout,
            }),
        }
    }

    pub(crate) fn topic(&self, channel: &str) -> Arc<Topic> {
        if let Some(t) = self
            .shared
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(channel)
        {
            return t.clone();
        }
        let mut topics = self
            .shared
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner());
        topics
            .entry(Arc::from(channel))
            .or_insert_with(|| Arc::new(Topic::new()))
            .clone()
    }

    pub(crate) fn check_open(&self, operation: &'static str) -> Result<()> {
        self.shared.closed.check(operation)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.is_closed()
    }

    /// The slow path of publish: the channel is at `max_backlog`, so wait until a group
    /// takes a message (or `publish_timeout` passes).
    async fn publish_when_room(&self, topic: &Topic, mut envelope: Envelope) -> Result<()> {
        let deadline = Instant::now() + self.shared.publish_timeout;
        loop {
            let room = topic.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            self.check_open("publish")?;
            envelope = match topic.try_append(envelope, self.shared.max_backlog) {
                None => return Ok(()),
                Some(back) => back,
            };
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(Error::new(
                    crate::core::ErrorKind::Timeout,
                    format!(
                        "channel {:?} holds max_backlog = {} messages its consumers have not taken, and none was taken within publish_timeout = {:?}",
                        &*envelope.channel, self.shared.max_backlog, self.shared.publish_timeout
                    ),
                )
                .with_broker("memory")
                .with_operation("publish"));
            }
        }
    }

    /// Messages published on `channel` that some group has not handed to a consumer
    /// yet (the most any one group has parked behind a busy key included), plus
    /// delayed ones: what `max_backlog` bounds, and the delayed messages beside it.
    pub fn backlog(&self, channel: &str) -> usize {
        let topic = self.topic(channel);
        let state = topic.lock();
        state.held() + state.delayed.len()
    }
}

#[async_trait]
impl MessagePublisher for MemoryBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Memory
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            persistent: true,
            survives_broker_restart: false,
            groups: true,
            ordering_by_key: true,
            ordering_across_members: true,
            retry: true,
            dead_letters: true,
            delay: true,
            native_redelivery_count: true,
            request_reply: false,
        }
    }

    async fn publish(&self, envelope: Envelope) -> Result<()> {
        self.check_open("publish")?;
        let topic = self.topic(&envelope.channel);
        match topic.try_append(envelope, self.shared.max_backlog) {
            None => Ok(()),
            Some(envelope) => self.publish_when_room(&topic, envelope).await,
        }
    }

    async fn publish_delayed(&self, envelope: Envelope, delay: Duration) -> Result<()> {
        self.check_open("publish_delayed")?;
        let topic = self.topic(&envelope.channel);
        {
            let mut state = topic.lock();
            let seq = state.next_seq();
            state.delayed.push(std::cmp::Reverse(Timed {
                due: Instant::now() + delay,
                seq,
                envelope,
            }));
        }
        // Sleeping consumers recompute their deadline.
        topic.notify.notify_waiters();
        Ok(())
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        self.check_open("subscribe")?;
        let topic = self.topic(&options.channel);
        {
            let mut state = topic.lock();
            let base = state.base;
            state
                .groups
                .entry(options.group.clone())
                .or_insert_with(|| Group::starting_at(base));
        }
        let member = self.shared.next_member.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(MemorySubscription::new(
            self.clone(),
            topic,
            options.group,
            member,
        )))
    }

    async fn dead_letters(&self, channel: &str, limit: usize) -> Result<Vec<Envelope>> {
        self.check_open("dead_letters")?;
        let topic = self.topic(channel);
        let state = topic.lock();
        Ok(state.dead.iter().take(limit).cloned().collect())
    }

    async fn replay_dead_letters(&self, channel: &str, limit: usize) -> Result<usize> {
        self.check_open("replay_dead_letters")?;
        let topic = self.topic(channel);
        let moved = {
            let mut state = topic.lock();
            let n = limit.min(state.dead.len());
            for _ in 0..n {
                let dead = state.dead.pop_front().expect("counted");
                state.log.push_back(dead.into_replayed());
            }
            n
        };
        topic.notify.notify_waiters();
        Ok(moved)
    }

    async fn request(&self, _envelope: Envelope, _timeout: Duration) -> Result<Envelope> {
        Err(
            Error::unsupported("request/reply is not offered by the memory broker")
                .with_broker("memory")
                .with_operation("request"),
        )
    }

    async fn serve(&self, _options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        Err(
            Error::unsupported("request/reply is not offered by the memory backend")
                .with_broker("memory")
                .with_operation("serve"),
        )
    }

    async fn shutdown(&self) -> Result<()> {
        self.shared.closed.close();
        let topics: Vec<_> = self
            .shared
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for t in topics {
            t.notify.notify_waiters();
            t.room.notify_waiters();
        }
        Ok(())
    }
}
