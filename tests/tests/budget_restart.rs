//! Budget counters survive aggregator crashes: under load through the proxy, the real
//! aggregator binary is SIGKILLed twice and restarted; afterwards every counter (a global
//! total budget, an account's daily token budget, a prepaid account's usage) equals a recount
//! from ClickHouse: replayed batches were not counted twice, and none was lost.

#[path = "aggregator_support/mod.rs"]
mod aggregator_support;
mod budget_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aggregator_support as agg;
use budget_support as support;
use serde_json::json;
use tollgate_e2e::TestStack;
use tollgate_loadtest::MockConfig;

const PARTITIONS: i32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_equal_a_recount_after_sigkills() {
    let stack = Arc::new(
        TestStack::start_budgets(
            "bkill",
            PARTITIONS,
            MockConfig {
                latency_ms: 5,
                ..Default::default()
            },
        )
        .await
        .unwrap(),
    );
    let prefix = stack.redis_prefix.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("aggregator.yaml");
    let log = dir.path().join("aggregator.log");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\n\
             kafka: {{ brokers: \"{}\", topic: {}, group_id: {}, session_timeout_ms: 3000 }}\n\
             clickhouse: {{ url: \"{}\", database: {} }}\n\
             batch: {{ max_rows: 20, max_wait_ms: 100 }}\n\
             budgets: {{ redis_url: \"{}\", prefix: {prefix}, eval_interval_ms: 300 }}\n",
            tollgate_e2e::brokers(),
            stack.topic,
            tollgate_e2e::unique("g"),
            tollgate_e2e::clickhouse_url(),
            stack.database,
            tollgate_e2e::redis_url(),
        ),
    )
    .unwrap();
    let mut child = agg::spawn_aggregator(&config, &log).unwrap();
    let admin = support::Admin::new(&stack);
    let global = support::create_budget(
        &stack,
        &admin,
        json!({"id": "all-total", "scope": "global", "period": "total", "limit_usd": 1000.0}),
    )
    .await
    .unwrap();
    let tokens = support::create_budget(
        &stack,
        &admin,
        json!({"id": "acct0-tokens", "scope": "account", "scope_id": "acct_test_0",
               "period": "daily", "limit_tokens": 100000000}),
    )
    .await
    .unwrap();
    admin
        .post(
            "/admin/v1/credit-accounts",
            json!({"id": "acct_test_1"}),
            201,
        )
        .await
        .unwrap();
    let account = admin
        .get("/admin/v1/credit-accounts/acct_test_1")
        .await
        .unwrap();
    let since_s = account["since_ms"].as_i64().unwrap() / 1000;
    admin
        .post(
            "/admin/v1/credit-topups",
            json!({"account_id": "acct_test_1", "amount_usd": 100.0}),
            201,
        )
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stack, stop) = (stack.clone(), stop.clone());
        tokio::spawn(async move {
            let mut ok = 0;
            while !stop.load(Ordering::Relaxed) {
                ok += stack.load_all_accounts(5, 0.25).await?;
            }
            Ok::<u64, anyhow::Error>(ok)
        })
    };
    for kill in 1..=2 {
        let before = stack.row_count().await.unwrap();
        support::wait_until("progress", Duration::from_secs(60), || async {
            Ok(stack.row_count().await? > before + 20)
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(agg::random_between(0, 800))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!(
            "kill {kill}: {} rows stored",
            stack.row_count().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        child = agg::spawn_aggregator(&config, &log).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let served = load.await.unwrap().unwrap();
    eprintln!("{served} requests served");
    support::wait_until("every event stored", Duration::from_secs(120), || async {
        Ok(stack.row_count().await? >= served)
    })
    .await
    .unwrap();
    support::wait_rows_settled(&stack, Duration::from_secs(60))
        .await
        .unwrap();

    let db = stack.db();
    let global_key = support::counter_key(&stack, &global);
    let tokens_key = support::counter_key(&stack, &tokens);
    let credit_key = tollgate_schemas::redis_keys::credit_balance(&prefix, "acct_test_1");
    let window = tollgate_schemas::budgets::Window::of(
        tokens.period,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    );
    let recount = || async {
        let all: i64 = db
            .query("SELECT sum(cost_nanos) FROM usage_events")
            .fetch_one()
            .await?;
        let tok: i64 = db
            .query(
                "SELECT sum(prompt_tokens + completion_tokens) FROM usage_events \
                 WHERE account_id = 'acct_test_0' AND ts >= toDateTime(?) AND ts < toDateTime(?)",
            )
            .bind(window.start_secs())
            .bind(window.end_secs())
            .fetch_one()
            .await?;
        let used: i64 = db
            .query(
                "SELECT sum(cost_nanos) FROM usage_events \
                 WHERE account_id = 'acct_test_1' AND ts >= toDateTime(?)",
            )
            .bind(since_s as u32)
            .fetch_one()
            .await?;
        let counters = (
            support::hget(&global_key, "v").await?,
            support::hget(&tokens_key, "v").await?,
            support::hget(&credit_key, "used").await?,
        );
        Ok::<_, anyhow::Error>(((all, tok, used), counters))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (settled, expected, counters) = loop {
        let (expected, counters) = recount().await.unwrap();
        if expected == counters && expected.0 > 0 {
            break (true, expected, counters);
        }
        if tokio::time::Instant::now() > deadline {
            break (false, expected, counters);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!(
        "recount {expected:?}, counters {counters:?}; replayed batches skipped as stored: {}",
        text.matches("skipped messages ClickHouse already holds")
            .count()
    );
    assert!(
        settled,
        "counters {counters:?} differ from the recount {expected:?}:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let rows = stack.row_count().await.unwrap();
    assert!(rows >= served, "{rows} rows for {served} served requests");
}
