//! Checks that ClickHouse holds exactly one usage row per successful request
//! of a run (requests are tagged with `metadata.run_id`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Where the usage rows live and how long to wait for them.
#[derive(Clone, Debug)]
pub struct VerifyConfig {
    /// ClickHouse HTTP URL, e.g. `http://127.0.0.1:8123`.
    pub clickhouse_url: String,
    /// Database holding `usage_events`.
    pub database: String,
    /// User (`default` when empty).
    pub user: String,
    /// Password.
    pub password: String,
    /// Give up waiting for missing rows after this long.
    pub deadline: Duration,
    /// Once every row is there, wait this long and count again to catch
    /// late duplicates.
    pub settle: Duration,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            clickhouse_url: "http://127.0.0.1:8123".to_owned(),
            database: "tollgate".to_owned(),
            user: String::new(),
            password: String::new(),
            deadline: Duration::from_secs(120),
            settle: Duration::from_secs(2),
        }
    }
}

/// Row counts of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowCounts {
    /// Rows with the run id.
    pub rows: u64,
    /// Distinct `request_id`s among them.
    pub requests: u64,
    /// Distinct `request_id`s of successful (2xx) rows.
    pub ok_requests: u64,
}

/// Outcome of [`verify_run`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// The run id.
    pub run_id: String,
    /// Successful requests the load generator saw (warm-up included).
    pub expected: u64,
    /// What ClickHouse held at the end.
    pub counts: RowCounts,
    /// Successful requests without a row: `expected - ok_requests` (≥ 0).
    pub lost: u64,
    /// Rows beyond one per request: `rows - requests`.
    pub duplicated: u64,
    /// Successful rows beyond `expected` (e.g. the client timed out on a
    /// request the proxy completed).
    pub extra: u64,
    /// Seconds spent waiting.
    pub waited_secs: f64,
}

impl Verification {
    /// Builds the verdict from counts.
    pub fn new(run_id: &str, expected: u64, counts: RowCounts, waited: Duration) -> Self {
        Self {
            run_id: run_id.to_owned(),
            expected,
            counts,
            lost: expected.saturating_sub(counts.ok_requests),
            duplicated: counts.rows.saturating_sub(counts.requests),
            extra: counts.ok_requests.saturating_sub(expected),
            waited_secs: waited.as_secs_f64(),
        }
    }

    /// Exactly one row per successful request.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0
    }
}

/// Whether `s` is non-empty and made of letters, digits and `extra`.
fn made_of(s: &str, extra: &[char]) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(&c))
}

/// `database`, checked to be a plain identifier (quoted into SQL as is).
fn database_name(database: &str) -> anyhow::Result<&str> {
    if !made_of(database, &[]) {
        bail!("database name {database:?} must be made of letters, digits and '_'");
    }
    Ok(database)
}

/// The counting query (runs on ClickHouse 18.16 and current releases).
pub fn count_sql(database: &str, run_id: &str) -> anyhow::Result<String> {
    if !made_of(run_id, &['-', '.', ':']) {
        bail!("run id {run_id:?} must be made of letters, digits, '_', '-', '.', ':'");
    }
    let database = database_name(database)?;
    Ok(format!(
        "SELECT count(), uniqExact(request_id), \
         uniqExactIf(request_id, status_code >= 200 AND status_code < 300) \
         FROM `{database}`.usage_events \
         WHERE has(metadata_keys, 'run_id') \
         AND metadata_values[indexOf(metadata_keys, 'run_id')] = '{run_id}' \
         FORMAT TabSeparated"
    ))
}

/// Parses the tab-separated answer of [`count_sql`].
pub fn parse_counts(text: &str) -> anyhow::Result<RowCounts> {
    let nums: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("unexpected ClickHouse answer {text:?}"))?;
    match nums[..] {
        [rows, requests, ok_requests] => Ok(RowCounts {
            rows,
            requests,
            ok_requests,
        }),
        _ => bail!("unexpected ClickHouse answer {text:?}"),
    }
}

/// Runs `sql` on the ClickHouse of `cfg` over HTTP; returns the answer's text.
async fn run_sql(
    client: &reqwest::Client,
    cfg: &VerifyConfig,
    sql: String,
) -> anyhow::Result<String> {
    let mut req = client.post(&cfg.clickhouse_url).body(sql);
    if !cfg.user.is_empty() {
        req = req
            .header("X-ClickHouse-User", &cfg.user)
            .header("X-ClickHouse-Key", &cfg.password);
    }
    let resp = req.send().await.context("querying ClickHouse")?;
    let status = resp.status();
    let text = resp.text().await.context("reading the ClickHouse answer")?;
    if !status.is_success() {
        bail!("ClickHouse answered {status}: {}", text.trim());
    }
    Ok(text)
}

/// Counts the rows of `run_id` once.
pub async fn count_rows(
    client: &reqwest::Client,
    cfg: &VerifyConfig,
    run_id: &str,
) -> anyhow::Result<RowCounts> {
    parse_counts(&run_sql(client, cfg, count_sql(&cfg.database, run_id)?).await?)
}

/// Drops the database of `cfg` with everything in it (nothing when it does not exist), so
/// that a benchmark's aggregator starts on empty tables.
pub async fn drop_database(cfg: &VerifyConfig) -> anyhow::Result<()> {
    let sql = format!(
        "DROP DATABASE IF EXISTS `{}`",
        database_name(&cfg.database)?
    );
    run_sql(&reqwest::Client::new(), cfg, sql).await.map(drop)
}

/// Waits until ClickHouse holds a successful row for each of the `expected`
/// requests of `run_id` (or the deadline passes), lets late rows settle and
/// reports lost and duplicated rows.
pub async fn verify_run(
    cfg: &VerifyConfig,
    run_id: &str,
    expected: u64,
) -> anyhow::Result<Verification> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?;
    let start = Instant::now();
    let mut counts = count_rows(&client, cfg, run_id).await?;
    while counts.ok_requests < expected && start.elapsed() < cfg.deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        counts = count_rows(&client, cfg, run_id).await?;
    }
    let waited = start.elapsed();
    if !cfg.settle.is_zero() {
        tokio::time::sleep(cfg.settle).await;
        counts = count_rows(&client, cfg, run_id).await?;
    }
    Ok(Verification::new(run_id, expected, counts, waited))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn builds_safe_sql() {
        let sql = count_sql("tollgate_bench", "bench-20250101-1").unwrap();
        assert!(sql.contains("`tollgate_bench`.usage_events"), "{sql}");
        assert!(sql.contains("= 'bench-20250101-1'"), "{sql}");
        assert!(count_sql("db", "x' OR 1=1 --").is_err());
        assert!(count_sql("db; DROP", "r").is_err());
        assert!(count_sql("db", "").is_err());
        assert!(count_sql("", "r").is_err());
        assert!(count_sql("a-b", "r").is_err());
    }

    #[test]
    fn parses_and_judges() {
        assert_eq!(
            parse_counts("10\t9\t8\n").unwrap(),
            RowCounts {
                rows: 10,
                requests: 9,
                ok_requests: 8
            }
        );
        assert!(parse_counts("1\t2\n").is_err());
        assert!(parse_counts("Code: 60. DB::Exception").is_err());

        let v = Verification::new("r", 10, parse_counts("11\t10\t9").unwrap(), Duration::ZERO);
        assert_eq!((v.lost, v.duplicated, v.extra), (1, 1, 0));
        assert!(!v.passed());
        let v = Verification::new("r", 10, parse_counts("12\t12\t12").unwrap(), Duration::ZERO);
        assert_eq!((v.lost, v.duplicated, v.extra), (0, 0, 2));
        assert!(v.passed());
    }
}
