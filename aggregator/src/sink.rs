//! ClickHouse side: the row types, inserts, and which Kafka offsets are already stored.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use clickhouse::error::Error;
use clickhouse::{Client, Compression, Row};
use serde::Serialize;
use tollgate_schemas::UsageEvent;

use crate::config::ClickHouseConfig;

/// One `usage_events` row (column order and types as in migration 0001).
#[derive(Debug, Clone, Row, Serialize, PartialEq)]
pub struct UsageRow {
    event_id: String,
    request_id: String,
    ts: u32,
    ts_ms: i64,
    proxy_id: String,
    proxy_seq: i64,
    api_key_id: String,
    account_id: String,
    team_id: String,
    model: String,
    provider: String,
    upstream_model: String,
    endpoint: String,
    stream: u8,
    status_code: u16,
    error_type: String,
    latency_us: i64,
    upstream_latency_us: i64,
    ttft_us: Option<i64>,
    prompt_tokens: i64,
    completion_tokens: i64,
    cached_tokens: i64,
    usage_estimated: u8,
    cost_nanos: i64,
    attempts: u16,
    metadata_keys: Vec<String>,
    metadata_values: Vec<String>,
    kafka_topic: String,
    kafka_partition: i32,
    /// Offset of the Kafka message this row came from.
    pub kafka_offset: i64,
}

impl UsageRow {
    /// Build a row from a decoded event and where it was read.
    pub fn new(ev: UsageEvent, topic: &str, partition: i32, offset: i64) -> Self {
        let mut meta: Vec<(String, String)> = ev.metadata.into_iter().collect();
        meta.sort();
        let (metadata_keys, metadata_values) = meta.into_iter().unzip();
        Self {
            ts: u32::try_from(ev.ts_ms.max(0) / 1000).unwrap_or(u32::MAX),
            ts_ms: ev.ts_ms,
            event_id: ev.event_id,
            request_id: ev.request_id,
            proxy_id: ev.proxy_id,
            proxy_seq: ev.proxy_seq,
            api_key_id: ev.api_key_id,
            account_id: ev.account_id,
            team_id: ev.team_id,
            model: ev.model,
            provider: ev.provider,
            upstream_model: ev.upstream_model,
            endpoint: ev.endpoint,
            stream: u8::from(ev.stream),
            status_code: u16::try_from(ev.status_code).unwrap_or(0),
            error_type: ev.error_type.unwrap_or_default(),
            latency_us: ev.latency_us,
            upstream_latency_us: ev.upstream_latency_us,
            ttft_us: ev.ttft_us,
            prompt_tokens: ev.prompt_tokens,
            completion_tokens: ev.completion_tokens,
            cached_tokens: ev.cached_tokens,
            usage_estimated: u8::from(ev.usage_estimated),
            cost_nanos: ev.cost_nanos,
            attempts: u16::try_from(ev.attempts).unwrap_or(0),
            metadata_keys,
            metadata_values,
            kafka_topic: topic.to_string(),
            kafka_partition: partition,
            kafka_offset: offset,
        }
    }

    /// The `ts` column (Unix seconds).
    pub fn ts(&self) -> u32 {
        self.ts
    }

    /// Producing proxy process.
    pub fn proxy_id(&self) -> &str {
        &self.proxy_id
    }

    /// The proxy's sequence number of this event.
    pub fn proxy_seq(&self) -> i64 {
        self.proxy_seq
    }

    /// Request id.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Event id.
    pub fn event_id(&self) -> &str {
        &self.event_id
    }

    /// Request start, Unix milliseconds.
    pub fn ts_ms(&self) -> i64 {
        self.ts_ms
    }

    /// API key id.
    pub fn api_key_id(&self) -> &str {
        &self.api_key_id
    }

    /// Account id.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// Team id.
    pub fn team_id(&self) -> &str {
        &self.team_id
    }

    /// Public model.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Cost, nano-USD.
    pub fn cost_nanos(&self) -> i64 {
        self.cost_nanos
    }

    /// Prompt + completion tokens.
    pub fn total_tokens(&self) -> i64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// One `usage_dead_letters` row (migration 0002).
#[derive(Debug, Clone, Row, Serialize, PartialEq)]
pub struct DeadLetterRow {
    /// Topic.
    pub kafka_topic: String,
    /// Partition.
    pub kafka_partition: i32,
    /// Offset: one dead letter per offset at most.
    pub kafka_offset: i64,
    /// Kafka message timestamp (ms), 0 when the message had none.
    pub kafka_ts_ms: i64,
    /// Bounded reason, also the `reason` label of the dead-letter counter.
    pub reason: String,
    /// The decoder's or ClickHouse's error message.
    pub error: String,
    /// The raw message bytes, hex (at most [`MAX_PAYLOAD_BYTES`] of them).
    pub payload_hex: String,
    /// Length of the raw message.
    pub payload_bytes: u32,
    /// Event id, when the message decoded.
    pub event_id: String,
    /// Producing proxy, when the message decoded.
    pub proxy_id: String,
    /// Its sequence number, when the message decoded (else 0).
    pub proxy_seq: i64,
}

/// Raw bytes kept per dead letter; longer payloads are cut (the full length is recorded).
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// A ClickHouse client set up for 18.16 and modern servers alike: plain `RowBinary`, no
/// compression, no row-type validation (older servers lack `RowBinaryWithNamesAndTypes`).
/// With a `cluster`, inserts into the Distributed table are synchronous: offsets are committed
/// only once the shards hold the rows (`insert_distributed_sync`, which newer servers keep as
/// an alias of `distributed_foreground_insert`).
pub fn client(cfg: &ClickHouseConfig) -> Client {
    let c = Client::default()
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_password(&cfg.password)
        .with_compression(Compression::None)
        .with_validation(false);
    if cfg.cluster.is_some() {
        c.with_setting("insert_distributed_sync", "1")
    } else {
        c
    }
}

/// The offsets of one partition to look up: `lo..=hi`; rows of `usage_events` are searched
/// with `ts` within `ts` (when given) so the query can prune monthly partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetRange {
    /// Partition.
    pub partition: i32,
    /// Lowest offset.
    pub lo: i64,
    /// Highest offset.
    pub hi: i64,
    /// Smallest and largest `ts` of the events among those offsets (None: no events).
    pub ts: Option<(u32, u32)>,
}

/// What the write path needs from ClickHouse (a trait so tests can fake failures).
pub trait Store {
    /// Insert usage rows in one INSERT.
    fn insert_rows(&self, rows: &[&UsageRow]) -> impl Future<Output = Result<(), Error>> + Send;
    /// Insert dead letters in one INSERT.
    fn insert_dead_letters(
        &self,
        rows: &[DeadLetterRow],
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Offsets in the range stored in `usage_events` or `usage_dead_letters`.
    fn stored_offsets(
        &self,
        range: OffsetRange,
    ) -> impl Future<Output = Result<HashSet<i64>, Error>> + Send;
    /// Which of `event_ids` (events whose `ts` lies in `ts_lo..=ts_hi`, Unix seconds) are
    /// already stored in `usage_events`, at any offset.
    fn stored_event_ids(
        &self,
        event_ids: &[&str],
        ts_lo: u32,
        ts_hi: u32,
    ) -> impl Future<Output = Result<HashSet<String>, Error>> + Send;
}

/// Most event ids per lookup query (keeps the query under ClickHouse's `max_query_size`).
const EVENT_IDS_PER_QUERY: usize = 2_000;

/// Writes usage rows and dead letters into one database; every call is bounded by
/// `clickhouse.timeout_ms`.
#[derive(Clone)]
pub struct ClickHouseSink {
    db: Client,
    topic: String,
    timeout: Duration,
    /// On a cluster each shard's `usage_offsets` holds only its own rows: the stored offsets
    /// are then read from `usage_events` itself.
    cluster: bool,
}

impl std::fmt::Debug for ClickHouseSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseSink")
            .field("topic", &self.topic)
            .finish()
    }
}

impl ClickHouseSink {
    /// Sink into `cfg.database` for messages of `topic`.
    pub fn new(cfg: &ClickHouseConfig, topic: &str) -> Self {
        Self {
            db: client(cfg).with_database(&cfg.database),
            topic: topic.to_string(),
            timeout: Duration::from_millis(cfg.timeout_ms),
            cluster: cfg.cluster.is_some(),
        }
    }

    async fn bounded<T>(&self, call: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(Error::TimedOut))
    }

    async fn insert_usage(&self, rows: &[&UsageRow]) -> Result<(), Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self.db.insert::<UsageRow>("usage_events").await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    }

    async fn insert_dead(&self, rows: &[DeadLetterRow]) -> Result<(), Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self
            .db
            .insert::<DeadLetterRow>("usage_dead_letters")
            .await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    }

    /// Highest offset of `partition` stored in `usage_events` or `usage_dead_letters` (None
    /// when neither holds any); asked once per partition per assignment. Single server: from
    /// `usage_offsets` (migration 0007, a few rows per partition) and the dead letters (sorted
    /// by partition and offset). Cluster: by scanning the partition's rows of `usage_events`.
    pub async fn max_stored_offset(&self, partition: i32) -> Result<Option<i64>, Error> {
        let events = if self.cluster {
            "SELECT kafka_offset AS o FROM usage_events \
               WHERE kafka_topic = ? AND kafka_partition = ?"
        } else {
            "SELECT maxMerge(max_offset) AS o FROM usage_offsets \
               WHERE kafka_topic = ? AND kafka_partition = ? \
               GROUP BY kafka_topic, kafka_partition"
        };
        let query = self
            .db
            .query(&format!(
                "SELECT count(), max(o) FROM ( {events} \
                   UNION ALL \
                   SELECT kafka_offset AS o FROM usage_dead_letters \
                     WHERE kafka_topic = ? AND kafka_partition = ?)"
            ))
            .bind(&self.topic)
            .bind(partition)
            .bind(&self.topic)
            .bind(partition);
        let (count, max) = self.bounded(query.fetch_one::<(u64, i64)>()).await?;
        Ok((count > 0).then_some(max))
    }

    /// `SELECT 1`: is the server answering?
    pub async fn ping(&self) -> Result<(), Error> {
        self.bounded(self.db.query("SELECT 1").fetch_one::<u8>())
            .await
            .map(|_| ())
    }
}

impl Store for ClickHouseSink {
    async fn insert_rows(&self, rows: &[&UsageRow]) -> Result<(), Error> {
        self.bounded(self.insert_usage(rows)).await
    }

    async fn insert_dead_letters(&self, rows: &[DeadLetterRow]) -> Result<(), Error> {
        self.bounded(self.insert_dead(rows)).await
    }

    async fn stored_offsets(&self, range: OffsetRange) -> Result<HashSet<i64>, Error> {
        let dead = self
            .db
            .query(
                "SELECT kafka_offset FROM usage_dead_letters WHERE kafka_topic = ? \
                 AND kafka_partition = ? AND kafka_offset >= ? AND kafka_offset <= ?",
            )
            .bind(&self.topic)
            .bind(range.partition)
            .bind(range.lo)
            .bind(range.hi);
        let mut stored: HashSet<i64> = self
            .bounded(dead.fetch_all::<i64>())
            .await?
            .into_iter()
            .collect();
        if let Some((ts_lo, ts_hi)) = range.ts {
            let rows = self
                .db
                .query(
                    "SELECT kafka_offset FROM usage_events WHERE ts >= toDateTime(?) \
                     AND ts <= toDateTime(?) AND kafka_topic = ? AND kafka_partition = ? \
                     AND kafka_offset >= ? AND kafka_offset <= ?",
                )
                .bind(ts_lo)
                .bind(ts_hi)
                .bind(&self.topic)
                .bind(range.partition)
                .bind(range.lo)
                .bind(range.hi);
            stored.extend(self.bounded(rows.fetch_all::<i64>()).await?);
        }
        Ok(stored)
    }

    async fn stored_event_ids(
        &self,
        event_ids: &[&str],
        ts_lo: u32,
        ts_hi: u32,
    ) -> Result<HashSet<String>, Error> {
        let mut found = HashSet::new();
        for chunk in event_ids.chunks(EVENT_IDS_PER_QUERY) {
            let query = self
                .db
                .query(
                    // `IN (SELECT arrayJoin([...]))`: a bound array is an Array literal,
                    // which `IN` does not accept as a set on 18.16.
                    "SELECT event_id FROM usage_events WHERE ts >= toDateTime(?) \
                     AND ts <= toDateTime(?) AND event_id IN (SELECT arrayJoin(?))",
                )
                .bind(ts_lo)
                .bind(ts_hi)
                .bind(chunk);
            found.extend(self.bounded(query.fetch_all::<String>()).await?);
        }
        Ok(found)
    }
}
