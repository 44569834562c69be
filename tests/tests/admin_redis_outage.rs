//! Config store outages, on a private Redis (never the shared one): the last catalog keeps
//! serving, writes fail with 503, and everything recovers when Redis is back.

mod admin_support;

use std::time::{Duration, Instant};

use admin_support::*;
use redis::AsyncCommands;
use reqwest::StatusCode;
use tollgate_e2e::private::{PrivateService, ServiceKind};
use tollgate_proxy::store::ControlPlane;
use tollgate_schemas::redis_keys::{self, ConfigKind};

#[tokio::test]
async fn redis_outage_keeps_last_catalog_and_recovers() -> anyhow::Result<()> {
    let redis = PrivateService::start(ServiceKind::Redis)?;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let plane = Plane::start(&config(Some(&url), "outage")?).await?;
    let mut rx = plane.control.catalog();
    let (s, body, _) = plane
        .api
        .post("/admin/v1/models", model_body("before"))
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    wait_catalog(&mut rx, Duration::from_secs(5), |c| {
        c.model("before").is_some()
    })
    .await?;
    let version = plane.control.current().version;

    redis.stop()?;
    // Writes fail fast with 503; the health check says so; the catalog is unchanged.
    let start = Instant::now();
    let (s, body, _) = plane
        .api
        .post("/admin/v1/models", model_body("during"))
        .await?;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(param_code(&body).1, Some("store_unavailable"));
    println!("write during outage answered in {:?}", start.elapsed());
    let (s, _, _) = plane.api.get("/admin/v1/healthz").await?;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cat = plane.control.current();
    assert_eq!(cat.version, version);
    assert!(cat.model("before").is_some() && cat.model("seed-model").is_some());
    assert!(cat.key_for_secret("sk-seed-key-0001").is_some());

    redis.resume()?;
    let resumed = Instant::now();
    let deadline = resumed + Duration::from_secs(20);
    loop {
        let (s, body, _) = plane
            .api
            .post("/admin/v1/models", model_body("after"))
            .await?;
        if s == StatusCode::CREATED {
            break;
        }
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(Instant::now() < deadline, "writes did not recover: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_catalog(&mut rx, Duration::from_secs(10), |c| {
        c.model("after").is_some() && c.model("before").is_some()
    })
    .await?;
    println!("recovered {:?} after Redis resumed", resumed.elapsed());
    let (s, _, _) = plane.api.get("/admin/v1/healthz").await?;
    assert_eq!(s, StatusCode::OK);
    plane.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn startup_with_redis_down_serves_the_file_then_seeds() -> anyhow::Result<()> {
    let redis = PrivateService::start(ServiceKind::Redis)?;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    redis.stop()?;
    let start = Instant::now();
    let control = ControlPlane::start(&config(Some(&url), "coldstart")?).await?;
    println!("started with Redis down in {:?}", start.elapsed());
    let cat = control.current();
    assert_eq!(cat.version, 0);
    assert!(cat.model("seed-model").is_some());
    assert_eq!(
        cat.key_for_secret("sk-seed-key-0001")
            .map(|k| k.id.clone())
            .as_deref(),
        Some("seed-key")
    );

    redis.resume()?;
    let mut rx = control.catalog();
    wait_catalog(&mut rx, Duration::from_secs(15), |c| {
        c.version > 0 && c.model("seed-model").is_some()
    })
    .await?;
    let mut conn = raw_redis(&url).await?;
    let stored: Option<String> = conn
        .hget(
            redis_keys::entities("coldstart", ConfigKind::Models),
            "seed-model",
        )
        .await?;
    assert!(stored.is_some(), "seeded once Redis answered");
    control.shutdown().await;
    Ok(())
}
