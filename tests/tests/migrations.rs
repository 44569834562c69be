//! Migrations apply on the real ClickHouse server and are idempotent.

use tollgate_schemas::migrate::{self, MIGRATIONS};

#[tokio::test]
async fn migrations_apply_once_and_rerun_as_no_op() {
    let db = tollgate_e2e::unique("tg_migrate");
    let ch = tollgate_e2e::clickhouse();
    let first = migrate::run(&ch, &db).await.unwrap();
    assert_eq!(
        first,
        MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>()
    );
    let second = migrate::run(&ch, &db).await.unwrap();
    assert!(second.is_empty());
    let tables: Vec<String> = ch
        .with_database(&db)
        .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
        .bind(&db)
        .fetch_all()
        .await
        .unwrap();
    assert!(tables.contains(&"usage_events".to_string()), "{tables:?}");
    assert!(tables.contains(&"schema_migrations".to_string()));
}
