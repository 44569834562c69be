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

#[tokio::test]
async fn stored_offsets_are_read_from_the_offsets_table_and_the_dead_letters() {
    use tollgate_aggregator::config::ClickHouseConfig;
    use tollgate_aggregator::sink::ClickHouseSink;

    let db = tollgate_e2e::unique("tg_offsets");
    let ch = tollgate_e2e::clickhouse();
    migrate::run(&ch, &db).await.unwrap();
    let ch = ch.with_database(&db);
    let sink = |topic: &str| {
        ClickHouseSink::new(
            &ClickHouseConfig {
                url: tollgate_e2e::clickhouse_url(),
                database: db.clone(),
                ..Default::default()
            },
            topic,
        )
    };
    let t = sink("t");
    assert_eq!(
        t.max_stored_offset(1).await.unwrap(),
        None,
        "nothing stored"
    );
    // Two inserts (two parts of the offsets table until they merge).
    for values in [
        "('t', 1, 5), ('t', 1, 9), ('t', 2, 3)",
        "('t', 1, 7), ('u', 1, 40)",
    ] {
        ch.query(&format!(
            "INSERT INTO usage_events (kafka_topic, kafka_partition, kafka_offset) VALUES {values}"
        ))
        .execute()
        .await
        .unwrap();
    }
    assert_eq!(t.max_stored_offset(1).await.unwrap(), Some(9));
    assert_eq!(t.max_stored_offset(2).await.unwrap(), Some(3));
    assert_eq!(sink("u").max_stored_offset(1).await.unwrap(), Some(40));
    // A dead letter above every usage row.
    ch.query(
        "INSERT INTO usage_dead_letters (kafka_topic, kafka_partition, kafka_offset) \
         VALUES ('t', 2, 11)",
    )
    .execute()
    .await
    .unwrap();
    assert_eq!(t.max_stored_offset(2).await.unwrap(), Some(11));
    assert_eq!(t.max_stored_offset(3).await.unwrap(), None);
}
