//! The proxy's Redis users on a three-node Redis Cluster (`infra/dev/stack.sh start
//! redis-cluster`, ports 7001-7003): config store CRUD through the admin API, live sync between
//! two control planes (pub/sub notices through one node), rate-limit decisions shared by two
//! limiters, including a refund across hash slots, and budgets and credits: an aggregator
//! budget writer and a proxy budget gate on the cluster (hard block, credit top-up, reservations
//! on two slots after the scripts were flushed from every node), and `RedisConn::run_pipeline`
//! over six slots (replies in order, a script unknown to every node loaded on NOSCRIPT).

mod admin_support;
mod budget_support;

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
        l.shutdown().await;
    }
    Ok(())
}

/// A budget stack on the cluster: this test's topic and database, a proxy whose config store,
/// budget gate and credit admin live on the cluster under `prefix`.
async fn cluster_budget_stack(name: &str, url: &str) -> anyhow::Result<tollgate_e2e::TestStack> {
    tollgate_e2e::init_tracing();
    let topic = tollgate_e2e::unique(&format!("t_{name}"));
    let database = tollgate_e2e::unique(&format!("tg_{name}"));
    let prefix = tollgate_e2e::unique(&format!("tgb_{name}"));
    tollgate_e2e::create_topic(&topic, 2).await?;
    tollgate_schemas::migrate::run(&tollgate_e2e::clickhouse(), &database).await?;
    let mock = tollgate_loadtest::mock::MockServer::start(
        "127.0.0.1:0".parse()?,
        tollgate_loadtest::MockConfig {
            latency_ms: 20,
            ..Default::default()
        },
    )
    .await?;
    let mut cfg = tollgate_e2e::proxy_config(&mock.base_url(), &topic)?;
    let admin_hash: String = tollgate_proxy::routing::hash_secret(tollgate_e2e::ADMIN_KEY)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let patch = ProxyConfig::from_yaml(
        &format!(
            "redis: {{url: \"{url}\", prefix: {prefix}, resync_ms: 1000, cluster: true}}\n\
             admin: {{listen: \"127.0.0.1:0\", key_sha256: \"{admin_hash}\"}}\n\
             budgets: {{cache_ttl_ms: 1000, clickhouse: {{url: \"{}\", database: {database}}}}}\n\
             kafka: {{brokers: \"x:1\"}}\nmodels: []\n",
            tollgate_e2e::clickhouse_url()
        ),
        "test",
    )?;
    cfg.redis = patch.redis;
    cfg.admin = patch.admin;
    cfg.budgets = patch.budgets;
    cfg.validate()?;
    let proxy = tollgate_proxy::start(cfg).await?;
    Ok(tollgate_e2e::TestStack {
        topic,
        database,
        mock,
        proxy,
        redis_prefix: Some(prefix),
    })
}

/// An aggregator of `stack` whose budget writer works on the cluster.
async fn cluster_aggregator(
    stack: &tollgate_e2e::TestStack,
    url: &str,
) -> anyhow::Result<tollgate_aggregator::AggregatorHandle> {
    let mut cfg = stack.aggregator_config(&tollgate_e2e::unique("g"));
    cfg.budgets.redis_url = Some(url.to_string());
    cfg.budgets.redis_cluster = true;
    Ok(tollgate_aggregator::start(cfg).await?)
}

/// Hash fields of `key` as i64 (0 when absent).
async fn fields<const N: usize>(
    conn: &mut redis::cluster_async::ClusterConnection,
    key: &str,
    names: [&str; N],
) -> anyhow::Result<[i64; N]> {
    let got: Vec<Option<i64>> = redis::cmd("HMGET")
        .arg(key)
        .arg(&names[..])
        .query_async(conn)
        .await?;
    let mut out = [0; N];
    for (o, v) in out.iter_mut().zip(got) {
        *o = v.unwrap_or(0);
    }
    Ok(out)
}

async fn slot_of(
    conn: &mut redis::cluster_async::ClusterConnection,
    key: &str,
) -> anyhow::Result<i64> {
    Ok(redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(conn)
        .await?)
}

/// Create a budget and wait until the aggregator built its counter on the cluster.
async fn cluster_budget(
    stack: &tollgate_e2e::TestStack,
    admin: &budget_support::Admin,
    conn: &mut redis::cluster_async::ClusterConnection,
    body: serde_json::Value,
) -> anyhow::Result<(tollgate_schemas::budgets::Budget, String)> {
    let created = admin.post("/admin/v1/budgets", body, 201).await?;
    let budget: tollgate_schemas::budgets::Budget = serde_json::from_value(created)?;
    let key = budget_support::counter_key(stack, &budget);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while fields(conn, &key, ["init"]).await?[0] != 1 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "counter {key} never built"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((budget, key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budgets_credits_and_reservations_on_the_cluster() -> anyhow::Result<()> {
    use budget_support as support;
    use serde_json::json;
    use tollgate_e2e::EXTRA_KEYS;

    let url = cluster_url()?;
    let stack = cluster_budget_stack("clbud", &url).await?;
    let agg = cluster_aggregator(&stack, &url).await?;
    let admin = support::Admin::new(&stack);
    let http = reqwest::Client::new();
    let mut conn = cluster_conn().await?;
    let prefix = stack.redis_prefix.clone().unwrap_or_default();

    // (1) A hard budget: spend over it produces a block decision (written by the aggregator on
    // the cluster) that the proxy answers with 429 `budget_exceeded`.
    let (_, hard_key) = cluster_budget(
        &stack,
        &admin,
        &mut conn,
        json!({"id": "cl-hard", "scope": "key", "scope_id": "key_test_0", "period": "daily",
               "limit_usd": 0.002, "mode": "hard"}),
    )
    .await?;
    let replies =
        support::load_until_refused(&stack, EXTRA_KEYS[0], 2, 20, Duration::from_secs(30)).await?;
    let refused = replies
        .iter()
        .find(|r| r.status == 429)
        .ok_or_else(|| anyhow::anyhow!("no 429 from the hard budget"))?;
    assert_eq!(refused.code(), "budget_exceeded", "{}", refused.body);
    let [spent] = fields(&mut conn, &hard_key, ["v"]).await?;
    assert!(spent >= 2_000_000, "counted {spent} before the block");
    let decisions = redis_keys::budget_decisions(&prefix, "k:key_test_0");
    let block: Option<String> = conn.hget(&decisions, "cl-hard").await?;
    assert!(
        block.as_deref().is_some_and(|d| d.contains("block")),
        "{block:?}"
    );
    println!(
        "hard budget: {} served, blocked after {spent} nano-USD",
        replies.iter().filter(|r| r.status == 200).count()
    );

    // (2) Credits: a new prepaid account is blocked at zero; an admin top-up (balance and
    // decision updated by one script on the account's slot) unblocks it; usage debits it.
    let account = "acct_test_1";
    admin
        .post("/admin/v1/credit-accounts", json!({"id": account}), 201)
        .await?;
    support::wait_until("blocked at zero", Duration::from_secs(10), || async {
        Ok(support::chat(&http, &stack, EXTRA_KEYS[1], 10)
            .await?
            .status
            == 429)
    })
    .await?;
    let r = support::chat(&http, &stack, EXTRA_KEYS[1], 10).await?;
    assert_eq!(r.code(), "budget_exceeded", "{}", r.body);
    let topup = json!({"account_id": account, "amount_usd": 0.5, "entry_id": "cl-adm-1",
                       "reference": "cluster test"});
    admin.post("/admin/v1/credit-topups", topup, 201).await?;
    support::wait_until(
        "unblocked by the top-up",
        Duration::from_secs(5),
        || async {
            Ok(support::chat(&http, &stack, EXTRA_KEYS[1], 10)
                .await?
                .status
                == 200)
        },
    )
    .await?;
    let balance_key = redis_keys::credit_balance(&prefix, account);
    support::wait_until("usage debited", Duration::from_secs(15), || async {
        let mut c = cluster_conn().await?;
        Ok(fields(&mut c, &balance_key, ["used"]).await?[0] > 0)
    })
    .await?;
    let [topups, used] = fields(&mut conn, &balance_key, ["topup", "used"]).await?;
    assert_eq!(topups, 500_000_000);
    println!("credits: topped up {topups}, used {used} nano-USD");

    // (3) Reservations across slots: two always-reserving budgets of one request (its key
    // and its account) whose counters live in different slots; the scripts are flushed from
    // every node first, so the proxy and the aggregator must load them again.
    let (_, key_counter) = cluster_budget(
        &stack,
        &admin,
        &mut conn,
        json!({"id": "cl-resv-key", "scope": "key", "scope_id": "key_test_2", "period": "daily",
               "limit_usd": 0.004, "reserve_above_pct": 0}),
    )
    .await?;
    let (_, acct_counter) = cluster_budget(
        &stack,
        &admin,
        &mut conn,
        json!({"id": "cl-resv-acct", "scope": "account", "scope_id": "acct_test_2",
               "period": "daily", "limit_usd": 0.05, "reserve_above_pct": 0}),
    )
    .await?;
    assert_ne!(
        slot_of(&mut conn, &key_counter).await?,
        slot_of(&mut conn, &acct_counter).await?,
        "the two counters must be in different slots"
    );
    for node in NODES {
        let mut c = redis::Client::open(node)?
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async::<()>(&mut c)
            .await?;
    }
    let replies =
        support::load_until_refused(&stack, EXTRA_KEYS[2], 4, 50, Duration::from_secs(30)).await?;
    let refused = replies
        .iter()
        .find(|r| r.status == 429)
        .ok_or_else(|| anyhow::anyhow!("no 429 from the reserving budget"))?;
    assert_eq!(refused.code(), "budget_exceeded", "{}", refused.body);
    let max_cost = replies.iter().map(|r| r.cost_nanos).max().unwrap_or(0);
    let served: i64 = replies.iter().map(|r| r.cost_nanos).sum();
    support::wait_rows_settled(&stack, Duration::from_secs(30)).await?;
    let stored = support::stored_cost(&stack, "api_key_id", "key_test_2").await?;
    assert_eq!(stored, served, "ClickHouse holds what was served");
    let limit = 4_000_000;
    println!(
        "reservations: served {} requests, spent {stored} of {limit}, one request {max_cost}",
        replies.iter().filter(|r| r.status == 200).count()
    );
    assert!(
        stored <= limit + max_cost,
        "overshoot {} above one request's cost {max_cost}",
        stored - limit
    );
    // Both counters (two slots) counted every event once and released every reservation.
    support::wait_until("reservations released", Duration::from_secs(10), || async {
        let mut c = cluster_conn().await?;
        let [kv, kr] = fields(&mut c, &key_counter, ["v", "R"]).await?;
        let [av, ar] = fields(&mut c, &acct_counter, ["v", "R"]).await?;
        Ok(kr == 0 && ar == 0 && kv == stored && av == stored)
    })
    .await?;

    agg.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn pipelines_over_several_slots_keep_their_order_and_reload_scripts() -> anyhow::Result<()> {
    use tollgate_schemas::redis_conn::{ConnSettings, RedisTarget};

    let url = cluster_url()?;
    let prefix = tollgate_e2e::unique("cl_pipe");
    let conn = RedisTarget::parse(&url, false)?.connect(ConnSettings {
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(2),
    })?;
    assert!(conn.is_cluster());
    let keys: Vec<String> = (0..6).map(|i| format!("{prefix}:{{t{i}}}")).collect();
    let mut admin = cluster_conn().await?;
    let mut slots = std::collections::HashSet::new();
    for k in &keys {
        slots.insert(slot_of(&mut admin, k).await?);
    }
    assert!(slots.len() >= 3, "keys spread over slots: {slots:?}");

    // A script unknown to every node (fresh source), called on six slots in one pipeline: the
    // first call meets NOSCRIPT on each node, loads it everywhere and runs again.
    let script = redis::Script::new(&format!(
        "-- {prefix}\nredis.call('SET', KEYS[1], ARGV[1]) return ARGV[1] * 2"
    ));
    let mut pipe = redis::pipe();
    for (i, k) in keys.iter().enumerate() {
        pipe.invoke_script(script.key(k).arg(i));
        pipe.get(k);
    }
    let replies: Vec<i64> = conn.run_pipeline(&pipe, &[&script]).await?;
    let want: Vec<i64> = (0..6).flat_map(|i| [2 * i, i]).collect();
    assert_eq!(replies, want, "replies in pipeline order");
    let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut admin).await?;
    Ok(())
}
