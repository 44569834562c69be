//! State shared by the publishing task, the replayer and librdkafka's delivery callbacks.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use tokio::sync::Notify;
use tollgate_schemas::telemetry;

use super::PublisherStats;
use crate::usage::spool::{Batch, Spool, SpoolError};

/// Drop reasons (bounded label values of `USAGE_EVENTS_DROPPED`).
pub(super) mod reason {
    /// The in-memory queue was full (or closed).
    pub const QUEUE_FULL: &str = "queue_full";
    /// The spool is full, or disabled (a disabled spool has no room).
    pub const SPOOL_FULL: &str = "spool_full";
    /// The event could not be encoded.
    pub const ENCODE: &str = "encode";
    /// The spool could not be written or read back.
    pub const SPOOL_IO: &str = "spool_io";
}

/// Count a lost event in the stats and the metric.
pub(super) fn count_drop(stats: &PublisherStats, reason: &'static str, n: u64) {
    stats.dropped.fetch_add(n, Ordering::Relaxed);
    metrics::counter!(telemetry::USAGE_EVENTS_DROPPED, "reason" => reason).increment(n);
}

pub(super) struct Shared {
    pub(super) stats: Arc<PublisherStats>,
    /// `None`: spool disabled. `Some(None)`: closed at shutdown.
    spool: Option<Mutex<Option<Spool>>>,
    /// The spool holds events not yet replayed: new events queue up behind them.
    backlog: AtomicBool,
    /// Kafka failed us and we have not recovered since (for one log line per outage).
    degraded: AtomicBool,
    /// 1 + the newest producer generation that had a failed delivery (0: none).
    failed_generation: AtomicU64,
    /// Wakes the replayer when something was spooled.
    pub(super) wake: Notify,
    /// `tollgate_usage_events_published_total` (counted per delivery report), registered once.
    published: metrics::Counter,
}

impl Shared {
    pub(super) fn new(stats: Arc<PublisherStats>, spool: Option<Spool>) -> Self {
        let shared = Self {
            stats,
            backlog: AtomicBool::new(false),
            degraded: AtomicBool::new(false),
            failed_generation: AtomicU64::new(0),
            wake: Notify::new(),
            spool: spool.map(|s| Mutex::new(Some(s))),
            published: metrics::counter!(telemetry::USAGE_EVENTS_PUBLISHED),
        };
        shared.with_spool(|_| ());
        shared
    }

    pub(super) fn spool_enabled(&self) -> bool {
        self.spool.is_some()
    }

    /// Events wait in the spool: send new ones there too, to keep the order.
    pub(super) fn has_backlog(&self) -> bool {
        self.backlog.load(Ordering::Acquire)
    }

    fn lock(&self) -> Option<MutexGuard<'_, Option<Spool>>> {
        self.spool
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Run `f` on the open spool, then refresh gauges and the backlog flag. `None` if the spool
    /// is disabled or closed.
    pub(super) fn with_spool<R>(&self, f: impl FnOnce(&mut Spool) -> R) -> Option<R> {
        let mut guard = self.lock()?;
        let spool = guard.as_mut()?;
        let out = f(spool);
        let (events, bytes) = (spool.pending_events(), spool.pending_bytes());
        self.backlog.store(events > 0, Ordering::Release);
        self.stats.spool_events.store(events, Ordering::Relaxed);
        self.stats.spool_bytes.store(bytes, Ordering::Relaxed);
        metrics::gauge!(telemetry::USAGE_SPOOL_EVENTS).set(events as f64);
        metrics::gauge!(telemetry::USAGE_SPOOL_BYTES).set(bytes as f64);
        Some(out)
    }

    /// Write one event to the spool (counted as spooled when `fresh`), or count it dropped.
    pub(super) fn spool_event(&self, key: &[u8], value: &[u8], fresh: bool) {
        match self.with_spool(|s| s.append(key, value)) {
            Some(Ok(())) => {
                if fresh {
                    self.stats.spooled.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(telemetry::USAGE_EVENTS_SPOOLED).increment(1);
                }
                self.wake.notify_one();
            }
            None => count_drop(&self.stats, reason::SPOOL_FULL, 1),
            Some(Err(SpoolError::Full { max_bytes })) => {
                tracing::warn!(max_bytes, "usage spool full: event dropped");
                count_drop(&self.stats, reason::SPOOL_FULL, 1);
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "usage event could not be spooled: dropped");
                count_drop(&self.stats, reason::SPOOL_IO, 1);
            }
        }
    }

    /// After a partly delivered replay batch: put the failed events back at the tail, then
    /// consume the batch.
    pub(super) fn respool_and_ack(&self, batch: &Batch, failed: &[usize]) {
        let result = self.with_spool(|s| {
            let mut lost = (0, 0);
            for &i in failed {
                let ev = &batch.events[i];
                match s.append(&ev.key, &ev.value) {
                    Ok(()) => {}
                    Err(SpoolError::Full { .. }) => lost.0 += 1,
                    Err(_) => lost.1 += 1,
                }
            }
            (lost, s.ack(batch))
        });
        if let Some(((full, io), acked)) = result {
            count_drop(&self.stats, reason::SPOOL_FULL, full);
            count_drop(&self.stats, reason::SPOOL_IO, io);
            if let Err(e) = acked {
                tracing::error!(error = %e, "usage spool: consumed segment not removed");
            }
        }
    }

    /// Count events acknowledged by Kafka.
    pub(super) fn published(&self, n: u64) {
        self.stats.delivered.fetch_add(n, Ordering::Relaxed);
        self.published.increment(n);
    }

    /// Count spooled events acknowledged by Kafka.
    pub(super) fn replayed(&self, n: u64) {
        self.published(n);
        self.stats.replayed.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(telemetry::USAGE_EVENTS_REPLAYED).increment(n);
    }

    /// Kafka did not take an event: log once per outage.
    pub(super) fn note_outage(&self, cause: &dyn std::fmt::Display) {
        if !self.degraded.swap(true, Ordering::Relaxed) {
            if self.spool_enabled() {
                tracing::warn!(error = %cause, "Kafka unavailable: spooling usage events to disk");
            } else {
                tracing::error!(error = %cause, "Kafka unavailable and spool disabled: usage events are being lost");
            }
        }
    }

    /// A delivery of producer `generation` failed.
    pub(super) fn mark_producer_failed(&self, generation: u64) {
        self.failed_generation
            .fetch_max(generation + 1, Ordering::AcqRel);
    }

    /// Whether producer `generation` had a failed delivery.
    pub(super) fn producer_failed(&self, generation: u64) -> bool {
        self.failed_generation.load(Ordering::Acquire) == generation + 1
    }

    /// The spool drained after an outage.
    pub(super) fn note_recovered(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!(
                replayed = self.stats.replayed.load(Ordering::Relaxed),
                "usage spool drained: publishing directly to Kafka again"
            );
        }
    }

    /// A file handle to fsync if records were written since the last sync.
    pub(super) fn take_unsynced(&self) -> Option<std::fs::File> {
        self.lock()?.as_mut()?.take_unsynced()
    }

    /// Sync and close the spool (releasing its lock); returns the events left in it.
    pub(super) fn close_spool(&self) -> Option<(u64, std::path::PathBuf)> {
        let spool = self.lock()?.take()?;
        let left = (spool.pending_events(), spool.dir().to_path_buf());
        drop(spool);
        Some(left)
    }
}

/// Where a produced message came from; returned with its delivery report.
pub(super) enum Origin {
    /// Produced straight from the queue.
    Direct,
    /// Replayed from the spool as part of `batch`.
    Replay {
        batch: Arc<ReplayBatch>,
        index: usize,
    },
}

/// Producer context: routes delivery reports.
pub(super) struct Delivery {
    pub(super) shared: Arc<Shared>,
    /// Which producer instance this is (see `slot`).
    pub(super) generation: u64,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = Box<Origin>;

    fn delivery(&self, result: &DeliveryResult<'_>, origin: Self::DeliveryOpaque) {
        let shared = &self.shared;
        if result.is_err() {
            shared.mark_producer_failed(self.generation);
        }
        match (*origin, result) {
            (Origin::Direct, Ok(_)) => shared.published(1),
            (Origin::Direct, Err((e, msg))) => {
                shared.stats.failed.fetch_add(1, Ordering::Relaxed);
                shared.note_outage(e);
                tracing::debug!(error = %e, "usage event not delivered; spooling it");
                match msg.payload() {
                    Some(value) => shared.spool_event(msg.key().unwrap_or_default(), value, true),
                    None => count_drop(&shared.stats, reason::ENCODE, 1),
                }
            }
            (Origin::Replay { batch, index }, r) => batch.complete(index, r.is_ok()),
        }
    }
}

const PENDING: u8 = 0;
const OK: u8 = 1;
const FAILED: u8 = 2;

/// Delivery results of one replay batch.
pub(super) struct ReplayBatch {
    results: Vec<AtomicU8>,
    remaining: AtomicUsize,
    done: Notify,
}

impl ReplayBatch {
    pub(super) fn new(n: usize) -> Self {
        Self {
            results: (0..n).map(|_| AtomicU8::new(PENDING)).collect(),
            remaining: AtomicUsize::new(n),
            done: Notify::new(),
        }
    }

    /// Record the result of event `index` (once).
    pub(super) fn complete(&self, index: usize, ok: bool) {
        let Some(slot) = self.results.get(index) else {
            return;
        };
        let result = if ok { OK } else { FAILED };
        let first = slot
            .compare_exchange(PENDING, result, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first && self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    /// Wait until every event has a result.
    pub(super) async fn wait(&self) {
        while self.remaining.load(Ordering::Acquire) > 0 {
            self.done.notified().await;
        }
    }

    /// Indices of events that were not delivered (still pending counts as not delivered).
    pub(super) fn failed(&self) -> Vec<usize> {
        self.results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.load(Ordering::Acquire) != OK)
            .map(|(i, _)| i)
            .collect()
    }
}

/// Stats helper for tests: a fresh counter set.
#[cfg(test)]
pub(super) fn test_shared(spool: Option<Spool>) -> Shared {
    Shared::new(Arc::new(PublisherStats::default()), spool)
}
