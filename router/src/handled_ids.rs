//! The ids a moving channel's group handled last in this process: a copy of a message
//! on both brokers (a dead letter replayed onto the new broker and not yet removed from
//! the old one when the process stopped) is acknowledged without calling the handler.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::sync::Mutex;

use anybroker_brokers::MessageId;
use rustc_hash::FxHashMap;

/// The last `capacity` ids claimed, oldest forgotten first. Memory is bounded by the
/// capacity: about 100 bytes per id (the id's own allocation, a map entry and a queue
/// entry).
pub(crate) struct HandledIds {
    capacity: usize,
    state: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    /// Each id in the window with the number of the claim that put it there.
    ids: FxHashMap<MessageId, u64>,
    /// Claims in order; an entry whose number no longer matches `ids` was released or
    /// claimed again, and forgetting it forgets nothing.
    order: VecDeque<(u64, MessageId)>,
    claims: u64,
}

impl HandledIds {
    pub(crate) fn new(capacity: usize) -> Self {
        HandledIds {
            capacity,
            state: Mutex::new(Window::default()),
        }
    }

    /// Claims `id` for a handling: false when it is in the window already (handled, or
    /// being handled by another member), so this delivery is a copy.
    pub(crate) fn claim(&self, id: &MessageId) -> bool {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let w = &mut *guard;
        let claim = w.claims + 1;
        match w.ids.entry(id.clone()) {
            Entry::Occupied(_) => return false,
            Entry::Vacant(v) => {
                v.insert(claim);
            }
        }
        w.claims = claim;
        w.order.push_back((claim, id.clone()));
        while w.order.len() > self.capacity {
            let Some((old, old_id)) = w.order.pop_front() else {
                break;
            };
            if w.ids.get(&old_id) == Some(&old) {
                w.ids.remove(&old_id);
            }
        }
        true
    }

    /// Gives `id` back after a handling that did not finish it (a retry or a dead
    /// letter): its next delivery, or its replay, is handled.
    pub(crate) fn release(&self, id: &str) {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        w.ids.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> MessageId {
        MessageId::from(s)
    }

    #[test]
    fn a_claimed_id_is_a_copy_until_released() {
        let w = HandledIds::new(4);
        assert!(w.claim(&id("a")));
        assert!(!w.claim(&id("a")));
        w.release("a");
        assert!(w.claim(&id("a")));
    }

    #[test]
    fn the_oldest_ids_are_forgotten_beyond_the_capacity() {
        let w = HandledIds::new(3);
        for i in 0..5 {
            assert!(w.claim(&id(&i.to_string())));
        }
        // 0 and 1 forgotten, 2..5 kept.
        assert!(w.claim(&id("0")));
        assert!(!w.claim(&id("3")));
        assert!(!w.claim(&id("4")));
        let state = w.state.lock().unwrap();
        assert!(state.ids.len() <= 3 && state.order.len() <= 3);
    }

    #[test]
    fn an_id_claimed_again_is_not_forgotten_by_its_older_entry() {
        let w = HandledIds::new(3);
        assert!(w.claim(&id("a")));
        w.release("a");
        assert!(w.claim(&id("b")));
        assert!(w.claim(&id("a")));
        // Pushes out a's first entry: a's second claim stays.
        assert!(w.claim(&id("c")));
        assert!(!w.claim(&id("a")));
    }
}
