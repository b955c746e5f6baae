//! Consuming: a subscription hands out deliveries and takes their settlements.

use std::time::Duration;

use async_trait::async_trait;

use super::{DeadLetter, Envelope, Result, RetryPolicy};

/// Identifies one delivery within its subscription; only the backend reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryTag(pub(crate) u64, pub(crate) u64);

/// A message handed to a consumer, to be settled exactly once.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Delivery {
    /// The message, with `attempt` set to this delivery's attempt number.
    pub envelope: Envelope,
    /// What to pass back to [`Subscription::settle`].
    pub tag: DeliveryTag,
}

impl Delivery {
    /// A delivery of `envelope` known to its backend by `tag`.
    pub fn new(envelope: Envelope, tag: DeliveryTag) -> Self {
        Delivery { envelope, tag }
    }
}

/// A batch of up to `max` deliveries begun with `first`, with room for the rest up
/// front: grown by doubling, filling it copied every delivery (~160 bytes) several
/// times over. The room is capped so a large window does not allocate past malloc's
/// small-block range when only a few messages are ready.
// Used by the server backends only: a build with none of their features has no user.
#[allow(dead_code)]
pub(crate) fn batch_of(first: Delivery, max: usize) -> Vec<Delivery> {
    const MOST_ROOM: usize = 256;
    let mut batch = Vec::with_capacity(max.clamp(1, MOST_ROOM));
    batch.push(first);
    batch
}

/// How a delivery ends.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Settlement {
    /// Handled: acknowledge (commit) it.
    Ack,
    /// Failed, try again: redeliver with attempt + 1 no earlier than `delay`.
    Retry {
        /// The backoff before the next attempt.
        delay: Duration,
        /// The error text of the failed attempt.
        error: String,
    },
    /// Give up: write it to the dead-letter destination, then acknowledge it.
    DeadLetter(DeadLetter),
    /// Not handled: give it back to the group unchanged (same attempt), e.g. at shutdown.
    Release,
    /// A request was handled: send the reply (a payload, or the handler's error text)
    /// to the requester.
    Reply(std::result::Result<bytes::Bytes, String>),
}

/// Settles deliveries of a fire-and-forget mode, which has nothing to acknowledge and
/// cannot retry, dead-letter or release: acks succeed, anything else is reported as
/// `Unsupported` (those messages are dropped, and the caller logs it).
pub fn settle_fire_and_forget(settlements: &[(DeliveryTag, Settlement)], mode: &str) -> Result<()> {
    let dropped = settlements
        .iter()
        .filter(|(_, s)| !matches!(s, Settlement::Ack))
        .count();
    if dropped > 0 {
        return Err(crate::Error::unsupported(format!(
            "{dropped} messages not handled and dropped: {mode} cannot retry, dead-letter or release"
        )));
    }
    Ok(())
}

/// Who subscribes to an open channel: group, and how failed messages come back.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Consumers in one group share messages; each group gets all.
    pub group: String,
    /// The channel's retry policy (some backends build their retry topology from it).
    pub retry: RetryPolicy,
    /// Deliveries the consumer may hold unsettled at once.
    pub prefetch: usize,
}

impl SubscribeOptions {
    /// Options for a member of `group` with the default policy and a prefetch of 256.
    pub fn new(group: impl Into<String>) -> Self {
        SubscribeOptions {
            group: group.into(),
            retry: RetryPolicy::default(),
            prefetch: 256,
        }
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the prefetch window.
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }
}

/// One consumer's view of a channel within a group. Deliveries not settled when the
/// subscription closes are released to other members of the group: never lost.
#[async_trait]
pub trait Subscription: Send + Sync {
    /// Waits for at least one delivery and returns up to `max`. Returns an empty vector
    /// once the subscription is closed.
    async fn recv(&self, max: usize) -> Result<Vec<Delivery>>;

    /// Hands out the deliveries that are ready now, without any wait: appends up to
    /// `max` of them to `into` and returns how many. 0 says none is ready now (or the
    /// subscription is closed), and [`recv`](Self::recv) waits for them. The consumer
    /// tries this first, so a batch that needs no wait costs neither a future nor a
    /// vector of its own. An error appends nothing. Default: 0, every batch comes
    /// from `recv`.
    fn recv_ready(&self, max: usize, into: &mut Vec<Delivery>) -> Result<usize> {
        let _ = (max, into);
        Ok(0)
    }

    /// Settles deliveries. Each tag must be settled once.
    async fn settle(&self, settlements: Vec<(DeliveryTag, Settlement)>) -> Result<()>;

    /// Settles `settlements` now if the backend does so without any wait (the
    /// embedded broker): takes them all out of the vector, which keeps its room for
    /// the next ones, and returns the result. Otherwise leaves them, untouched, for
    /// [`settle`](Self::settle) and returns `None`. Default: leaves them.
    fn settle_at_once(
        &self,
        settlements: &mut Vec<(DeliveryTag, Settlement)>,
    ) -> Option<Result<()>> {
        let _ = settlements;
        None
    }

    /// Stops delivering: a pending `recv` returns empty; unsettled deliveries are
    /// released to the group.
    async fn close(&self) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subscription with only the required methods.
    struct RequiredOnly;

    #[async_trait]
    impl Subscription for RequiredOnly {
        async fn recv(&self, _max: usize) -> Result<Vec<Delivery>> {
            Ok(Vec::new())
        }
        async fn settle(&self, _settlements: Vec<(DeliveryTag, Settlement)>) -> Result<()> {
            Ok(())
        }
        async fn close(&self) -> Result<()> {
            Ok(())
        }
    }

    /// A backend that does not hand out or settle without a wait leaves the caller's
    /// vectors as they were, so the consumer goes on to `recv` and `settle` with
    /// nothing lost.
    #[test]
    fn without_the_at_once_methods_nothing_is_taken() {
        let tag = DeliveryTag(1, 2);
        let envelope = Envelope::new("orders", b"{}".to_vec());
        let mut ready = vec![Delivery::new(envelope, tag)];
        assert_eq!(RequiredOnly.recv_ready(10, &mut ready).unwrap(), 0);
        assert_eq!(ready.len(), 1);
        let mut settlements = vec![(tag, Settlement::Ack)];
        assert!(RequiredOnly.settle_at_once(&mut settlements).is_none());
        assert_eq!(settlements, [(tag, Settlement::Ack)]);
    }
}
