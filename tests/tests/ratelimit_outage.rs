//! Rate limits while their Redis is down, on a private Redis (never the shared one): a
//! fail-open proxy keeps serving under in-process limits, a fail-closed one answers 503, and
//! both go back to the shared counters when Redis returns.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::{json, Value};
use tollgate_e2e::private::{PrivateService, ServiceKind};
use tollgate_loadtest::{MockConfig, MockServer};
use tollgate_proxy::{ProxyConfig, ProxyHandle};
use tollgate_schemas::redis_keys::{limit_keys, LimitEntity};

const LIMITED: &str = "sk-rl-outage-0001";
const FREE: &str = "sk-rl-outage-free";

fn config(
    mock: &str,
    topic: &str,
    redis: &str,
    prefix: &str,
    mode: &str,
) -> anyhow::Result<ProxyConfig> {
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
shutdown_grace_secs: 2
models:
  - {{name: m, base_url: "{mock}/v1", retry: {{max_attempts: 1}}}}
api_keys:
  - {{id: key_out, secret: {LIMITED}, account_id: acct_rl, rate_limit: {{rpm: 6}}}}
  - {{id: key_free, secret: {FREE}, account_id: acct_rl}}
kafka: {{brokers: "{brokers}", topic: {topic}, spool: {{dir: "{spool}"}}}}
limits: {{backend: redis, redis_url: "{redis}", prefix: {prefix}, failure_mode: {mode}, timeout_ms: 500}}
"#,
        brokers = tollgate_e2e::brokers(),
        spool = tollgate_e2e::spool_dir().display(),
    );
    let cfg = ProxyConfig::from_yaml(&yaml, "test")?;
    cfg.validate()?;
    Ok(cfg)
}

async fn call(
    http: &reqwest::Client,
    proxy: &ProxyHandle,
    key: &str,
) -> anyhow::Result<(u16, Value, Option<String>)> {
    let resp = http
        .post(format!("{}/v1/chat/completions", proxy.base_url()))
        .bearer_auth(key)
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((status, resp.json().await.unwrap_or(Value::Null), retry))
}

async fn statuses(
    http: &reqwest::Client,
    proxy: &ProxyHandle,
    n: usize,
) -> anyhow::Result<Vec<u16>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(call(http, proxy, LIMITED).await?.0);
    }
    Ok(out)
}

#[tokio::test]
async fn redis_outage_fails_open_or_closed_per_config_and_recovers() -> anyhow::Result<()> {
    tollgate_e2e::init_tracing();
    let redis = PrivateService::start(ServiceKind::Redis)?;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let mock = MockServer::start("127.0.0.1:0".parse()?, MockConfig::default()).await?;
    let topic = tollgate_e2e::unique("rl_outage");
    tollgate_e2e::create_topic(&topic, 1).await?;
    let prefix = tollgate_e2e::unique("rl");
    let open =
        tollgate_proxy::start(config(&mock.base_url(), &topic, &url, &prefix, "open")?).await?;
    let closed =
        tollgate_proxy::start(config(&mock.base_url(), &topic, &url, &prefix, "closed")?).await?;
    let http = reqwest::Client::new();

    // Redis up: one shared window of rpm 6 for both proxies.
    assert_eq!(statuses(&http, &open, 2).await?, [200, 200]);
    assert_eq!(statuses(&http, &closed, 1).await?, [200]);
    let mut conn = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let keys = limit_keys(&prefix, LimitEntity::Key, "key_out");
    let shared: i64 = conn.hget(&keys.minute, "R").await?;
    assert_eq!(shared, 3);

    redis.stop()?;
    let stopped = Instant::now();
    // Fail-open: served under in-process limits (the same rpm 6, counted by this proxy alone).
    let during = statuses(&http, &open, 8).await?;
    assert_eq!(
        during,
        [200, 200, 200, 200, 200, 200, 429, 429],
        "local limits apply"
    );
    // Fail-closed: limited keys get 503 with Retry-After; keys without limits still pass.
    let (s, body, retry) = call(&http, &closed, LIMITED).await?;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["error"]["code"], "rate_limiter_unavailable");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(call(&http, &closed, FREE).await?.0, 200);
    println!(
        "outage behaviour checked {:?} after the stop",
        stopped.elapsed()
    );

    redis.resume()?;
    let resumed = Instant::now();
    let deadline = resumed + Duration::from_secs(20);
    loop {
        let (s, body, _) = call(&http, &closed, LIMITED).await?;
        if s == 200 {
            break;
        }
        assert_eq!(s, 503, "{body}");
        anyhow::ensure!(
            Instant::now() < deadline,
            "fail-closed proxy did not recover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "fail-closed proxy recovered {:?} after Redis resumed",
        resumed.elapsed()
    );
    // The fail-open proxy counts in Redis again (its local window is full, Redis's is not).
    let mut conn = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before: i64 = conn.hget(&keys.minute, "R").await.unwrap_or(0);
        let (s, body, _) = call(&http, &open, LIMITED).await?;
        let after: i64 = conn.hget(&keys.minute, "R").await.unwrap_or(0);
        if s == 200 && after == before + 1 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "fail-open proxy did not return to Redis: {s} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "fail-open proxy back on shared counters {:?} after Redis resumed",
        resumed.elapsed()
    );
    open.shutdown().await;
    closed.shutdown().await;
    Ok(())
}
