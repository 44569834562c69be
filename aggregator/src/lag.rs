//! Consumer lag per partition and the topic's partition count, sampled in the background.
//!
//! Lag = the partition's high watermark (asked from the broker) minus the next offset to store
//! (this instance's commits, else the group's committed offset). Sampled on blocking threads
//! so a slow broker never stalls the consume loop, and also while the loop waits on a failing
//! ClickHouse, which is when lag matters most.
//!
//! The sample also decides whether `proxy_seq` gaps can be judged ([`Shared::gaps_reliable`]):
//! one proxy's events are spread over every partition, so while partitions are consumed at
//! different points (catching up a backlog) a number missing from one partition's stream may
//! simply not have been read yet from another. Gaps count only while this instance owns every
//! partition and `lag × partitions` stays within half the gap window.
//!
//! It also watches the partitions this instance does not own ([`orphans`]): a backlog whose
//! committed offset stays put for longer than the stall time means no member consumes it.

pub mod orphans;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tollgate_schemas::telemetry::AGG_LAG;

use crate::consumer::{assigned, UsageConsumer};
use crate::state::Shared;
use orphans::{OrphanWatch, PartitionView};

const TIMEOUT: Duration = Duration::from_secs(2);

/// One sample: refresh the partition count, the lag gauges and `gaps_reliable`.
fn sample(
    consumer: &UsageConsumer,
    topic: &str,
    shared: &Shared,
    window: u64,
    previous: &mut Vec<i32>,
    watch: &mut OrphanWatch,
) {
    if let Ok(md) = consumer.fetch_metadata(Some(topic), TIMEOUT) {
        if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
            shared
                .topic_partitions
                .store(t.partitions().len(), Ordering::Relaxed);
        }
    }
    let parts = assigned(consumer, topic);
    for p in previous.iter().filter(|p| !parts.contains(p)) {
        metrics::gauge!(AGG_LAG, "partition" => p.to_string()).set(0.0);
    }
    *previous = parts.clone();
    let known: HashMap<i32, i64> = shared
        .positions
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    let mut unknown = TopicPartitionList::new();
    for p in parts.iter().filter(|p| !known.contains_key(p)) {
        unknown.add_partition(topic, *p);
    }
    let mut committed: HashMap<i32, i64> = HashMap::new();
    if unknown.count() > 0 {
        if let Ok(tpl) = consumer.committed_offsets(unknown, TIMEOUT) {
            for e in tpl.elements() {
                if let Offset::Offset(o) = e.offset() {
                    committed.insert(e.partition(), o);
                }
            }
        }
    }
    let total = shared.topic_partitions.load(Ordering::Relaxed);
    let mut reliable = total > 0 && parts.len() == total;
    for &p in &parts {
        let Ok((low, high)) = consumer.fetch_watermarks(topic, p, TIMEOUT) else {
            reliable = false;
            continue;
        };
        let next = known
            .get(&p)
            .or_else(|| committed.get(&p))
            .copied()
            .unwrap_or(low);
        let lag = (high - next).max(0);
        metrics::gauge!(AGG_LAG, "partition" => p.to_string()).set(lag as f64);
        if (lag as u64).saturating_mul(total as u64) > window.div_ceil(64) * 32 {
            reliable = false;
        }
    }
    let unchanged = shared.assigned.lock().map(|a| *a == parts).unwrap_or(false);
    shared
        .gaps_reliable
        .store(reliable && unchanged, Ordering::Relaxed);
    watch_unowned(consumer, topic, shared, &parts, total, watch);
}

/// Look at the partitions this instance does not own and publish the orphaned ones.
fn watch_unowned(
    consumer: &UsageConsumer,
    topic: &str,
    shared: &Shared,
    parts: &[i32],
    total: usize,
    watch: &mut OrphanWatch,
) {
    let others: Vec<i32> = (0..total as i32).filter(|p| !parts.contains(p)).collect();
    let mut views = Vec::with_capacity(others.len());
    if !others.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for p in &others {
            tpl.add_partition(topic, *p);
        }
        // A failed look-up proves nothing: keep the previous verdict.
        let Ok(committed) = consumer.committed_offsets(tpl, TIMEOUT) else {
            return;
        };
        for &p in &others {
            let Ok((low, high)) = consumer.fetch_watermarks(topic, p, TIMEOUT) else {
                return;
            };
            let committed = committed
                .find_partition(topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            views.push(PartitionView {
                partition: p,
                committed,
                low,
                high,
            });
        }
    }
    let found = watch.observe(Instant::now(), parts, &views);
    if let Ok(mut o) = shared.orphans.lock() {
        *o = found;
    }
}

/// Sample every `every` until `stop` turns true; `window` is `sequence.window`.
pub async fn run(
    consumer: Arc<UsageConsumer>,
    topic: String,
    shared: Arc<Shared>,
    every: Duration,
    window: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut previous = Vec::new();
    let mut watch = OrphanWatch::new(shared.orphan_stall());
    let mut rejoins = shared.stats.rejoins.load(Ordering::Relaxed);
    loop {
        let now_rejoins = shared.stats.rejoins.load(Ordering::Relaxed);
        if now_rejoins != rejoins {
            rejoins = now_rejoins;
            watch.reset();
        }
        let c = consumer.clone();
        let t = topic.clone();
        let s = shared.clone();
        let prev = std::mem::take(&mut previous);
        let w = std::mem::replace(&mut watch, OrphanWatch::new(shared.orphan_stall()));
        match tokio::task::spawn_blocking(move || {
            let (mut prev, mut w) = (prev, w);
            sample(&c, &t, &s, window, &mut prev, &mut w);
            (prev, w)
        })
        .await
        {
            Ok((p, w)) => {
                previous = p;
                watch = w;
            }
            Err(e) => tracing::warn!(error = %e, "lag sampler failed"),
        }
        if tokio::time::timeout(every, stop.wait_for(|s| *s))
            .await
            .is_ok()
        {
            return;
        }
    }
}
