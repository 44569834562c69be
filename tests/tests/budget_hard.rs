//! Budgets on the real stack (proxy + in-process aggregator + Redis + ClickHouse):
//! (1) a hard budget of a few cents on a key under steady load: 429 `budget_exceeded` soon
//!     after spend reaches the limit, naming the budget and its reset; other keys unaffected;
//!     the admin API shows the window as blocked;
//! (2) a warn budget at 80 %: exactly one alert row, nothing blocked.

mod budget_support;

use std::time::Duration;

use budget_support as support;
use serde_json::json;
use tollgate_e2e::{TestStack, EXTRA_KEYS};
use tollgate_loadtest::MockConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hard_budget_blocks_the_key_soon_after_the_limit() {
    let stack = TestStack::start_budgets("bhard", 2, MockConfig::default())
        .await
        .unwrap();
    let agg = stack.aggregator(&tollgate_e2e::unique("g")).await.unwrap();
    let admin = support::Admin::new(&stack);
    let limit_usd = 0.02;
    support::create_budget(
        &stack,
        &admin,
        json!({"id": "hard-key", "scope": "key", "scope_id": "key_test_0", "period": "daily",
               "limit_usd": limit_usd, "mode": "hard"}),
    )
    .await
    .unwrap();
    // Steady load on the budgeted key until it is refused.
    let replies =
        support::load_until_refused(&stack, EXTRA_KEYS[0], 4, 100, Duration::from_secs(30))
            .await
            .unwrap();
    let refused = replies.iter().find(|r| r.status == 429).expect("a 429");
    assert_eq!(refused.code(), "budget_exceeded", "{}", refused.body);
    let msg = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("hard-key") && msg.contains("resets at"),
        "{msg}"
    );
    assert_eq!(refused.body["error"]["type"], "insufficient_quota");
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(refused.headers["x-should-retry"], "false");
    // Spend (by completion order) reached the limit before the first refusal, and the refusal
    // came soon after: the requests served after the limit was reached are few.
    let limit = (limit_usd * 1e9) as i64;
    let mut spent = 0;
    let mut reached_at = None;
    for r in replies.iter().filter(|r| r.status == 200) {
        spent += r.cost_nanos;
        if spent >= limit && reached_at.is_none() {
            reached_at = Some(r.done);
        }
    }
    let reached_at = reached_at.expect("spend reached the limit before the first 429");
    let latency = refused.sent.saturating_duration_since(reached_at);
    eprintln!(
        "served {} requests, spent {spent} of {limit} nano-USD, spend→429 {latency:?}",
        replies.iter().filter(|r| r.status == 200).count()
    );
    assert!(
        latency < Duration::from_secs(10),
        "refusal came {latency:?} after the limit"
    );
    // Every further request of the key is refused; another key still works.
    let http = reqwest::Client::new();
    let again = support::chat(&http, &stack, EXTRA_KEYS[0], 10)
        .await
        .unwrap();
    assert_eq!((again.status, again.code()), (429, "budget_exceeded"));
    let other = support::chat(&http, &stack, EXTRA_KEYS[1], 10)
        .await
        .unwrap();
    assert_eq!(other.status, 200, "{}", other.body);
    // The admin API shows the window.
    support::wait_rows_settled(&stack, Duration::from_secs(30))
        .await
        .unwrap();
    let b = admin.get("/admin/v1/budgets/hard-key").await.unwrap();
    let status = &b["status"];
    assert_eq!(status["state"], "blocked", "{b}");
    assert_eq!(status["remaining"], 0, "{b}");
    assert!(status["resets_at"]
        .as_str()
        .unwrap()
        .ends_with("T00:00:00Z"));
    let stored = support::stored_cost(&stack, "api_key_id", "key_test_0")
        .await
        .unwrap();
    assert_eq!(status["spent"].as_i64().unwrap(), stored, "{b}");
    // Raising the limit lifts the block.
    let (code, body) = admin
        .call(
            reqwest::Method::PUT,
            "/admin/v1/budgets/hard-key",
            Some(json!({"scope": "key", "scope_id": "key_test_0", "period": "daily", "limit_usd": 100.0})),
        )
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    support::wait_until("block lifted", Duration::from_secs(10), || async {
        Ok(support::chat(&http, &stack, EXTRA_KEYS[0], 10)
            .await?
            .status
            == 200)
    })
    .await
    .unwrap();
    agg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warn_budget_at_80_percent_writes_one_alert_and_blocks_nothing() {
    let stack = TestStack::start_budgets("bwarn", 2, MockConfig::default())
        .await
        .unwrap();
    let agg = stack.aggregator(&tollgate_e2e::unique("g")).await.unwrap();
    let admin = support::Admin::new(&stack);
    let limit = 10_000_000; // 0.01 USD
    support::create_budget(
        &stack,
        &admin,
        json!({"id": "warn-acct", "scope": "account", "scope_id": "acct_test_1",
               "period": "monthly", "limit_usd": 0.01, "mode": "warn",
               "alert_thresholds": [80]}),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    // Spend to 85 % of the limit.
    let mut spent = 0;
    while spent < limit * 85 / 100 {
        let r = support::chat(&http, &stack, EXTRA_KEYS[1], 100)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        spent += r.cost_nanos;
    }
    assert!(spent < limit, "overshot the test's own plan: {spent}");
    let db = stack.db();
    support::wait_until("alert row", Duration::from_secs(15), || async {
        Ok(db
            .query("SELECT count() FROM budget_alerts FINAL")
            .fetch_one::<u64>()
            .await?
            >= 1)
    })
    .await
    .unwrap();
    // Past 100 %: still served (warn never blocks), still one alert (only 80 % is configured).
    while spent < limit * 130 / 100 {
        let r = support::chat(&http, &stack, EXTRA_KEYS[1], 100)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "warn budgets never block: {}", r.body);
        spent += r.cost_nanos;
    }
    support::wait_rows_settled(&stack, Duration::from_secs(30))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let rows: Vec<(String, u16, String, i64)> = db
        .query("SELECT budget_id, threshold_pct, mode, limit_value FROM budget_alerts FINAL")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![("warn-acct".to_string(), 80, "warn".to_string(), limit)]
    );
    let b = admin.get("/admin/v1/budgets/warn-acct").await.unwrap();
    assert_eq!(b["status"]["state"], "over_limit", "{b}");
    assert_eq!(
        b["status"]["spent"].as_i64().unwrap(),
        support::stored_cost(&stack, "account_id", "acct_test_1")
            .await
            .unwrap()
    );
    agg.shutdown().await;
}
