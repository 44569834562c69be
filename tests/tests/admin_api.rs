//! Admin API against the real Redis of the local stack: CRUD, paging, secrets, validation, auth.

mod admin_support;

use std::time::Duration;

use admin_support::*;
use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn crud_round_trip_with_paging() -> anyhow::Result<()> {
    let prefix = tollgate_e2e::unique("adm_crud");
    let url = redis_url();
    let plane = Plane::start(&config(Some(&url), &prefix)?).await?;
    let api = &plane.api;
    let mut catalog = plane.control.catalog();

    let (s, body, _) = api.get("/admin/v1/healthz").await?;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["store"], "redis");

    // Seeded from the file.
    let (s, body, _) = api.get("/admin/v1/models/seed-model").await?;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["pricing"]["input_per_mtok"], 1.0);

    // Create; a second create of the same name conflicts. Names may contain '/'.
    let (s, body, v1) = api.post("/admin/v1/models", model_body("org/m-1")).await?;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["deployments"][0]["api_key"], "***",
        "provider key is masked"
    );
    assert!(v1.is_some());
    let (s, body, _) = api.post("/admin/v1/models", model_body("org/m-1")).await?;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert_eq!(param_code(&body), (Some("name"), Some("conflict")));
    wait_catalog(&mut catalog, Duration::from_secs(5), |c| {
        c.model("org/m-1").is_some()
    })
    .await?;

    // Read (percent-encoded and raw slash), replace keeping the masked key, read back.
    let (s, got, _) = api.get("/admin/v1/models/org%2Fm-1").await?;
    assert_eq!(s, StatusCode::OK, "{got}");
    let mut edited = got.clone();
    edited["pricing"]["input_per_mtok"] = json!(9.0);
    let (s, body, v2) = api.put("/admin/v1/models/org/m-1", edited).await?;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(v2 > v1, "version grows: {v1:?} → {v2:?}");
    let (_, body, _) = api.get("/admin/v1/models/org/m-1").await?;
    assert_eq!(body["pricing"]["input_per_mtok"], 9.0);
    let mut redis = raw_redis(&url).await?;
    let stored: String = redis
        .hget(
            tollgate_schemas::redis_keys::entities(
                &prefix,
                tollgate_schemas::redis_keys::ConfigKind::Models,
            ),
            "org/m-1",
        )
        .await?;
    assert!(
        stored.contains("sk-provider-secret-1"),
        "PUT with *** kept the provider key"
    );
    let c = wait_catalog(&mut catalog, Duration::from_secs(5), |c| {
        c.model("org/m-1")
            .is_some_and(|m| m.pricing.input_per_mtok == 9.0)
    });
    c.await?;
    let m = plane.control.current().model("org/m-1").expect("model");
    assert!(m.deployments[0].target.sends_key("sk-provider-secret-1"));

    // PUT: the id cannot change; missing ids are 404.
    let (s, body, _) = api
        .put("/admin/v1/models/org/m-1", model_body("other"))
        .await?;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(param_code(&body).0, Some("name"));
    let (s, body, _) = api
        .put("/admin/v1/models/missing", model_body("missing"))
        .await?;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");

    // Delete: 204, then 404.
    let (s, body, _) = api.delete("/admin/v1/models/org/m-1").await?;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let (s, _, _) = api.delete("/admin/v1/models/org/m-1").await?;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = api.get("/admin/v1/models/org/m-1").await?;
    assert_eq!(s, StatusCode::NOT_FOUND);
    wait_catalog(&mut catalog, Duration::from_secs(5), |c| {
        c.model("org/m-1").is_none()
    })
    .await?;

    // Accounts: create 7 (plus the seeded one), page through with limit 3.
    for i in (0..7).rev() {
        let (s, body, _) = api
            .post(
                "/admin/v1/accounts",
                json!({"id": format!("acct-{i}"), "name": format!("Account {i}")}),
            )
            .await?;
        assert_eq!(s, StatusCode::CREATED, "{body}");
    }
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut path = "/admin/v1/accounts?limit=3".to_string();
    loop {
        let (s, page, _) = api.get(&path).await?;
        assert_eq!(s, StatusCode::OK, "{page}");
        pages += 1;
        let data = page["data"].as_array().expect("data");
        assert!(data.len() <= 3);
        ids.extend(
            data.iter()
                .map(|a| a["id"].as_str().unwrap_or_default().to_string()),
        );
        if page["has_more"] == json!(false) {
            assert_eq!(page["next_after"], Value::Null);
            break;
        }
        path = format!(
            "/admin/v1/accounts?limit=3&after={}",
            page["next_after"].as_str().expect("cursor")
        );
    }
    let mut expected: Vec<String> = (0..7).map(|i| format!("acct-{i}")).collect();
    expected.push("seed-acct".into());
    assert_eq!(ids, expected);
    assert_eq!(pages, 3);
    let (_, page, _) = api.get("/admin/v1/accounts").await?;
    assert_eq!(
        page["data"].as_array().map(Vec::len),
        Some(8),
        "default limit 50 fits all"
    );

    // Account replace and delete.
    let (s, body, _) = api
        .put(
            "/admin/v1/accounts/acct-3",
            json!({"name": "renamed", "enabled": false}),
        )
        .await?;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["id"], "acct-3");
    assert_eq!(body["enabled"], false);
    let (s, _, _) = api.delete("/admin/v1/accounts/acct-3").await?;
    assert_eq!(s, StatusCode::NO_CONTENT);

    plane.shutdown().await;
    cleanup(&url, &prefix).await
}

#[tokio::test]
async fn key_secret_is_returned_once_and_only_its_hash_is_stored() -> anyhow::Result<()> {
    let prefix = tollgate_e2e::unique("adm_key");
    let url = redis_url();
    let plane = Plane::start(&config(Some(&url), &prefix)?).await?;
    let api = &plane.api;
    let mut catalog = plane.control.catalog();

    // Keys may only name existing models.
    let (s, body, _) = api
        .post("/admin/v1/keys", json!({"id": "k1", "account_id": "nobody-yet", "allowed_models": ["seed-model", "ghost"]}))
        .await?;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        param_code(&body),
        (Some("allowed_models[1]"), Some("unknown_reference"))
    );

    // No secret given: one is generated and returned once. The account need not exist.
    let (s, body, _) = api
        .post(
            "/admin/v1/keys",
            json!({"id": "k1", "account_id": "nobody-yet", "allowed_models": ["seed-model"]}),
        )
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let secret = body["secret"]
        .as_str()
        .expect("secret returned on create")
        .to_string();
    assert!(
        secret.starts_with("sk-tg-") && secret.len() == 6 + 64,
        "{secret}"
    );
    assert_eq!(body["secret_sha256"], sha256_hex(&secret));

    let (s, body, _) = api.get("/admin/v1/keys/k1").await?;
    assert_eq!(s, StatusCode::OK);
    assert!(
        body.get("secret").is_none() && !body.to_string().contains(&secret),
        "{body}"
    );
    let (_, list, _) = api.get("/admin/v1/keys").await?;
    assert!(!list.to_string().contains(&secret));

    // Redis holds the hash only.
    let mut redis = raw_redis(&url).await?;
    let hash_key = tollgate_schemas::redis_keys::entities(
        &prefix,
        tollgate_schemas::redis_keys::ConfigKind::Keys,
    );
    let stored: String = redis.hget(&hash_key, "k1").await?;
    assert!(!stored.contains(&secret), "{stored}");
    let stored: Value = serde_json::from_str(&stored)?;
    assert_eq!(stored["secret_sha256"], sha256_hex(&secret));
    let all: Vec<String> = redis.hvals(&hash_key).await?;
    assert!(
        all.iter().all(|v| !v.contains("sk-seed-key-0001")),
        "file secrets are hashed too"
    );

    // The proxy accepts the new secret.
    wait_catalog(&mut catalog, Duration::from_secs(5), |c| {
        c.key_for_secret(&secret)
            .is_some_and(|k| k.id == "k1" && k.allows("seed-model"))
    })
    .await?;

    // PUT without a secret keeps it; reusing another key's secret conflicts.
    let (s, body, _) = api
        .put(
            "/admin/v1/keys/k1",
            json!({"account_id": "acct-2", "enabled": false}),
        )
        .await?;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["secret_sha256"], sha256_hex(&secret));
    let (s, body, _) = api
        .post(
            "/admin/v1/keys",
            json!({"id": "k2", "account_id": "a", "secret": "sk-seed-key-0001"}),
        )
        .await?;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert_eq!(param_code(&body).0, Some("secret"));
    // A given secret is accepted and not echoed.
    let (s, body, _) = api
        .post(
            "/admin/v1/keys",
            json!({"id": "k2", "account_id": "a", "secret": "sk-chosen-by-me-01"}),
        )
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert!(body.get("secret").is_none());
    wait_catalog(&mut catalog, Duration::from_secs(5), |c| {
        c.key_for_secret(&secret).is_some_and(|k| !k.usable())
            && c.key_for_secret("sk-chosen-by-me-01").is_some()
    })
    .await?;

    plane.shutdown().await;
    cleanup(&url, &prefix).await
}

#[tokio::test]
async fn validation_errors_name_their_field() -> anyhow::Result<()> {
    // Standalone (memory store): validation does not depend on the backend.
    let plane = Plane::start(&config(None, "unused")?).await?;
    let api = &plane.api;
    let model = |patch: Value| {
        let mut m = model_body("m");
        if let (Some(obj), Value::Object(p)) = (m.as_object_mut(), patch) {
            obj.extend(p);
        }
        m
    };
    let cases: Vec<(&str, &str, Value, StatusCode, &str, &str)> = vec![
        (
            "POST",
            "/admin/v1/models",
            json!([1]),
            StatusCode::BAD_REQUEST,
            "",
            "invalid_body",
        ),
        (
            "POST",
            "/admin/v1/models",
            json!({"nme": "m"}),
            StatusCode::BAD_REQUEST,
            "nme",
            "unknown_field",
        ),
        (
            "POST",
            "/admin/v1/models",
            model(json!({"deployments": [{"base_url": "http://x/v1", "wieght": 2}]})),
            StatusCode::BAD_REQUEST,
            "deployments[0].wieght",
            "unknown_field",
        ),
        (
            "POST",
            "/admin/v1/models",
            json!({"deployments": []}),
            StatusCode::BAD_REQUEST,
            "name",
            "missing_field",
        ),
        (
            "POST",
            "/admin/v1/models",
            model(json!({"deployments": [{}]})),
            StatusCode::BAD_REQUEST,
            "deployments[0].base_url",
            "missing_field",
        ),
        (
            "POST",
            "/admin/v1/models",
            model(json!({"pricing": {"input_per_mtok": "cheap"}})),
            StatusCode::BAD_REQUEST,
            "pricing.input_per_mtok",
            "invalid_type",
        ),
        (
            "POST",
            "/admin/v1/models",
            model(json!({"pricing": {"input_per_mtok": -1}})),
            StatusCode::BAD_REQUEST,
            "pricing.input_per_mtok",
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/models",
            model(json!({"name": "bad name"})),
            StatusCode::BAD_REQUEST,
            "name",
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/models",
            model(json!({"deployments": [{"base_url": "ftp://x"}]})),
            StatusCode::BAD_REQUEST,
            "deployments[0].base_url",
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/models",
            model(json!({"deployments": []})),
            StatusCode::BAD_REQUEST,
            "deployments",
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/models",
            model(json!({"retry": {"max_attempts": 0}})),
            StatusCode::BAD_REQUEST,
            "retry.max_attempts",
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/models",
            model(json!({"timeouts": {"total_ms": 0}})),
            StatusCode::BAD_REQUEST,
            "timeouts.total_ms",
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/models",
            model(json!({"deployments": [{"base_url": "http://x/v1", "api_key": "***"}]})),
            StatusCode::BAD_REQUEST,
            "deployments[0].api_key",
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/keys",
            json!({"id": "k", "account_id": "a", "secret": "short"}),
            StatusCode::BAD_REQUEST,
            "secret",
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/keys",
            json!({"id": "k", "account_id": "a", "secret_sha256": "abc"}),
            StatusCode::BAD_REQUEST,
            "secret_sha256",
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/keys",
            json!({"id": "k", "account_id": "a b"}),
            StatusCode::BAD_REQUEST,
            "account_id",
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/keys",
            json!({"id": "k", "account_id": "a", "allowed_models": ["no such"]}),
            StatusCode::BAD_REQUEST,
            "allowed_models[0]",
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/keys",
            json!({"id": "k", "account_id": "a", "enabled": "yes"}),
            StatusCode::BAD_REQUEST,
            "enabled",
            "invalid_type",
        ),
        (
            "POST",
            "/admin/v1/accounts",
            json!({"id": "a", "metadata": {"": "x"}}),
            StatusCode::BAD_REQUEST,
            "metadata.",
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/accounts",
            json!({"id": "a", "name": "x".repeat(300)}),
            StatusCode::BAD_REQUEST,
            "name",
            "invalid_value",
        ),
        (
            "PUT",
            "/admin/v1/accounts/seed-acct",
            json!({"id": "other"}),
            StatusCode::BAD_REQUEST,
            "id",
            "invalid_value",
        ),
        (
            "GET",
            "/admin/v1/accounts?limit=0",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "limit",
            "invalid_value",
        ),
        (
            "GET",
            "/admin/v1/accounts?limit=501",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "limit",
            "invalid_value",
        ),
        (
            "GET",
            "/admin/v1/accounts?after=zz",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "after",
            "invalid_value",
        ),
        (
            "GET",
            "/admin/v1/accounts?page=2",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "page",
            "unknown_field",
        ),
    ];
    for (method, path, body, status, param, code) in cases {
        let body = (!body.is_null()).then_some(body);
        let (s, reply, _) = api.call(method, path, body.clone()).await?;
        let ctx = format!("{method} {path} {body:?} → {s} {reply}");
        assert_eq!(s, status, "{ctx}");
        assert_eq!(reply["error"]["type"], "invalid_request_error", "{ctx}");
        assert_eq!(param_code(&reply).1, Some(code), "{ctx}");
        assert_eq!(
            reply["error"]["param"].as_str().unwrap_or(""),
            param,
            "{ctx}"
        );
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| m.len() > 10),
            "{ctx}"
        );
    }
    // Syntax errors and oversized bodies.
    let (s, reply, _) = api
        .raw("POST", "/admin/v1/models", Some(b"{\"name\": ".to_vec()))
        .await?;
    assert_eq!(
        (s, param_code(&reply).1),
        (StatusCode::BAD_REQUEST, Some("invalid_json")),
        "{reply}"
    );
    let big = format!(
        "{{\"id\": \"a\", \"name\": \"{}\"}}",
        "x".repeat(1024 * 1024 + 10)
    );
    let (s, reply, _) = api
        .raw("POST", "/admin/v1/accounts", Some(big.into_bytes()))
        .await?;
    assert_eq!(
        (s, param_code(&reply).1),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("request_too_large")),
        "{reply}"
    );
    // Unknown routes and methods are JSON too.
    let (s, reply, _) = api.get("/admin/v1/nope").await?;
    assert_eq!(
        (s, param_code(&reply).1),
        (StatusCode::NOT_FOUND, Some("unknown_route"))
    );
    let (s, reply, _) = api.call("PATCH", "/admin/v1/models", None).await?;
    assert_eq!(
        (s, param_code(&reply).1),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    // Nothing was written.
    let (_, list, _) = api.get("/admin/v1/models").await?;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(plane.control.current().version, 0);
    plane.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn wrong_admin_keys_are_rejected() -> anyhow::Result<()> {
    let plane = Plane::start(&config(None, "unused")?).await?;
    let right = &plane.api;
    let mut almost = ADMIN_KEY.to_string();
    almost.pop();
    almost.push('2');
    let wrong_keys = [
        (None, "missing_api_key"),
        (Some(""), "missing_api_key"),
        (Some("nope"), "invalid_api_key"),
        (Some(almost.as_str()), "invalid_api_key"),
        (Some(&ADMIN_KEY[..ADMIN_KEY.len() - 1]), "invalid_api_key"),
    ];
    for (key, code) in wrong_keys {
        let api = right.with_key(key);
        for (method, path, body) in [
            ("GET", "/admin/v1/models", None),
            ("GET", "/admin/v1/keys/seed-key", None),
            ("POST", "/admin/v1/accounts", Some(json!({"id": "x"}))),
            ("DELETE", "/admin/v1/models/seed-model", None),
        ] {
            let (s, body, _) = api.call(method, path, body).await?;
            assert_eq!(
                s,
                StatusCode::UNAUTHORIZED,
                "{key:?} {method} {path}: {body}"
            );
            assert_eq!(param_code(&body).1, Some(code));
            assert_eq!(body["error"]["type"], "authentication_error");
        }
    }
    // The right key works; the health check needs none.
    let (s, _, _) = right.get("/admin/v1/models/seed-model").await?;
    assert_eq!(s, StatusCode::OK);
    let (s, body, _) = right.with_key(None).get("/admin/v1/healthz").await?;
    assert_eq!(
        (s, body["store"].as_str()),
        (StatusCode::OK, Some("memory"))
    );
    plane.shutdown().await;
    Ok(())
}
