//! State shared by the pipeline, the lag sampler and the HTTP listener.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::lag::orphans::Orphans;

/// Stall time before an unowned backlog counts as orphaned, until the pipeline sets it.
const DEFAULT_ORPHAN_STALL: Duration = Duration::from_secs(25);

/// Counters of one aggregator instance (also exported as Prometheus metrics).
#[derive(Debug, Default)]
pub struct AggregatorStats {
    /// Messages read from Kafka.
    pub consumed: AtomicU64,
    /// Rows inserted into ClickHouse.
    pub inserted: AtomicU64,
    /// Messages skipped because ClickHouse already held them.
    pub skipped_stored: AtomicU64,
    /// Messages that were not valid usage events (dead-lettered).
    pub undecodable: AtomicU64,
    /// Dead letters stored (undecodable messages and rows ClickHouse refused).
    pub dead_letters: AtomicU64,
    /// Inserts done.
    pub batches: AtomicU64,
    /// Rebalances seen.
    pub rebalances: AtomicU64,
    /// `proxy_seq` gaps counted.
    pub gaps: AtomicU64,
    /// `proxy_seq` duplicates counted.
    pub duplicates: AtomicU64,
    /// Group rejoins forced because partitions were orphaned.
    pub rejoins: AtomicU64,
}

impl AggregatorStats {
    /// Add `n` to a counter.
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Everything the listener and the lag sampler read.
#[derive(Debug, Default)]
pub struct Shared {
    /// Counters.
    pub stats: std::sync::Arc<AggregatorStats>,
    /// The consume loop is running.
    pub running: AtomicBool,
    /// The last ClickHouse call succeeded.
    pub clickhouse_ok: AtomicBool,
    /// Message of the last ClickHouse failure (empty when healthy).
    pub last_error: Mutex<String>,
    /// Partitions of the topic (0 until the first metadata answer).
    pub topic_partitions: AtomicUsize,
    /// `proxy_seq` gaps can be judged now: this instance owns every partition and none lags
    /// so far that one proxy's events could be more than half a gap window apart (set by the
    /// lag sampler, cleared at every rebalance).
    pub gaps_reliable: AtomicBool,
    /// Partitions assigned to this instance.
    pub assigned: Mutex<Vec<i32>>,
    /// Next offset to store per assigned partition (committed position), as far as known.
    pub positions: Mutex<HashMap<i32, i64>>,
    /// Partitions with a backlog that no member of the group consumes (set by the lag
    /// sampler; the pipeline rejoins the group when not empty).
    pub orphans: Mutex<Orphans>,
    /// How long (ms) an unowned backlog may stand still before it counts as orphaned; 0 for
    /// the default (set by the pipeline from the session timeout).
    pub orphan_stall_ms: AtomicU64,
}

impl Shared {
    /// Record the result of a ClickHouse call for `/readyz`.
    pub fn clickhouse_result<T, E: std::fmt::Display>(&self, result: &Result<T, E>) {
        let ok = result.is_ok();
        self.clickhouse_ok.store(ok, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            match result {
                Ok(_) => last.clear(),
                Err(e) => *last = e.to_string(),
            }
        }
    }

    /// How long an unowned backlog may stand still before it counts as orphaned.
    pub fn orphan_stall(&self) -> Duration {
        match self.orphan_stall_ms.load(Ordering::Relaxed) {
            0 => DEFAULT_ORPHAN_STALL,
            ms => Duration::from_millis(ms),
        }
    }

    /// Why the instance is not ready, if it is not.
    pub fn not_ready(&self) -> Option<String> {
        if !self.running.load(Ordering::Relaxed) {
            return Some("consume loop not running".into());
        }
        if !self.clickhouse_ok.load(Ordering::Relaxed) {
            let last = self
                .last_error
                .lock()
                .map(|l| l.clone())
                .unwrap_or_default();
            return Some(format!("ClickHouse failing: {last}"));
        }
        if let Ok(o) = self.orphans.lock() {
            if !o.partitions.is_empty() {
                return Some(format!(
                    "partitions {:?} have unconsumed events and no consumer for {} s; \
                     rejoining the consumer group",
                    o.partitions,
                    o.stalled_for.as_secs()
                ));
            }
        }
        None
    }
}
