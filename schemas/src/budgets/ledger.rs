//! The `credit_ledger` table (migration 0006) and the queries both the proxy's admin API and
//! the aggregator run on it. Every read groups by `entry_id`, so an entry inserted twice (a
//! retried top-up) counts once.

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Account credited.
    pub account_id: String,
    /// Payment id (webhook) or admin entry id; unique per account.
    pub entry_id: String,
    /// When, Unix seconds.
    pub ts: u32,
    /// When, Unix ms.
    pub ts_ms: i64,
    /// `topup` or `adjustment`.
    pub kind: String,
    /// `webhook` or `admin`.
    pub source: String,
    /// Amount, nano-USD (negative for a correction).
    pub amount_nanos: i64,
    /// Free text (payment reference, note).
    pub reference: String,
}

impl LedgerEntry {
    /// An entry at `ts_ms`.
    pub fn new(
        account_id: &str,
        entry_id: &str,
        ts_ms: i64,
        kind: &str,
        source: &str,
        amount_nanos: i64,
        reference: &str,
    ) -> Self {
        Self {
            account_id: account_id.to_string(),
            entry_id: entry_id.to_string(),
            ts: u32::try_from(ts_ms.max(0) / 1000).unwrap_or(u32::MAX),
            ts_ms,
            kind: kind.to_string(),
            source: source.to_string(),
            amount_nanos,
            reference: reference.to_string(),
        }
    }
}

/// Insert one entry.
pub async fn insert(db: &Client, entry: &LedgerEntry) -> Result<(), clickhouse::error::Error> {
    let mut insert = db.insert::<LedgerEntry>("credit_ledger").await?;
    insert.write(entry).await?;
    insert.end().await
}

/// Every entry of an account (one per entry id), oldest first.
pub async fn entries(
    db: &Client,
    account_id: &str,
) -> Result<Vec<LedgerEntry>, clickhouse::error::Error> {
    db.query(
        "SELECT account_id, entry_id, min(ts), min(ts_ms), any(kind), any(source), \
         any(amount_nanos), any(reference) FROM credit_ledger WHERE account_id = ? \
         GROUP BY account_id, entry_id ORDER BY min(ts_ms), entry_id",
    )
    .bind(account_id)
    .fetch_all::<LedgerEntry>()
    .await
}
