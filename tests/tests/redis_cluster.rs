//! The proxy's Redis users on a three-node Redis Cluster (`infra/dev/stack.sh start
//! redis-cluster`, ports 7001-7003): config store CRUD through the admin API, live sync between
//! two control planes (pub/sub notices through one node), and rate-limit decisions shared by
//! two limiters, including a refund across hash slots.

mod admin_support;

use std::sync::Arc;
use std::time::Duration;

use admin_support::*;
use futures::StreamExt;
use redis::AsyncCommands;
use reqwest::StatusCode;
use tollgate_proxy::limits::{
    Ask, Backend, FailureMode, LimitError, Limiter, LimitsConfig, Metric,
};
use tollgate_proxy::routing::Catalog;
use tollgate_proxy::store::ControlPlane;
use tollgate_proxy::ProxyConfig;
use tollgate_schemas::redis_keys::{self, limit_keys, ConfigKind, LimitEntity};

/// Seed nodes of the local cluster, started (idempotently) by the stack script.
fn cluster_url() -> anyhow::Result<String> {
    if let Ok(url) = std::env::var("TOLLGATE_REDIS_CLUSTER_URL") {
        return Ok(url);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/dev/stack.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(["start", "redis-cluster"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "stack.sh start redis-cluster failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok("redis://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003".into())
}

const NODES: [&str; 3] = [
    "redis://127.0.0.1:7001",
    "redis://127.0.0.1:7002",
    "redis://127.0.0.1:7003",
];

/// A cluster connection for assertions.
async fn cluster_conn() -> anyhow::Result<redis::cluster_async::ClusterConnection> {
    Ok(redis::cluster::ClusterClient::new(NODES.to_vec())?
        .get_async_connection()
        .await?)
}

#[tokio::test]
async fn config_store_crud_and_sync_between_two_planes() -> anyhow::Result<()> {
    let url = cluster_url()?;
    let prefix = tollgate_e2e::unique("cl_cfg");
    let cfg = config(Some(&url), &prefix)?;
    let a = Plane::start(&cfg).await?;
    let b = ControlPlane::start(&cfg).await?;
    let mut rx = b.catalog();
    wait_catalog(&mut rx, Duration::from_secs(5), |c| {
        c.model("seed-model").is_some()
    })
    .await?;

    // Every node delivers the notices (classic pub/sub is broadcast over the cluster bus).
    let channel = redis_keys::changes_channel(&prefix);
    let mut subs = Vec::new();
    for node in NODES {
        let mut p = redis::Client::open(node)?.get_async_pubsub().await?;
        p.subscribe(&channel).await?;
        subs.push(p);
    }

    // Create, read, replace, delete through proxy A; B follows each change.
    let (s, body, _) = a.api.post("/admin/v1/models", model_body("cl-m")).await?;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let took = wait_catalog(&mut rx, Duration::from_secs(5), |c| {
        c.model("cl-m").is_some()
    })
    .await?;
    println!("create reached B after {took:?}");
    for (i, p) in subs.iter_mut().enumerate() {
        let mut messages = p.on_message();
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(msg) = messages.next().await {
                let payload: String = msg.get_payload()?;
                let notice: redis_keys::Notice = serde_json::from_str(&payload)?;
                if (notice.kind, notice.id.as_str()) == (ConfigKind::Models, "cl-m") {
                    return anyhow::Ok(true);
                }
            }
            Ok(false)
        })
        .await
        .map_err(|_| anyhow::anyhow!("no notice for cl-m on node {i}"))??;
        assert!(seen, "subscription on node {i} closed");
    }
    let (s, got, _) = a.api.get("/admin/v1/models/cl-m").await?;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(got["name"], "cl-m");

    let mut replaced = model_body("cl-m");
    replaced["pricing"]["input_per_mtok"] = serde_json::json!(7.0);
    let (s, body, _) = a.api.put("/admin/v1/models/cl-m", replaced).await?;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (_, got, _) = a.api.get("/admin/v1/models/cl-m").await?;
    assert_eq!(got["pricing"]["input_per_mtok"], 7.0, "{got}");

    // The data really lives in the cluster, under the `{cfg}` slot.
    let mut conn = cluster_conn().await?;
    let stored: Option<String> = conn
        .hget(redis_keys::entities(&prefix, ConfigKind::Models), "cl-m")
        .await?;
    assert!(stored.is_some_and(|j| j.contains("7.0") || j.contains('7')));

    let (s, _, _) = a.api.delete("/admin/v1/models/cl-m").await?;
    assert_eq!(s, StatusCode::NO_CONTENT);
    wait_catalog(&mut rx, Duration::from_secs(5), |c| {
        c.model("cl-m").is_none()
    })
    .await?;
    let (s, _, _) = a.api.get("/admin/v1/models/cl-m").await?;
    assert_eq!(s, StatusCode::NOT_FOUND);

    b.shutdown().await;
    a.shutdown().await;
    let keys = redis_keys::all_keys(&prefix);
    redis::cmd("DEL")
        .arg(&keys)
        .query_async::<i64>(&mut conn)
        .await?;
    Ok(())
}

/// A catalog with key `k` and model `m` carrying the given `rate_limit` YAML.
fn catalog(key_limit: &str, model_limit: &str) -> anyhow::Result<Arc<Catalog>> {
    let yaml = format!(
        "models:\n  - {{name: m, base_url: 'http://127.0.0.1:9/v1', rate_limit: {model_limit}}}\napi_keys:\n  - {{id: k, secret: sk-cluster-1234, account_id: a, rate_limit: {key_limit}}}\nkafka: {{brokers: 'x:1'}}\n"
    );
    let cfg = ProxyConfig::from_yaml(&yaml, "t")?;
    cfg.validate()?;
    Ok(Arc::new(Catalog::build(
        &cfg.models,
        &cfg.api_keys,
        &cfg.accounts,
        0,
        |_| None,
    )))
}

fn limiter(url: &str, prefix: &str) -> anyhow::Result<Limiter> {
    let cfg = LimitsConfig {
        backend: Some(Backend::Redis),
        failure_mode: FailureMode::Closed,
        prefix: prefix.to_string(),
        timeout_ms: 2_000,
        ..LimitsConfig::default()
    };
    Ok(Limiter::start(&cfg, Some(url))?)
}

async fn ask(l: &Limiter, cat: &Catalog) -> anyhow::Result<bool> {
    let key = cat
        .key_for_secret("sk-cluster-1234")
        .ok_or_else(|| anyhow::anyhow!("no key"))?;
    let model = cat.model("m").ok_or_else(|| anyhow::anyhow!("no model"))?;
    let ask = Ask {
        key: &key,
        model: &model,
        prompt_tokens: 1,
        max_completion_tokens: None,
    };
    match l.acquire(&ask).await {
        Ok(a) => {
            drop(a.permit);
            Ok(true)
        }
        Err(LimitError::Denied(d)) => {
            assert_eq!(d.metric, Metric::Rpm);
            Ok(false)
        }
        Err(e) => Err(anyhow::anyhow!("limiter failed: {e}")),
    }
}

#[tokio::test]
async fn rate_limit_decisions_are_shared_on_the_cluster() -> anyhow::Result<()> {
    let url = cluster_url()?;
    let prefix = tollgate_e2e::unique("cl_rl");
    let key_keys = limit_keys(&prefix, LimitEntity::Key, "k");
    let model_keys = limit_keys(&prefix, LimitEntity::Model, "m");
    let mut conn = cluster_conn().await?;
    let mut slots = Vec::new();
    for k in [&key_keys.minute, &model_keys.minute] {
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(k)
            .query_async(&mut conn)
            .await?;
        slots.push(slot);
    }
    assert_ne!(
        slots[0], slots[1],
        "key and model counters must be in different slots"
    );

    // Two proxies: 5 rpm on the key, admitted exactly 5 times in total.
    let cat = catalog("{rpm: 5}", "{rpm: 100}")?;
    let (p1, p2) = (limiter(&url, &prefix)?, limiter(&url, &prefix)?);
    let mut admitted = 0;
    for i in 0..12 {
        let l = if i % 2 == 0 { &p1 } else { &p2 };
        admitted += u32::from(ask(l, &cat).await?);
    }
    assert_eq!(admitted, 5);
    let counted: i64 = conn.hget(&key_keys.minute, "R").await?;
    assert_eq!(counted, 5, "refused requests are not counted");

    // A refusal by the model (another slot) refunds the key.
    let prefix2 = tollgate_e2e::unique("cl_rl");
    let cat = catalog("{rpm: 100}", "{rpm: 1}")?;
    let l = limiter(&url, &prefix2)?;
    assert!(ask(&l, &cat).await?);
    assert!(!ask(&l, &cat).await?);
    let keys = limit_keys(&prefix2, LimitEntity::Key, "k");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r: i64 = conn.hget(&keys.minute, "R").await?;
        if r == 1 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "key not refunded: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for l in [p1, p2, l] {
        l.shutdown();
    }
    Ok(())
}
