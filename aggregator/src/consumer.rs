//! The Kafka consumer: group membership with manual commits, and a rebalance counter.
//!
//! Auto-commit is off; the pipeline commits a partition's offset only after its messages are
//! stored. Rebalances run inside the pipeline's `recv`, never during an insert, so a partition
//! moves to another member only between writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::{ClientContext, TopicPartitionList};

use crate::config::AggregatorConfig;
use crate::state::AggregatorStats;

/// Counts rebalances so the loop knows when to re-read its assignment.
#[derive(Debug)]
pub struct RebalanceWatch {
    generation: AtomicU64,
    stats: Arc<AggregatorStats>,
}

impl RebalanceWatch {
    /// Rebalances so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

impl ClientContext for RebalanceWatch {}

impl ConsumerContext for RebalanceWatch {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.stats.rebalances.fetch_add(1, Ordering::Relaxed);
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = ?partitions(tpl), "partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = ?partitions(tpl), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

/// The consumer type of the pipeline.
pub type UsageConsumer = StreamConsumer<RebalanceWatch>;

/// librdkafka's `max.poll.interval.ms`: a member that does not poll for this long leaves the
/// group.
pub const MAX_POLL_INTERVAL_MS: u64 = 300_000;

/// Create the consumer and subscribe to the usage topic.
pub fn consumer(
    cfg: &AggregatorConfig,
    stats: Arc<AggregatorStats>,
) -> Result<UsageConsumer, rdkafka::error::KafkaError> {
    let heartbeat = (cfg.kafka.session_timeout_ms / 5).clamp(100, 3_000);
    let c: UsageConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "session.timeout.ms",
            cfg.kafka.session_timeout_ms.to_string(),
        )
        .set("heartbeat.interval.ms", heartbeat.to_string())
        // Set, not left to the default: the pipeline keeps each round of writes within a
        // fraction of it (`pipeline::FLUSH_BUDGET`), so a member never stalls its polls long
        // enough to be dropped from the group while it still writes.
        .set("max.poll.interval.ms", MAX_POLL_INTERVAL_MS.to_string())
        // Brokers that answer an empty fetch only after the full wait (Tansu) would otherwise
        // add up to 500 ms (librdkafka's default) to every event's way to ClickHouse and to
        // the budget decisions that follow it (docs/budgets.md).
        .set("fetch.wait.max.ms", "100")
        .create_with_context(RebalanceWatch {
            generation: AtomicU64::new(0),
            stats,
        })?;
    c.subscribe(&[&cfg.kafka.topic])?;
    Ok(c)
}

/// Partitions of `topic` in the consumer's current assignment.
pub fn assigned(consumer: &UsageConsumer, topic: &str) -> Vec<i32> {
    let mut out: Vec<i32> = consumer
        .assignment()
        .map(|tpl| {
            tpl.elements()
                .iter()
                .filter(|e| e.topic() == topic)
                .map(|e| e.partition())
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}
