//! Hands usage events from the request path to Kafka without ever making a request wait, and
//! without losing them when Kafka is slow or down.
//!
//! Requests call [`UsageSink::submit`], a non-blocking push into a bounded queue (a full queue
//! drops the event and counts it). One task encodes events (Avro single-object) and produces
//! them with rdkafka's threaded producer (idempotent, acks=all, lz4, `linger_ms` (20 ms by
//! default), key = account).
//!
//! An event goes to the disk [spool](crate::usage::spool) instead when librdkafka's queue is
//! full, when its delivery fails (`message.timeout.ms` is 5 s with a spool, so an outage shows
//! quickly; the failed payload comes back in the delivery report), or while the spool still
//! holds older events (so order is kept). A replayer drains the spool in order once the broker
//! acknowledges again, then publishing is direct again. Events are lost only when the spool is
//! full, disabled or unwritable, each counted by reason.
//!
//! [`Publisher::shutdown`] drains the queue, flushes the producer, purges whatever is still
//! unacknowledged back into the spool and fsyncs it; the next process on the same spool
//! directory replays it.

mod replay;
mod shared;
mod slot;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, PurgeConfig};
use tokio::sync::{mpsc, watch};
use tollgate_schemas::{telemetry, UsageEvent};

use self::shared::{count_drop, reason, Origin, Shared};
use self::slot::ProducerSlot;
use crate::config::KafkaConfig;
use crate::usage::spool::{Spool, SpoolError};

/// `message.timeout.ms` with a spool: how long a broker may stay silent before events spool.
const MESSAGE_TIMEOUT_MS: &str = "5000";
/// `message.timeout.ms` without a spool (nowhere to put failed events: retry long).
const MESSAGE_TIMEOUT_NO_SPOOL_MS: &str = "300000";
/// How long the shutdown waits for purged delivery reports and the replayer.
const SHUTDOWN_TAIL: Duration = Duration::from_secs(3);

/// Counters of the publishing pipeline.
#[derive(Debug, Default)]
pub struct PublisherStats {
    /// Events accepted into the queue.
    pub submitted: AtomicU64,
    /// Events acknowledged by the broker (directly or replayed from the spool).
    pub delivered: AtomicU64,
    /// Delivery reports with an error for directly produced events (each was then spooled, or
    /// dropped if that failed): not a loss by itself.
    pub failed: AtomicU64,
    /// Events lost for good (queue full, encoding failed, spool full/disabled/unwritable).
    pub dropped: AtomicU64,
    /// Events written to the disk spool (re-appends after a partly failed replay not counted).
    pub spooled: AtomicU64,
    /// Spooled events acknowledged by the broker.
    pub replayed: AtomicU64,
    /// Events in the spool not yet acknowledged (gauge).
    pub spool_events: AtomicU64,
    /// Bytes of those events (gauge).
    pub spool_bytes: AtomicU64,
}

/// A copy of every [`PublisherStats`] counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublisherCounts {
    /// See [`PublisherStats::submitted`].
    pub submitted: u64,
    /// See [`PublisherStats::delivered`].
    pub delivered: u64,
    /// See [`PublisherStats::failed`].
    pub failed: u64,
    /// See [`PublisherStats::dropped`].
    pub dropped: u64,
    /// See [`PublisherStats::spooled`].
    pub spooled: u64,
    /// See [`PublisherStats::replayed`].
    pub replayed: u64,
    /// See [`PublisherStats::spool_events`].
    pub spool_events: u64,
    /// See [`PublisherStats::spool_bytes`].
    pub spool_bytes: u64,
}

impl PublisherStats {
    /// Snapshot `(submitted, delivered, failed, dropped)`.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.submitted.load(Ordering::Relaxed),
            self.delivered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    /// Snapshot of every counter.
    pub fn counts(&self) -> PublisherCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PublisherCounts {
            submitted: get(&self.submitted),
            delivered: get(&self.delivered),
            failed: get(&self.failed),
            dropped: get(&self.dropped),
            spooled: get(&self.spooled),
            replayed: get(&self.replayed),
            spool_events: get(&self.spool_events),
            spool_bytes: get(&self.spool_bytes),
        }
    }
}

/// Cheap, cloneable handle used by requests to submit events.
#[derive(Clone, Debug)]
pub struct UsageSink {
    /// `None` when metering is off (`kafka.enabled: false`): events are discarded.
    tx: Option<mpsc::Sender<UsageEvent>>,
    seq: Arc<AtomicI64>,
    stats: Arc<PublisherStats>,
    /// `tollgate_usage_events_submitted_total`, registered once.
    submitted: metrics::Counter,
}

impl UsageSink {
    /// Stamp the event with the next `proxy_seq` and queue it; never waits.
    pub fn submit(&self, mut event: UsageEvent) {
        let Some(tx) = &self.tx else { return };
        event.proxy_seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        match tx.try_send(event) {
            Ok(()) => {
                self.stats.submitted.fetch_add(1, Ordering::Relaxed);
                self.submitted.increment(1);
            }
            Err(e) => {
                count_drop(&self.stats, reason::QUEUE_FULL, 1);
                tracing::warn!(reason = %e, "usage event dropped: publisher queue unavailable");
            }
        }
    }
}

/// Failure to start the publisher.
#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    /// The Kafka producer could not be created.
    #[error("cannot create the Kafka producer: {0}")]
    Kafka(#[from] KafkaError),
    /// The spool directory could not be opened (or another process holds it).
    #[error("cannot open the usage spool: {0}")]
    Spool(#[from] SpoolError),
}

/// The publishing tasks and their producer (none when metering is off).
pub struct Publisher {
    stats: Arc<PublisherStats>,
    running: Option<Running>,
}

struct Running {
    task: tokio::task::JoinHandle<()>,
    replayer: tokio::task::JoinHandle<()>,
    syncer: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
    slot: Arc<ProducerSlot>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("stats", &self.stats)
            .field("enabled", &self.running.is_some())
            .finish()
    }
}

impl Publisher {
    /// Create the producer, open the spool and start the tasks. Returns the publisher and a
    /// sink for requests. A spool error is reported as [`KafkaError::ClientCreation`]; use
    /// [`Publisher::open`] for a typed error.
    pub fn start(cfg: &KafkaConfig) -> Result<(Self, UsageSink), KafkaError> {
        Self::open(cfg).map_err(|e| match e {
            PublisherError::Kafka(k) => k,
            PublisherError::Spool(s) => KafkaError::ClientCreation(format!("usage spool: {s}")),
        })
    }

    /// Like [`Publisher::start`], with a typed error.
    pub fn open(cfg: &KafkaConfig) -> Result<(Self, UsageSink), PublisherError> {
        let stats = Arc::new(PublisherStats::default());
        if !cfg.enabled {
            tracing::warn!("usage metering is off (kafka.enabled: false): no usage events");
            let sink = UsageSink {
                tx: None,
                seq: Arc::new(AtomicI64::new(0)),
                stats: stats.clone(),
                submitted: metrics::counter!(telemetry::USAGE_EVENTS_SUBMITTED),
            };
            let off = Self {
                stats,
                running: None,
            };
            return Ok((off, sink));
        }
        let spool = if cfg.spool.enabled {
            Some(Spool::open(&cfg.spool)?)
        } else {
            None
        };
        let shared = Arc::new(Shared::new(stats.clone(), spool));
        let slot = Arc::new(ProducerSlot::new(producer_config(cfg), shared.clone())?);
        let (tx, rx) = mpsc::channel(cfg.queue_capacity);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(rx, slot.clone(), cfg.topic.clone(), shared.clone()));
        let replayer = tokio::spawn(replay::run(
            shared.clone(),
            slot.clone(),
            cfg.topic.clone(),
            stopped.clone(),
        ));
        let sync_every = Duration::from_millis(cfg.spool.fsync_interval_ms.max(1));
        let syncer = tokio::spawn(sync_loop(shared.clone(), sync_every, stopped));
        let sink = UsageSink {
            tx: Some(tx),
            seq: Arc::new(AtomicI64::new(0)),
            stats: stats.clone(),
            submitted: metrics::counter!(telemetry::USAGE_EVENTS_SUBMITTED),
        };
        let running = Running {
            task,
            replayer,
            syncer,
            stop,
            slot,
            shared,
        };
        Ok((
            Self {
                stats,
                running: Some(running),
            },
            sink,
        ))
    }

    /// Counters.
    pub fn stats(&self) -> Arc<PublisherStats> {
        self.stats.clone()
    }

    /// Drain the queue (once every sink is dropped), flush the producer, put whatever Kafka did
    /// not acknowledge into the spool and fsync it.
    pub async fn shutdown(self, timeout: Duration) {
        if let Some(running) = self.running {
            running.shutdown(timeout).await;
        }
    }
}

impl Running {
    async fn shutdown(self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            tracing::warn!("usage queue not drained in time: a sink is still alive");
        }
        // No new replay batches; the one in flight completes with the flush or the purge.
        let _ = self.stop.send(true);
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_millis(500));
        let producer = self.slot.current();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(left)).await;
        match flushed {
            Ok(Ok(())) => tracing::info!("usage events flushed"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "usage events not all flushed; spooling the rest")
            }
            Err(e) => tracing::error!(error = %e, "flush task failed"),
        }
        // Purged messages come back through the delivery reports, which spool them.
        let producer = self.slot.current();
        let purged = tokio::task::spawn_blocking(move || {
            producer.purge(PurgeConfig::default().queue().inflight());
            producer.flush(SHUTDOWN_TAIL)
        })
        .await;
        if let Ok(Err(e)) = purged {
            tracing::error!(error = %e, "delivery reports of purged usage events not served");
        }
        if tokio::time::timeout(SHUTDOWN_TAIL, self.replayer)
            .await
            .is_err()
        {
            tracing::warn!("usage spool replayer did not stop in time");
        }
        let _ = self.syncer.await;
        let c = self.shared.stats.counts();
        if let Some((left, dir)) = self.shared.close_spool() {
            if left > 0 {
                tracing::info!(
                    events = left,
                    dir = %dir.display(),
                    "usage events kept in the spool for the next start"
                );
            }
        }
        tracing::info!(
            submitted = c.submitted,
            delivered = c.delivered,
            spooled = c.spooled,
            replayed = c.replayed,
            dropped = c.dropped,
            "usage publisher stopped"
        );
    }
}

fn producer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    let timeout = if cfg.spool.enabled {
        MESSAGE_TIMEOUT_MS
    } else {
        MESSAGE_TIMEOUT_NO_SPOOL_MS
    };
    client
        .set("bootstrap.servers", &cfg.brokers)
        .set("compression.type", cfg.compression.as_str())
        .set("linger.ms", cfg.linger_ms.to_string())
        .set("message.timeout.ms", timeout)
        .set("queue.buffering.max.messages", "100000")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000");
    if cfg.idempotence {
        client.set("enable.idempotence", "true").set("acks", "all");
    }
    client
}

/// Fsync the spool every `every` until stopped.
async fn sync_loop(shared: Arc<Shared>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
        }
        if let Some(file) = shared.take_unsynced() {
            match tokio::task::spawn_blocking(move || file.sync_data()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "usage spool fsync failed"),
                Err(e) => tracing::error!(error = %e, "usage spool fsync task failed"),
            }
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<UsageEvent>,
    slot: Arc<ProducerSlot>,
    topic: String,
    shared: Arc<Shared>,
) {
    let queued = metrics::gauge!(telemetry::USAGE_QUEUE_EVENTS);
    while let Some(event) = rx.recv().await {
        queued.set(rx.len() as f64);
        let payload = match tollgate_schemas::encode(&event) {
            Ok(p) => p,
            Err(e) => {
                count_drop(&shared.stats, reason::ENCODE, 1);
                tracing::error!(error = %e, "usage event could not be encoded");
                continue;
            }
        };
        let key = if event.account_id.is_empty() {
            event.api_key_id.as_str()
        } else {
            event.account_id.as_str()
        };
        if shared.has_backlog() {
            // Older events wait in the spool: queue behind them to keep the order.
            shared.spool_event(key.as_bytes(), &payload, true);
            continue;
        }
        let mut record = BaseRecord::with_opaque_to(&topic, Box::new(Origin::Direct))
            .key(key)
            .payload(&payload);
        loop {
            match slot.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if !shared.spool_enabled() =>
                {
                    // No spool: wait for librdkafka here, never in a request.
                    record = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => {
                    shared.note_outage(&e);
                    shared.spool_event(key.as_bytes(), &payload, true);
                    break;
                }
            }
        }
    }
    metrics::gauge!(telemetry::USAGE_QUEUE_EVENTS).set(0.0);
}
