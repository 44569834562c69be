//! Hands usage events from the request path to Kafka without ever making a request wait.
//!
//! Requests call [`UsageSink::submit`], a non-blocking push into a bounded queue. One task
//! encodes events (Avro single-object) and produces them with rdkafka's threaded producer
//! (idempotent, lz4, linger 5 ms). A full queue drops the event and counts it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tokio::sync::mpsc;
use tollgate_schemas::UsageEvent;

use crate::config::KafkaConfig;

/// Counters of the publishing pipeline.
#[derive(Debug, Default)]
pub struct PublisherStats {
    /// Events accepted into the queue.
    pub submitted: AtomicU64,
    /// Events acknowledged by the broker.
    pub delivered: AtomicU64,
    /// Events the broker finally rejected (after librdkafka's own retries).
    pub failed: AtomicU64,
    /// Events dropped because the queue was full or encoding failed.
    pub dropped: AtomicU64,
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
}

struct DeliveryCounter(Arc<PublisherStats>);

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        match result {
            Ok(_) => self.0.delivered.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::error!(error = %e, "usage event delivery failed");
                self.0.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Cheap, cloneable handle used by requests to submit events.
#[derive(Clone, Debug)]
pub struct UsageSink {
    tx: mpsc::Sender<UsageEvent>,
    seq: Arc<AtomicI64>,
    stats: Arc<PublisherStats>,
}

impl UsageSink {
    /// Stamp the event with the next `proxy_seq` and queue it; never waits.
    pub fn submit(&self, mut event: UsageEvent) {
        event.proxy_seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        match self.tx.try_send(event) {
            Ok(()) => {
                self.stats.submitted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reason = %e, "usage event dropped: publisher queue unavailable");
            }
        }
    }
}

/// The publishing task and its producer.
pub struct Publisher {
    task: tokio::task::JoinHandle<()>,
    producer: ThreadedProducer<DeliveryCounter>,
    stats: Arc<PublisherStats>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("stats", &self.stats)
            .finish()
    }
}

impl Publisher {
    /// Create the producer and start the task. Returns the publisher and a sink for requests.
    pub fn start(cfg: &KafkaConfig) -> Result<(Self, UsageSink), KafkaError> {
        let stats = Arc::new(PublisherStats::default());
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &cfg.brokers)
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "300000")
            .set("queue.buffering.max.messages", "200000");
        if cfg.idempotence {
            client.set("enable.idempotence", "true").set("acks", "all");
        }
        let producer: ThreadedProducer<DeliveryCounter> =
            client.create_with_context(DeliveryCounter(stats.clone()))?;
        let (tx, rx) = mpsc::channel(cfg.queue_capacity);
        let task = tokio::spawn(run(rx, producer.clone(), cfg.topic.clone(), stats.clone()));
        let sink = UsageSink {
            tx,
            seq: Arc::new(AtomicI64::new(0)),
            stats: stats.clone(),
        };
        Ok((
            Self {
                task,
                producer,
                stats,
            },
            sink,
        ))
    }

    /// Counters.
    pub fn stats(&self) -> Arc<PublisherStats> {
        self.stats.clone()
    }

    /// Drain the queue (once every sink is dropped) and flush the producer.
    pub async fn shutdown(self, timeout: Duration) {
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            tracing::warn!("usage queue not drained in time: a sink is still alive");
        }
        let producer = self.producer;
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        match flushed {
            Ok(Ok(())) => tracing::info!("usage events flushed"),
            Ok(Err(e)) => tracing::error!(error = %e, "usage events not flushed"),
            Err(e) => tracing::error!(error = %e, "flush task failed"),
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<UsageEvent>,
    producer: ThreadedProducer<DeliveryCounter>,
    topic: String,
    stats: Arc<PublisherStats>,
) {
    while let Some(event) = rx.recv().await {
        let payload = match tollgate_schemas::encode(&event) {
            Ok(p) => p,
            Err(e) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "usage event could not be encoded");
                continue;
            }
        };
        let key = if event.account_id.is_empty() {
            event.api_key_id.as_str()
        } else {
            event.account_id.as_str()
        };
        let mut record = BaseRecord::to(&topic).key(key).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // librdkafka's own queue is full: wait here, not in a request.
                    record = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "usage event not produced");
                    break;
                }
            }
        }
    }
}
