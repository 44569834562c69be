//! The consume → insert → commit loop.
//!
//! At-least-once, made exact: offsets are committed only after ClickHouse acknowledged the
//! rows, and after every rebalance the loop re-reads, per partition, the highest offset already
//! stored in ClickHouse and skips messages at or below it. A crash between insert and commit
//! therefore neither loses nor duplicates rows, and two instances of one consumer group never
//! store a message twice: a partition only moves to another member at a rebalance, which
//! happens inside this loop's `recv`, never during an insert.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::AggregatorConfig;
use crate::sink::{ClickHouseSink, UsageRow};

/// Counters of one aggregator instance.
#[derive(Debug, Default)]
pub struct AggregatorStats {
    /// Messages read from Kafka.
    pub consumed: AtomicU64,
    /// Rows inserted into ClickHouse.
    pub inserted: AtomicU64,
    /// Messages skipped because ClickHouse already held them.
    pub skipped_stored: AtomicU64,
    /// Messages that were not valid usage events (skipped and logged).
    pub undecodable: AtomicU64,
    /// Inserts done.
    pub batches: AtomicU64,
    /// Rebalances seen.
    pub rebalances: AtomicU64,
}

/// Counts rebalances so the loop knows when to re-read watermarks and drop revoked work.
#[derive(Debug)]
pub struct RebalanceWatch {
    generation: AtomicU64,
    stats: Arc<AggregatorStats>,
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

type UsageConsumer = StreamConsumer<RebalanceWatch>;

/// One buffered message: where it came from and its row (None when undecodable).
struct Pending {
    partition: i32,
    offset: i64,
    row: Option<UsageRow>,
}

/// Create the consumer and subscribe to the usage topic.
pub fn consumer(
    cfg: &AggregatorConfig,
    stats: Arc<AggregatorStats>,
) -> Result<UsageConsumer, rdkafka::error::KafkaError> {
    let c: UsageConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .create_with_context(RebalanceWatch {
            generation: AtomicU64::new(0),
            stats,
        })?;
    c.subscribe(&[&cfg.kafka.topic])?;
    Ok(c)
}

/// The loop state.
pub struct Pipeline {
    consumer: UsageConsumer,
    sink: ClickHouseSink,
    topic: String,
    max_rows: usize,
    max_wait: Duration,
    stats: Arc<AggregatorStats>,
    batch: Vec<Pending>,
    watermarks: HashMap<i32, Option<i64>>,
    seen_generation: u64,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("topic", &self.topic)
            .finish()
    }
}

impl Pipeline {
    /// Assemble the loop.
    pub fn new(
        cfg: &AggregatorConfig,
        consumer: UsageConsumer,
        sink: ClickHouseSink,
        stats: Arc<AggregatorStats>,
    ) -> Self {
        Self {
            consumer,
            sink,
            topic: cfg.kafka.topic.clone(),
            max_rows: cfg.batch.max_rows,
            max_wait: Duration::from_millis(cfg.batch.max_wait_ms),
            stats,
            batch: Vec::new(),
            watermarks: HashMap::new(),
            seen_generation: 0,
        }
    }

    /// Run until `stop` turns true; then store and commit what is buffered.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut deadline: Option<Instant> = None;
        loop {
            let flush_at = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = stopped(&mut stop) => break,
                msg = self.consumer.recv() => match msg {
                    Ok(m) => {
                        self.stats.consumed.fetch_add(1, Ordering::Relaxed);
                        let row = match m.payload().map(tollgate_schemas::decode) {
                            Some(Ok(ev)) => Some(UsageRow::new(ev, &self.topic, m.partition(), m.offset())),
                            Some(Err(e)) => {
                                self.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                                tracing::error!(partition = m.partition(), offset = m.offset(), error = %e, "undecodable usage message skipped");
                                None
                            }
                            None => None,
                        };
                        self.batch.push(Pending { partition: m.partition(), offset: m.offset(), row });
                        deadline.get_or_insert_with(|| Instant::now() + self.max_wait);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consume error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                _ = tokio::time::sleep_until(flush_at), if deadline.is_some() => {}
            }
            let due = deadline.is_some_and(|d| Instant::now() >= d);
            if self.batch.len() >= self.max_rows || due {
                if !self.flush(&stop).await {
                    break;
                }
                deadline = None;
            }
        }
        self.flush(&stop).await;
    }

    fn check_rebalance(&mut self) {
        let generation = self.consumer.context().generation.load(Ordering::SeqCst);
        if generation == self.seen_generation {
            return;
        }
        self.seen_generation = generation;
        self.watermarks.clear();
        let assigned: Vec<i32> = self
            .consumer
            .assignment()
            .map(|tpl| {
                tpl.elements()
                    .iter()
                    .filter(|e| e.topic() == self.topic)
                    .map(|e| e.partition())
                    .collect()
            })
            .unwrap_or_default();
        let before = self.batch.len();
        self.batch.retain(|p| assigned.contains(&p.partition));
        if before != self.batch.len() {
            tracing::info!(
                dropped = before - self.batch.len(),
                "dropped buffered messages of revoked partitions; their new owner re-reads them"
            );
        }
    }

    /// Store the batch, then commit. Returns false when stopped before the rows were stored.
    async fn flush(&mut self, stop: &watch::Receiver<bool>) -> bool {
        self.check_rebalance();
        if self.batch.is_empty() {
            return true;
        }
        let mut last: BTreeMap<i32, i64> = BTreeMap::new();
        for p in &self.batch {
            let e = last.entry(p.partition).or_insert(p.offset);
            *e = (*e).max(p.offset);
        }
        for &partition in last.keys() {
            if self.watermarks.contains_key(&partition) {
                continue;
            }
            let sink = self.sink.clone();
            let topic = self.topic.clone();
            let Some(mark) = retry(stop, "read stored offset", || {
                sink.stored_watermark(&topic, partition)
            })
            .await
            else {
                return false;
            };
            self.watermarks.insert(partition, mark);
        }
        let rows: Vec<UsageRow> = self
            .batch
            .iter()
            .filter(|p| {
                self.watermarks
                    .get(&p.partition)
                    .copied()
                    .flatten()
                    .is_none_or(|w| p.offset > w)
            })
            .filter_map(|p| p.row.clone())
            .collect();
        let skipped = self.batch.iter().filter(|p| p.row.is_some()).count() - rows.len();
        if !rows.is_empty() {
            let sink = self.sink.clone();
            if retry(stop, "insert usage rows", || sink.insert(&rows))
                .await
                .is_none()
            {
                return false;
            }
            self.stats
                .inserted
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
        }
        self.stats
            .skipped_stored
            .fetch_add(skipped as u64, Ordering::Relaxed);
        let mut tpl = TopicPartitionList::new();
        for (&partition, &offset) in &last {
            let mark = self.watermarks.entry(partition).or_insert(None);
            *mark = Some(mark.map_or(offset, |m| m.max(offset)));
            if let Err(e) =
                tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset + 1))
            {
                tracing::error!(error = %e, "cannot build commit list");
            }
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Sync) {
            // Rows are stored; whoever owns the partition next skips them by watermark.
            tracing::warn!(error = %e, "offset commit failed after insert");
        }
        tracing::debug!(rows = rows.len(), skipped, "batch stored and committed");
        self.batch.clear();
        true
    }
}

/// Retry a ClickHouse call with exponential backoff until it succeeds or `stop` is set.
async fn retry<T, F, Fut>(stop: &watch::Receiver<bool>, what: &str, mut call: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, clickhouse::error::Error>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match call().await {
            Ok(v) => return Some(v),
            Err(e) => {
                if *stop.borrow() {
                    tracing::error!(error = %e, what, "giving up at shutdown; nothing committed past stored rows");
                    return None;
                }
                tracing::warn!(error = %e, what, backoff_ms = backoff.as_millis() as u64, "ClickHouse call failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
