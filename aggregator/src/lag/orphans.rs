//! Orphaned partitions: unconsumed events that no member of the group reads.
//!
//! A partition this instance does not own should be owned by another member, whose commits
//! move the group's committed offset. When a partition has events past its committed offset
//! and that offset stays put for longer than `stall`, nobody consumes it. Seen with Tansu: an
//! aggregator that joins while the group still lists a SIGKILLed member (the old leader) gets
//! an empty assignment, and the dead member is later dropped without a new rebalance, so its
//! partitions stay unowned until some member rejoins. The pipeline then rejoins the group
//! ([`crate::pipeline`]) and `/readyz` reports it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One partition as the lag sampler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionView {
    /// Partition number.
    pub partition: i32,
    /// The group's committed offset (`None` when nothing was committed).
    pub committed: Option<i64>,
    /// Low watermark (first offset still in the log).
    pub low: i64,
    /// High watermark (offset of the next message).
    pub high: i64,
}

/// Orphaned partitions found by one [`OrphanWatch::observe`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Orphans {
    /// The partitions, ascending.
    pub partitions: Vec<i32>,
    /// How long the oldest of them has not moved.
    pub stalled_for: Duration,
}

/// Remembers since when each unowned partition with a backlog has not moved.
#[derive(Debug)]
pub struct OrphanWatch {
    stall: Duration,
    since: HashMap<i32, (Option<i64>, Instant)>,
}

impl OrphanWatch {
    /// A partition counts as orphaned after `stall` without progress.
    pub fn new(stall: Duration) -> Self {
        Self {
            stall,
            since: HashMap::new(),
        }
    }

    /// Update with a sample taken at `now`: `assigned` are this instance's partitions (they
    /// are read here, so never orphaned), `views` the other partitions of the topic.
    pub fn observe(&mut self, now: Instant, assigned: &[i32], views: &[PartitionView]) -> Orphans {
        let mut keep = HashMap::new();
        let mut out = Orphans::default();
        for v in views.iter().filter(|v| !assigned.contains(&v.partition)) {
            let next = v.committed.unwrap_or(v.low).max(v.low);
            if v.high <= next {
                continue;
            }
            let since = match self.since.get(&v.partition) {
                Some(&(committed, since)) if committed == v.committed => since,
                _ => now,
            };
            keep.insert(v.partition, (v.committed, since));
            let idle = now.saturating_duration_since(since);
            if idle >= self.stall {
                out.partitions.push(v.partition);
                out.stalled_for = out.stalled_for.max(idle);
            }
        }
        self.since = keep;
        out.partitions.sort_unstable();
        out
    }

    /// Forget the history (after a rejoin, so a new owner gets a full `stall` to start).
    pub fn reset(&mut self) {
        self.since.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(partition: i32, committed: Option<i64>, high: i64) -> PartitionView {
        PartitionView {
            partition,
            committed,
            low: 0,
            high,
        }
    }

    #[test]
    fn a_backlog_without_progress_becomes_orphaned_after_the_stall() {
        let stall = Duration::from_secs(20);
        let mut w = OrphanWatch::new(stall);
        let t0 = Instant::now();
        let views = [view(0, Some(10), 50), view(1, None, 5), view(2, Some(7), 7)];
        assert!(w.observe(t0, &[], &views).partitions.is_empty());
        let o = w.observe(t0 + Duration::from_secs(19), &[], &views);
        assert!(o.partitions.is_empty());
        let o = w.observe(t0 + Duration::from_secs(21), &[], &views);
        assert_eq!(o.partitions, vec![0, 1], "partition 2 has no backlog");
        assert_eq!(o.stalled_for, Duration::from_secs(21));
    }

    #[test]
    fn progress_or_ownership_clears_a_partition() {
        let mut w = OrphanWatch::new(Duration::from_secs(5));
        let t0 = Instant::now();
        w.observe(t0, &[], &[view(0, Some(1), 9), view(1, Some(1), 9)]);
        // Partition 0 moved (another member commits), partition 1 is ours now.
        let o = w.observe(
            t0 + Duration::from_secs(6),
            &[1],
            &[view(0, Some(4), 12), view(1, Some(1), 9)],
        );
        assert!(o.partitions.is_empty());
        let o = w.observe(
            t0 + Duration::from_secs(12),
            &[],
            &[view(0, Some(4), 12), view(1, Some(1), 9)],
        );
        assert_eq!(
            o.partitions,
            vec![0],
            "0 stalled 6 s since its last move; 1 restarts"
        );
        w.reset();
        let o = w.observe(t0 + Duration::from_secs(13), &[], &[view(0, Some(4), 12)]);
        assert!(o.partitions.is_empty());
    }

    #[test]
    fn a_caught_up_partition_is_never_orphaned() {
        let mut w = OrphanWatch::new(Duration::ZERO);
        let o = w.observe(
            Instant::now(),
            &[],
            &[view(0, Some(9), 9), view(1, None, 0)],
        );
        assert!(o.partitions.is_empty());
    }
}
