//! Deliveries handed out and not settled yet: one table per subscription, which issues
//! the delivery tags and tells a settlement it does not know (settled twice, or handed
//! out by another subscription). Every server backend keeps its own per-delivery state
//! in it. The embedded broker keeps a group's deliveries with the group's other state
//! under its topic's lock instead (a key held by one member holds it for all), and
//! checks there that a settlement is of the settling member's delivery.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use rustc_hash::FxHashMap;

use super::{DeliveryTag, Error, ErrorKind, Result, Settlement};

pub(crate) struct InFlightTable<T> {
    next_tag: AtomicU64,
    entries: Mutex<FxHashMap<u64, T>>,
}

impl<T> Default for InFlightTable<T> {
    fn default() -> Self {
        InFlightTable {
            next_tag: AtomicU64::new(1),
            entries: Mutex::new(FxHashMap::default()),
        }
    }
}

/// How many settlements of a batch were of deliveries the table did not know.
pub(crate) struct Unknown(usize);

impl Unknown {
    /// An error if some settlements were of deliveries the table did not know (settled
    /// twice, or from another subscription); the known ones are settled all the same.
    pub(crate) fn error(&self) -> Result<()> {
        if self.0 == 0 {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Broker,
            format!(
                "{} deliveries settled twice or not from this subscription",
                self.0
            ),
        )
        .with_operation("settle"))
    }
}

impl<T> InFlightTable<T> {
    /// Keeps `state` until the delivery is settled; the tag identifies it.
    pub(crate) fn insert(&self, state: T) -> DeliveryTag {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(tag, state);
        DeliveryTag(tag, 0)
    }

    /// Keeps the states of a batch of deliveries under one lock.
    pub(crate) fn batch(&self) -> InFlightBatch<'_, T> {
        InFlightBatch {
            next_tag: &self.next_tag,
            entries: self.lock(),
        }
    }

    /// Takes the states of a batch of settled deliveries, under one lock.
    pub(crate) fn take(
        &self,
        settlements: Vec<(DeliveryTag, Settlement)>,
    ) -> (Vec<(T, Settlement)>, Unknown) {
        let mut known = Vec::with_capacity(settlements.len());
        let unknown = self.take_each(settlements, |state, settlement| {
            known.push((state, settlement))
        });
        (known, unknown)
    }

    /// Passes each settled delivery's state and settlement to `each`, under one lock,
    /// without collecting them first (a state holding an envelope is costly to move).
    pub(crate) fn take_each(
        &self,
        settlements: Vec<(DeliveryTag, Settlement)>,
        mut each: impl FnMut(T, Settlement),
    ) -> Unknown {
        let mut unknown = 0;
        let mut entries = self.lock();
        for (tag, settlement) in settlements {
            match entries.remove(&tag.0) {
                Some(state) => each(state, settlement),
                None => unknown += 1,
            }
        }
        Unknown(unknown)
    }

    /// Takes every unsettled delivery's state (a closing subscription's).
    pub(crate) fn drain(&self) -> Vec<T> {
        self.lock().drain().map(|(_, state)| state).collect()
    }

    /// The least `key` of the unsettled deliveries' states that have one.
    #[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))] // read by RabbitMQ only
    pub(crate) fn least<K: Ord>(&self, key: impl Fn(&T) -> Option<K>) -> Option<K> {
        self.lock().values().filter_map(key).min()
    }

    /// Whether an unsettled delivery's state matches.
    pub(crate) fn any(&self, matches: impl Fn(&T) -> bool) -> bool {
        self.lock().values().any(matches)
    }

    fn lock(&self) -> MutexGuard<'_, FxHashMap<u64, T>> {
        // A panic while the lock was held left the map consistent (single operations).
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The table, locked while a batch of deliveries is recorded.
pub(crate) struct InFlightBatch<'a, T> {
    next_tag: &'a AtomicU64,
    entries: MutexGuard<'a, FxHashMap<u64, T>>,
}

impl<T> InFlightBatch<'_, T> {
    /// Keeps `state` until the delivery is settled; the tag identifies it.
    pub(crate) fn insert(&mut self, state: T) -> DeliveryTag {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        self.entries.insert(tag, state);
        DeliveryTag(tag, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_settle_once_and_unknown_ones_are_reported() {
        let table = InFlightTable::default();
        let a = table.insert("a");
        let b = table.insert("b");
        assert_ne!(a, b);
        let (known, unknown) = table.take(vec![(a, Settlement::Ack), (a, Settlement::Ack)]);
        assert_eq!(known.len(), 1);
        assert_eq!(known[0].0, "a");
        let err = unknown.error().unwrap_err();
        assert!(
            err.to_string().contains("1 deliveries settled twice"),
            "{err}"
        );
        let foreign = InFlightTable::<&str>::default();
        let (known, unknown) = foreign.take(vec![(DeliveryTag(99, 0), Settlement::Ack)]);
        assert!(known.is_empty() && unknown.error().is_err());
        let c = table.batch().insert("c");
        assert!(table.any(|s| *s == "b") && table.any(|s| *s == "c"));
        assert_eq!(table.take(vec![(c, Settlement::Ack)]).0.len(), 1);
        assert_eq!(table.drain(), vec!["b"]);
        assert!(!table.any(|_| true));
    }
}
