//! Latency that rate limiting (Redis backend) adds to a request, at p50 and p99.
//!
//! Runs against the local stack (Redis, Kafka) with an in-process mock upstream and proxy:
//! 1. end to end: requests with a key without limits and a key with rpm + tpm + concurrency
//!    limits are interleaved on one proxy; the difference of their latencies is the cost of
//!    the pre-check round trip (settlement runs in the background);
//! 2. the decision alone: `Limiter::acquire` + settle, sequentially.
//!
//! `make bench-ratelimit` (release build). `BENCH_REQUESTS` sets the sample size (2000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use tollgate_loadtest::{MockConfig, MockServer};
use tollgate_proxy::limits::{Ask, Limiter, LimitsConfig};
use tollgate_proxy::routing::Catalog;
use tollgate_proxy::usage::Tokens;
use tollgate_proxy::ProxyConfig;

const FREE: &str = "sk-bench-free-0001";
const LIMITED: &str = "sk-bench-limited-01";

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx).copied().unwrap_or_default()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn summary(name: &str, mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort_unstable();
    let (p50, p99) = (pct(&v, 0.50), pct(&v, 0.99));
    println!(
        "  {name:<28} p50 {:>8.0} µs   p99 {:>8.0} µs   (n = {})",
        us(p50),
        us(p99),
        v.len()
    );
    (p50, p99)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = env("BENCH_REQUESTS", "2000").parse()?;
    let brokers = env("TOLLGATE_KAFKA_BROKERS", "127.0.0.1:9092");
    let redis = env("TOLLGATE_REDIS_URL", "redis://127.0.0.1:6379");
    let run = uuid::Uuid::now_v7().simple().to_string();
    let run = &run[run.len() - 12..];
    let topic = format!("rl_bench_{run}");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    admin
        .create_topics(
            [&NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    let mock = MockServer::start("127.0.0.1:0".parse()?, MockConfig::default()).await?;
    let limit = "{rpm: 1000000000, tpm: 1000000000000, concurrency: 100000}";
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
models:
  - {{name: m, base_url: "{mock}/v1"}}
api_keys:
  - {{id: bench_free, secret: {FREE}, account_id: bench}}
  - {{id: bench_limited, secret: {LIMITED}, account_id: bench, rate_limit: {limit}}}
kafka: {{brokers: "{brokers}", topic: {topic}, spool: {{dir: "{spool}"}}}}
limits: {{backend: redis, redis_url: "{redis}", prefix: bench_{run}}}
"#,
        mock = mock.base_url(),
        spool = std::env::temp_dir()
            .join(format!("rl-bench-{run}"))
            .display(),
    );
    let cfg = ProxyConfig::from_yaml(&yaml, "bench")?;
    cfg.validate()?;
    let proxy = tollgate_proxy::start(cfg.clone()).await?;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", proxy.base_url());
    let body = serde_json::json!({"model": "m", "max_tokens": 8,
        "messages": [{"role": "user", "content": "how long does a rate limit check take"}]});
    let call = |key: &'static str| {
        let req = http.post(&url).bearer_auth(key).json(&body);
        async move {
            let started = Instant::now();
            let resp = req.send().await?;
            anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
            resp.bytes().await?;
            Ok::<_, anyhow::Error>(started.elapsed())
        }
    };
    for _ in 0..200 {
        call(FREE).await?;
        call(LIMITED).await?;
    }
    let (mut free, mut limited) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        // Alternate the order so neither key always goes first.
        if i % 2 == 0 {
            free.push(call(FREE).await?);
            limited.push(call(LIMITED).await?);
        } else {
            limited.push(call(LIMITED).await?);
            free.push(call(FREE).await?);
        }
    }
    println!("end to end, sequential requests through one proxy (mock upstream, no latency):");
    let (f50, f99) = summary("key without limits", free);
    let (l50, l99) = summary("key with rpm+tpm+concurrency", limited);
    println!(
        "  added by rate limiting       p50 {:>8.0} µs   p99 {:>8.0} µs",
        us(l50) - us(f50),
        us(l99) - us(f99)
    );

    let limits: LimitsConfig = serde_yaml::from_str(&format!(
        "{{backend: redis, redis_url: '{redis}', prefix: bench_{run}_direct}}"
    ))?;
    let limiter = Limiter::start(&limits, None)?;
    let catalog = Arc::new(Catalog::build(
        &cfg.models,
        &cfg.api_keys,
        &cfg.accounts,
        0,
        |_| None,
    ));
    let key = catalog
        .key_for_secret(LIMITED)
        .ok_or_else(|| anyhow::anyhow!("no key"))?;
    let model = catalog
        .model("m")
        .ok_or_else(|| anyhow::anyhow!("no model"))?;
    let ask = Ask {
        key: &key,
        model: &model,
        prompt_tokens: 12,
        max_completion_tokens: Some(8),
    };
    let used = Tokens {
        prompt: 12,
        completion: 8,
        cached: 0,
        estimated: false,
    };
    let mut decisions = Vec::with_capacity(n);
    for i in 0..n + 200 {
        let started = Instant::now();
        let admission = limiter.acquire(&ask).await?;
        if i >= 200 {
            decisions.push(started.elapsed());
        }
        if let Some(p) = admission.permit {
            p.settle(&used);
        }
    }
    println!("the decision alone (Limiter::acquire: one EVALSHA round trip to Redis):");
    summary("acquire", decisions);
    limiter.shutdown().await;
    proxy.shutdown().await;
    mock.shutdown().await;
    Ok(())
}
