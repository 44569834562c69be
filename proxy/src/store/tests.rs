//! Store behaviour that needs no Redis: the memory backend, paging and standalone sync.

use std::time::Duration;

use super::*;
use crate::config::ProxyConfig;

fn account(id: &str) -> Account {
    serde_json::from_value(serde_json::json!({ "id": id, "name": format!("n-{id}") })).unwrap()
}

const YAML: &str = r#"
models:
  - name: m1
    base_url: http://127.0.0.1:9/v1
api_keys:
  - { id: k1, secret: sk-file-key-0001, account_id: a1 }
accounts:
  - { id: a1, name: first }
kafka: { brokers: "127.0.0.1:9" }
"#;

#[tokio::test]
async fn memory_crud_and_paging() {
    let store = ConfigStore::Memory(MemoryStore::new());
    for i in (0..7).rev() {
        store.create(&account(&format!("acc{i}"))).await.unwrap();
    }
    assert!(matches!(
        store.create(&account("acc3")).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list::<Account>(3, after.as_deref()).await.unwrap();
        seen.extend(page.data.iter().map(|a| a.id.clone()));
        if !page.has_more {
            assert!(page.next_after.is_none());
            break;
        }
        after = page.next_after;
    }
    assert_eq!(seen, (0..7).map(|i| format!("acc{i}")).collect::<Vec<_>>());
    let mut a = account("acc2");
    a.name = "renamed".into();
    let v = store.replace(&a).await.unwrap();
    assert_eq!(v, 8);
    assert_eq!(
        store.get::<Account>("acc2").await.unwrap().unwrap().name,
        "renamed"
    );
    store.delete::<Account>("acc2").await.unwrap();
    assert!(matches!(
        store.delete::<Account>("acc2").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.replace(&account("nope")).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.version().await.unwrap(), 9);
}

#[tokio::test]
async fn standalone_control_plane_serves_the_file_and_rebuilds_on_writes() {
    let cfg = ProxyConfig::from_yaml(YAML, "t").unwrap();
    cfg.validate().unwrap();
    let control = ControlPlane::start(&cfg).await.unwrap();
    let mut rx = control.catalog();
    let cat = control.current();
    assert_eq!(cat.version, 0);
    assert!(cat.model("m1").is_some());
    assert_eq!(cat.key_for_secret("sk-file-key-0001").unwrap().id, "k1");
    // The plaintext file secret is never stored.
    let raw = control.store().raw_snapshot().await.unwrap();
    assert!(!raw.keys["k1"].contains("sk-file-key-0001"));

    let mut m: Model = control.store().get("m1").await.unwrap().unwrap();
    m.name = "m2".into();
    control.store().create(&m).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|c| c.model("m2").is_some()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(control.current().version, 1);
    control.shutdown().await;
}

#[tokio::test]
async fn unusable_redis_url_fails_start() {
    let mut cfg = ProxyConfig::from_yaml(YAML, "t").unwrap();
    cfg.redis = Some(crate::config::RedisConfig {
        url: "redis://[::1".into(),
        prefix: "t".into(),
        resync_ms: 1000,
        cluster: false,
    });
    assert!(matches!(
        ControlPlane::start(&cfg).await,
        Err(StoreError::Config(_))
    ));
}
