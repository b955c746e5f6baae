//! A channel of the embedded broker: its topic, found once when it opens.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::connection::Connection;
use super::subscription::MemorySubscription;
use super::topic::{keep_apart, Group, Timed, Topic};
use crate::core::{
    Backlog, DeadLetterAction, DeadLetterSelector,
    BackendChannel, Capabilities, NewGroupStart, Envelope, Error, ErrorKind, Result, SubscribeOptions,
    Subscription,
};

/// What the embedded broker guarantees.
const CAPABILITIES: Capabilities = Capabilities {
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
    presence: true,
    new_group_start: NewGroupStart::Unconsumed,
};

/// One channel of the embedded broker.
pub struct MemoryChannel {
    connection: Arc<Connection>,
    topic: Arc<Topic>,
}

impl MemoryChannel {
    /// Creates `group` at the start of what the log still holds; an existing group
    /// keeps its position. From then on the log keeps what the group has not taken,
    /// up to `max_backlog`.
    fn create_group(&self, group: &str) {
        let mut state = self.topic.lock();
        if !state.groups.contains_key(group) {
            let base = state.base;
            state
                .groups
                .insert(group.to_string(), Group::starting_at(base));
        }
    }

    pub(crate) fn new(connection: Arc<Connection>, name: &str) -> Self {
        let topic = connection.topic(name);
        MemoryChannel { connection, topic }
    }

    /// The slow path of publish: the channel is at `max_backlog`, so wait until a group
    /// takes a message (or `publish_timeout` passes).
    async fn publish_when_room(&self, mut envelope: Envelope) -> Result<()> {
        let (max_backlog, publish_timeout) =
            (self.connection.max_backlog, self.connection.publish_timeout);
        let deadline = Instant::now() + publish_timeout;
        loop {
            let room = self.topic.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.connection.is_closed() {
                return Err(Error::closed("the broker was shut down while publish waited for room"));
            }
            envelope = match self.topic.try_append(envelope, max_backlog) {
                None => return Ok(()),
                Some(back) => back,
            };
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the channel holds max_backlog = {max_backlog} messages its consumers have not taken, and none was taken within publish_timeout = {publish_timeout:?}"
                    ),
                ));
            }
        }
    }
}

impl BackendChannel for MemoryChannel {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    #[inline]
    fn publish_at_once(&self, envelope: Envelope) -> Option<Envelope> {
        self.topic.try_append(envelope, self.connection.max_backlog)
    }

    async fn publish(&self, envelope: Envelope) -> Result<()> {
        // The slow path boxed: the wait (timer, notification) is rare, and inline it
        // would make every publish future, every backend's through the registry, its
        // size. Made in the `let`, so the future does not hold the rejected envelope.
        let wait = match self.topic.try_append(envelope, self.connection.max_backlog) {
            None => return Ok(()),
            Some(back) => Box::pin(self.publish_when_room(back)),
        };
        wait.await
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        self.create_group(&options.group);
        let member = self.connection.next_member.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(MemorySubscription::new(
            self.connection.clone(),
            self.topic.clone(),
            options.group,
            member,
        )))
    }

    async fn provision(&self, options: &SubscribeOptions) -> Result<()> {
        self.create_group(&options.group);
        Ok(())
    }

    async fn publish_delayed(&self, mut envelope: Envelope, delay: Duration) -> Result<()> {
        keep_apart(&mut envelope);
        {
            let mut state = self.topic.lock();
            let seq = state.next_seq();
            state.delayed.push(std::cmp::Reverse(Timed {
                due: Instant::now() + delay,
                seq,
                envelope,
            }));
        }
        // Sleeping consumers recompute their deadline.
        self.topic.notify.notify_waiters();
        Ok(())
    }

    async fn backlog(&self, group: &str) -> Result<Backlog> {
        let state = self.topic.lock();
        let end = state.base + state.log.len() as u64;
        // Delayed messages not yet due go to every group.
        let delayed = state.delayed.len() as u64;
        let Some(g) = state.groups.get(group) else {
            // Not created yet: it starts at what the channel keeps (see `create_group`).
            return Ok(Backlog::new(state.log.len() as u64 + delayed, Some(0)));
        };
        let waiting = end.saturating_sub(g.cursor)
            + (g.ready.len() + g.parked + g.waiting.len()) as u64
            + delayed;
        Ok(Backlog::new(waiting, Some(g.in_flight.len() as u64)))
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<Envelope>> {
        let state = self.topic.lock();
        Ok(state.dead.iter().take(limit).cloned().collect())
    }

    async fn settle_dead_letters(
        &self,
        selector: &DeadLetterSelector,
        action: DeadLetterAction,
        limit: usize,
    ) -> Result<usize> {
        let settled = {
            let mut state = self.topic.lock();
            let mut settled = 0;
            let mut kept = std::collections::VecDeque::with_capacity(state.dead.len());
            while let Some(dead) = state.dead.pop_front() {
                if settled == limit || !selector.matches(&dead) {
                    kept.push_back(dead);
                    continue;
                }
                settled += 1;
                if action == DeadLetterAction::Replay {
                    state.log.push_back(dead.into_replayed());
                }
            }
            state.dead = kept;
            settled
        };
        self.topic.notify.notify_waiters();
        Ok(settled)
    }
}
