//! Helpers shared by the `aggregator_*` tests: Kafka offsets (committed and high watermarks),
//! stored offsets in ClickHouse, raw producing, the aggregator binary as a child process.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

fn admin_consumer(brokers: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?)
}

/// An in-process aggregator's config: `topic` into `database` on the local stack, HTTP on an
/// ephemeral port, a consumer group of its own.
pub fn config(brokers: &str, topic: &str, database: &str) -> tollgate_aggregator::AggregatorConfig {
    let mut cfg = tollgate_aggregator::AggregatorConfig {
        listen: "127.0.0.1:0".into(),
        ..Default::default()
    };
    cfg.kafka.brokers = brokers.into();
    cfg.kafka.topic = topic.into();
    cfg.kafka.group_id = tollgate_e2e::unique("g");
    cfg.clickhouse.url = tollgate_e2e::clickhouse_url();
    cfg.clickhouse.database = database.into();
    cfg
}

/// Committed offset per partition of `group` (partitions without a commit are absent).
pub fn committed(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    // A consumer that never subscribes does not join the group; it only fetches offsets.
    let c = admin_consumer(brokers, group)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, TIMEOUT)?;
    Ok(got
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// High watermark (offset of the next message) per partition.
pub fn high_watermarks(
    brokers: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let c = admin_consumer(brokers, &tollgate_e2e::unique("hwm"))?;
    (0..partitions)
        .map(|p| Ok((p, c.fetch_watermarks(topic, p, TIMEOUT)?.1)))
        .collect()
}

/// Messages in the topic.
pub fn total_messages(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<u64> {
    Ok(high_watermarks(brokers, topic, partitions)?
        .values()
        .map(|&h| h as u64)
        .sum())
}

/// Highest stored offset per partition over `usage_events` and `usage_dead_letters`, counting
/// only rows stored before `before_unix` (seconds) when given.
pub async fn stored_max(
    db: &clickhouse::Client,
    before_unix: Option<u32>,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let cutoff = before_unix.unwrap_or(u32::MAX);
    let rows: Vec<(i32, i64)> = db
        .query(
            "SELECT p, max(o) FROM ( \
               SELECT kafka_partition AS p, kafka_offset AS o FROM usage_events \
                 WHERE toUInt32(ingested_at) < ? \
               UNION ALL \
               SELECT kafka_partition AS p, kafka_offset AS o FROM usage_dead_letters \
                 WHERE toUInt32(failed_at) < ?) GROUP BY p",
        )
        .bind(cutoff)
        .bind(cutoff)
        .fetch_all()
        .await?;
    Ok(rows.into_iter().collect())
}

/// `(rows, distinct (partition, offset), distinct event ids)` of `usage_events`.
pub async fn uniqueness(db: &clickhouse::Client) -> anyhow::Result<(u64, u64, u64)> {
    Ok(db
        .query(
            "SELECT count(), uniqExact(kafka_partition, kafka_offset), uniqExact(event_id) \
             FROM usage_events",
        )
        .fetch_one()
        .await?)
}

/// Rows in `table`.
pub async fn count(db: &clickhouse::Client, table: &str) -> anyhow::Result<u64> {
    Ok(db
        .query(&format!("SELECT count() FROM {table}"))
        .fetch_one()
        .await?)
}

/// Produce raw bytes to one partition; returns the offset.
pub async fn produce_raw(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    payload: &[u8],
) -> anyhow::Result<i64> {
    let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
        .partition(partition)
        .payload(payload);
    let delivery = producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))?;
    Ok(delivery.offset)
}

/// A producer for raw messages.
pub fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .create()?)
}

/// Poll `check` every 200 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GET `url`: status and body.
pub async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let resp = reqwest::get(url).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

/// The `tollgate-aggregator` binary next to this test executable (`target/<profile>/`).
pub fn aggregator_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no parent directory")?;
    let bin = dir.join("tollgate-aggregator");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins` \
         (`make test` does)",
        bin.display()
    );
    Ok(bin)
}

/// Start the aggregator binary with `config` (YAML file); its log goes to `log`.
pub fn spawn_aggregator(config: &Path, log: &Path) -> anyhow::Result<Child> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let child = Command::new(aggregator_binary()?)
        .arg("run")
        .env("TOLLGATE_AGGREGATOR_CONFIG", config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .context("spawning tollgate-aggregator")?;
    Ok(child)
}

/// A random number in `lo..hi` (no extra dependency: hash a fresh random state).
pub fn random_between(lo: u64, hi: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(lo ^ hi);
    lo + h.finish() % (hi - lo).max(1)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
