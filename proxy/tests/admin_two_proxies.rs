//! Admin changes made on one proxy are served by a second proxy within a second, without a
//! restart (two full proxies sharing one Redis config store, unique key prefix).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{brokers, create_topic, unique};
use serde_json::{json, Value};
use tollgate_loadtest::{MockConfig, MockServer};

const ADMIN_KEY: &str = "admin-key-for-tests-0001";

fn config(mock: &str, topic: &str, prefix: &str) -> tollgate_proxy::ProxyConfig {
    let admin_hash = hex::encode(tollgate_proxy::routing::hash_secret(ADMIN_KEY));
    let redis =
        std::env::var("TOLLGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
models:
  - {{name: seed-model, base_url: "{mock}/v1"}}
admin: {{listen: "127.0.0.1:0", key_sha256: {admin_hash}}}
redis: {{url: "{redis}", prefix: {prefix}, resync_ms: 5000}}
kafka: {{idempotence: false, brokers: "{brokers}", topic: {topic}, spool: {{dir: "{spool}"}}}}
"#,
        brokers = brokers(),
        spool = std::env::temp_dir().join(unique("spool")).display(),
    );
    let cfg = tollgate_proxy::ProxyConfig::from_yaml(&yaml, "test").unwrap();
    cfg.validate().unwrap();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_and_key_created_on_proxy_a_serve_on_proxy_b_within_a_second() {
    let mock = MockServer::start("127.0.0.1:0".parse().unwrap(), MockConfig::default())
        .await
        .unwrap();
    let topic = unique("admin_t");
    create_topic(&topic).await;
    let prefix = unique("tg_admin");
    let a = tollgate_proxy::start(config(&mock.base_url(), &topic, &prefix))
        .await
        .unwrap();
    let b = tollgate_proxy::start(config(&mock.base_url(), &topic, &prefix))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let admin = format!("http://{}/admin/v1", a.admin_addr().unwrap());

    let resp = http
        .post(format!("{admin}/models"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"name": "new-model", "base_url": format!("{}/v1", mock.base_url()), "pricing": {"input_per_mtok": 1.0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let resp = http
        .post(format!("{admin}/keys"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"id": "k-new", "account_id": "acct-new", "allowed_models": ["new-model"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created = Instant::now();
    let secret = resp.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string();

    // Poll proxy B until the new key and model serve.
    let url_b = format!("{}/v1/chat/completions", b.base_url());
    let body = json!({"model": "new-model", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]});
    let served_after = loop {
        let resp = http
            .post(&url_b)
            .bearer_auth(&secret)
            .json(&body)
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            break created.elapsed();
        }
        assert!(
            created.elapsed() < Duration::from_secs(5),
            "proxy B never served the new model"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("admin change on proxy A served by proxy B after {served_after:?}");
    assert!(
        served_after <= Duration::from_secs(1),
        "took {served_after:?}"
    );

    // Disabling the key on A stops it on B as well.
    let resp = http
        .put(format!("{admin}/keys/k-new"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"id": "k-new", "account_id": "acct-new", "allowed_models": ["new-model"], "enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let disabled = Instant::now();
    loop {
        let resp = http
            .post(&url_b)
            .bearer_auth(&secret)
            .json(&body)
            .send()
            .await
            .unwrap();
        if resp.status() == 401 {
            break;
        }
        assert!(
            disabled.elapsed() < Duration::from_secs(1),
            "disable not seen by proxy B within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}
