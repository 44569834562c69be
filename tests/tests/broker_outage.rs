//! Kafka outages lose no usage events: the proxy spools them to disk and replays them.
//!
//! Each test runs its own private broker (stopped and resumed here, never the shared one), the
//! shared ClickHouse with a unique database, a mock upstream and an aggregator on the private
//! broker.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clickhouse::Row;
use serde::Deserialize;
use tollgate_aggregator::{AggregatorConfig, AggregatorHandle};
use tollgate_e2e::private::{PrivateService, ServiceKind};
use tollgate_e2e::{TEST_KEY, TEST_MODEL};
use tollgate_loadtest::{LoadConfig, MockConfig, MockServer};
use tollgate_proxy::usage::publisher::PublisherCounts;
use tollgate_proxy::ProxyHandle;

/// The required outage length.
const OUTAGE: Duration = Duration::from_secs(30);
/// Pause between two requests of the steady traffic (about 4 requests/s).
const PACE: Duration = Duration::from_millis(250);

struct Outage {
    kafka: PrivateService,
    topic: String,
    database: String,
    mock: MockServer,
}

#[derive(Debug, Row, Deserialize)]
struct Rows {
    rows: u64,
    events: u64,
    streams: u64,
}

impl Outage {
    async fn start(name: &str) -> anyhow::Result<Self> {
        tollgate_e2e::init_tracing();
        let kafka = PrivateService::start(ServiceKind::Kafka)?;
        let topic = tollgate_e2e::unique(&format!("t_{name}"));
        let database = tollgate_e2e::unique(&format!("tg_{name}"));
        tollgate_e2e::create_topic_on(&kafka.brokers(), &topic, 3).await?;
        tollgate_schemas::migrate::run(&tollgate_e2e::clickhouse(), &database).await?;
        let mock = MockServer::start(
            "127.0.0.1:0".parse()?,
            MockConfig {
                latency_ms: 2,
                chunk_delay_ms: 1,
                ..Default::default()
            },
        )
        .await?;
        Ok(Self {
            kafka,
            topic,
            database,
            mock,
        })
    }

    async fn proxy(&self, spool: &Path) -> anyhow::Result<ProxyHandle> {
        let mut cfg = tollgate_e2e::proxy_config(&self.mock.base_url(), &self.topic)?;
        cfg.kafka.brokers = self.kafka.brokers();
        cfg.kafka.spool.dir = spool.to_path_buf();
        Ok(tollgate_proxy::start(cfg).await?)
    }

    async fn aggregator(&self) -> anyhow::Result<AggregatorHandle> {
        let mut cfg = AggregatorConfig {
            listen: "127.0.0.1:0".into(),
            ..Default::default()
        };
        cfg.kafka.brokers = self.kafka.brokers();
        cfg.kafka.topic = self.topic.clone();
        cfg.kafka.group_id = tollgate_e2e::unique("g");
        cfg.clickhouse.url = tollgate_e2e::clickhouse_url();
        cfg.clickhouse.database = self.database.clone();
        cfg.batch.max_rows = 50;
        cfg.batch.max_wait_ms = 200;
        Ok(tollgate_aggregator::start(cfg).await?)
    }

    async fn rows(&self) -> anyhow::Result<Rows> {
        Ok(tollgate_e2e::clickhouse()
            .with_database(&self.database)
            .query(
                "SELECT count() AS rows, uniqExact(event_id) AS events, \
                 countIf(stream = 1) AS streams FROM usage_events",
            )
            .fetch_one()
            .await?)
    }

    /// Wait until `n` rows arrived, then check that no extra row follows.
    async fn wait_for_rows(&self, n: u64, timeout: Duration) -> anyhow::Result<Rows> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.rows().await?;
            if r.rows >= n {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return self.rows().await;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "timed out with {} of {n} rows",
                r.rows
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// One request through the proxy; `true` if it succeeded.
async fn request(proxy: &str, stream: bool) -> bool {
    let cfg = LoadConfig {
        base_url: proxy.to_string(),
        api_key: Some(TEST_KEY.into()),
        model: TEST_MODEL.into(),
        requests: 1,
        concurrency: 1,
        stream_share: if stream { 1.0 } else { 0.0 },
        max_tokens: 12,
        prompt: "tell me a short story about a toll gate".into(),
        include_usage: true,
        metadata: None,
        timeout: Duration::from_secs(30),
    };
    tollgate_loadtest::run(cfg).await.is_ok_and(|r| r.ok == 1)
}

/// Steady traffic, alternating streamed and plain requests, until `stop`.
/// Returns `(sent, ok, streamed)`.
async fn steady_traffic(proxy: String, stop: Arc<AtomicBool>) -> (u64, u64, u64) {
    let (mut sent, mut ok, mut streamed) = (0, 0, 0);
    while !stop.load(Ordering::Relaxed) {
        let stream = sent % 2 == 1;
        sent += 1;
        streamed += u64::from(stream);
        ok += u64::from(request(&proxy, stream).await);
        tokio::time::sleep(PACE).await;
    }
    (sent, ok, streamed)
}

/// Wait until the publisher delivered `expected` events and its spool is empty.
async fn wait_until_drained(
    proxy: &ProxyHandle,
    expected: u64,
    timeout: Duration,
) -> anyhow::Result<PublisherCounts> {
    let stats = proxy.publisher_stats();
    let deadline = Instant::now() + timeout;
    loop {
        let c = stats.counts();
        if c.spool_events == 0 && c.delivered >= expected {
            return Ok(c);
        }
        anyhow::ensure!(Instant::now() < deadline, "publisher not drained: {c:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_30s_broker_outage_loses_no_event() {
    let t0 = Instant::now();
    let env = Outage::start("outage").await.unwrap();
    let spool = tempfile::tempdir().unwrap();
    let proxy = env.proxy(spool.path()).await.unwrap();
    let agg = env.aggregator().await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(steady_traffic(proxy.base_url(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.kafka.stop().unwrap();
    tokio::time::sleep(OUTAGE).await;
    let during = proxy.publisher_stats().counts();
    env.kafka.resume().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, ok, streamed) = traffic.await.unwrap();
    assert_eq!(ok, sent, "every request must succeed while Kafka is down");
    assert!(
        streamed > 10 && sent - streamed > 10,
        "{sent} sent, {streamed} streamed"
    );

    let c = wait_until_drained(&proxy, sent, Duration::from_secs(60))
        .await
        .unwrap();
    let rows = env
        .wait_for_rows(sent, Duration::from_secs(60))
        .await
        .unwrap();
    println!(
        "outage: {sent} requests ({streamed} streamed); spooled during the outage {} \
         (spool held {} events, {} bytes at its end); final {c:?}; total {:.1}s",
        during.spooled,
        during.spool_events,
        during.spool_bytes,
        t0.elapsed().as_secs_f64()
    );
    assert!(
        during.spooled > 0,
        "the outage should have spooled: {during:?}"
    );
    assert_eq!(c.submitted, sent, "{c:?}");
    assert_eq!(c.dropped, 0, "{c:?}");
    assert_eq!(c.replayed, c.spooled, "{c:?}");
    assert_eq!(c.spool_events, 0, "{c:?}");
    assert_eq!(
        rows.events, sent,
        "every event reached ClickHouse: {rows:?}"
    );
    assert_eq!(rows.rows, sent, "and only once: {rows:?}");
    assert_eq!(rows.streams, streamed);

    proxy.shutdown().await;
    agg.shutdown().await;
    let left: Vec<_> = std::fs::read_dir(spool.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .collect();
    assert!(left.is_empty(), "spool segments left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_while_kafka_is_down_spools_and_the_next_proxy_replays() {
    let t0 = Instant::now();
    let env = Outage::start("sigterm").await.unwrap();
    let spool = tempfile::tempdir().unwrap();
    let agg = env.aggregator().await.unwrap();

    // A first proxy delivers a few events, then Kafka goes down and more requests come in.
    let first = env.proxy(spool.path()).await.unwrap();
    for i in 0..4 {
        assert!(request(&first.base_url(), i % 2 == 1).await);
    }
    wait_until_drained(&first, 4, Duration::from_secs(30))
        .await
        .unwrap();
    env.kafka.stop().unwrap();
    let pending = 20;
    for i in 0..pending {
        assert!(request(&first.base_url(), i % 2 == 1).await);
    }
    let stats = first.publisher_stats();
    // SIGTERM: whatever Kafka did not acknowledge goes to the spool.
    first.shutdown().await;
    let c1 = stats.counts();
    println!("first proxy after shutdown: {c1:?}");
    assert_eq!(c1.submitted, 4 + pending, "{c1:?}");
    assert_eq!(c1.delivered, 4, "{c1:?}");
    assert_eq!(c1.spooled, pending, "{c1:?}");
    assert_eq!(c1.spool_events, pending, "{c1:?}");
    assert_eq!(c1.dropped, 0, "{c1:?}");

    // The next process on the same spool directory replays once the broker is back.
    let second = env.proxy(spool.path()).await.unwrap();
    env.kafka.resume().unwrap();
    let c2 = wait_until_drained(&second, pending, Duration::from_secs(60))
        .await
        .unwrap();
    let rows = env
        .wait_for_rows(4 + pending, Duration::from_secs(60))
        .await
        .unwrap();
    println!(
        "second proxy: {c2:?}; rows {rows:?}; total {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(c2.replayed, pending, "{c2:?}");
    assert_eq!(rows.events, 4 + pending, "{rows:?}");
    assert_eq!(rows.rows, 4 + pending, "exactly once: {rows:?}");
    second.shutdown().await;
    agg.shutdown().await;
}
