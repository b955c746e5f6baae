//! Which offsets may be committed: per partition, everything before the first message
//! still being handled (or, with none in flight, everything delivered).

use std::collections::BTreeSet;
use std::sync::Arc;

use rustc_hash::FxHashMap;

/// A topic partition.
pub(crate) type Partition = (Arc<str>, i32);

#[derive(Default)]
struct PartitionOffsets {
    in_flight: BTreeSet<i64>,
    /// One past the highest offset delivered.
    next: i64,
    /// The offset last committed (or handed out to be committed).
    committed: i64,
}

impl PartitionOffsets {
    fn commit_point(&self) -> i64 {
        self.in_flight.first().copied().unwrap_or(self.next)
    }
}

/// Offsets of the partitions a consumer owns.
#[derive(Default)]
pub(crate) struct OffsetTracker {
    partitions: FxHashMap<Partition, PartitionOffsets>,
}

impl OffsetTracker {
    /// `offset` was handed to a handler.
    pub(crate) fn delivered(&mut self, partition: &Partition, offset: i64) {
        let p = self.partitions.entry(partition.clone()).or_default();
        if p.next == 0 && p.in_flight.is_empty() && p.committed == 0 {
            // First sight of the partition: nothing before `offset` is ours to commit.
            p.committed = offset;
        }
        p.in_flight.insert(offset);
        p.next = p.next.max(offset + 1);
    }

    /// `offset` is done (handled, retried elsewhere or dead-lettered). Offsets of a
    /// partition no longer owned are ignored.
    pub(crate) fn finished(&mut self, partition: &Partition, offset: i64) {
        if let Some(p) = self.partitions.get_mut(partition) {
            p.in_flight.remove(&offset);
        }
    }

    /// Partitions whose commit point moved, with the offset to commit (the next to
    /// read); marks them committed.
    pub(crate) fn take_commits(&mut self) -> Vec<(Partition, i64)> {
        let mut out = Vec::new();
        for (key, p) in self.partitions.iter_mut() {
            let point = p.commit_point();
            if point > p.committed {
                p.committed = point;
                out.push((key.clone(), point));
            }
        }
        out
    }

    /// Like `take_commits`, for the given partitions only, which are then forgotten
    /// (they were revoked: their in-flight messages belong to the next owner).
    pub(crate) fn revoke(&mut self, revoked: &[Partition]) -> Vec<(Partition, i64)> {
        let mut out = Vec::new();
        for key in revoked {
            if let Some(p) = self.partitions.remove(key) {
                let point = p.commit_point();
                if point > p.committed {
                    out.push((key.clone(), point));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_stop_at_the_first_unfinished_offset() {
        let p: Partition = (Arc::from("t"), 0);
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            t.delivered(&p, o);
        }
        assert!(t.take_commits().is_empty(), "nothing finished yet");
        t.finished(&p, 11);
        t.finished(&p, 12);
        assert!(t.take_commits().is_empty(), "10 is still running");
        t.finished(&p, 10);
        assert_eq!(t.take_commits(), vec![(p.clone(), 13)]);
        t.finished(&p, 14);
        assert!(t.take_commits().is_empty(), "13 is still running");
        t.finished(&p, 13);
        assert_eq!(t.take_commits(), vec![(p.clone(), 15)]);
    }

    #[test]
    fn revoked_partitions_commit_their_prefix_and_are_forgotten() {
        let p: Partition = (Arc::from("t"), 1);
        let mut t = OffsetTracker::default();
        t.delivered(&p, 0);
        t.delivered(&p, 1);
        t.finished(&p, 0);
        assert_eq!(t.revoke(std::slice::from_ref(&p)), vec![(p.clone(), 1)]);
        t.finished(&p, 1);
        assert!(
            t.take_commits().is_empty(),
            "a revoked partition is not committed"
        );
    }
}
