//! The rollup materialized views (per minute and per day, by account, key and model) hold the
//! same totals as `usage_events` after a short load through the proxy.

use std::time::Duration;

use clickhouse::Row;
use serde::Deserialize;
use tollgate_e2e::{TestStack, TEST_KEY};
use tollgate_loadtest::MockConfig;

#[derive(Debug, Row, Deserialize, PartialEq)]
struct Totals {
    account_id: String,
    api_key_id: String,
    model: String,
    requests: u64,
    errors: u64,
    prompt_tokens: i64,
    completion_tokens: i64,
    cached_tokens: i64,
    cost_nanos: i64,
}

const FROM_EVENTS: &str = "SELECT account_id, api_key_id, model, count() AS requests, \
    toUInt64(countIf(status_code >= 400)) AS errors, sum(prompt_tokens) AS prompt_tokens, \
    sum(completion_tokens) AS completion_tokens, sum(cached_tokens) AS cached_tokens, \
    sum(cost_nanos) AS cost_nanos FROM usage_events \
    GROUP BY account_id, api_key_id, model ORDER BY account_id, api_key_id, model";

fn from_rollup(view: &str) -> String {
    format!(
        "SELECT account_id, api_key_id, model, toUInt64(sum(requests)) AS requests, \
         toUInt64(sum(errors)) AS errors, sum(prompt_tokens) AS prompt_tokens, \
         sum(completion_tokens) AS completion_tokens, sum(cached_tokens) AS cached_tokens, \
         sum(cost_nanos) AS cost_nanos FROM {view} \
         GROUP BY account_id, api_key_id, model ORDER BY account_id, api_key_id, model"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollup_totals_equal_usage_events_totals() {
    let stack = TestStack::start("agg_rollup", 3, MockConfig::default())
        .await
        .unwrap();
    let agg = stack.aggregator(&tollgate_e2e::unique("g")).await.unwrap();

    let ok = stack.load_all_accounts(20, 0.3).await.unwrap();
    assert_eq!(ok, 80);
    let mut failing = stack.load(6, 0.0);
    failing.model = "failing-model".into();
    failing.api_key = Some(TEST_KEY.into());
    let report = tollgate_loadtest::run(failing).await.unwrap();
    assert_eq!(report.ok, 0);
    stack
        .wait_for_rows(86, Duration::from_secs(60))
        .await
        .unwrap();

    let db = stack.db();
    let expected: Vec<Totals> = db.query(FROM_EVENTS).fetch_all().await.unwrap();
    assert_eq!(
        expected.len(),
        5,
        "4 accounts on test-model + 1 on failing-model"
    );
    assert_eq!(expected.iter().map(|t| t.errors).sum::<u64>(), 6);
    assert!(expected.iter().map(|t| t.cost_nanos).sum::<i64>() > 0);
    for view in ["usage_by_minute", "usage_by_day"] {
        let got: Vec<Totals> = db.query(&from_rollup(view)).fetch_all().await.unwrap();
        assert_eq!(got, expected, "{view}");
    }

    // Latency quantiles of the day rollup lie within the observed range.
    let p50: f64 = db
        .query("SELECT latency_quantiles_us[1] FROM usage_by_day WHERE model = 'failing-model'")
        .fetch_one()
        .await
        .unwrap();
    let (lo, hi): (i64, i64) = db
        .query("SELECT min(latency_us), max(latency_us) FROM usage_events WHERE model = 'failing-model'")
        .fetch_one()
        .await
        .unwrap();
    assert!(
        p50 >= lo as f64 && p50 <= hi as f64,
        "{p50} not in {lo}..{hi}"
    );
    agg.shutdown().await;
    stack.proxy.shutdown().await;
}
