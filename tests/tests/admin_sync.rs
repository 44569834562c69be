//! Live sync between proxies through Redis: notices, version polling, full resync, seeding.

mod admin_support;

use std::time::{Duration, Instant};

use admin_support::*;
use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::json;
use tollgate_proxy::store::ControlPlane;
use tollgate_schemas::redis_keys::{self, ConfigKind};

#[tokio::test]
async fn change_reaches_second_proxy_within_1s() -> anyhow::Result<()> {
    let prefix = tollgate_e2e::unique("adm_sync");
    let url = redis_url();
    let cfg = config(Some(&url), &prefix)?;
    let a = Plane::start(&cfg).await?;
    let b = ControlPlane::start(&cfg).await?;
    let mut rx = b.catalog();

    // Through the admin API of proxy A (pub/sub notice).
    let mut times = Vec::new();
    for i in 0..5 {
        let name = format!("prop-{i}");
        let start = Instant::now();
        let (s, body, _) = a.api.post("/admin/v1/models", model_body(&name)).await?;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        wait_catalog(&mut rx, Duration::from_secs(5), |c| {
            c.model(&name).is_some()
        })
        .await?;
        times.push(start.elapsed());
    }
    println!("propagation A admin write -> B catalog (notice): {times:?}");
    for t in &times {
        assert!(*t < Duration::from_secs(1), "{times:?}");
    }

    // A lost notice: entity + version bump without PUBLISH; B's version poll finds it.
    let mut redis = raw_redis(&url).await?;
    let mut body = model_body("silent-1");
    body["deployments"][0]
        .as_object_mut()
        .map(|d| d.remove("api_key"));
    let start = Instant::now();
    redis::pipe()
        .atomic()
        .hset(
            redis_keys::entities(&prefix, ConfigKind::Models),
            "silent-1",
            body.to_string(),
        )
        .incr(redis_keys::version(&prefix), 1)
        .query_async::<()>(&mut redis)
        .await?;
    wait_catalog(&mut rx, Duration::from_secs(5), |c| {
        c.model("silent-1").is_some()
    })
    .await?;
    let polled = start.elapsed();
    println!("propagation without notice (version poll): {polled:?}");
    assert!(polled < Duration::from_secs(1), "{polled:?}");

    // Not even a version bump: the periodic full resync (resync_ms 1000) finds it.
    let start = Instant::now();
    let _: () = redis
        .hset(
            redis_keys::entities(&prefix, ConfigKind::Accounts),
            "silent-acct",
            r#"{"id":"silent-acct","enabled":false}"#,
        )
        .await?;
    let _: () = redis
        .hset(
            redis_keys::entities(&prefix, ConfigKind::Keys),
            "silent-key",
            format!(
                r#"{{"id":"silent-key","account_id":"silent-acct","secret_sha256":"{}"}}"#,
                sha256_hex("sk-silent-0001")
            ),
        )
        .await?;
    wait_catalog(&mut rx, Duration::from_secs(5), |c| {
        c.key_for_secret("sk-silent-0001")
            .is_some_and(|k| !k.usable())
    })
    .await?;
    println!(
        "propagation without version bump (full resync): {:?}",
        start.elapsed()
    );

    // Invalid stored JSON is skipped, the rest still serves.
    let _: () = redis
        .hset(
            redis_keys::entities(&prefix, ConfigKind::Models),
            "broken",
            "{not json",
        )
        .await?;
    let _: () = redis.incr(redis_keys::version(&prefix), 1).await?;
    let v = redis.get::<_, u64>(redis_keys::version(&prefix)).await?;
    wait_catalog(&mut rx, Duration::from_secs(5), |c| c.version == v).await?;
    assert!(b.current().model("prop-0").is_some() && b.current().model("broken").is_none());

    b.shutdown().await;
    a.shutdown().await;
    cleanup(&url, &prefix).await
}

#[tokio::test]
async fn seed_is_written_once_and_admin_changes_survive_restart() -> anyhow::Result<()> {
    let prefix = tollgate_e2e::unique("adm_seed");
    let url = redis_url();
    let mut cfg = config(Some(&url), &prefix)?;
    let plane = Plane::start(&cfg).await?;
    assert!(plane.control.current().model("seed-model").is_some());
    let (s, _, _) = plane.api.delete("/admin/v1/models/seed-model").await?;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, body, _) = plane
        .api
        .put("/admin/v1/accounts/seed-acct", json!({"name": "Edited"}))
        .await?;
    assert_eq!(s, StatusCode::OK, "{body}");
    plane.shutdown().await;

    // Restart with the same file plus a new model: edits and deletes stay, the new one is seeded.
    let mut extra = cfg.models[0].clone();
    extra.name = "seed-model-2".into();
    cfg.models.push(extra);
    let plane = Plane::start(&cfg).await?;
    let cat = plane.control.current();
    assert!(
        cat.model("seed-model").is_none(),
        "deleted seed stays deleted"
    );
    assert!(
        cat.model("seed-model-2").is_some(),
        "new file entity seeded"
    );
    let (_, acct, _) = plane.api.get("/admin/v1/accounts/seed-acct").await?;
    assert_eq!(acct["name"], "Edited");
    plane.shutdown().await;
    cleanup(&url, &prefix).await
}
