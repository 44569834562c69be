//! Scale-out on the local stack: three in-process proxies sharing Redis rate-limit counters and
//! one Kafka topic, two aggregators in one consumer group. A key limited to 120 requests per
//! minute gets 300 requests spread over the three proxies: exactly 120 are admitted in total,
//! every metered request is stored exactly once (no duplicate `event_id`), and both
//! aggregators took part.

use std::time::Duration;

use tollgate_e2e::{proxy_config, redis_url, spool_dir, unique, TestStack, EXTRA_KEYS, TEST_KEY};
use tollgate_loadtest::mock::MockConfig;
use tollgate_proxy::limits::{Backend, FailureMode};

const RPM: u64 = 120;
const PER_PROXY: u64 = 100;
const EXTRA_PER_KEY: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_proxies_two_aggregators_hold_limits_and_store_once() -> anyhow::Result<()> {
    let stack = TestStack::start("scale", 4, MockConfig::default()).await?;
    let prefix = unique("scale_rl");

    // Three proxies on the same topic and Redis counters (the stack's own proxy is not used:
    // it has no limits).
    let mut proxies = Vec::new();
    for i in 0..3 {
        let mut cfg = proxy_config(&stack.mock.base_url(), &stack.topic)?;
        cfg.proxy_id = format!("{}-scale-{i}", stack.topic);
        cfg.kafka.spool.dir = spool_dir();
        cfg.limits.backend = Some(Backend::Redis);
        cfg.limits.redis_url = Some(serde_json::from_value(serde_json::json!(redis_url()))?);
        cfg.limits.prefix = prefix.clone();
        cfg.limits.failure_mode = FailureMode::Closed;
        cfg.limits.timeout_ms = 2_000;
        if let Some(key) = cfg.api_keys.iter_mut().find(|k| k.id == "key_test") {
            key.rate_limit = Some(tollgate_proxy::entities::RateLimit {
                rpm: Some(RPM),
                ..Default::default()
            });
        }
        cfg.validate()?;
        proxies.push(tollgate_proxy::start(cfg).await?);
    }
    let agg_a = stack.aggregator("scale").await?;
    let agg_b = stack.aggregator("scale").await?;

    let runs = proxies.iter().map(|p| {
        let mut load = stack.load(PER_PROXY, 0.3);
        load.base_url = p.base_url();
        load.api_key = Some(TEST_KEY.into());
        load.concurrency = 8;
        tollgate_loadtest::run(load)
    });
    // Unlimited keys of other accounts spread events over the partitions (events are keyed by
    // account).
    let spread = EXTRA_KEYS.iter().enumerate().map(|(i, k)| {
        let mut load = stack.load(EXTRA_PER_KEY, 0.0);
        load.base_url = proxies[i % proxies.len()].base_url();
        load.api_key = Some((*k).to_string());
        load.concurrency = 2;
        tollgate_loadtest::run(load)
    });
    let (reports, spread) = futures::future::try_join(
        futures::future::try_join_all(runs),
        futures::future::try_join_all(spread),
    )
    .await?;
    let extra: u64 = spread.iter().map(|r| r.ok).sum();
    assert_eq!(
        extra,
        EXTRA_PER_KEY * EXTRA_KEYS.len() as u64,
        "unlimited keys all pass"
    );
    let admitted: u64 = reports.iter().map(|r| r.ok).sum();
    let refused: u64 = reports
        .iter()
        .map(|r| r.status_counts.get(&429).copied().unwrap_or(0))
        .sum();
    println!(
        "admitted {admitted}, refused {refused}, per proxy: {:?}",
        reports.iter().map(|r| (r.ok, r.sent)).collect::<Vec<_>>()
    );
    assert_eq!(admitted, RPM, "the key's rpm holds across proxies");
    assert_eq!(
        admitted + refused,
        3 * PER_PROXY,
        "every other request is a 429"
    );

    // Metered requests: the admitted ones and the refusals (each produces a usage event).
    stack
        .wait_for_rows(admitted + refused + extra, Duration::from_secs(60))
        .await?;
    let db = stack.db();
    let stored = |sql: &'static str| {
        let db = db.clone();
        async move { db.query(sql).fetch_one::<u64>().await }
    };
    let ok_rows = stored(
        "SELECT count() FROM usage_events WHERE status_code = 200 AND api_key_id = 'key_test'",
    )
    .await?;
    assert_eq!(ok_rows, admitted);
    let refused_rows = stored("SELECT count() FROM usage_events WHERE status_code = 429").await?;
    assert_eq!(refused_rows, refused);
    let distinct = stored("SELECT uniqExact(event_id) FROM usage_events").await?;
    let total = admitted + refused + extra;
    assert_eq!(distinct, total, "no event stored twice");
    let partitions = stored("SELECT uniqExact(kafka_partition) FROM usage_events").await?;
    assert!(partitions > 1, "events spread over the partitions");
    let inserted = [&agg_a, &agg_b].map(|a| {
        a.stats()
            .inserted
            .load(std::sync::atomic::Ordering::Relaxed)
    });
    println!("rows inserted per aggregator: {inserted:?}");
    assert_eq!(inserted.iter().sum::<u64>(), total);

    agg_a.shutdown().await;
    agg_b.shutdown().await;
    for p in proxies {
        p.shutdown().await;
    }
    Ok(())
}
