//! Quota slices on the shared local Redis (unique key prefix per test): busy entities are
//! admitted from slices without a round trip, two proxies together never admit more than a
//! limit, concurrency slots bound in-flight requests across proxies, and everything a slice
//! did not use goes back to Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tollgate_proxy::limits::{LimitError, Limiter};
use tollgate_proxy::routing::Catalog;
use tollgate_proxy::usage::Tokens;
use tollgate_schemas::redis_keys::{limit_keys, LimitEntity};

mod ratelimit_support;
use ratelimit_support::{ask, catalog, limiter, redis_conn, unique, wait_until};

const USED: Tokens = Tokens {
    prompt: 10,
    completion: 5,
    cached: 0,
    estimated: false,
};

/// What one proxy's workers did.
#[derive(Default)]
struct Tally {
    admitted: AtomicU64,
    refused: AtomicU64,
}

/// `workers` tasks asking `l` in a loop until `until`, each holding its permit for `hold`
/// (in-flight requests counted in `in_flight`, the highest count seen in `peak`).
async fn drive(
    l: Limiter,
    cat: Arc<Catalog>,
    workers: usize,
    until: Instant,
    hold: Duration,
    gauges: Arc<(AtomicI64, AtomicI64)>,
) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (l, cat, tally, gauges) = (l.clone(), cat.clone(), tally.clone(), gauges.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                match ask(&l, &cat, 10, Some(20)).await {
                    Ok(a) => {
                        let now = gauges.0.fetch_add(1, Ordering::SeqCst) + 1;
                        gauges.1.fetch_max(now, Ordering::SeqCst);
                        tally.admitted.fetch_add(1, Ordering::Relaxed);
                        if !hold.is_zero() {
                            tokio::time::sleep(hold).await;
                        }
                        gauges.0.fetch_sub(1, Ordering::SeqCst);
                        a.permit.unwrap().settle(&USED);
                    }
                    Err(LimitError::Denied(_)) => {
                        tally.refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    tally
}

/// Two proxies `a` and `b` driven at once by `workers` tasks each (see [`drive`]).
async fn drive_pair(
    (a, b): (&Limiter, &Limiter),
    cat: &Arc<Catalog>,
    workers: usize,
    until: Instant,
    hold: Duration,
    gauges: &Arc<(AtomicI64, AtomicI64)>,
) -> (Arc<Tally>, Arc<Tally>) {
    tokio::join!(
        drive(a.clone(), cat.clone(), workers, until, hold, gauges.clone()),
        drive(b.clone(), cat.clone(), workers, until, hold, gauges.clone()),
    )
}

/// Whether Redis counts exactly `admitted` requests on key `k` and model `m`, and their real
/// tokens on the key (15 per request, see [`USED`]).
async fn counted_exactly(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    admitted: i64,
) -> bool {
    let key = limit_keys(prefix, LimitEntity::Key, "k");
    let model = limit_keys(prefix, LimitEntity::Model, "m");
    conn.hget::<_, _, i64>(&key.minute, "R").await.unwrap() == admitted
        && conn.hget::<_, _, i64>(&model.minute, "R").await.unwrap() == admitted
        && conn.hget::<_, _, i64>(&key.minute, "T").await.unwrap() == admitted * 15
}

/// One busy proxy: after its first second most requests are admitted from slices (far fewer
/// Redis calls than requests), and once it stops, what the slices did not use is given back,
/// so Redis counts exactly the admitted requests and their real tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_key_is_admitted_from_slices_and_unused_quota_goes_back() {
    let prefix = unique("sl");
    let l = limiter(&prefix, 30);
    let cat = catalog("{rpm: 1000000, tpm: 1000000000}", "{rpm: 1000000}");
    let gauges = Arc::new((AtomicI64::new(0), AtomicI64::new(0)));
    let until = Instant::now() + Duration::from_millis(2_500);
    let tally = drive(l.clone(), cat, 4, until, Duration::ZERO, gauges).await;
    let admitted = tally.admitted.load(Ordering::Relaxed);
    let calls = l.store_acquire_calls();
    let checked = l.store_checked_requests();
    println!("{admitted} admitted with {calls} acquire calls; {checked} checked in Redis");
    assert_eq!(tally.refused.load(Ordering::Relaxed), 0);
    assert!(admitted > 1_000, "only {admitted} admitted");
    assert!(
        calls * 5 < admitted,
        "slices should spare most round trips: {calls} calls for {admitted} requests"
    );
    // Slices are refilled before they run out: requests wait for Redis only at the start and
    // when a slice's bucket ends.
    assert!(
        checked * 200 < admitted,
        "{checked} of {admitted} requests were checked in Redis"
    );
    let (held, _) = l.slices_held();
    assert!(held > 0, "a slice is held right after the traffic");
    let mut conn = redis_conn().await;
    let admitted = i64::try_from(admitted).unwrap();
    // Slices expire with their bucket (≤ 1 s) and the sweep gives them back; each request
    // reserved 30 tokens and used 15.
    wait_until(
        "unused slices returned",
        Duration::from_secs(5),
        async || counted_exactly(&mut conn, &prefix, admitted).await,
    )
    .await;
    assert_eq!(l.slices_held().0, 0);
    l.shutdown().await;
}

/// A proxy stopped right after its traffic, while refills of its slices may still be in
/// flight, gives everything back: Redis ends up counting exactly the admitted requests and
/// their real tokens, and no slot is left in the lease set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_stopped_right_after_traffic_gives_every_slice_back() {
    let prefix = unique("sl");
    let l = limiter(&prefix, 30);
    let cat = catalog(
        "{rpm: 1000000, tpm: 1000000000, concurrency: 1000}",
        "{rpm: 1000000}",
    );
    let gauges = Arc::new((AtomicI64::new(0), AtomicI64::new(0)));
    let until = Instant::now() + Duration::from_millis(1_200);
    let tally = drive(l.clone(), cat, 4, until, Duration::ZERO, gauges).await;
    l.shutdown().await;
    assert_eq!(l.slices_held(), (0, 0));
    let admitted = i64::try_from(tally.admitted.load(Ordering::Relaxed)).unwrap();
    let mut conn = redis_conn().await;
    let leases = limit_keys(&prefix, LimitEntity::Key, "k").leases;
    wait_until(
        "exact counts after shutdown",
        Duration::from_secs(3),
        async || {
            counted_exactly(&mut conn, &prefix, admitted).await
                && conn.zcard::<_, i64>(&leases).await.unwrap() == 0
        },
    )
    .await;
}

/// Two proxies hammer one key with rpm 3,000: together they never admit more than the limit,
/// and since each keeps asking until the end, quota one proxy held in a slice goes back and
/// is used: exactly the limit is admitted, and Redis counts exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_with_slices_admit_exactly_the_limit() {
    let prefix = unique("sl");
    let (a, b) = (limiter(&prefix, 30), limiter(&prefix, 30));
    let cat = catalog("{rpm: 3000}", "");
    let gauges = Arc::new((AtomicI64::new(0), AtomicI64::new(0)));
    let until = Instant::now() + Duration::from_millis(4_000);
    let (ta, tb) = drive_pair((&a, &b), &cat, 3, until, Duration::ZERO, &gauges).await;
    let admitted = ta.admitted.load(Ordering::Relaxed) + tb.admitted.load(Ordering::Relaxed);
    let calls = a.store_acquire_calls() + b.store_acquire_calls();
    println!(
        "admitted {} + {}, refused {} + {}, {calls} acquire calls",
        ta.admitted.load(Ordering::Relaxed),
        tb.admitted.load(Ordering::Relaxed),
        ta.refused.load(Ordering::Relaxed),
        tb.refused.load(Ordering::Relaxed)
    );
    assert!(ta.admitted.load(Ordering::Relaxed) > 0 && tb.admitted.load(Ordering::Relaxed) > 0);
    assert_eq!(admitted, 3_000, "never more than the limit, and all of it");
    let mut conn = redis_conn().await;
    let key = limit_keys(&prefix, LimitEntity::Key, "k");
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(
        conn.hget::<_, _, i64>(&key.minute, "R").await.unwrap(),
        3_000
    );
}

/// Two proxies, 40 workers each, against a key allowing 48 in flight: requests admitted on
/// slots or on their own leases never exceed 48 in flight together; when the proxies shut
/// down every slot leaves the lease set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_bound_concurrency_across_proxies_and_go_back() {
    let prefix = unique("sl");
    let (a, b) = (limiter(&prefix, 30), limiter(&prefix, 30));
    let cat = catalog("{concurrency: 48}", "{concurrency: 1000}");
    let gauges = Arc::new((AtomicI64::new(0), AtomicI64::new(0)));
    let until = Instant::now() + Duration::from_millis(3_000);
    let hold = Duration::from_millis(3);
    let (ta, tb) = drive_pair((&a, &b), &cat, 40, until, hold, &gauges).await;
    let admitted = ta.admitted.load(Ordering::Relaxed) + tb.admitted.load(Ordering::Relaxed);
    let calls = a.store_acquire_calls() + b.store_acquire_calls();
    let peak = gauges.1.load(Ordering::SeqCst);
    println!("{admitted} admitted with {calls} acquire calls, peak {peak} in flight");
    assert!(peak <= 48, "{peak} in flight over a limit of 48");
    assert!(peak >= 40, "the limit was reachable: peak {peak}");
    assert!(
        calls < admitted,
        "the model's slots spare round trips: {calls} calls for {admitted} requests"
    );
    let mut conn = redis_conn().await;
    let key = limit_keys(&prefix, LimitEntity::Key, "k");
    let model = limit_keys(&prefix, LimitEntity::Model, "m");
    assert!(
        a.slices_held().1 + b.slices_held().1 > 0,
        "busy proxies hold slots"
    );
    a.shutdown().await;
    b.shutdown().await;
    wait_until("slots released", Duration::from_secs(3), async || {
        conn.zcard::<_, i64>(&key.leases).await.unwrap() == 0
            && conn.zcard::<_, i64>(&model.leases).await.unwrap() == 0
    })
    .await;
}
