//! The budget gate on the shared local Redis (unique prefix per test): cached decisions per
//! scope, dropped on the aggregator's notice; reservations up to the limit; fail-open when
//! Redis is unreachable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_proxy::budget::{key_scopes, Ask, BudgetConfig, BudgetError, BudgetGate, Scopes};
use tollgate_schemas::budgets::{scripts, Budget, Decision, DecisionKind, Window};
use tollgate_schemas::redis_keys;

fn redis_url() -> String {
    std::env::var("TOLLGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}_{}", &id[id.len() - 12..])
}

fn now_ms() -> i64 {
    tollgate_proxy::budget::now_ms()
}

fn ask<'a>(event_id: &'a str, worst: i64) -> Ask<'a> {
    // Key k1 of team team-a and account acct-1, model m (leaked: the scopes live with the
    // test's catalog in the proxy).
    let key: &'static [Arc<str>] = Box::leak(key_scopes("k1", "team-a", "acct-1"));
    let model: &'static Arc<str> = Box::leak(Box::new(Arc::from("m:m")));
    Ask {
        scopes: Scopes { key, model },
        event_id,
        worst_cost_nanos: worst,
        worst_tokens: worst,
    }
}

async fn conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Write (or clear with `None`) budget `b`'s decision like the aggregator does.
async fn decide(prefix: &str, b: &Budget, kind: Option<DecisionKind>) {
    let w = Window::of(b.period, now_ms());
    let json = kind
        .map(|k| b.decision(prefix, &w, k).to_json())
        .unwrap_or_default();
    let scope = b.scope_ref();
    let _: i64 = redis::Script::new(scripts::DECIDE)
        .key(redis_keys::budget_decisions(prefix, &scope))
        .arg(&b.id)
        .arg(json)
        .arg(w.end_ms.unwrap_or(0))
        .arg(redis_keys::budget_notices(prefix))
        .arg(&scope)
        .invoke_async(&mut conn().await)
        .await
        .unwrap();
}

fn budget(json: &str) -> Budget {
    serde_json::from_str(json).unwrap()
}

fn gate(prefix: &str, cache_ttl_ms: u64) -> BudgetGate {
    let cfg = BudgetConfig {
        cache_ttl_ms,
        ..BudgetConfig::default()
    };
    BudgetGate::start(&cfg, &redis_url(), prefix).unwrap()
}

#[tokio::test]
async fn decisions_are_cached_and_dropped_on_notice() {
    let prefix = unique("bg");
    // A long TTL: only the notice can make the gate see changes quickly.
    let g = gate(&prefix, 60_000);
    tokio::time::sleep(Duration::from_millis(300)).await; // subscribed
    assert!(g.check(&ask("e1", 1)).await.unwrap().is_none());
    let b = budget(
        r#"{"id":"team-cap","scope":"team","scope_id":"team-a","period":"monthly","limit_usd":1}"#,
    );
    decide(&prefix, &b, Some(DecisionKind::Block)).await;
    let started = Instant::now();
    let err = loop {
        match g.check(&ask("e2", 1)).await {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "notice not seen"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let BudgetError::Exceeded(e) = &err;
    assert_eq!(e.decision.id, "team-cap");
    assert!(err.to_string().contains("team `team-a`"), "{err}");
    assert!(err.retry_after_secs(now_ms()).unwrap() > 0);
    decide(&prefix, &b, None).await;
    let started = Instant::now();
    while g.check(&ask("e3", 1)).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(2), "clear not seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A decision of another scope does not concern this request.
    let other =
        budget(r#"{"id":"x","scope":"key","scope_id":"k2","period":"daily","limit_usd":1}"#);
    decide(&prefix, &other, Some(DecisionKind::Block)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(g.check(&ask("e4", 1)).await.is_ok());
    // An expired decision is void.
    let stale = Decision {
        reset_at_ms: Some(now_ms() - 1),
        ..b.decision(
            &prefix,
            &Window::of(b.period, now_ms()),
            DecisionKind::Block,
        )
    };
    let _: i64 = redis::cmd("HSET")
        .arg(redis_keys::budget_decisions(&prefix, "g:*"))
        .arg("old")
        .arg(stale.to_json())
        .query_async(&mut conn().await)
        .await
        .unwrap();
    g.invalidate_all().await;
    assert!(g.check(&ask("e5", 1)).await.is_ok());
    g.shutdown();
}

#[tokio::test]
async fn reservations_admit_up_to_the_limit_and_release() {
    let prefix = unique("bg");
    let g = gate(&prefix, 1_000);
    let b = budget(
        r#"{"id":"res","scope":"key","scope_id":"k1","period":"daily","limit_tokens":1000,"reserve_above_pct":0}"#,
    );
    decide(&prefix, &b, Some(DecisionKind::Reserve)).await;
    let counter = b.counter_key(&prefix, &Window::of(b.period, now_ms()));
    let r1 = g.check(&ask("r1", 400)).await.unwrap().expect("reserved");
    let r2 = g.check(&ask("r2", 400)).await.unwrap().expect("reserved");
    let err = g.check(&ask("r3", 400)).await.unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
    let mut c = conn().await;
    let reserved: i64 = redis::cmd("HGET")
        .arg(&counter)
        .arg("R")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(reserved, 800);
    // Settled with the actual amount (kept until the aggregator counts the event), or dropped
    // unsettled (released).
    r1.settle(100, 100);
    drop(r2);
    let started = Instant::now();
    loop {
        let reserved: i64 = redis::cmd("HGET")
            .arg(&counter)
            .arg("R")
            .query_async(&mut c)
            .await
            .unwrap();
        if reserved == 100 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "R = {reserved}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(g.check(&ask("r4", 900)).await.unwrap().is_some());
    assert!(g.check(&ask("r5", 1)).await.is_err());
    g.shutdown();
}

#[tokio::test]
async fn unreachable_redis_fails_open_quickly() {
    let cfg = BudgetConfig {
        timeout_ms: 200,
        ..BudgetConfig::default()
    };
    let g = BudgetGate::start(&cfg, "redis://127.0.0.1:9", "nowhere").unwrap();
    let started = Instant::now();
    assert!(g.check(&ask("e1", 1)).await.unwrap().is_none());
    assert!(g.check(&ask("e2", 1)).await.unwrap().is_none());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    g.shutdown();
}
