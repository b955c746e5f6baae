//! What the broker's channels and subscriptions share: its channels' topics, its
//! limits and whether it was shut down (for a server backend, its connection).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustc_hash::FxHashMap as HashMap;

use super::topic::{Topic, Work};
use super::config::MemoryConfig;
use crate::core::ShutdownFlag;

pub(crate) struct Connection {
    topics: RwLock<HashMap<Arc<str>, Arc<Topic>>>,
    pub(crate) closed: ShutdownFlag,
    pub(crate) next_member: AtomicU64,
    /// 0 = unbounded.
    pub(crate) max_backlog: usize,
    pub(crate) publish_timeout: Duration,
}

impl Connection {
    pub(crate) fn new(config: &MemoryConfig) -> Self {
        Connection {
            topics: RwLock::new(HashMap::default()),
            closed: ShutdownFlag::default(),
            next_member: AtomicU64::new(1),
            max_backlog: config.max_backlog,
            publish_timeout: config.publish_timeout,
        }
    }

    /// The topic of `channel`, made on first use.
    pub(crate) fn topic(&self, channel: &str) -> Arc<Topic> {
        if let Some(t) = self
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(channel)
        {
            return t.clone();
        }
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        topics
            .entry(Arc::from(channel))
            .or_insert_with(|| Arc::new(Topic::new()))
            .clone()
    }

    /// Each channel with work left up to `until`.
    pub(crate) fn work_until(&self, until: tokio::time::Instant) -> Vec<(Arc<str>, Work)> {
        let topics: Vec<_> = self
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, t)| (name.clone(), t.clone()))
            .collect();
        topics
            .into_iter()
            .filter_map(|(name, t)| t.lock().work_until(until).map(|w| (name, w)))
            .collect()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_closed()
    }

    /// Marks the broker closed and wakes everything waiting on one of its topics.
    pub(crate) fn close(&self) {
        self.closed.close();
        let topics: Vec<_> = self
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
    }
}
