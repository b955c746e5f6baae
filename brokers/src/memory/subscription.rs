//! A member of a group consuming one channel of the embedded broker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::time::Instant;

use super::connection::Connection;
use super::topic::{keep_apart, Timed, Topic, WaitingReceiver};
use crate::core::{Delivery, DeliveryTag, Error, Result, Settlement, Subscription};

pub(crate) struct MemorySubscription {
    connection: Arc<Connection>,
    topic: Arc<Topic>,
    group: String,
    member: u64,
    closed: AtomicBool,
}

impl MemorySubscription {
    pub(crate) fn new(
        connection: Arc<Connection>,
        topic: Arc<Topic>, group: String, member: u64) -> Self {
        MemorySubscription {
            connection,
            topic,
            group,
            member,
            closed: AtomicBool::new(false),
        }
    }

    /// Takes up to `max` deliveries ready for this member into `out` and returns how
    /// many. When none is ready it returns, as `Err`, the earliest time something
    /// timed becomes due, and `waiting` counts this member among the receivers that
    /// wait for a publish (until its [`WaitingReceiver`] is dropped).
    fn take(
        &self,
        max: usize,
        out: &mut Vec<Delivery>,
        waiting: bool,
    ) -> std::result::Result<usize, Option<Instant>> {
        let now = Instant::now();
        let mut state = self.topic.lock();
        let before = state.held();
        let taken = state.take(&self.group, self.member, max, now, out);
        // Taking can free room even when it hands nothing out (another group's
        // cursor moved the trim point), so check either way.
        let freed = state.held() < before;
        let result = if taken > 0 {
            Ok(taken)
        } else {
            if waiting {
                state.receivers_waiting += 1;
            }
            Err(state.next_deadline(&self.group))
        };
        drop(state);
        if freed {
            self.topic.room.notify_waiters();
        }
        result
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.connection.is_closed()
    }

    /// Settles at once: the embedded broker's settling never waits.
    fn settle_now(&self, settlements: impl Iterator<Item = (DeliveryTag, Settlement)>) -> Result<()> {
        let mut wake = false;
        // A parked message became ready: it no longer counts towards the backlog bound.
        let mut freed = false;
        let mut unknown = 0usize;
        let mut released = Vec::new();
        {
            let mut guard = self.topic.lock();
            let state = &mut *guard;
            let group = state.groups.get_mut(&self.group).expect("group exists");
            for (tag, settlement) in settlements {
                // The group's deliveries share one table: one another member holds is
                // as unknown to this one as one settled already (and stays its).
                let mut envelope = match group.in_flight.remove(&tag.0) {
                    Some(f) if f.member == self.member => f.envelope,
                    Some(other) => {
                        group.in_flight.insert(tag.0, other);
                        unknown += 1;
                        continue;
                    }
                    None => {
                        unknown += 1;
                        continue;
                    }
                };
                match settlement {
                    Settlement::Ack => {
                        if let Some(key) = &envelope.key {
                            freed |= group.release_key(key);
                        }
                    }
                    Settlement::Retry { delay, error } => {
                        // The key stays held: later messages of the key wait for this one.
                        envelope.record_failure(&error);
                        state.seq += 1;
                        group.waiting.push(std::cmp::Reverse(Timed {
                            due: Instant::now() + delay,
                            seq: state.seq,
                            envelope,
                        }));
                        wake = true;
                    }
                    Settlement::DeadLetter(dead_letter) => {
                        if let Some(key) = &envelope.key {
                            freed |= group.release_key(key);
                        }
                        keep_apart(&mut envelope);
                        state
                            .dead
                            .push_back(envelope.into_dead_letter(&dead_letter));
                    }
                    Settlement::Release => released.push(envelope),
                    #[allow(unreachable_patterns)]
                    _ => return Err(Error::unsupported("unknown settlement")),
                }
            }
            // Released messages go back to the front of the group's queue in their order.
            wake |= !released.is_empty();
            for envelope in released.into_iter().rev() {
                group.ready.push_front(envelope);
            }
        }
        if wake || freed {
            self.topic.notify.notify_waiters();
        }
        if freed {
            self.topic.room.notify_waiters();
        }
        if unknown > 0 {
            return Err(Error::new(
                crate::ErrorKind::Broker,
                format!("{unknown} deliveries settled twice or not from this subscription"),
            )
            .with_operation("settle"));
        }
        Ok(())
    }

    fn release_all(&self) {
        let released = {
            let mut state = self.topic.lock();
            state
                .groups
                .get_mut(&self.group)
                .map(|g| g.release_member(self.member))
                .unwrap_or(0)
        };
        if released > 0 {
            self.topic.notify.notify_waiters();
        }
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn recv(&self, max: usize) -> Result<Vec<Delivery>> {
        let max = max.max(1);
        loop {
            let notified = self.topic.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return Ok(Vec::new());
            }
            let mut out = Vec::new();
            let deadline = match self.take(max, &mut out, true) {
                Ok(_) => return Ok(out),
                Err(deadline) => deadline,
            };
            let _waiting = WaitingReceiver(&self.topic);
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn recv_ready(&self, max: usize, into: &mut Vec<Delivery>) -> Result<usize> {
        if max == 0 || self.is_closed() {
            return Ok(0);
        }
        Ok(self.take(max, into, false).unwrap_or(0))
    }

    async fn settle(&self, settlements: Vec<(DeliveryTag, Settlement)>) -> Result<()> {
        self.settle_now(settlements.into_iter())
    }

    fn settle_at_once(&self, settlements: &mut Vec<(DeliveryTag, Settlement)>) -> Option<Result<()>> {
        Some(self.settle_now(settlements.drain(..)))
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.release_all();
        self.topic.notify.notify_waiters();
        Ok(())
    }
}

impl Drop for MemorySubscription {
    /// A member that goes away without closing (a crashed consumer) gives its
    /// unsettled deliveries back to the group.
    fn drop(&mut self) {
        self.release_all();
    }
}
