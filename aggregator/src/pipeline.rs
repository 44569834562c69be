//! The consume → store → commit loop.
//!
//! Messages are buffered per partition; a partition's buffer is written when it holds
//! `batch.max_rows` messages or its oldest message waited `batch.max_wait_ms`. A write stores
//! the messages exactly once ([`crate::write`]) and only then commits that partition's offset.
//! A write that fails transiently keeps the buffer, pauses fetching of the partition and is
//! retried with exponential backoff; the loop keeps polling Kafka meanwhile (so group
//! membership and rebalances go on) and never commits past stored rows.
//!
//! After every rebalance the buffers of revoked partitions are dropped (their new owner
//! re-reads them from the committed offset) and retained ones are re-verified against
//! ClickHouse before their next write.
//!
//! When the lag sampler finds orphaned partitions (a backlog no member consumes, see
//! [`crate::lag::orphans`]) the loop leaves and rejoins the group, at most once per stall time.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio::time::Instant;
use tollgate_schemas::telemetry::{
    AGG_CONSUMED, AGG_DUPLICATES, AGG_GAPS, AGG_GROUP_REJOINS, AGG_INSERTED, AGG_SEQUENCE_LATE,
    AGG_SKIPPED,
};

use crate::buffer::{Body, Buffers, Msg};
use crate::config::AggregatorConfig;
use crate::consumer::{assigned, UsageConsumer};
use crate::sequence::{SeqDelta, SequenceTracker};
use crate::sink::ClickHouseSink;
use crate::state::{AggregatorStats, Shared};
use crate::write::{self, Outcome};

/// Longest stretch of writes in one round before Kafka is polled again: a fifth of
/// `max.poll.interval.ms`, so that even a partition that starts just before it ends (a few
/// calls of at most `clickhouse.timeout_ms` each) keeps this member in the group.
const FLUSH_BUDGET: Duration = Duration::from_millis(crate::consumer::MAX_POLL_INTERVAL_MS / 5);

/// The loop state.
pub struct Pipeline {
    consumer: Arc<UsageConsumer>,
    sink: ClickHouseSink,
    topic: String,
    max_rows: usize,
    max_wait: Duration,
    initial_backoff: Duration,
    max_backoff: Duration,
    buffers: Buffers,
    assigned: Vec<i32>,
    seen_generation: u64,
    tracker: SequenceTracker,
    shared: Arc<Shared>,
    budgets: Option<crate::budget::Budgets>,
    last_rejoin: Option<Instant>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("topic", &self.topic)
            .field("assigned", &self.assigned)
            .finish()
    }
}

enum Event {
    Stop,
    Message(i32, Msg),
    Tick,
}

impl Pipeline {
    /// Assemble the loop.
    pub fn new(
        cfg: &AggregatorConfig,
        consumer: Arc<UsageConsumer>,
        sink: ClickHouseSink,
        shared: Arc<Shared>,
    ) -> Self {
        // A crashed member keeps its partitions for a session timeout; only a backlog that
        // stands still well past that is orphaned.
        let stall = cfg.kafka.session_timeout_ms.saturating_mul(2) + 5_000;
        shared.orphan_stall_ms.store(stall, Ordering::Relaxed);
        Self {
            consumer,
            sink,
            topic: cfg.kafka.topic.clone(),
            max_rows: cfg.batch.max_rows,
            max_wait: Duration::from_millis(cfg.batch.max_wait_ms),
            initial_backoff: Duration::from_millis(cfg.retry.initial_backoff_ms),
            max_backoff: Duration::from_millis(cfg.retry.max_backoff_ms),
            buffers: Buffers::default(),
            assigned: Vec::new(),
            seen_generation: 0,
            tracker: SequenceTracker::new(cfg.sequence.window, cfg.sequence.max_proxies),
            shared,
            budgets: None,
            last_rejoin: None,
        }
    }

    /// Count every stored batch on the budget counters before its offset is committed.
    pub fn with_budgets(mut self, budgets: Option<crate::budget::Budgets>) -> Self {
        self.budgets = budgets;
        self
    }

    /// Run until `stop` turns true; then try once more to store what is buffered.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        self.shared.running.store(true, Ordering::Relaxed);
        let consumer = self.consumer.clone();
        loop {
            let wake = self
                .buffers
                .next_deadline(self.max_wait)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            let event = tokio::select! {
                biased;
                _ = stopped(&mut stop) => Event::Stop,
                msg = consumer.recv() => match msg {
                    Ok(m) => {
                        let ts = m.timestamp().to_millis().unwrap_or(0);
                        let msg = Msg::decode(&self.topic, m.partition(), m.offset(), ts, m.payload());
                        Event::Message(m.partition(), msg)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consume error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Event::Tick
                    }
                },
                _ = tokio::time::sleep_until(wake) => Event::Tick,
            };
            self.sync_rebalance();
            match event {
                Event::Stop => break,
                Event::Message(partition, msg) => self.accept(partition, msg),
                Event::Tick => {}
            }
            self.flush_due().await;
            self.rejoin_if_orphaned();
        }
        let buffered: Vec<i32> = self
            .buffers
            .parts
            .iter()
            .filter(|(_, b)| !b.msgs.is_empty())
            .map(|(p, _)| *p)
            .collect();
        for p in buffered {
            self.flush_partition(p).await;
        }
        let left = self.buffers.len();
        if left > 0 {
            tracing::warn!(
                messages = left,
                "stopping with unstored messages; they stay uncommitted and are read again"
            );
        }
        self.shared.running.store(false, Ordering::Relaxed);
    }

    /// Re-read the assignment after a rebalance; drop revoked buffers.
    fn sync_rebalance(&mut self) {
        let generation = self.consumer.context().generation();
        if generation == self.seen_generation {
            return;
        }
        self.seen_generation = generation;
        self.assigned = assigned(&self.consumer, &self.topic);
        let dropped = self.buffers.retain_assigned(&self.assigned);
        if dropped > 0 {
            tracing::info!(
                dropped,
                "dropped buffered messages of revoked partitions; their new owner re-reads them"
            );
        }
        // Buffers that were paused after a failed write are fetched again (their pause flag
        // was cleared); a new failure pauses them again.
        let mut tpl = TopicPartitionList::new();
        for p in &self.assigned {
            tpl.add_partition(&self.topic, *p);
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.resume(&tpl) {
                tracing::debug!(error = %e, "resume after rebalance");
            }
        }
        self.shared.gaps_reliable.store(false, Ordering::Relaxed);
        if let Ok(mut a) = self.shared.assigned.lock() {
            a.clone_from(&self.assigned);
        }
        if let Ok(mut positions) = self.shared.positions.lock() {
            positions.clear();
        }
        self.tracker.reset();
    }

    /// Leave and rejoin the group when the lag sampler reports orphaned partitions; at most
    /// once per stall time, and not while ClickHouse fails (a member stuck on a failing
    /// ClickHouse also stops committing).
    fn rejoin_if_orphaned(&mut self) {
        let stall = self.shared.orphan_stall();
        if self.last_rejoin.is_some_and(|t| t.elapsed() < stall)
            || !self.shared.clickhouse_ok.load(Ordering::Relaxed)
        {
            return;
        }
        let orphans = match self.shared.orphans.lock() {
            Ok(o) if !o.partitions.is_empty() => o.clone(),
            _ => return,
        };
        tracing::warn!(
            partitions = ?orphans.partitions,
            stalled_secs = orphans.stalled_for.as_secs(),
            assigned = ?self.assigned,
            "partitions have unconsumed events and no consumer; rejoining the consumer group"
        );
        self.last_rejoin = Some(Instant::now());
        self.shared.stats.rejoins.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(AGG_GROUP_REJOINS).increment(1);
        // Unsubscribing leaves the group (revoking what this instance holds: its buffers are
        // dropped at the rebalance and re-read); subscribing joins with a fresh member id.
        self.consumer.unsubscribe();
        if let Err(e) = self.consumer.subscribe(&[&self.topic]) {
            tracing::error!(error = %e, "cannot subscribe again after leaving the group");
        }
    }

    fn accept(&mut self, partition: i32, msg: Msg) {
        if !self.assigned.contains(&partition) {
            tracing::debug!(
                partition,
                offset = msg.offset,
                "message of an unassigned partition ignored"
            );
            return;
        }
        // Counted once per offset: a message fetched again after a resume or a rebalance is
        // ignored by the buffer, and not counted (or logged) twice.
        let poison = match &msg.body {
            Body::Poison { reason, error } => Some((*reason, error.clone())),
            Body::Event(_) => None,
        };
        let offset = msg.offset;
        let fresh = self
            .buffers
            .parts
            .entry(partition)
            .or_default()
            .push(msg, Instant::now());
        if !fresh {
            return;
        }
        let stats = &self.shared.stats;
        stats.consumed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(AGG_CONSUMED).increment(1);
        if let Some((reason, error)) = poison {
            stats.undecodable.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                partition,
                offset,
                reason = reason.as_str(),
                error,
                "message is not a usage event"
            );
        }
    }

    async fn flush_due(&mut self) {
        let now = Instant::now();
        let mut due = self.buffers.due(now, self.max_rows, self.max_wait);
        if due.is_empty() {
            return;
        }
        if self.buffers.parts.len() > 1 {
            let stored = self.flush_together(now, &due).await;
            due.retain(|p| !stored.contains(p));
        }
        for p in due {
            // With ClickHouse slow, each partition may take several bounded calls: the rest
            // stay due for the next round, after Kafka has been polled again.
            if now.elapsed() >= FLUSH_BUDGET {
                break;
            }
            self.flush_partition(p).await;
        }
    }

    /// Learn where ClickHouse's stored offsets end for ready buffers that do not know it yet
    /// (once per assignment and after a failed write), so that they can join a shared INSERT.
    async fn learn_floors(&mut self, now: Instant) {
        let unknown: Vec<i32> = self
            .buffers
            .parts
            .iter()
            .filter(|(_, b)| b.next_unstored.is_none() && b.ready(now))
            .map(|(p, _)| *p)
            .collect();
        for p in unknown {
            let Ok(floor) = stored_floor(&self.sink, &self.shared, p).await else {
                return;
            };
            if let Some(b) = self.buffers.parts.get_mut(&p) {
                b.next_unstored = Some(floor);
            }
        }
    }

    /// Write the due partitions together with every other partition that can join them, in
    /// one INSERT ([`write::write_together`]); returns the partitions whose messages it
    /// stored (their remaining messages, if any, wait for the next write).
    async fn flush_together(&mut self, now: Instant, due: &[i32]) -> Vec<i32> {
        self.learn_floors(now).await;
        let fresh_after = write::now_ms() - write::RESEND_MIN_AGE_MS;
        let group = self.buffers.joinable(now, due, self.max_rows, fresh_after);
        if group.is_empty() {
            return Vec::new();
        }
        let result = {
            let parts: Vec<(i32, &[Msg])> = group
                .iter()
                .filter_map(|&(p, n)| self.buffers.parts.get(&p).map(|b| (p, &b.msgs[..n])))
                .collect();
            write::write_together(&self.sink, &parts).await
        };
        match result {
            Ok(true) => self.shared.clickhouse_result(&result),
            Ok(false) => return Vec::new(),
            Err(e) => {
                tracing::warn!(
                    partitions = ?group.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
                    error = crate::classify::describe(&e),
                    "shared insert failed; writing the partitions one by one, verified"
                );
                self.shared.clickhouse_result(&Err::<(), _>(e));
                for (p, _) in &group {
                    if let Some(b) = self.buffers.parts.get_mut(p) {
                        b.next_unstored = None;
                    }
                }
                return Vec::new();
            }
        }
        for (i, &(p, n)) in group.iter().enumerate() {
            let Some(buf) = self.buffers.parts.get(&p) else {
                continue;
            };
            let chunk = &buf.msgs[..n];
            let out = Outcome {
                inserted: n,
                batches: usize::from(i == 0),
                handled_events: (0..n).collect(),
                ..Outcome::default()
            };
            account(&mut self.tracker, &self.shared, chunk, &out);
            if let Some(b) = &self.budgets {
                b.apply(p, chunk, &[]).await;
            }
            let next = chunk.last().map_or(0, |m| m.offset + 1);
            commit(&self.consumer, &self.topic, &self.shared, p, next);
            if let Some(buf) = self.buffers.parts.get_mut(&p) {
                buf.stored(n);
                buf.next_unstored = Some(next);
                buf.succeeded();
            }
        }
        group.into_iter().map(|(p, _)| p).collect()
    }

    /// Write a partition's buffer in chunks of `max_rows`, committing after each chunk.
    async fn flush_partition(&mut self, partition: i32) {
        let Some(buf) = self.buffers.parts.get(&partition) else {
            return;
        };
        let mut next_unstored = buf.next_unstored;
        let mut stored = 0;
        let mut failure = None;
        for chunk in buf.msgs.chunks(self.max_rows) {
            let (Some(first), Some(last)) = (chunk.first(), chunk.last()) else {
                continue;
            };
            let floor = match next_unstored {
                Some(n) => n,
                None => match stored_floor(&self.sink, &self.shared, partition).await {
                    Ok(floor) => floor,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                },
            };
            next_unstored = Some(floor);
            let verify = first.offset < floor;
            let mut out = Outcome::default();
            let result =
                write::write(&self.sink, &self.topic, partition, chunk, verify, &mut out).await;
            account(&mut self.tracker, &self.shared, chunk, &out);
            self.shared.clickhouse_result(&result);
            match result {
                Ok(()) => {
                    stored += chunk.len();
                    next_unstored = Some(floor.max(last.offset + 1));
                    if let Some(b) = &self.budgets {
                        b.apply(partition, chunk, &out.uncounted).await;
                    }
                    commit(
                        &self.consumer,
                        &self.topic,
                        &self.shared,
                        partition,
                        last.offset + 1,
                    );
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let Some(buf) = self.buffers.parts.get_mut(&partition) else {
            return;
        };
        buf.stored(stored);
        buf.next_unstored = next_unstored;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        if failure.is_none() {
            buf.succeeded();
        }
        match failure {
            None if buf.paused => {
                buf.paused = false;
                if let Err(e) = self.consumer.resume(&tpl) {
                    tracing::warn!(partition, error = %e, "cannot resume partition");
                }
                tracing::info!(partition, "ClickHouse writes recovered; partition resumed");
            }
            None => {}
            Some(e) => {
                let delay = buf.failed(Instant::now(), self.initial_backoff, self.max_backoff);
                if !buf.paused {
                    buf.paused = true;
                    if let Err(e) = self.consumer.pause(&tpl) {
                        tracing::warn!(partition, error = %e, "cannot pause partition");
                    }
                }
                tracing::warn!(
                    partition,
                    buffered = buf.msgs.len(),
                    retry_in_ms = delay.as_millis() as u64,
                    error = crate::classify::describe(&e),
                    "storing failed; nothing committed past stored rows, retrying"
                );
            }
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The offset after the highest one ClickHouse holds for `partition` (0 when none): every
/// offset from there on is known not to be stored.
async fn stored_floor(
    sink: &ClickHouseSink,
    shared: &Shared,
    partition: i32,
) -> Result<i64, clickhouse::error::Error> {
    let max = sink.max_stored_offset(partition).await;
    shared.clickhouse_result(&max);
    let max = max.inspect_err(|e| {
        crate::write::count_error(e);
    })?;
    Ok(max.map_or(0, |m| m + 1))
}

/// Commit `next` (the offset after the last stored message) for `partition`.
fn commit(consumer: &UsageConsumer, topic: &str, shared: &Shared, partition: i32, next: i64) {
    let mut tpl = TopicPartitionList::new();
    if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(next)) {
        tracing::error!(error = %e, "cannot build commit list");
        return;
    }
    // Asynchronous: a lost commit only means re-reading messages that the next owner then
    // skips as stored.
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::warn!(partition, error = %e, "offset commit failed after insert");
    }
    if let Ok(mut positions) = shared.positions.lock() {
        positions.insert(partition, next);
    }
}

/// Counters and sequence accounting of one write.
fn account(tracker: &mut SequenceTracker, shared: &Shared, chunk: &[Msg], out: &Outcome) {
    let stats = &shared.stats;
    AggregatorStats::add(&stats.inserted, out.inserted);
    AggregatorStats::add(&stats.skipped_stored, out.skipped);
    AggregatorStats::add(&stats.dead_letters, out.dead_letters);
    AggregatorStats::add(&stats.batches, out.batches);
    metrics::counter!(AGG_INSERTED).increment(out.inserted as u64);
    metrics::counter!(AGG_SKIPPED).increment(out.skipped as u64);
    if out.skipped > 0 {
        tracing::info!(
            skipped = out.skipped,
            "skipped messages ClickHouse already holds"
        );
    }
    let count_gaps = shared.gaps_reliable.load(Ordering::Relaxed);
    let mut total = SeqDelta::default();
    for &i in &out.handled_events {
        if let Some(Body::Event(row)) = chunk.get(i).map(|m| &m.body) {
            let d = tracker.observe(row.proxy_id(), row.proxy_seq(), count_gaps);
            total.gaps += d.gaps;
            total.duplicates += d.duplicates;
            total.late += d.late;
        }
    }
    if total.gaps > 0 || total.duplicates > 0 {
        tracing::warn!(
            gaps = total.gaps,
            duplicates = total.duplicates,
            "proxy_seq gaps or duplicates"
        );
    }
    stats.gaps.fetch_add(total.gaps, Ordering::Relaxed);
    stats
        .duplicates
        .fetch_add(total.duplicates, Ordering::Relaxed);
    metrics::counter!(AGG_GAPS).increment(total.gaps);
    metrics::counter!(AGG_DUPLICATES).increment(total.duplicates);
    metrics::counter!(AGG_SEQUENCE_LATE).increment(total.late);
}
