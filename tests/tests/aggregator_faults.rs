//! Fault injection on the aggregator, under load through the proxy:
//! (1) the real binary SIGKILLed five times at random moments → exactly one row per event;
//! (2) a private ClickHouse stopped for 30 s → no offset committed past stored rows, and every
//!     row arrives after recovery.

mod aggregator_support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aggregator_support as support;
use tollgate_e2e::private::{PrivateService, ServiceKind};
use tollgate_e2e::TestStack;
use tollgate_loadtest::MockConfig;

const PARTITIONS: i32 = 3;

/// Send load until `stop` is set; returns the successful requests (one usage event each).
fn background_load(
    stack: Arc<TestStack>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<anyhow::Result<u64>> {
    tokio::spawn(async move {
        let mut ok = 0;
        while !stop.load(Ordering::Relaxed) {
            ok += stack.load_all_accounts(5, 0.25).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(ok)
    })
}

/// Wait until the topic holds `n` messages (the proxy publishes asynchronously).
async fn wait_published(topic: &str, n: u64) -> anyhow::Result<()> {
    let brokers = tollgate_e2e::brokers();
    support::wait_until("events published", Duration::from_secs(60), || async {
        Ok(support::total_messages(&brokers, topic, PARTITIONS)? >= n)
    })
    .await?;
    let published = support::total_messages(&brokers, topic, PARTITIONS)?;
    anyhow::ensure!(
        published == n,
        "{published} events published for {n} requests"
    );
    Ok(())
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aggregator_sigkilled_five_times_under_load_stores_each_event_once() {
    let bin = support::aggregator_binary().unwrap();
    let stack = Arc::new(
        TestStack::start(
            "agg_kill",
            PARTITIONS,
            MockConfig {
                latency_ms: 5,
                ..Default::default()
            },
        )
        .await
        .unwrap(),
    );
    let group = tollgate_e2e::unique("g");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("aggregator.yaml");
    let log = dir.path().join("aggregator.log");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\n\
             kafka: {{ brokers: \"{}\", topic: {}, group_id: {group}, session_timeout_ms: 3000 }}\n\
             clickhouse: {{ url: \"{}\", database: {} }}\n\
             batch: {{ max_rows: 20, max_wait_ms: 100 }}\n\
             retry: {{ initial_backoff_ms: 50, max_backoff_ms: 500 }}\n",
            tollgate_e2e::brokers(),
            stack.topic,
            tollgate_e2e::clickhouse_url(),
            stack.database
        ),
    )
    .unwrap();
    eprintln!("aggregator binary {}, log {}", bin.display(), log.display());

    let stop = Arc::new(AtomicBool::new(false));
    let load = background_load(stack.clone(), stop.clone());
    let mut child = support::spawn_aggregator(&config, &log).unwrap();
    for kill in 1..=5 {
        // Let this incarnation store something, then kill it a random moment later.
        let before = stack.row_count().await.unwrap();
        let progressed = support::wait_until("progress", Duration::from_secs(60), || async {
            Ok(stack.row_count().await? > before)
        })
        .await;
        assert!(
            progressed.is_ok(),
            "no progress before kill {kill}:\n{}",
            log_tail(&log)
        );
        let delay = support::random_between(0, 1_500);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!(
            "kill {kill}: SIGKILL {delay} ms after progress, {} rows stored",
            stack.row_count().await.unwrap()
        );
        child = support::spawn_aggregator(&config, &log).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.unwrap().unwrap();
    wait_published(&stack.topic, sent).await.unwrap();

    let stored = stack.wait_for_rows(sent, Duration::from_secs(120)).await;
    let tail = log_tail(&log);
    child.kill().unwrap();
    child.wait().unwrap();
    stored.unwrap_or_else(|e| panic!("{e}\n{tail}"));
    let (rows, offsets, events) = support::uniqueness(&stack.db()).await.unwrap();
    assert_eq!((rows, offsets, events), (sent, sent, sent));
    let skipped = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("skipped messages ClickHouse already holds")
        .count();
    eprintln!("{sent} events, stored once each; {skipped} batches found rows already stored");
    if let Ok(stack) = Arc::try_unwrap(stack) {
        stack.proxy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clickhouse_down_30s_commits_nothing_past_stored_rows_and_recovers() {
    let ch = PrivateService::start(ServiceKind::ClickHouse).unwrap();
    let stack = Arc::new(
        TestStack::start("agg_chdown", PARTITIONS, MockConfig::default())
            .await
            .unwrap(),
    );
    let brokers = tollgate_e2e::brokers();
    let group = tollgate_e2e::unique("g");
    let mut cfg = stack.aggregator_config(&group);
    cfg.clickhouse.url = ch.http_url();
    cfg.clickhouse.timeout_ms = 5_000;
    cfg.retry.max_backoff_ms = 1_000;
    let agg = tollgate_aggregator::start(cfg.clone()).await.unwrap();
    let ready = format!("http://{}/readyz", agg.local_addr());
    let db =
        tollgate_aggregator::sink::client(&cfg.clickhouse).with_database(&cfg.clickhouse.database);

    let stop = Arc::new(AtomicBool::new(false));
    let load = background_load(stack.clone(), stop.clone());
    support::wait_until(
        "rows before the outage",
        Duration::from_secs(60),
        || async { Ok(support::count(&db, "usage_events").await? >= 40) },
    )
    .await
    .unwrap();

    eprintln!("stopping ClickHouse");
    ch.stop().unwrap();
    let stopped_at = unix_now();
    eprintln!("ClickHouse stopped");
    let mut samples = Vec::new();
    let mut saw_not_ready = false;
    let outage_end = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < outage_end {
        tokio::time::sleep(Duration::from_secs(3)).await;
        samples.push(support::committed(&brokers, &group, &stack.topic, PARTITIONS).unwrap());
        let (status, body) = support::get(&ready).await.unwrap();
        if status == 503 {
            assert!(body.contains("ClickHouse"), "{body}");
            saw_not_ready = true;
        }
    }
    let resumed_at = unix_now();
    ch.resume().unwrap();
    eprintln!("ClickHouse resumed");
    assert!(saw_not_ready, "/readyz never reported the outage");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.unwrap().unwrap();
    wait_published(&stack.topic, sent).await.unwrap();

    support::wait_until(
        "every row after recovery",
        Duration::from_secs(90),
        || async { Ok(support::count(&db, "usage_events").await? >= sent) },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (rows, offsets, events) = support::uniqueness(&db).await.unwrap();
    assert_eq!((rows, offsets, events), (sent, sent, sent));

    // Rows are stored either before the stop or after the restart, so the midpoint separates
    // them; no offset committed during the outage may pass what was stored before it.
    let before = support::stored_max(&db, Some(stopped_at / 2 + resumed_at / 2))
        .await
        .unwrap();
    let last_sample = samples.last().cloned().unwrap_or_default();
    for sample in &samples {
        for (p, committed) in sample {
            let stored = before.get(p).copied().unwrap_or(-1);
            assert!(
                *committed <= stored + 1,
                "partition {p}: committed {committed} during the outage, stored only up to {stored}"
            );
        }
    }
    let hwm = support::high_watermarks(&brokers, &stack.topic, PARTITIONS).unwrap();
    assert!(
        last_sample.iter().any(|(p, c)| *c < hwm[p]),
        "the outage must leave something uncommitted: {last_sample:?} vs {hwm:?}"
    );
    support::wait_until("everything committed", Duration::from_secs(30), || async {
        Ok(support::committed(&brokers, &group, &stack.topic, PARTITIONS)? == hwm)
    })
    .await
    .unwrap();
    assert_eq!(support::get(&ready).await.unwrap().0, 200);
    agg.shutdown().await;
    if let Ok(stack) = Arc::try_unwrap(stack) {
        stack.proxy.shutdown().await;
    }
}
