//! The Redis rate-limit backend on the shared local Redis (unique key prefix per test): window
//! counting, settlement, refunds across entities, leases and their expiry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tollgate_proxy::limits::{LimitError, Metric};
use tollgate_proxy::usage::Tokens;
use tollgate_schemas::redis_keys::{limit_keys, LimitEntity};

mod ratelimit_support;
use ratelimit_support::{ask, catalog, limiter, limiter_with, redis_conn, unique, wait_until};

fn denial(
    r: Result<tollgate_proxy::limits::Admission, LimitError>,
) -> tollgate_proxy::limits::Denial {
    match r {
        Err(LimitError::Denied(d)) => *d,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn requests_are_counted_once_and_refused_with_retry_after() {
    let prefix = unique("rl");
    let l = limiter(&prefix, 30);
    let cat = catalog("{rpm: 5, rpd: 7}", "");
    for i in 0..5 {
        let a = ask(&l, &cat, 10, None).await.unwrap();
        let q = a.headers.requests.unwrap();
        assert_eq!((q.limit, q.remaining), (5, 4 - i), "request {i}");
        assert!(q.reset_ms > 58_000 && q.reset_ms <= 61_000, "{q:?}");
        drop(a.permit);
    }
    let d = denial(ask(&l, &cat, 10, None).await);
    assert_eq!(d.metric, Metric::Rpm);
    assert_eq!(d.entity, "API key ID: k");
    assert_eq!((d.limit, d.remaining), (5, 0));
    assert!(
        d.retry_after_ms > 58_000 && d.retry_after_ms <= 61_000,
        "{}",
        d.retry_after_ms
    );
    let mut conn = redis_conn().await;
    let keys = limit_keys(&prefix, LimitEntity::Key, "k");
    let total: i64 = conn.hget(&keys.minute, "R").await.unwrap();
    assert_eq!(total, 5, "refused requests are not counted");
    let ttl: i64 = conn.pttl(&keys.day).await.unwrap();
    assert!(ttl > 86_000_000, "day window expires after a day: {ttl}");
    l.shutdown().await;
}

#[tokio::test]
async fn tokens_are_reserved_then_settled_with_real_usage() {
    let prefix = unique("rl");
    let l = limiter(&prefix, 30);
    let cat = catalog("", "{tpm: 1000, tokens: total}");
    let a = ask(&l, &cat, 100, Some(700)).await.unwrap();
    assert_eq!(a.headers.tokens.unwrap().remaining, 200, "800 reserved");
    let d = denial(ask(&l, &cat, 100, Some(200)).await);
    assert_eq!(d.metric, Metric::Tpm);
    assert_eq!(d.entity, "model 'm'");
    // The call used 300 tokens, not 800: 500 come back.
    a.permit.unwrap().settle(&Tokens {
        prompt: 100,
        completion: 200,
        cached: 0,
        estimated: false,
    });
    wait_until("settlement", Duration::from_secs(5), async || {
        ask(&l, &cat, 100, Some(200)).await.is_ok()
    })
    .await;
    let a = ask(&l, &cat, 1, Some(1)).await.unwrap();
    assert_eq!(a.headers.tokens.unwrap().remaining, 1000 - 300 - 300 - 2);
    l.shutdown().await;
}

#[tokio::test]
async fn a_refusal_by_the_model_refunds_the_key() {
    let prefix = unique("rl");
    let l = limiter(&prefix, 30);
    let cat = catalog("{rpm: 100}", "{rpm: 1}");
    ask(&l, &cat, 1, None).await.unwrap();
    let d = denial(ask(&l, &cat, 1, None).await);
    assert_eq!((d.metric, d.entity.as_str()), (Metric::Rpm, "model 'm'"));
    let mut conn = redis_conn().await;
    let keys = limit_keys(&prefix, LimitEntity::Key, "k");
    wait_until("refund", Duration::from_secs(5), async || {
        conn.hget::<_, _, i64>(&keys.minute, "R").await.unwrap() == 1
    })
    .await;
    l.shutdown().await;
}

#[tokio::test]
async fn leases_are_released_by_permits_and_expire_when_abandoned() {
    let prefix = unique("rl");
    let l = limiter(&prefix, 1);
    let cat = catalog("{concurrency: 2}", "");
    let a = ask(&l, &cat, 1, None).await.unwrap();
    let b = ask(&l, &cat, 1, None).await.unwrap();
    assert_eq!(b.headers.concurrent, Some((2, 0)));
    assert_eq!(l.leases_held(), 2);
    let d = denial(ask(&l, &cat, 1, None).await);
    assert_eq!(d.metric, Metric::Concurrency);
    // Renewal keeps held leases alive well past their 1 s lifetime.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    denial(ask(&l, &cat, 1, None).await);
    drop(a.permit);
    assert_eq!(l.leases_held(), 1);
    wait_until("release", Duration::from_secs(5), async || {
        ask(&l, &cat, 1, None)
            .await
            .map(|a| std::mem::forget(a.permit))
            .is_ok()
    })
    .await;
    // Two leases are now held but never settled (forgotten): once this proxy stops renewing
    // (as a crashed one would), they expire within the lease time.
    std::mem::forget(b.permit);
    l.shutdown().await;
    let stopped = Instant::now();
    wait_until("expiry", Duration::from_secs(5), async || {
        ask(&l, &cat, 1, None).await.is_ok()
    })
    .await;
    println!(
        "abandoned leases expired {:?} after renewal stopped",
        stopped.elapsed()
    );
}

/// The acquire script as the proxy loads it.
fn acquire_script() -> redis::Script {
    redis::Script::new(concat!(
        include_str!("../src/limits/lua/window.lua"),
        include_str!("../src/limits/lua/acquire.lua")
    ))
}

/// The Lua window with tiny buckets (20 ms × 5), so expiry and the bucket walk run in a
/// second: at most the limit in any window-length span of buckets, and capacity comes back.
#[tokio::test]
async fn lua_window_slides_without_edge_bursts() {
    let script = acquire_script();
    let prefix = unique("rl");
    let keys = limit_keys(&prefix, LimitEntity::Key, "lua");
    let mut conn = redis_conn().await;
    let mut admitted: Vec<i64> = Vec::new();
    let mut refused = 0;
    let until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < until {
        let row: String = script
            .key(&keys.minute)
            .key(&keys.day)
            .key(&keys.leases)
            .arg(1_000)
            .arg(&[20, 5, 300_000, 288, 16][..])
            .arg("")
            .arg(&[3, 0, 0, 0, 0, 0, 0, 0, 0, 1][..])
            .invoke_async(&mut conn)
            .await
            .unwrap();
        let row: Vec<i64> = row.split(',').map(|v| v.parse().unwrap()).collect();
        assert_eq!(row.len(), 16);
        if row[0] == 1 {
            admitted.push(row[3]);
        } else {
            refused += 1;
            assert_eq!(row[1], Metric::Rpm.code());
            assert!(row[2] > 0 && row[2] <= 120, "retry {}", row[2]);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for &b in &admitted {
        let n = admitted.iter().filter(|&&x| x >= b - 5 && x <= b).count();
        assert!(n <= 3, "{n} admitted in the window ending at bucket {b}");
    }
    assert!(
        admitted.len() >= 20,
        "capacity returns: {} admitted",
        admitted.len()
    );
    assert!(refused > 0);
    let (r, o): (i64, i64) = redis::cmd("HMGET")
        .arg(&keys.minute)
        .arg("R")
        .arg("o")
        .query_async(&mut conn)
        .await
        .unwrap();
    let last = *admitted.last().unwrap();
    assert!(
        r <= 3 && o >= last - 5,
        "totals track the live buckets: R={r} o={o}"
    );
}

/// A refill-only call (last argument 0) checks and counts no request and adds no lease of its
/// own: it only grants a slice (counted at once) and slots, at most 1/share of what is left,
/// and tokens alone where only tokens run short. A full window grants nothing.
#[tokio::test]
async fn a_refill_only_call_counts_only_its_grant() {
    let script = acquire_script();
    let prefix = unique("rl");
    let keys = limit_keys(&prefix, LimitEntity::Key, "refill");
    let mut conn = redis_conn().await;
    // rpm 100, tpm 10000, concurrency 50, share 4.
    let mut call = async |lease: &str, args: [i64; 10]| -> Vec<i64> {
        let row: String = script
            .key(&keys.minute)
            .key(&keys.day)
            .key(&keys.leases)
            .arg(30_000)
            .arg(&[1_000, 60, 300_000, 288, 4][..])
            .arg(lease)
            .arg(&args[..])
            .invoke_async(&mut conn)
            .await
            .unwrap();
        row.split(',').map(|v| v.parse().unwrap()).collect()
    };
    // A request with a want: counted, plus a quarter of what is left.
    let r = call("q", [100, 0, 10_000, 0, 50, 10, 40, 400, 8, 1]).await;
    assert_eq!(
        (r[0], r[5], r[7], r[11]),
        (1, 1 + 24, 10 + 400, 1 + 8),
        "{r:?}"
    );
    assert_eq!((r[12], r[13], r[14]), (24, 400, 8));
    // Refill only: no request counted, no lease `r` added, only the grant.
    let r = call("r", [100, 0, 10_000, 0, 50, 10, 40, 400, 4, 0]).await;
    assert_eq!(r[0], 1);
    assert_eq!((r[12], r[13], r[14]), (18, 400, 4), "{r:?}");
    assert_eq!((r[5], r[7], r[11]), (25 + 18, 410 + 400, 9 + 4));
    // Tokens alone.
    let r = call("", [100, 0, 10_000, 0, 50, 10, 0, 1_000, 0, 0]).await;
    assert_eq!((r[12], r[13], r[5], r[7]), (0, 1_000, 43, 1_810), "{r:?}");
    // Fill the window with requests: then a refill gets nothing, and is not refused either.
    let mut refused = false;
    for _ in 0..100 {
        if call("", [100, 0, 10_000, 0, 0, 10, 0, 0, 0, 1]).await[0] == 0 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the window fills");
    let r = call("", [100, 0, 10_000, 0, 50, 10, 40, 400, 2, 0]).await;
    assert_eq!((r[0], r[5], r[12], r[13]), (1, 100, 0, 0), "{r:?}");
    let members: Vec<String> = redis_conn()
        .await
        .zrange(&keys.leases, 0, -1)
        .await
        .unwrap();
    assert!(members.contains(&"r.4".to_string()), "{members:?}");
    assert!(!members.contains(&"r".to_string()), "{members:?}");
}

/// 300 requests of two entities finishing at once: the settle batcher corrects them in a few
/// calls, and every token returned and every lease released arrives exactly once. (Quota
/// slices off: every request is counted by its own call.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_settlements_is_batched_and_applied_exactly_once() {
    let prefix = unique("rl");
    let l = limiter_with(&prefix, 30, false);
    let cat = catalog(
        "{tpm: 1000000, concurrency: 1000}",
        "{rpm: 100000, concurrency: 1000}",
    );
    let mut permits = Vec::new();
    for _ in 0..300 {
        let a = ask(&l, &cat, 10, Some(90)).await.unwrap();
        permits.push(a.permit.unwrap());
    }
    let mut conn = redis_conn().await;
    let key = limit_keys(&prefix, LimitEntity::Key, "k");
    let model = limit_keys(&prefix, LimitEntity::Model, "m");
    assert_eq!(conn.zcard::<_, i64>(&key.leases).await.unwrap(), 300);
    assert_eq!(
        conn.hget::<_, _, i64>(&key.minute, "T").await.unwrap(),
        300 * 100
    );
    // Each call used 40 of its 100 reserved tokens.
    for p in permits {
        p.settle(&Tokens {
            prompt: 10,
            completion: 30,
            cached: 0,
            estimated: false,
        });
    }
    wait_until("settlements", Duration::from_secs(5), async || {
        conn.zcard::<_, i64>(&key.leases).await.unwrap() == 0
            && conn.zcard::<_, i64>(&model.leases).await.unwrap() == 0
    })
    .await;
    assert_eq!(
        conn.hget::<_, _, i64>(&key.minute, "T").await.unwrap(),
        300 * 40
    );
    assert_eq!(conn.hget::<_, _, i64>(&key.minute, "R").await.unwrap(), 300);
    assert_eq!(
        conn.hget::<_, _, i64>(&model.minute, "R").await.unwrap(),
        300
    );
    assert_eq!(l.leases_held(), 0);
    l.shutdown().await;
}

/// 200 requests at once against a key allowing 120 in flight: the proxy checks them in a few
/// batched calls, and the batch is as exact as one call per request. Exactly 120 pass, each
/// sees its own place in the count, refused ones are not counted, and what the model counted
/// for them is refunded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_are_batched_and_stay_exact() {
    let prefix = unique("rl");
    let l = limiter(&prefix, 30);
    let cat = catalog("{rpm: 150, concurrency: 120}", "{rpm: 1000}");
    let start = Arc::new(tokio::sync::Barrier::new(200));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (l, cat, start) = (l.clone(), cat.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                ask(&l, &cat, 1, None).await
            })
        })
        .collect();
    let mut admitted = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(a) => admitted.push(a),
            Err(LimitError::Denied(d)) => {
                assert_eq!(d.metric, Metric::Concurrency);
                assert_eq!(d.entity, "API key ID: k");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((admitted.len(), refused), (120, 80));
    let mut places: Vec<u64> = admitted
        .iter()
        .map(|a| a.headers.concurrent.unwrap().1)
        .collect();
    places.sort_unstable();
    assert_eq!(
        places,
        (0..120).collect::<Vec<u64>>(),
        "remaining-concurrent"
    );
    let mut left: Vec<u64> = admitted
        .iter()
        .map(|a| a.headers.requests.unwrap().remaining)
        .collect();
    left.sort_unstable();
    assert_eq!(left, (30..150).collect::<Vec<u64>>(), "remaining-requests");
    let calls = l.store_acquire_calls();
    println!("200 concurrent checks in {calls} calls");
    assert!(calls < 200, "{calls} calls for 200 requests: not batched");

    let mut conn = redis_conn().await;
    let key = limit_keys(&prefix, LimitEntity::Key, "k");
    let model = limit_keys(&prefix, LimitEntity::Model, "m");
    assert_eq!(conn.hget::<_, _, i64>(&key.minute, "R").await.unwrap(), 120);
    assert_eq!(conn.zcard::<_, i64>(&key.leases).await.unwrap(), 120);
    wait_until("model refunds", Duration::from_secs(5), async || {
        conn.hget::<_, _, i64>(&model.minute, "R").await.unwrap() == 120
    })
    .await;
    drop(admitted);
    wait_until("releases", Duration::from_secs(5), async || {
        conn.zcard::<_, i64>(&key.leases).await.unwrap() == 0
    })
    .await;
    l.shutdown().await;
}
