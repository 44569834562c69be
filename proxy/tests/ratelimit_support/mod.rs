//! Helpers of the `ratelimit_*` tests: several proxies sharing one Redis for rate limits
//! (unique key prefix per test), one mock upstream, and request helpers.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde_json::{json, Value};
use tollgate_loadtest::{MockConfig, MockServer};
use tollgate_proxy::limits::{Admission, Ask, LimitError, Limiter, LimitsConfig};
use tollgate_proxy::routing::Catalog;
use tollgate_proxy::{ProxyConfig, ProxyHandle};

/// Public model of the fleet.
pub const MODEL: &str = "m";

pub fn brokers() -> String {
    std::env::var("TOLLGATE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn redis_url() -> String {
    std::env::var("TOLLGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}_{}", &id[id.len() - 12..])
}

pub async fn create_topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    admin
        .create_topics([&NewTopic::new(name, 1, TopicReplication::Fixed(1))], &opts)
        .await
        .unwrap();
}

/// One key line of `api_keys`: `{id, secret, account_id, rate_limit}`.
pub fn key(id: &str, secret: &str, rate_limit: &str) -> String {
    format!("  - {{id: {id}, secret: {secret}, account_id: acct_rl, rate_limit: {rate_limit}}}\n")
}

/// Proxy config text: model `m` on `mock`, the given keys, limits in Redis under `prefix`.
pub fn yaml(mock: &str, topic: &str, prefix: &str, limits: &str, keys: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
shutdown_grace_secs: 2
models:
  - name: {MODEL}
    base_url: {mock}/v1
    retry: {{max_attempts: 1}}
api_keys:
{keys}kafka:
  brokers: "{brokers}"
  topic: {topic}
  spool: {{dir: "{spool}"}}
limits: {{backend: redis, redis_url: "{redis}", prefix: {prefix}, {limits}}}
"#,
        brokers = brokers(),
        redis = redis_url(),
        spool = std::env::temp_dir()
            .join("tollgate-rl-spool")
            .join(unique("spool"))
            .display(),
    )
}

/// Several proxies on one mock and one Redis prefix.
pub struct Fleet {
    pub mock: MockServer,
    pub proxies: Vec<ProxyHandle>,
    pub http: reqwest::Client,
    pub prefix: String,
    pub topic: String,
}

impl Fleet {
    /// Start `n` proxies; `limits` is extra text of the `limits:` map (e.g. `lease_secs: 3`).
    pub async fn start(n: usize, mock_cfg: MockConfig, limits: &str, keys: &str) -> Self {
        let mock = MockServer::start("127.0.0.1:0".parse().unwrap(), mock_cfg)
            .await
            .unwrap();
        let topic = unique("rl_t");
        create_topic(&topic).await;
        let prefix = unique("rl");
        let mut proxies = Vec::new();
        for _ in 0..n {
            let text = yaml(&mock.base_url(), &topic, &prefix, limits, keys);
            let cfg = ProxyConfig::from_yaml(&text, "test").unwrap();
            cfg.validate().unwrap();
            proxies.push(tollgate_proxy::start(cfg).await.unwrap());
        }
        Self {
            mock,
            proxies,
            http: reqwest::Client::new(),
            prefix,
            topic,
        }
    }

    /// `POST /v1/chat/completions` to proxy `i % n`.
    pub async fn chat(&self, i: usize, secret: &str, body: &Value) -> reqwest::Response {
        let p = &self.proxies[i % self.proxies.len()];
        self.http
            .post(format!("{}/v1/chat/completions", p.base_url()))
            .bearer_auth(secret)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn shutdown(self) {
        for p in self.proxies {
            p.shutdown().await;
        }
    }
}

/// A chat body asking for `max_tokens` completion tokens.
pub fn body(max_tokens: u64, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
}

/// Redis server time, ms (the clock the limits use).
pub async fn redis_now_ms(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let (s, us): (i64, i64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    s * 1000 + us / 1000
}

pub async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Status, headers and JSON error body (if any) of a response, body consumed.
pub async fn outcome(resp: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, headers, json)
}

pub fn header(h: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

pub fn header_u64(h: &reqwest::header::HeaderMap, name: &str) -> Option<u64> {
    header(h, name).and_then(|v| v.parse().ok())
}

// Limiter-level helpers (no proxy): one key `k` (`sk-limits-1234`) and one model `m`.

/// A catalog with one key and one model carrying the given `rate_limit` YAML (or none).
pub fn catalog(key_limit: &str, model_limit: &str) -> Arc<Catalog> {
    let rl = |l: &str| {
        if l.is_empty() {
            String::new()
        } else {
            format!(", rate_limit: {l}")
        }
    };
    let yaml = format!(
        "models:\n  - {{name: m, base_url: 'http://127.0.0.1:9/v1'{}}}\napi_keys:\n  - {{id: k, secret: sk-limits-1234, account_id: a{}}}\nkafka: {{brokers: 'x:1'}}\n",
        rl(model_limit),
        rl(key_limit)
    );
    let cfg = ProxyConfig::from_yaml(&yaml, "t").unwrap();
    cfg.validate().unwrap();
    Arc::new(Catalog::build(
        &cfg.models,
        &cfg.api_keys,
        &cfg.accounts,
        0,
        |_| None,
    ))
}

pub fn limiter(prefix: &str, lease_secs: u64) -> Limiter {
    limiter_with(prefix, lease_secs, true)
}

/// A limiter; `slices: false` sends every request to Redis (no quota slices).
pub fn limiter_with(prefix: &str, lease_secs: u64, slices: bool) -> Limiter {
    let cfg: LimitsConfig = serde_yaml::from_str(&format!(
        "{{backend: redis, redis_url: '{}', prefix: {prefix}, lease_secs: {lease_secs}, timeout_ms: 2000, slices: {slices}}}",
        redis_url()
    ))
    .unwrap();
    Limiter::start(&cfg, None).unwrap()
}

pub async fn ask(
    l: &Limiter,
    cat: &Catalog,
    prompt: i64,
    max: Option<i64>,
) -> Result<Admission, LimitError> {
    let key = cat.key_for_secret("sk-limits-1234").unwrap();
    let model = cat.model("m").unwrap();
    l.acquire(&Ask {
        key: &key,
        model: &model,
        prompt_tokens: prompt,
        max_completion_tokens: max,
    })
    .await
}

pub async fn wait_until(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
