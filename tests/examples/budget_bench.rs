//! Budget enforcement benchmark (`make bench-budget`): how fast a hard budget stops a key
//! under steady load, and by how much spend passes the limit, with and without reservations.
//!
//! Each trial creates a fresh key and a daily hard budget of `BENCH_LIMIT_USD` (default 0.05)
//! on it, then `BENCH_WORKERS` (default 8) loops send chat completions (`max_tokens` 100,
//! mock latency 20 ms) until one gets 429 `budget_exceeded`. Measured per trial:
//!
//! - spend→429: from the completion of the request whose cost brought the served total to the
//!   limit, to the sending of the first refused request (no-reservation trials only);
//! - overshoot: stored spend of the key (ClickHouse, after the aggregator caught up) minus
//!   the limit, in USD.
//!
//! Modes: `none` (block decisions only), `reserve@50` and `reserve@0` (reservation mode from
//! 50 % / 0 % of the limit). Trials: `BENCH_TRIALS` (default 20) for `none`, half for the
//! others. Needs the local stack (`make up`). Prints a Markdown table; figures vary with the
//! machine: compare runs on the same host.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};
use tollgate_e2e::{TestStack, ADMIN_KEY, INPUT_PER_MTOK, OUTPUT_PER_MTOK, TEST_MODEL};
use tollgate_loadtest::MockConfig;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Reply {
    status: u16,
    code: String,
    cost: i64,
    sent: Instant,
    done: Instant,
}

async fn chat(http: &reqwest::Client, base: &str, secret: &str) -> anyhow::Result<Reply> {
    let sent = Instant::now();
    let resp = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&json!({"model": TEST_MODEL, "max_tokens": 100,
                      "messages": [{"role": "user", "content": "tell me a short story about a toll gate"}]}))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let usage = &body["usage"];
    let cost = if status == 200 {
        let p = usage["prompt_tokens"].as_i64().unwrap_or(0) as f64;
        let c = usage["completion_tokens"].as_i64().unwrap_or(0) as f64;
        (p * INPUT_PER_MTOK * 1e3 + c * OUTPUT_PER_MTOK * 1e3).round() as i64
    } else {
        0
    };
    Ok(Reply {
        status,
        code: body["error"]["code"].as_str().unwrap_or("").to_string(),
        cost,
        sent,
        done: Instant::now(),
    })
}

async fn admin(
    http: &reqwest::Client,
    stack: &TestStack,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let resp = http
        .post(format!("{}{path}", stack.admin_url()))
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await?;
    let status = resp.status();
    let v: Value = resp.json().await?;
    anyhow::ensure!(status.is_success(), "POST {path}: {status} {v}");
    Ok(v)
}

struct Trial {
    latency: Option<Duration>,
    overshoot_nanos: i64,
    served: usize,
    request_cost: i64,
}

async fn trial(
    stack: &TestStack,
    http: &reqwest::Client,
    redis: &mut redis::aio::MultiplexedConnection,
    id: &str,
    reserve: Option<u32>,
) -> anyhow::Result<Trial> {
    let limit_usd: f64 = env_or("BENCH_LIMIT_USD", 0.05);
    let workers: usize = env_or("BENCH_WORKERS", 8);
    let limit = (limit_usd * 1e9).round() as i64;
    let key = admin(
        http,
        stack,
        "/admin/v1/keys",
        json!({"id": id, "account_id": format!("acct-{id}")}),
    )
    .await?;
    let secret = key["secret"].as_str().context("secret")?.to_string();
    let base = stack.proxy.base_url();
    let ready = Instant::now();
    while chat(http, &base, &secret).await?.status != 200 {
        anyhow::ensure!(ready.elapsed() < Duration::from_secs(10), "key not synced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut budget = json!({"id": format!("b-{id}"), "scope": "key", "scope_id": id,
                            "period": "daily", "limit_usd": limit_usd});
    if let Some(p) = reserve {
        budget["reserve_above_pct"] = p.into();
    }
    let created = admin(http, stack, "/admin/v1/budgets", budget).await?;
    let b: tollgate_schemas::budgets::Budget = serde_json::from_value(created)?;
    let now = tollgate_proxy::budget::now_ms();
    let counter = b.counter_key(
        stack.redis_prefix.as_deref().unwrap_or(""),
        &tollgate_schemas::budgets::Window::of(b.period, now),
    );
    let waited = Instant::now();
    loop {
        let init: Option<String> = redis::cmd("HGET")
            .arg(&counter)
            .arg("init")
            .query_async(redis)
            .await?;
        if init.is_some() {
            break;
        }
        anyhow::ensure!(
            waited.elapsed() < Duration::from_secs(10),
            "counter not built"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if reserve.is_some() {
        // Let the reserve decision reach the proxy's cache.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Steady load until refused.
    let stop = Arc::new(AtomicBool::new(false));
    let until = Instant::now() + Duration::from_secs(60);
    let runs = (0..workers).map(|_| {
        let (http, base, secret, stop) = (http.clone(), base.clone(), secret.clone(), stop.clone());
        async move {
            let mut out = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                let r = chat(&http, &base, &secret).await?;
                if r.status == 429 {
                    stop.store(true, Ordering::Relaxed);
                }
                out.push(r);
            }
            Ok::<_, anyhow::Error>(out)
        }
    });
    let mut replies: Vec<Reply> = futures::future::try_join_all(runs)
        .await?
        .into_iter()
        .flatten()
        .collect();
    replies.sort_by_key(|r| r.done);
    let refused = replies
        .iter()
        .filter(|r| r.status == 429)
        .min_by_key(|r| r.sent)
        .context("never refused")?;
    anyhow::ensure!(
        refused.code == "budget_exceeded",
        "refused with {}",
        refused.code
    );
    let mut spent = 0;
    let mut reached = None;
    for r in replies.iter().filter(|r| r.status == 200) {
        spent += r.cost;
        if spent >= limit && reached.is_none() {
            reached = Some(r.done);
        }
    }
    let latency = reached.map(|t| refused.sent.saturating_duration_since(t));
    // Stored spend once the aggregator caught up (the counter stops moving).
    let mut last = -1;
    let mut stable_since = Instant::now();
    let stored = loop {
        let v: Option<i64> = redis::cmd("HGET")
            .arg(&counter)
            .arg("v")
            .query_async(redis)
            .await?;
        let v = v.unwrap_or(0);
        if v != last {
            last = v;
            stable_since = Instant::now();
        } else if stable_since.elapsed() > Duration::from_millis(1_500) {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let from_db: i64 = stack
        .db()
        .query("SELECT sum(cost_nanos) FROM usage_events WHERE api_key_id = ?")
        .bind(id)
        .fetch_one()
        .await?;
    anyhow::ensure!(
        from_db == stored,
        "counter {stored} differs from ClickHouse {from_db}"
    );
    Ok(Trial {
        latency,
        overshoot_nanos: stored - limit,
        served: replies.iter().filter(|r| r.status == 200).count(),
        request_cost: replies.iter().map(|r| r.cost).max().unwrap_or(0),
    })
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let trials: usize = env_or("BENCH_TRIALS", 20);
    let batch_wait: u64 = env_or("BENCH_BATCH_WAIT_MS", 500);
    let stack = TestStack::start_budgets(
        "bench_budget",
        4,
        MockConfig {
            latency_ms: 20,
            ..Default::default()
        },
    )
    .await?;
    let mut cfg = stack.aggregator_config(&tollgate_e2e::unique("g"));
    cfg.batch.max_rows = 5_000;
    cfg.batch.max_wait_ms = batch_wait;
    cfg.budgets.eval_interval_ms = 2_000;
    let agg = tollgate_aggregator::start(cfg).await?;
    let http = reqwest::Client::new();
    let mut redis = redis::Client::open(tollgate_e2e::redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    println!(
        "budget benchmark: limit {} USD, {} workers, aggregator batch.max_wait_ms {batch_wait}",
        env_or("BENCH_LIMIT_USD", 0.05),
        env_or("BENCH_WORKERS", 8usize)
    );
    println!();
    println!("| mode | trials | spend→429 p50 | spend→429 p99 | overshoot p50 (USD) | overshoot max (USD) | one request (USD) | requests served p50 |");
    println!("|---|---|---|---|---|---|---|---|");
    for (mode, reserve, n) in [
        ("none", None, trials),
        ("reserve@50", Some(50), trials.div_ceil(2)),
        ("reserve@0", Some(0), trials.div_ceil(2)),
    ] {
        let mut results = Vec::new();
        for i in 0..n {
            let id = tollgate_e2e::unique(&format!("bench-{}", mode.replace('@', "")));
            let t = trial(&stack, &http, &mut redis, &id, reserve)
                .await
                .with_context(|| format!("{mode} trial {i}"))?;
            eprintln!(
                "{mode} trial {i}: spend→429 {:?}, overshoot {:.6} USD, {} served",
                t.latency,
                t.overshoot_nanos as f64 / 1e9,
                t.served
            );
            results.push(t);
        }
        let mut lat: Vec<f64> = results
            .iter()
            .filter_map(|t| t.latency.map(|d| d.as_secs_f64() * 1e3))
            .collect();
        lat.sort_by(f64::total_cmp);
        let mut over: Vec<f64> = results
            .iter()
            .map(|t| t.overshoot_nanos as f64 / 1e9)
            .collect();
        over.sort_by(f64::total_cmp);
        let mut served: Vec<f64> = results.iter().map(|t| t.served as f64).collect();
        served.sort_by(f64::total_cmp);
        let one = results.iter().map(|t| t.request_cost).max().unwrap_or(0) as f64 / 1e9;
        let ms = |v: f64| {
            if v.is_nan() || reserve.is_some() {
                "-".to_string()
            } else {
                format!("{v:.0} ms")
            }
        };
        println!(
            "| {mode} | {n} | {} | {} | {:.6} | {:.6} | {one:.6} | {:.0} |",
            ms(pct(&lat, 50.0)),
            ms(pct(&lat, 99.0)),
            pct(&over, 50.0),
            over.last().copied().unwrap_or(f64::NAN),
            pct(&served, 50.0)
        );
    }
    agg.shutdown().await;
    stack.proxy.shutdown().await;
    Ok(())
}
