//! Reservation mode on the real stack: near its limit, a hard budget reserves each request's
//! worst-case cost before forwarding, so under steady concurrent load the final spend passes
//! the limit by at most one request's cost (without reservations it passes by the spend rate
//! times the decision latency).

mod budget_support;

use std::time::Duration;

use budget_support as support;
use serde_json::json;
use tollgate_e2e::{TestStack, EXTRA_KEYS};
use tollgate_loadtest::MockConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservation_mode_keeps_the_overshoot_within_one_request() {
    let stack = TestStack::start_budgets(
        "bresv",
        2,
        MockConfig {
            latency_ms: 20,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let agg = stack.aggregator(&tollgate_e2e::unique("g")).await.unwrap();
    let admin = support::Admin::new(&stack);
    let limit = 20_000_000_i64;
    let budget = support::create_budget(
        &stack,
        &admin,
        json!({"id": "resv", "scope": "key", "scope_id": "key_test_2", "period": "daily",
               "limit_usd": 0.02, "reserve_above_pct": 0}),
    )
    .await
    .unwrap();
    // `reserve_above_pct: 0`: every request reserves (this load reaches the limit faster than
    // a decision at, say, 50 % could arrive).
    let replies =
        support::load_until_refused(&stack, EXTRA_KEYS[2], 8, 100, Duration::from_secs(30))
            .await
            .unwrap();
    let refused = replies.iter().find(|r| r.status == 429).expect("a 429");
    assert_eq!(refused.code(), "budget_exceeded", "{}", refused.body);
    let max_cost = replies.iter().map(|r| r.cost_nanos).max().unwrap_or(0);
    support::wait_rows_settled(&stack, Duration::from_secs(30))
        .await
        .unwrap();
    let spent = support::stored_cost(&stack, "api_key_id", "key_test_2")
        .await
        .unwrap();
    let served: i64 = replies.iter().map(|r| r.cost_nanos).sum();
    assert_eq!(spent, served, "ClickHouse holds what was served");
    eprintln!(
        "limit {limit}, spent {spent}, overshoot {} nano-USD, one request {max_cost}",
        spent - limit
    );
    assert!(
        spent <= limit + max_cost,
        "overshoot {} above one request's cost {max_cost}",
        spent - limit
    );
    // The reservations are all settled and dropped once the aggregator counted the events.
    let key = support::counter_key(&stack, &budget);
    support::wait_until("reservations released", Duration::from_secs(10), || async {
        Ok(support::hget(&key, "R").await? == 0)
    })
    .await
    .unwrap();
    assert_eq!(support::hget(&key, "v").await.unwrap(), spent);
    agg.shutdown().await;
}
