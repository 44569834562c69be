//! `make bench` starts each run on an empty ClickHouse database (plan `fresh_database`):
//! `tollgate_loadtest::verify::drop_database` against the local ClickHouse.

#![allow(clippy::expect_used)]
use tollgate_e2e::{clickhouse, clickhouse_url, unique};
use tollgate_loadtest::verify::{drop_database, VerifyConfig};

async fn databases_named(name: &str) -> u64 {
    clickhouse()
        .query("SELECT count() FROM system.databases WHERE name = ?")
        .bind(name)
        .fetch_one::<u64>()
        .await
        .expect("listing databases")
}

#[tokio::test]
async fn drops_the_benchmark_database_with_its_rows() {
    let db = unique("bench_fresh");
    let ch = clickhouse();
    ch.query(&format!("CREATE DATABASE {db}"))
        .execute()
        .await
        .expect("create database");
    ch.query(&format!(
        "CREATE TABLE {db}.usage_events (x UInt64) ENGINE = MergeTree() ORDER BY x"
    ))
    .execute()
    .await
    .expect("create table");
    ch.query(&format!("INSERT INTO {db}.usage_events VALUES (1), (2)"))
        .execute()
        .await
        .expect("insert");
    assert_eq!(databases_named(&db).await, 1);

    let cfg = VerifyConfig {
        clickhouse_url: clickhouse_url(),
        database: db.clone(),
        ..VerifyConfig::default()
    };
    drop_database(&cfg).await.expect("drop");
    assert_eq!(databases_named(&db).await, 0);
    // A database that is not there is fine (the first run on a machine).
    drop_database(&cfg).await.expect("drop again");

    // Names are quoted into SQL as they are: anything but an identifier is refused.
    let bad = VerifyConfig {
        database: format!("{db}` ; DROP DATABASE default; --"),
        ..cfg.clone()
    };
    let err = drop_database(&bad).await.expect_err("bad name");
    assert!(err.to_string().contains("must be made of letters"), "{err}");

    // A ClickHouse error comes back with its text.
    let down = VerifyConfig {
        clickhouse_url: format!("{}/?query=SELEC", clickhouse_url()),
        ..cfg
    };
    assert!(drop_database(&down).await.is_err());
}
