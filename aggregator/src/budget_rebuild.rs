//! Rebuilding counters from ClickHouse: a budget window's spend, or a prepaid account's debited
//! usage and top-ups.
//!
//! The recount sums the stored `usage_events` rows of the window and scope and notes, per
//! partition, the highest offset it covered. The rebuild script replaces the counter with it
//! unless the counter already counted a later offset (a batch stored after the query); then
//! the query runs again. Batches stored after the query but not yet counted are counted later
//! on top of the recount, once. So a rebuild is safe while aggregators run.

use std::time::Duration;

use tollgate_schemas::budgets::ledger;
use tollgate_schemas::budgets::{scripts, Budget, CreditAccount, Unit, Window};
use tollgate_schemas::redis_keys;
use tollgate_schemas::telemetry::BUDGET_REBUILDS;

use crate::budget::{run_pipe, Budgets, CREDIT_REBUILD, REBUILD};

/// Attempts before a rebuild gives up for this round.
const ATTEMPTS: usize = 5;

/// Why a rebuild failed.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// ClickHouse failed.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] crate::budget::RedisFailure),
}

/// A recount: total and the highest offset covered per partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recount {
    /// Sum over the rows.
    pub total: i64,
    /// `(partition, highest offset)`.
    pub offsets: Vec<(i32, i64)>,
}

async fn query(
    b: &Budgets,
    sql: &str,
    bind: impl FnOnce(clickhouse::query::Query) -> clickhouse::query::Query,
) -> Result<Recount, clickhouse::error::Error> {
    let q = bind(b.inner.db.query(sql).bind(&b.inner.topic));
    let rows: Vec<(i32, i64, i64)> = crate::budget::clickhouse_bounded(q.fetch_all()).await?;
    Ok(Recount {
        total: rows.iter().map(|r| r.2).sum(),
        offsets: rows.iter().map(|r| (r.0, r.1)).collect(),
    })
}

/// The stored spend of `budget` in `window`.
pub async fn recount_budget(
    b: &Budgets,
    budget: &Budget,
    window: &Window,
) -> Result<Recount, clickhouse::error::Error> {
    let amount = match budget.unit() {
        Unit::Usd => "cost_nanos",
        Unit::Tokens => "prompt_tokens + completion_tokens",
    };
    let scope = budget
        .scope
        .column()
        .map_or(String::new(), |c| format!(" AND {c} = ?"));
    let sql = format!(
        "SELECT kafka_partition, max(kafka_offset), sum({amount}) FROM usage_events \
         WHERE kafka_topic = ? AND ts >= toDateTime(?) AND ts < toDateTime(?){scope} \
         GROUP BY kafka_partition"
    );
    let (lo, hi) = (window.start_secs(), window.end_secs());
    let has_scope = budget.scope.column().is_some();
    query(b, &sql, |q| {
        let q = q.bind(lo).bind(hi);
        if has_scope {
            q.bind(budget.scope_id.as_str())
        } else {
            q
        }
    })
    .await
}

/// The stored usage of a prepaid account since its start.
pub async fn recount_credit(
    b: &Budgets,
    account: &CreditAccount,
) -> Result<Recount, clickhouse::error::Error> {
    let since = u32::try_from(account.since().max(0) / 1000).unwrap_or(u32::MAX);
    query(
        b,
        "SELECT kafka_partition, max(kafka_offset), sum(cost_nanos) FROM usage_events \
         WHERE kafka_topic = ? AND account_id = ? AND ts >= toDateTime(?) \
         GROUP BY kafka_partition",
        |q| q.bind(account.id.as_str()).bind(since),
    )
    .await
}

/// Rebuild one budget window's counter (`key`). Returns the new value, or None when every
/// attempt found the recount stale.
pub async fn rebuild_budget(
    b: &Budgets,
    budget: &Budget,
    window: &Window,
    key: &str,
) -> Result<Option<i64>, RebuildError> {
    for attempt in 0..ATTEMPTS {
        let recount = match recount_budget(b, budget, window).await {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!(BUDGET_REBUILDS, "result" => "error").increment(1);
                tracing::warn!(budget = %budget.id, error = %e, "cannot recount budget from ClickHouse");
                return Err(e.into());
            }
        };
        let mut inv = REBUILD.key(key);
        inv.arg(scripts::VALUE_FIELD)
            .arg(recount.total)
            .arg(Budget::counter_expiry_ms(window));
        for (p, o) in &recount.offsets {
            inv.arg(*p).arg(*o);
        }
        let mut pipe = redis::pipe();
        pipe.invoke_script(&inv);
        let (done,): (i64,) = run_pipe(&b.inner.conn, &pipe).await?;
        if done == 1 {
            metrics::counter!(BUDGET_REBUILDS, "result" => "done").increment(1);
            tracing::info!(budget = %budget.id, window = %window.label, value = recount.total, "budget counter built from ClickHouse");
            return Ok(Some(recount.total));
        }
        metrics::counter!(BUDGET_REBUILDS, "result" => "stale").increment(1);
        tokio::time::sleep(Duration::from_millis(50 * (attempt as u64 + 1))).await;
    }
    Ok(None)
}

/// Rebuild a prepaid account's balance (usage and ledger payments). False when every attempt
/// found the recount stale.
pub async fn rebuild_credit(b: &Budgets, account: &CreditAccount) -> Result<bool, RebuildError> {
    let key = redis_keys::credit_balance(b.prefix(), &account.id);
    for attempt in 0..ATTEMPTS {
        let fetched = async {
            let usage = recount_credit(b, account).await?;
            let entries =
                crate::budget::clickhouse_bounded(ledger::entries(&b.inner.db, &account.id))
                    .await?;
            Ok::<_, clickhouse::error::Error>((usage, entries))
        };
        let (usage, entries) = match fetched.await {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!(BUDGET_REBUILDS, "result" => "error").increment(1);
                tracing::warn!(account = %account.id, error = %e, "cannot recount credits from ClickHouse");
                return Err(e.into());
            }
        };
        let mut inv = CREDIT_REBUILD.key(&key);
        inv.arg(usage.total).arg(account.since()).arg(entries.len());
        for e in &entries {
            inv.arg(&e.entry_id).arg(e.amount_nanos);
        }
        for (p, o) in &usage.offsets {
            inv.arg(*p).arg(*o);
        }
        let mut pipe = redis::pipe();
        pipe.invoke_script(&inv);
        let (done,): (i64,) = run_pipe(&b.inner.conn, &pipe).await?;
        if done == 1 {
            metrics::counter!(BUDGET_REBUILDS, "result" => "done").increment(1);
            tracing::info!(account = %account.id, used = usage.total, payments = entries.len(), "credit balance built from ClickHouse");
            return Ok(true);
        }
        metrics::counter!(BUDGET_REBUILDS, "result" => "stale").increment(1);
        tokio::time::sleep(Duration::from_millis(50 * (attempt as u64 + 1))).await;
    }
    Ok(false)
}

/// One line of [`rebuild_all`]'s report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rebuilt {
    /// `budget` or `credits`.
    pub kind: &'static str,
    /// Budget id or account id.
    pub id: String,
    /// Window label (budgets).
    pub window: String,
    /// Counter value before (spend, or debited usage).
    pub before: i64,
    /// Recounted value.
    pub after: i64,
    /// Whether the counter was replaced (false: dry run, or stale every time).
    pub written: bool,
}

/// Recount every enabled budget's current window and every prepaid account; replace the
/// counters unless `dry_run`.
pub async fn rebuild_all(b: &Budgets, dry_run: bool) -> Result<Vec<Rebuilt>, RebuildError> {
    b.reload().await?;
    let loaded = b.loaded();
    let now = crate::budget::now_ms();
    let mut out = Vec::new();
    let mut conn = b.inner.conn.clone();
    for budget in loaded.budgets.iter().filter(|x| x.enabled) {
        let w = Window::of(budget.period, now);
        let key = budget.counter_key(b.prefix(), &w);
        let before: Option<i64> = redis::cmd("HGET")
            .arg(&key)
            .arg(scripts::VALUE_FIELD)
            .query_async(&mut conn)
            .await
            .map_err(crate::budget::RedisFailure::from)?;
        let (after, written) = if dry_run {
            (recount_budget(b, budget, &w).await?.total, false)
        } else {
            match rebuild_budget(b, budget, &w, &key).await? {
                Some(v) => (v, true),
                None => (recount_budget(b, budget, &w).await?.total, false),
            }
        };
        out.push(Rebuilt {
            kind: "budget",
            id: budget.id.clone(),
            window: w.label,
            before: before.unwrap_or(0),
            after,
            written,
        });
    }
    for account in loaded.credits.values() {
        let key = redis_keys::credit_balance(b.prefix(), &account.id);
        let before: Option<i64> = redis::cmd("HGET")
            .arg(&key)
            .arg(scripts::USED_FIELD)
            .query_async(&mut conn)
            .await
            .map_err(crate::budget::RedisFailure::from)?;
        let after = recount_credit(b, account).await?.total;
        let written = !dry_run && rebuild_credit(b, account).await?;
        out.push(Rebuilt {
            kind: "credits",
            id: account.id.clone(),
            window: "total".into(),
            before: before.unwrap_or(0),
            after,
            written,
        });
    }
    Ok(out)
}
