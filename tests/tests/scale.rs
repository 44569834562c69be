//! Scale-out on the local stack: three in-process proxies sharing Redis rate-limit counters and
//! one Kafka topic, two aggregators in one consumer group. A key limited to 120 requests per
//! minute gets 300 requests spread over the three proxies: exactly 120 are admitted in total,
//! every metered request is stored exactly once (no duplicate `event_id`), and both
//! aggregators took part. At the same time an account with a hard budget of 0.01 USD is loaded
//! through all three proxies: every proxy refuses it (429 `budget_exceeded`) once the two
//! aggregators' shared counter reaches the limit, and the overshoot stays within the documented
//! bound (decision latency × spend rate, see `docs/budgets.md`).

mod budget_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_e2e::{
    proxy_config, redis_url, spool_dir, unique, TestStack, ADMIN_KEY, EXTRA_KEYS, TEST_KEY,
    TEST_MODEL,
};
use tollgate_loadtest::mock::MockConfig;
use tollgate_proxy::limits::{Backend, FailureMode};

const RPM: u64 = 120;
const PER_PROXY: u64 = 100;
const EXTRA_PER_KEY: u64 = 10;
/// Account of the budgeted key ([`EXTRA_KEYS`]`[3]`).
const BUDGET_ACCOUNT: &str = "acct_test_3";
/// Hard budget of that account, nano-USD (0.01 USD).
const BUDGET_NANOS: i64 = 10_000_000;
/// Documented decision latency (p99 about 0.6 s on this machine) with room for a loaded run.
const DECISION_LATENCY: Duration = Duration::from_secs(2);

/// One chat completion of the budgeted key through the proxy at `base`.
async fn budget_chat(http: &reqwest::Client, base: &str) -> anyhow::Result<budget_support::Reply> {
    let sent = Instant::now();
    let resp = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(EXTRA_KEYS[3])
        .json(&serde_json::json!({
            "model": TEST_MODEL,
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "tell me a short story about a toll gate"}],
        }))
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let cost_nanos = if status == 200 {
        budget_support::cost_of(&body["usage"])
    } else {
        0
    };
    Ok(budget_support::Reply {
        status,
        body,
        headers,
        cost_nanos,
        sent,
        done: Instant::now(),
    })
}

/// Two loops on the proxy at `base`, one request per loop every 10 ms at most, until it
/// refuses the budgeted key (or 40 s pass).
async fn budget_load(base: String) -> anyhow::Result<Vec<budget_support::Reply>> {
    let http = reqwest::Client::new();
    let refused = Arc::new(AtomicBool::new(false));
    let until = Instant::now() + Duration::from_secs(40);
    let loops = (0..2).map(|_| {
        let (http, base, refused) = (http.clone(), base.clone(), Arc::clone(&refused));
        async move {
            let mut out = Vec::new();
            while !refused.load(Ordering::Relaxed) && Instant::now() < until {
                let r = budget_chat(&http, &base).await?;
                if r.status == 429 {
                    refused.store(true, Ordering::Relaxed);
                }
                out.push(r);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(out)
        }
    });
    Ok(futures::future::try_join_all(loops)
        .await?
        .into_iter()
        .flatten()
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_proxies_two_aggregators_hold_limits_and_store_once() -> anyhow::Result<()> {
    let stack = TestStack::start("scale", 4, MockConfig::default()).await?;
    let prefix = unique("scale_rl");
    // Config store and budgets of the three proxies and two aggregators.
    let cfg_prefix = unique("scale_cfg");
    let admin_hash: String = tollgate_proxy::routing::hash_secret(ADMIN_KEY)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

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
        let admin = if i == 0 {
            format!("admin: {{listen: \"127.0.0.1:0\", key_sha256: \"{admin_hash}\"}}\n")
        } else {
            String::new()
        };
        let patch = tollgate_proxy::ProxyConfig::from_yaml(
            &format!(
                "redis: {{url: \"{}\", prefix: {cfg_prefix}, resync_ms: 1000}}\n{admin}\
                 kafka: {{brokers: \"x:1\"}}\nmodels: []\n",
                redis_url()
            ),
            "test",
        )?;
        cfg.redis = patch.redis;
        cfg.admin = patch.admin;
        if let Some(key) = cfg.api_keys.iter_mut().find(|k| k.id == "key_test") {
            key.rate_limit = Some(tollgate_proxy::entities::RateLimit {
                rpm: Some(RPM),
                ..Default::default()
            });
        }
        cfg.validate()?;
        proxies.push(tollgate_proxy::start(cfg).await?);
    }
    let mut agg_cfg = stack.aggregator_config("scale");
    agg_cfg.budgets.redis_url = Some(redis_url());
    agg_cfg.budgets.prefix = cfg_prefix.clone();
    agg_cfg.budgets.eval_interval_ms = 300;
    let agg_a = tollgate_aggregator::start(agg_cfg.clone()).await?;
    let agg_b = tollgate_aggregator::start(agg_cfg).await?;
    // Both members hold partitions before the load (the budgeted account's events land on one
    // partition: unowned, they would be counted only after the rebalance).
    let generations = || [&agg_a, &agg_b].map(|a| a.stats().rebalances.load(Ordering::Relaxed));
    let mut last = (generations(), Instant::now());
    budget_support::wait_until("both aggregators assigned", Duration::from_secs(30), || {
        let now = generations();
        if now != last.0 {
            last = (now, Instant::now());
        }
        let settled = now.iter().all(|g| *g > 0) && last.1.elapsed() >= Duration::from_secs(1);
        async move { Ok(settled) }
    })
    .await?;

    // A hard budget on one account, counted by both aggregators (each for its partitions).
    let admin_url = proxies[0]
        .admin_addr()
        .map(|a| format!("http://{a}"))
        .ok_or_else(|| anyhow::anyhow!("no admin listener"))?;
    let created = reqwest::Client::new()
        .post(format!("{admin_url}/admin/v1/budgets"))
        .bearer_auth(ADMIN_KEY)
        .json(&serde_json::json!({"id": "scale-acct", "scope": "account",
            "scope_id": BUDGET_ACCOUNT, "period": "daily", "limit_usd": 0.01, "mode": "hard"}))
        .send()
        .await?;
    anyhow::ensure!(
        created.status() == 201,
        "budget not created: {}",
        created.status()
    );
    let budget: tollgate_schemas::budgets::Budget = created.json().await?;
    let window = tollgate_schemas::budgets::Window::of(budget.period, now_ms());
    let counter = budget.counter_key(&cfg_prefix, &window);
    budget_support::wait_until("budget counter built", Duration::from_secs(15), || async {
        Ok(budget_support::hget(&counter, "init").await? == 1)
    })
    .await?;

    let runs = proxies.iter().map(|p| {
        let mut load = stack.load(PER_PROXY, 0.3);
        load.base_url = p.base_url();
        load.api_key = Some(TEST_KEY.into());
        load.concurrency = 8;
        tollgate_loadtest::run(load)
    });
    // Unlimited keys of other accounts spread events over the partitions (events are keyed by
    // account).
    let spread = EXTRA_KEYS[..3].iter().enumerate().map(|(i, k)| {
        let mut load = stack.load(EXTRA_PER_KEY, 0.0);
        load.base_url = proxies[i % proxies.len()].base_url();
        load.api_key = Some((*k).to_string());
        load.concurrency = 2;
        tollgate_loadtest::run(load)
    });
    let budgeted = proxies.iter().map(|p| budget_load(p.base_url()));
    let (reports, spread, budgeted) = futures::future::try_join3(
        futures::future::try_join_all(runs),
        futures::future::try_join_all(spread),
        futures::future::try_join_all(budgeted),
    )
    .await?;
    let extra: u64 = spread.iter().map(|r| r.ok).sum();
    assert_eq!(extra, EXTRA_PER_KEY * 3, "unlimited keys all pass");
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

    // The budget holds on every proxy: each refused the account, and refuses it again now.
    let http = reqwest::Client::new();
    for (i, (p, replies)) in proxies.iter().zip(&budgeted).enumerate() {
        let first = replies
            .iter()
            .find(|r| r.status == 429)
            .ok_or_else(|| anyhow::anyhow!("proxy {i} never refused the budgeted account"))?;
        assert_eq!(first.code(), "budget_exceeded", "proxy {i}: {}", first.body);
        let again = budget_chat(&http, &p.base_url()).await?;
        assert_eq!(
            (again.status, again.code()),
            (429, "budget_exceeded"),
            "proxy {i}"
        );
    }
    let mut all: Vec<&budget_support::Reply> = budgeted.iter().flatten().collect();
    all.sort_by_key(|r| r.done);
    let served: i64 = all.iter().map(|r| r.cost_nanos).sum();
    let (mut spent, mut reached) = (0, None);
    for r in all.iter().filter(|r| r.status == 200) {
        spent += r.cost_nanos;
        if spent >= BUDGET_NANOS && reached.is_none() {
            reached = Some(r.done);
        }
    }
    let reached = reached.ok_or_else(|| anyhow::anyhow!("spend never reached the limit"))?;
    let start = all.iter().map(|r| r.sent).min().unwrap_or(reached);
    let last_refusal = budgeted
        .iter()
        .filter_map(|rs| rs.iter().find(|r| r.status == 429).map(|r| r.sent))
        .max()
        .unwrap_or(reached);
    let latency = last_refusal.saturating_duration_since(reached);
    let rate = served as f64 / last_refusal.duration_since(start).as_secs_f64().max(0.1);
    let overshoot = served - BUDGET_NANOS;
    let bound = (rate * DECISION_LATENCY.as_secs_f64()) as i64;
    println!(
        "budget: served {} requests ({served} nano-USD of {BUDGET_NANOS}), spend rate \
         {rate:.0} nano-USD/s, limit→last proxy's refusal {latency:?}, overshoot {overshoot} \
         (bound {bound})",
        all.iter().filter(|r| r.status == 200).count()
    );
    assert!(
        latency <= DECISION_LATENCY,
        "a proxy refused {latency:?} after the limit"
    );
    assert!(
        overshoot <= bound,
        "overshoot {overshoot} above {DECISION_LATENCY:?} × spend rate = {bound}"
    );
    let budget_sent = all.len() as u64 + proxies.len() as u64;

    // Metered requests: the admitted ones and the refusals (each produces a usage event).
    let total = admitted + refused + extra + budget_sent;
    stack.wait_for_rows(total, Duration::from_secs(60)).await?;
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
    let refused_rows = stored(
        "SELECT count() FROM usage_events WHERE status_code = 429 AND api_key_id = 'key_test'",
    )
    .await?;
    assert_eq!(refused_rows, refused);
    let distinct = stored("SELECT uniqExact(event_id) FROM usage_events").await?;
    assert_eq!(distinct, total, "no event stored twice");
    // ClickHouse and the aggregators' shared counter agree on the budgeted account's spend.
    let account_cost = budget_support::stored_cost(&stack, "account_id", BUDGET_ACCOUNT).await?;
    assert_eq!(account_cost, served, "ClickHouse holds what was served");
    budget_support::wait_until("counter caught up", Duration::from_secs(10), || async {
        Ok(budget_support::hget(&counter, "v").await? == served)
    })
    .await?;
    let partitions = stored("SELECT uniqExact(kafka_partition) FROM usage_events").await?;
    assert!(partitions > 1, "events spread over the partitions");
    let inserted = [&agg_a, &agg_b].map(|a| {
        a.stats()
            .inserted
            .load(std::sync::atomic::Ordering::Relaxed)
    });
    println!("rows inserted per aggregator: {inserted:?}");
    assert_eq!(inserted.iter().sum::<u64>(), total);
    assert!(
        inserted.iter().all(|n| *n > 0),
        "both aggregators took part"
    );

    agg_a.shutdown().await;
    agg_b.shutdown().await;
    for p in proxies {
        p.shutdown().await;
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
