//! Numbered ClickHouse migrations and a small runner.
//!
//! Migrations live in `schemas/migrations/clickhouse/NNNN_name.sql` and are compiled in. Each
//! file holds one or more statements separated by a `;` at the end of a line; every statement
//! must be idempotent (`IF NOT EXISTS`) so a migration interrupted half-way can simply run
//! again. Applied versions are recorded in `schema_migrations`. The SQL never names a
//! database: the runner creates the configured one and runs everything inside it, which lets
//! tests use a database of their own.
//!
//! With a ClickHouse cluster (`clickhouse.cluster: NAME` in the aggregator config) the runner
//! rewrites every statement ([`cluster_statement`]): DDL gets `ON CLUSTER NAME`, MergeTree-family
//! engines become their `Replicated*` forms (ZooKeeper path
//! `/clickhouse/tables/{shard}/{database}/TABLE`, replica `{replica}` from each server's macros),
//! `usage_events` becomes the per-shard table `usage_events_local` behind a
//! `Distributed(NAME, database, usage_events_local, rand())` table named `usage_events` (so
//! writers and readers keep using `usage_events`), and the rollup materialized views read
//! `usage_events_local` (each shard rolls up the rows it stores).

use clickhouse::Client;

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Number from the file name; applied in increasing order.
    pub version: u32,
    /// File stem after the number.
    pub name: &'static str,
    /// The SQL text.
    pub sql: &'static str,
}

/// All migrations, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "usage_events",
        sql: include_str!("../migrations/clickhouse/0001_usage_events.sql"),
    },
    Migration {
        version: 2,
        name: "dead_letters",
        sql: include_str!("../migrations/clickhouse/0002_dead_letters.sql"),
    },
    Migration {
        version: 3,
        name: "usage_rollups",
        sql: include_str!("../migrations/clickhouse/0003_usage_rollups.sql"),
    },
    Migration {
        version: 4,
        name: "usage_sequence_health",
        sql: include_str!("../migrations/clickhouse/0004_usage_sequence_health.sql"),
    },
    Migration {
        version: 5,
        name: "budget_alerts",
        sql: include_str!("../migrations/clickhouse/0005_budget_alerts.sql"),
    },
    Migration {
        version: 6,
        name: "credit_ledger",
        sql: include_str!("../migrations/clickhouse/0006_credit_ledger.sql"),
    },
    Migration {
        version: 7,
        name: "usage_offsets",
        sql: include_str!("../migrations/clickhouse/0007_usage_offsets.sql"),
    },
];

/// Failure while migrating.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A statement failed; names the migration so the operator knows where to look.
    #[error("migration {version:04}_{name} failed: {source}")]
    Statement {
        /// Migration number.
        version: u32,
        /// Migration name.
        name: &'static str,
        /// The ClickHouse error.
        source: clickhouse::error::Error,
    },
    /// Bookkeeping (creating the database or `schema_migrations`) failed.
    #[error("cannot prepare ClickHouse database `{database}`: {source}")]
    Prepare {
        /// Target database.
        database: String,
        /// The ClickHouse error.
        source: clickhouse::error::Error,
    },
}

/// Split a migration file into statements: a statement ends at a line whose last non-blank
/// character is `;`. Comment-only lines (`--`) are dropped.
pub fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || trimmed.is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            let stmt = current.trim().trim_end_matches(';').trim().to_string();
            if !stmt.is_empty() {
                out.push(stmt);
            }
            current.clear();
        }
    }
    let rest = current.trim();
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

/// The table behind the `usage_events` Distributed table on a cluster.
pub const USAGE_EVENTS_LOCAL: &str = "usage_events_local";

/// `ENGINE = X(args)` of the MergeTree family → its replicated form.
const ENGINES: [&str; 5] = [
    "MergeTree",
    "AggregatingMergeTree",
    "ReplacingMergeTree",
    "SummingMergeTree",
    "CollapsingMergeTree",
];

/// The name after `CREATE [MATERIALIZED ]VIEW|TABLE|DATABASE IF NOT EXISTS`, with the byte
/// range where `ON CLUSTER` goes (right after the name).
fn created_name(stmt: &str) -> Option<(&str, usize)> {
    let marker = "IF NOT EXISTS ";
    let start = stmt.find(marker)? + marker.len();
    if !stmt[..start].trim_start().starts_with("CREATE") {
        return None;
    }
    let rest = &stmt[start..];
    let len = rest
        .find(|c: char| c.is_whitespace() || c == '(')
        .unwrap_or(rest.len());
    Some((&rest[..len], start + len))
}

/// Rewrite one migration statement for a cluster named `cluster` (see the module docs).
/// Returns one or two statements (`usage_events` also gets its Distributed table).
pub fn cluster_statement(stmt: &str, cluster: &str, database: &str) -> Vec<String> {
    let Some((name, at)) = created_name(stmt) else {
        return vec![stmt.to_string()];
    };
    let name = name.to_string();
    let local = if name == "usage_events" {
        USAGE_EVENTS_LOCAL.to_string()
    } else {
        name.clone()
    };
    let mut out = format!(
        "{}{local} ON CLUSTER {cluster}{}",
        &stmt[..at - name.len()],
        &stmt[at..]
    );
    // Replicated engines.
    if let Some(e) = out.find("ENGINE = ") {
        let after = e + "ENGINE = ".len();
        let engine_end = out[after..].find('(').map(|i| after + i);
        if let Some(open) = engine_end {
            let engine = out[after..open].trim().to_string();
            if ENGINES.contains(&engine.as_str()) {
                let close = out[open..].find(')').map_or(open + 1, |i| open + i);
                let args = out[open + 1..close].trim().to_string();
                let path =
                    format!("'/clickhouse/tables/{{shard}}/{database}/{local}', '{{replica}}'");
                let all = if args.is_empty() {
                    path
                } else {
                    format!("{path}, {args}")
                };
                out = format!(
                    "{}Replicated{engine}({all}){}",
                    &out[..after],
                    &out[close + 1..]
                );
            }
        }
    }
    // Rollups read the rows each shard stores.
    if stmt.trim_start().starts_with("CREATE MATERIALIZED VIEW") {
        out = out.replace(
            "FROM usage_events\n",
            &format!("FROM {USAGE_EVENTS_LOCAL}\n"),
        );
        if out.trim_end().ends_with("FROM usage_events") {
            let head = out.trim_end().trim_end_matches("usage_events").to_string();
            out = format!("{head}{USAGE_EVENTS_LOCAL}");
        }
    }
    let mut stmts = vec![out];
    if name == "usage_events" {
        stmts.push(format!(
            "CREATE TABLE IF NOT EXISTS usage_events ON CLUSTER {cluster} AS {USAGE_EVENTS_LOCAL}\n\
             ENGINE = Distributed({cluster}, {database}, {USAGE_EVENTS_LOCAL}, rand())"
        ));
    }
    stmts
}

/// The statements of `m` for a single server (`cluster: None`) or a cluster.
pub fn migration_statements(m: &Migration, cluster: Option<&str>, database: &str) -> Vec<String> {
    let stmts = statements(m.sql);
    match cluster {
        None => stmts,
        Some(c) => stmts
            .iter()
            .flat_map(|s| cluster_statement(s, c, database))
            .collect(),
    }
}

/// Create `database` if needed and apply every migration not yet recorded in it.
/// Returns the versions applied by this call.
pub async fn run(server: &Client, database: &str) -> Result<Vec<u32>, MigrateError> {
    run_on(server, database, None).await
}

/// Like [`run`]; with `cluster: Some(NAME)` every DDL runs `ON CLUSTER NAME` with replicated
/// engines and a Distributed `usage_events` (see the module docs). Needs ZooKeeper/Keeper and
/// the `{shard}`/`{replica}` macros on every server.
pub async fn run_on(
    server: &Client,
    database: &str,
    cluster: Option<&str>,
) -> Result<Vec<u32>, MigrateError> {
    let prepare = |source| MigrateError::Prepare {
        database: database.to_string(),
        source,
    };
    let on_cluster = cluster
        .map(|c| format!(" ON CLUSTER {c}"))
        .unwrap_or_default();
    server
        .query(&format!(
            "CREATE DATABASE IF NOT EXISTS `{database}`{on_cluster}"
        ))
        .execute()
        .await
        .map_err(prepare)?;
    let db = server.clone().with_database(database);
    let bookkeeping = "CREATE TABLE IF NOT EXISTS schema_migrations \
         (version UInt32, name String, applied_at DateTime DEFAULT now()) \
         ENGINE = MergeTree() ORDER BY version";
    let bookkeeping = match cluster {
        Some(c) => cluster_statement(bookkeeping, c, database).concat(),
        None => bookkeeping.to_string(),
    };
    db.query(&bookkeeping).execute().await.map_err(prepare)?;
    let applied: Vec<u32> = db
        .query("SELECT version FROM schema_migrations")
        .fetch_all::<u32>()
        .await
        .map_err(prepare)?;

    let mut done = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        let fail = |source| MigrateError::Statement {
            version: m.version,
            name: m.name,
            source,
        };
        for stmt in migration_statements(m, cluster, database) {
            db.query(&stmt).execute().await.map_err(fail)?;
        }
        db.query("INSERT INTO schema_migrations (version, name) VALUES (?, ?)")
            .bind(m.version)
            .bind(m.name)
            .execute()
            .await
            .map_err(fail)?;
        tracing::info!(
            version = m.version,
            name = m.name,
            database,
            "applied migration"
        );
        done.push(m.version);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_and_drops_comments() {
        let sql =
            "-- c\nCREATE TABLE a (x UInt8)\nENGINE = Memory;\n\nCREATE VIEW b AS SELECT 1;\n";
        assert_eq!(
            statements(sql),
            vec![
                "CREATE TABLE a (x UInt8)\nENGINE = Memory".to_string(),
                "CREATE VIEW b AS SELECT 1".to_string()
            ]
        );
    }

    #[test]
    fn cluster_rewrite_replicates_and_distributes_usage_events() {
        let m = &MIGRATIONS[0];
        let s = migration_statements(m, Some("tg"), "db1");
        assert_eq!(s.len(), 2);
        assert!(s[0].starts_with("CREATE TABLE IF NOT EXISTS usage_events_local ON CLUSTER tg\n("));
        assert!(s[0].contains(
            "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/db1/usage_events_local', '{replica}')\n"
        ));
        assert!(s[1].contains("usage_events ON CLUSTER tg AS usage_events_local"));
        assert!(s[1].ends_with("ENGINE = Distributed(tg, db1, usage_events_local, rand())"));
    }

    #[test]
    fn cluster_rewrite_keeps_engine_arguments_and_points_views_at_local_rows() {
        let s = cluster_statement(
            "CREATE TABLE IF NOT EXISTS t\n(v UInt64)\nENGINE = ReplacingMergeTree(v)\nORDER BY v",
            "c",
            "d",
        );
        assert_eq!(
            s,
            vec!["CREATE TABLE IF NOT EXISTS t ON CLUSTER c\n(v UInt64)\nENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/d/t', '{replica}', v)\nORDER BY v"]
        );
        let mv = cluster_statement(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS mv TO r AS\nSELECT 1 AS x\nFROM usage_events\nGROUP BY x",
            "c",
            "d",
        );
        assert_eq!(
            mv,
            vec!["CREATE MATERIALIZED VIEW IF NOT EXISTS mv ON CLUSTER c TO r AS\nSELECT 1 AS x\nFROM usage_events_local\nGROUP BY x"]
        );
        assert_eq!(cluster_statement("SELECT 1", "c", "d"), vec!["SELECT 1"]);
    }

    #[test]
    fn every_migration_rewrites_for_a_cluster() {
        for m in MIGRATIONS {
            for s in migration_statements(m, Some("c"), "d") {
                if s.starts_with("CREATE") {
                    assert!(s.contains(" ON CLUSTER c"), "{s}");
                }
                if s.contains("MergeTree") {
                    assert!(s.contains("Replicated"), "{s}");
                }
            }
        }
    }

    #[test]
    fn versions_increase_and_files_have_statements() {
        let mut last = 0;
        for m in MIGRATIONS {
            assert!(m.version > last, "migration numbers must increase");
            last = m.version;
            assert!(!statements(m.sql).is_empty(), "{} is empty", m.name);
        }
    }
}
