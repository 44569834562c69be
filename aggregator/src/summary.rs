//! Usage summary per model, read from ClickHouse (used by `make demo` and operators).

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

/// One line of the summary.
#[derive(Debug, Clone, Row, Deserialize, Serialize, PartialEq)]
pub struct ModelSummary {
    /// Public model name.
    pub model: String,
    /// Requests.
    pub requests: u64,
    /// Requests answered with status >= 400.
    pub errors: u64,
    /// Streamed requests.
    pub streams: u64,
    /// Input tokens.
    pub prompt_tokens: i64,
    /// Output tokens.
    pub completion_tokens: i64,
    /// Cost, nano-USD.
    pub cost_nanos: i64,
    /// Median latency, microseconds.
    pub latency_p50_us: i64,
    /// 99th percentile latency, microseconds.
    pub latency_p99_us: i64,
    /// Median time to first token of streams, microseconds.
    pub ttft_p50_us: i64,
    /// 99th percentile time to first token of streams, microseconds.
    pub ttft_p99_us: i64,
}

/// SQL of the summary (`aggregator/sql/summary.sql`); `{filter}` is replaced by the run
/// filter. Runs on 18.16 and 23+.
pub const SUMMARY_SQL: &str = include_str!("../sql/summary.sql");

/// Summarise `usage_events` per model; `run_id` limits it to requests whose metadata
/// carries `run_id` with that value.
pub async fn summarize(
    db: &Client,
    run_id: Option<&str>,
) -> Result<Vec<ModelSummary>, clickhouse::error::Error> {
    match run_id {
        Some(run) => {
            let sql = SUMMARY_SQL.replace(
                "{filter}",
                "WHERE has(metadata_keys, 'run_id') AND metadata_values[indexOf(metadata_keys, 'run_id')] = ?",
            );
            db.query(&sql).bind(run).fetch_all().await
        }
        None => {
            db.query(&SUMMARY_SQL.replace("{filter}", ""))
                .fetch_all()
                .await
        }
    }
}

fn ms(us: i64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// Human-readable table.
pub fn to_table(rows: &[ModelSummary]) -> String {
    let mut out = format!(
        "{:<20} {:>9} {:>7} {:>8} {:>12} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9}\n",
        "model",
        "requests",
        "errors",
        "streams",
        "prompt_tok",
        "compl_tok",
        "cost_usd",
        "p50_ms",
        "p99_ms",
        "ttft_p50",
        "ttft_p99"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<20} {:>9} {:>7} {:>8} {:>12} {:>12} {:>12.6} {:>9} {:>9} {:>9} {:>9}\n",
            r.model,
            r.requests,
            r.errors,
            r.streams,
            r.prompt_tokens,
            r.completion_tokens,
            r.cost_nanos as f64 / 1e9,
            ms(r.latency_p50_us),
            ms(r.latency_p99_us),
            ms(r.ttft_p50_us),
            ms(r.ttft_p99_us)
        ));
    }
    let total: u64 = rows.iter().map(|r| r.requests).sum();
    let cost: i64 = rows.iter().map(|r| r.cost_nanos).sum();
    out.push_str(&format!(
        "{:<20} {:>9} requests, {:.6} USD\n",
        "TOTAL",
        total,
        cost as f64 / 1e9
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_totals() {
        let row = ModelSummary {
            model: "m".into(),
            requests: 3,
            errors: 0,
            streams: 1,
            prompt_tokens: 30,
            completion_tokens: 48,
            cost_nanos: 1_500_000,
            latency_p50_us: 1500,
            latency_p99_us: 2500,
            ttft_p50_us: 700,
            ttft_p99_us: 900,
        };
        let t = to_table(&[row]);
        assert!(t.contains("TOTAL"));
        assert!(t.contains("0.001500"));
        assert!(t.contains("1.50"));
    }
}
