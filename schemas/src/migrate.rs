//! Numbered ClickHouse migrations and a small runner.
//!
//! Migrations live in `schemas/migrations/clickhouse/NNNN_name.sql` and are compiled in. Each
//! file holds one or more statements separated by a `;` at the end of a line; every statement
//! must be idempotent (`IF NOT EXISTS`) so a migration interrupted half-way can simply run
//! again. Applied versions are recorded in `schema_migrations`. The SQL never names a
//! database: the runner creates the configured one and runs everything inside it, which lets
//! tests use a database of their own.

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

/// Create `database` if needed and apply every migration not yet recorded in it.
/// Returns the versions applied by this call.
pub async fn run(server: &Client, database: &str) -> Result<Vec<u32>, MigrateError> {
    let prepare = |source| MigrateError::Prepare {
        database: database.to_string(),
        source,
    };
    server
        .query(&format!("CREATE DATABASE IF NOT EXISTS `{database}`"))
        .execute()
        .await
        .map_err(prepare)?;
    let db = server.clone().with_database(database);
    db.query(
        "CREATE TABLE IF NOT EXISTS schema_migrations \
         (version UInt32, name String, applied_at DateTime DEFAULT now()) \
         ENGINE = MergeTree() ORDER BY version",
    )
    .execute()
    .await
    .map_err(prepare)?;
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
        for stmt in statements(m.sql) {
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
    fn versions_increase_and_files_have_statements() {
        let mut last = 0;
        for m in MIGRATIONS {
            assert!(m.version > last, "migration numbers must increase");
            last = m.version;
            assert!(!statements(m.sql).is_empty(), "{} is empty", m.name);
        }
    }
}
