//! Per-account credit statements as CSV: opening balance, top-ups, usage by day and model,
//! closing balance, all from ClickHouse (the ledger and `usage_events`).
//!
//! Columns: `section,date,model,entry_id,description,requests,prompt_tokens,completion_tokens,amount_nanos,amount_usd`.
//! Sections: `opening_balance`, `topup` (one row per ledger entry), `usage` (one row per day
//! and model, negative amounts), `total_topups`, `total_usage`, `closing_balance`. Usage
//! debits the balance from the credit account's `since_ms` on (whole seconds).

use clickhouse::Row;
use serde::Deserialize;
use tollgate_schemas::budgets::ledger::{self, LedgerEntry};
use tollgate_schemas::budgets::nanos_to_usd_string;
use tollgate_schemas::budgets::window::date_string;

/// The period of a statement, Unix ms `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// Start (inclusive).
    pub from_ms: i64,
    /// End (exclusive).
    pub to_ms: i64,
}

#[derive(Debug, Row, Deserialize)]
struct UsageLine {
    day: String,
    model: String,
    requests: u64,
    prompt_tokens: i64,
    completion_tokens: i64,
    cost_nanos: i64,
}

/// Usage of `account_id` with `ts` in `[from_s, to_s)` by day and model.
async fn usage(
    db: &clickhouse::Client,
    account_id: &str,
    from_s: u32,
    to_s: u32,
) -> Result<Vec<UsageLine>, clickhouse::error::Error> {
    db.query(
        "SELECT toString(toDate(ts)) AS day, model, count() AS requests, \
         sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens, \
         sum(cost_nanos) AS cost_nanos FROM usage_events \
         WHERE account_id = ? AND ts >= toDateTime(?) AND ts < toDateTime(?) \
         GROUP BY day, model ORDER BY day, model",
    )
    .bind(account_id)
    .bind(from_s)
    .bind(to_s)
    .fetch_all::<UsageLine>()
    .await
}

async fn usage_total(
    db: &clickhouse::Client,
    account_id: &str,
    from_s: u32,
    to_s: u32,
) -> Result<i64, clickhouse::error::Error> {
    if from_s >= to_s {
        return Ok(0);
    }
    db.query(
        "SELECT sum(cost_nanos) FROM usage_events WHERE account_id = ? \
         AND ts >= toDateTime(?) AND ts < toDateTime(?)",
    )
    .bind(account_id)
    .bind(from_s)
    .bind(to_s)
    .fetch_one::<i64>()
    .await
}

fn secs(ms: i64) -> u32 {
    u32::try_from(ms.max(0) / 1000).unwrap_or(u32::MAX)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

struct Csv(String);

impl Csv {
    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        section: &str,
        date: &str,
        model: &str,
        entry_id: &str,
        description: &str,
        counts: Option<(u64, i64, i64)>,
        amount: i64,
    ) {
        let (r, p, c) = counts.map_or(
            (String::new(), String::new(), String::new()),
            |(r, p, c)| (r.to_string(), p.to_string(), c.to_string()),
        );
        let fields = [
            section.to_string(),
            date.to_string(),
            csv_field(model),
            csv_field(entry_id),
            csv_field(description),
            r,
            p,
            c,
            amount.to_string(),
            nanos_to_usd_string(amount),
        ];
        self.0.push_str(&fields.join(","));
        self.0.push('\n');
    }
}

/// The CSV statement of `account_id` (usage debited from `since_ms`) over `period`.
pub async fn render(
    db: &clickhouse::Client,
    account_id: &str,
    since_ms: i64,
    period: Period,
) -> Result<String, clickhouse::error::Error> {
    let since_s = secs(since_ms);
    let from_s = secs(period.from_ms).max(since_s);
    let to_s = secs(period.to_ms);
    let entries: Vec<LedgerEntry> = ledger::entries(db, account_id).await?;
    let before: i64 = entries
        .iter()
        .filter(|e| e.ts_ms < period.from_ms)
        .map(|e| e.amount_nanos)
        .sum();
    let used_before = usage_total(db, account_id, since_s, from_s.min(to_s)).await?;
    let lines = if from_s < to_s {
        usage(db, account_id, from_s, to_s).await?
    } else {
        Vec::new()
    };
    let opening = before - used_before;
    let mut csv = Csv(String::from(
        "section,date,model,entry_id,description,requests,prompt_tokens,completion_tokens,amount_nanos,amount_usd\n",
    ));
    csv.row(
        "opening_balance",
        &date_string(period.from_ms),
        "",
        "",
        &format!("balance of account {account_id}"),
        None,
        opening,
    );
    let mut topups = 0;
    for e in entries
        .iter()
        .filter(|e| e.ts_ms >= period.from_ms && e.ts_ms < period.to_ms)
    {
        topups += e.amount_nanos;
        let description = if e.reference.is_empty() {
            format!("{} ({})", e.kind, e.source)
        } else {
            format!("{} ({}): {}", e.kind, e.source, e.reference)
        };
        csv.row(
            "topup",
            &date_string(e.ts_ms),
            "",
            &e.entry_id,
            &description,
            None,
            e.amount_nanos,
        );
    }
    let mut used = 0;
    let (mut requests, mut prompt, mut completion) = (0u64, 0i64, 0i64);
    for l in &lines {
        used += l.cost_nanos;
        requests += l.requests;
        prompt += l.prompt_tokens;
        completion += l.completion_tokens;
        csv.row(
            "usage",
            &l.day,
            &l.model,
            "",
            "usage",
            Some((l.requests, l.prompt_tokens, l.completion_tokens)),
            -l.cost_nanos,
        );
    }
    let to_date = date_string(period.to_ms);
    csv.row("total_topups", &to_date, "", "", "", None, topups);
    csv.row(
        "total_usage",
        &to_date,
        "",
        "",
        "",
        Some((requests, prompt, completion)),
        -used,
    );
    csv.row(
        "closing_balance",
        &to_date,
        "",
        "",
        &format!("balance of account {account_id}"),
        None,
        opening + topups - used,
    );
    Ok(csv.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        let mut c = Csv(String::new());
        c.row(
            "usage",
            "2024-05-01",
            "m",
            "",
            "usage",
            Some((2, 10, 20)),
            -1_500,
        );
        assert_eq!(
            c.0,
            "usage,2024-05-01,m,,usage,2,10,20,-1500,-0.000001500\n"
        );
    }
}
