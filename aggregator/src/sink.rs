//! ClickHouse side: the row type, inserts, and the stored-offset watermark.

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
}

/// A ClickHouse client set up for 18.16 and modern servers alike: plain `RowBinary`, no
/// compression, no row-type validation (older servers lack `RowBinaryWithNamesAndTypes`).
pub fn client(cfg: &ClickHouseConfig) -> Client {
    Client::default()
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_password(&cfg.password)
        .with_compression(Compression::None)
        .with_validation(false)
}

/// Writes usage rows into one database.
#[derive(Clone)]
pub struct ClickHouseSink {
    db: Client,
}

impl std::fmt::Debug for ClickHouseSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClickHouseSink")
    }
}

impl ClickHouseSink {
    /// Sink into `cfg.database`.
    pub fn new(cfg: &ClickHouseConfig) -> Self {
        Self {
            db: client(cfg).with_database(&cfg.database),
        }
    }

    /// Insert rows in one INSERT (atomic for a batch within one monthly partition).
    pub async fn insert(&self, rows: &[UsageRow]) -> Result<(), clickhouse::error::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self.db.insert::<UsageRow>("usage_events").await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    }

    /// Highest Kafka offset already stored for a partition (`None` when nothing is).
    pub async fn stored_watermark(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, clickhouse::error::Error> {
        let (count, max) = self
            .db
            .query("SELECT count(), max(kafka_offset) FROM usage_events WHERE kafka_topic = ? AND kafka_partition = ?")
            .bind(topic)
            .bind(partition)
            .fetch_one::<(u64, i64)>()
            .await?;
        Ok((count > 0).then_some(max))
    }
}
