//! State of one channel in the embedded broker, guarded by one mutex.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use rustc_hash::FxHashMap as HashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::core::{Delivery, DeliveryTag, Envelope};

/// Gives `envelope` a payload of its own before it is kept long (a dead letter until
/// it is replayed, a delayed message until it is due): its payload may be a slice of a
/// buffer other payloads share (the router encodes into such buffers, clients read
/// into them), which it would otherwise keep whole.
pub(crate) fn keep_apart(envelope: &mut Envelope) {
    envelope.payload = bytes::Bytes::copy_from_slice(&envelope.payload);
}

/// One channel: its log, its groups, delayed messages and dead letters.
pub(crate) struct Topic {
    pub(crate) state: Mutex<TopicState>,
    /// Woken whenever something may have become deliverable or a deadline moved.
    pub(crate) notify: Notify,
    /// Woken when groups took messages from the log: a publisher waiting for room.
    pub(crate) room: Notify,
    /// Routers that announced they use the channel, and have not withdrawn.
    pub(crate) announced: std::sync::atomic::AtomicU64,
}

impl crate::core::RouterCount for Topic {
    fn routers(&self) -> &std::sync::atomic::AtomicU64 {
        &self.announced
    }
}

impl Topic {
    pub(crate) fn new() -> Self {
        Topic {
            state: Mutex::new(TopicState::default()),
            notify: Notify::new(),
            room: Notify::new(),
            announced: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Appends `envelope` to the log and wakes the consumers, unless the log is at
    /// `max_backlog`: then the envelope comes back, for the caller to wait for room.
    pub(crate) fn try_append(&self, envelope: Envelope, max_backlog: usize) -> Option<Envelope> {
        let receiver_waits = {
            let mut state = self.lock();
            if state.is_full(max_backlog) {
                return Some(envelope);
            }
            state.log.push_back(envelope);
            state.receivers_waiting > 0
        };
        // No one to wake while every member is busy: the next receive finds it.
        if receiver_waits {
            self.notify.notify_waiters();
        }
        None
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, TopicState> {
        // A panic while holding the lock leaves consistent state (no partial updates
        // span an unwind point), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Work a channel has left (see [`TopicState::work_until`]).
pub(crate) enum Work {
    /// A message is being handled, or waits for a group's member.
    Busy,
    /// The earliest retry or delayed message falls due then.
    Due(Instant),
}

/// A message waiting for a time: a delayed publish or a retry's backoff.
pub(crate) struct Timed {
    pub(crate) due: Instant,
    pub(crate) seq: u64,
    pub(crate) envelope: Envelope,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

#[derive(Default)]
pub(crate) struct TopicState {
    /// `log[i]` has offset `base + i`.
    pub(crate) log: VecDeque<Envelope>,
    pub(crate) base: u64,
    pub(crate) groups: HashMap<String, Group>,
    /// Delayed publishes, appended to the log when due.
    pub(crate) delayed: BinaryHeap<Reverse<Timed>>,
    pub(crate) dead: VecDeque<Envelope>,
    pub(crate) seq: u64,
    /// Receives that found nothing and wait on `notify` (see [`WaitingReceiver`]): a
    /// publish wakes them, and only if there are some. Counted under the lock that a
    /// receive checks the log under, so a publish either sees the count or is seen.
    pub(crate) receivers_waiting: usize,
}

/// A receive counted in [`TopicState::receivers_waiting`] while it waits, and
/// uncounted when the wait ends or the receive is dropped.
pub(crate) struct WaitingReceiver<'t>(pub(crate) &'t Topic);

impl Drop for WaitingReceiver<'_> {
    fn drop(&mut self) {
        self.0.lock().receivers_waiting -= 1;
    }
}

pub(crate) struct InFlight {
    pub(crate) envelope: Envelope,
    pub(crate) member: u64,
}

/// A consumer group's position and the messages it owes its members.
#[derive(Default)]
pub(crate) struct Group {
    pub(crate) cursor: u64,
    /// Released messages and retries that came due; served before the log.
    pub(crate) ready: VecDeque<Envelope>,
    /// Retries waiting for their backoff.
    pub(crate) waiting: BinaryHeap<Reverse<Timed>>,
    pub(crate) in_flight: HashMap<u64, InFlight>,
    /// Keys currently held by a message of this group, with the messages of that key
    /// that arrived meanwhile, in log order.
    pub(crate) key_queues: HashMap<Arc<str>, VecDeque<Envelope>>,
    /// Messages waiting in `key_queues`: taken from the log but not handed out, so
    /// they count towards the backlog bound like the log does.
    pub(crate) parked: usize,
    pub(crate) next_tag: u64,
}

impl TopicState {
    /// At the backlog bound: the channel holds `max_backlog` messages some group has
    /// not handed out, and some group consumes the channel.
    pub(crate) fn is_full(&self, max_backlog: usize) -> bool {
        max_backlog > 0 && !self.groups.is_empty() && self.held() >= max_backlog
    }

    /// Messages held for the groups and not handed out yet: the log (trimmed to what
    /// the slowest group has not taken) and the largest set of messages a group
    /// parked behind a busy key. Parked messages count, or a slow key would let the
    /// channel grow without bound.
    pub(crate) fn held(&self) -> usize {
        let parked = self.groups.values().map(|g| g.parked).max().unwrap_or(0);
        self.log.len() + parked
    }

    /// What is left to do on this channel up to `until`: a message being handled or
    /// waiting for a group that exists (`Busy`), else the earliest retry or delayed
    /// message due by then (`Due`), else nothing.
    pub(crate) fn work_until(&self, until: Instant) -> Option<Work> {
        let end = self.base + self.log.len() as u64;
        let busy = self.groups.values().any(|g| {
            !g.in_flight.is_empty() || !g.ready.is_empty() || g.parked > 0 || g.cursor < end
        });
        if busy {
            return Some(Work::Busy);
        }
        let retries = self.groups.values().filter_map(|g| g.waiting.peek());
        self.delayed
            .peek()
            .into_iter()
            .chain(retries)
            .map(|t| t.0.due)
            .filter(|&due| due <= until)
            .min()
            .map(Work::Due)
    }

    pub(crate) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Appends delayed messages whose time has come to the log.
    pub(crate) fn promote_due(&mut self, now: Instant) {
        while self.delayed.peek().is_some_and(|t| t.0.due <= now) {
            let Reverse(timed) = self.delayed.pop().expect("peeked");
            self.log.push_back(timed.envelope);
        }
    }

    /// The earliest time something timed becomes deliverable for `group`.
    pub(crate) fn next_deadline(&self, group: &str) -> Option<Instant> {
        let delayed = self.delayed.peek().map(|t| t.0.due);
        let retry = self
            .groups
            .get(group)
            .and_then(|g| g.waiting.peek().map(|t| t.0.due));
        match (delayed, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes up to `max` deliveries for `member` of `group` into `out`; returns how many.
    pub(crate) fn take(
        &mut self,
        group_name: &str,
        member: u64,
        max: usize,
        now: Instant,
        out: &mut Vec<Delivery>,
    ) -> usize {
        self.promote_due(now);
        let only_group = self.groups.len() == 1;
        let group = self.groups.get_mut(group_name).expect("group exists");
        while group.waiting.peek().is_some_and(|t| t.0.due <= now) {
            let Reverse(timed) = group.waiting.pop().expect("peeked");
            group.ready.push_back(timed.envelope);
        }
        // Room for all it can hand out, so the batch never grows (each growth copies
        // every delivery taken so far).
        let in_log = (self.base + self.log.len() as u64).saturating_sub(group.cursor) as usize;
        out.reserve(max.min(group.ready.len() + in_log));
        let start = out.len();
        let max = start + max;
        // Ready messages already hold their key.
        while out.len() < max {
            let Some(envelope) = group.ready.pop_front() else {
                break;
            };
            out.push(group.hand_out(envelope, member));
        }
        let mut taken_from_log = false;
        while out.len() < max && group.cursor < self.base + self.log.len() as u64 {
            let envelope = if only_group {
                // The sole group's cursor is always at the log's start: move, not copy.
                debug_assert_eq!(group.cursor, self.base);
                self.base += 1;
                self.log.pop_front().expect("cursor inside the log")
            } else {
                taken_from_log = true;
                self.log[(group.cursor - self.base) as usize].clone()
            };
            group.cursor += 1;
            if let Some(key) = &envelope.key {
                if let Some(queue) = group.key_queues.get_mut(key) {
                    queue.push_back(envelope);
                    group.parked += 1;
                    continue;
                }
                group.key_queues.insert(key.clone(), VecDeque::new());
            }
            out.push(group.hand_out(envelope, member));
        }
        if taken_from_log {
            self.trim();
        }
        out.len() - start
    }

    /// Drops log entries every group has taken.
    pub(crate) fn trim(&mut self) {
        let Some(min) = self.groups.values().map(|g| g.cursor).min() else {
            return;
        };
        while self.base < min {
            self.log.pop_front();
            self.base += 1;
        }
    }
}

impl Group {
    pub(crate) fn starting_at(cursor: u64) -> Self {
        Group {
            cursor,
            ..Default::default()
        }
    }

    fn hand_out(&mut self, envelope: Envelope, member: u64) -> Delivery {
        self.next_tag += 1;
        let tag = self.next_tag;
        self.in_flight.insert(
            tag,
            InFlight {
                envelope: envelope.clone(),
                member,
            },
        );
        Delivery::new(envelope, DeliveryTag(tag, member))
    }

    /// A keyed message is done (acked or dead-lettered): its key passes to the next
    /// message of that key, or is freed. True when a parked message became ready.
    pub(crate) fn release_key(&mut self, key: &Arc<str>) -> bool {
        let Some(queue) = self.key_queues.get_mut(key) else {
            return false;
        };
        match queue.pop_front() {
            Some(next) => {
                self.parked -= 1;
                self.ready.push_back(next);
                true
            }
            None => {
                self.key_queues.remove(key);
                false
            }
        }
    }

    /// Gives every in-flight delivery of `member` back to the group, in order.
    pub(crate) fn release_member(&mut self, member: u64) -> usize {
        let mut tags: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.member == member)
            .map(|(t, _)| *t)
            .collect();
        tags.sort_unstable();
        for tag in tags.iter().rev() {
            let f = self.in_flight.remove(tag).expect("listed");
            self.ready.push_front(f.envelope);
        }
        tags.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_apart_a_payload_is_its_own_and_reads_the_same() {
        let shared = bytes::Bytes::from_static(b"{\"seq\":1}{\"seq\":2}");
        let mut envelope = Envelope::new("c", shared.slice(0..9));
        keep_apart(&mut envelope);
        assert_eq!(&envelope.payload[..], b"{\"seq\":1}");
        let buffer = shared.as_ptr_range();
        assert!(
            !buffer.contains(&envelope.payload.as_ptr()),
            "the payload still points into the shared buffer"
        );
    }
}
