//! Helpers shared by the `admin_*` tests: config, a control plane + admin listener, an HTTP
//! client for the admin API, raw Redis access and catalog waits.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::watch;
use tollgate_proxy::admin::AdminServer;
use tollgate_proxy::routing::Catalog;
use tollgate_proxy::store::ControlPlane;
use tollgate_proxy::ProxyConfig;

/// Admin key of test control planes.
pub const ADMIN_KEY: &str = "tg-admin-test-key-0001";

/// Redis of the local stack.
pub fn redis_url() -> String {
    std::env::var("TOLLGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Lowercase hex of SHA-256.
pub fn sha256_hex(s: &str) -> String {
    tollgate_proxy::routing::hash_secret(s)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A proxy config with one seeded model (`seed-model`), key (`seed-key`) and account
/// (`seed-acct`); Redis under `prefix` when `redis_url` is given, else standalone.
pub fn config(redis_url: Option<&str>, prefix: &str) -> anyhow::Result<ProxyConfig> {
    let redis = redis_url
        .map(|u| format!("redis: {{ url: \"{u}\", prefix: \"{prefix}\", resync_ms: 1000 }}\n"))
        .unwrap_or_default();
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
models:
  - name: seed-model
    base_url: http://127.0.0.1:9/v1
    pricing: {{ input_per_mtok: 1.0, output_per_mtok: 2.0 }}
api_keys:
  - {{ id: seed-key, secret: sk-seed-key-0001, account_id: seed-acct }}
accounts:
  - {{ id: seed-acct, name: Seed }}
admin:
  listen: 127.0.0.1:0
  key_sha256: "{hash}"
{redis}kafka: {{ brokers: "127.0.0.1:9" }}
"#,
        hash = sha256_hex(ADMIN_KEY),
    );
    let cfg = ProxyConfig::from_yaml(&yaml, "test")?;
    cfg.validate()?;
    Ok(cfg)
}

/// A control plane with its admin listener.
#[derive(Debug)]
pub struct Plane {
    /// Catalog sync.
    pub control: ControlPlane,
    /// Admin API.
    pub admin: AdminServer,
    /// Client for the admin API with the right key.
    pub api: Api,
}

impl Plane {
    /// Start both for `cfg`.
    pub async fn start(cfg: &ProxyConfig) -> anyhow::Result<Self> {
        tollgate_e2e::init_tracing();
        let control = ControlPlane::start(cfg).await?;
        let admin_cfg = cfg
            .admin
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no admin"))?;
        let admin = AdminServer::start(admin_cfg, &control).await?;
        let api = Api::new(&format!("http://{}", admin.addr()), Some(ADMIN_KEY));
        Ok(Self {
            control,
            admin,
            api,
        })
    }

    /// Stop both.
    pub async fn shutdown(self) {
        self.admin.shutdown().await;
        self.control.shutdown().await;
    }
}

/// Minimal admin API client returning status + JSON (Null for empty bodies).
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

/// Status, JSON body and the config version header.
pub type Reply = (StatusCode, Value, Option<u64>);

impl Api {
    /// Client for `base` sending `key`.
    pub fn new(base: &str, key: Option<&str>) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.to_string(),
            key: key.map(str::to_string),
        }
    }

    /// Same server, another key.
    pub fn with_key(&self, key: Option<&str>) -> Self {
        Self::new(&self.base, key)
    }

    /// Send a raw body.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Reply> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.timeout(Duration::from_secs(15)).send().await?;
        let status = resp.status();
        let version = resp
            .headers()
            .get("x-tollgate-config-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let bytes = resp.bytes().await?;
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)?
        };
        Ok((status, json, version))
    }

    /// Send JSON.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Reply> {
        self.raw(method, path, body.map(|b| b.to_string().into_bytes()))
            .await
    }

    /// GET.
    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.call("GET", path, None).await
    }

    /// POST.
    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Reply> {
        self.call("POST", path, Some(body)).await
    }

    /// PUT.
    pub async fn put(&self, path: &str, body: Value) -> anyhow::Result<Reply> {
        self.call("PUT", path, Some(body)).await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Reply> {
        self.call("DELETE", path, None).await
    }
}

/// `error.param` and `error.code` of an error reply.
pub fn param_code(body: &Value) -> (Option<&str>, Option<&str>) {
    (
        body["error"]["param"].as_str(),
        body["error"]["code"].as_str(),
    )
}

/// Wait until `pred` holds for the catalog; returns how long it took.
pub async fn wait_catalog(
    rx: &mut watch::Receiver<Arc<Catalog>>,
    timeout: Duration,
    pred: impl Fn(&Catalog) -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    tokio::time::timeout(timeout, rx.wait_for(|c| pred(c)))
        .await
        .map_err(|_| anyhow::anyhow!("catalog condition not met within {timeout:?}"))??;
    Ok(start.elapsed())
}

/// A plain Redis connection.
pub async fn raw_redis(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// Delete every config key under `prefix`.
pub async fn cleanup(url: &str, prefix: &str) -> anyhow::Result<()> {
    let mut conn = raw_redis(url).await?;
    let keys = tollgate_schemas::redis_keys::all_keys(prefix);
    redis::cmd("DEL")
        .arg(&keys)
        .query_async::<i64>(&mut conn)
        .await?;
    Ok(())
}

/// A model body on an unreachable upstream.
pub fn model_body(name: &str) -> Value {
    serde_json::json!({
        "name": name,
        "deployments": [{ "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-provider-secret-1" }],
        "pricing": { "input_per_mtok": 1.5, "output_per_mtok": 3.0 }
    })
}
