//! Prepaid top-ups from the payment webhook: the ledger row in ClickHouse first, then the
//! balance in Redis (the credit script lifts a block at zero and notifies proxies in the same
//! call). Idempotent on the payment id: a payment already credited changes nothing.

use tollgate_schemas::budgets::ledger::{self, LedgerEntry};
use tollgate_schemas::budgets::{scripts, CreditAccount};
use tollgate_schemas::redis_keys;

use crate::budget::{credit_call, run_pipe, Budgets, RedisFailure};

/// Why a top-up failed (the caller answers 503 so the payment provider retries).
#[derive(Debug, thiserror::Error)]
pub enum TopupError {
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] RedisFailure),
    /// The ledger insert failed.
    #[error("ledger: {0}")]
    Ledger(#[from] clickhouse::error::Error),
}

/// What a top-up did, with the balance after it (nano-USD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topup {
    /// Credited now.
    Applied {
        /// Balance after.
        balance_nanos: i64,
    },
    /// Credited before (same payment id); nothing changed.
    Duplicate {
        /// Balance now.
        balance_nanos: i64,
    },
}

impl Budgets {
    /// The credit account `id`, if it exists (from the last loaded config; reloads once when
    /// unknown, so an account created a moment ago is found).
    pub async fn credit_account(&self, id: &str) -> Result<Option<CreditAccount>, RedisFailure> {
        if let Some(c) = self.loaded().credits.get(id) {
            return Ok(Some(c.clone()));
        }
        self.reload().await?;
        Ok(self.loaded().credits.get(id).cloned())
    }

    /// Credit `entry` to `account` once per `entry.entry_id`.
    pub async fn topup(
        &self,
        account: &CreditAccount,
        entry: &LedgerEntry,
    ) -> Result<Topup, TopupError> {
        let key = redis_keys::credit_balance(self.prefix(), &account.id);
        let mut pipe = redis::pipe();
        pipe.cmd("HEXISTS")
            .arg(&key)
            .arg(format!("p:{}", entry.entry_id))
            .cmd("HMGET")
            .arg(&key)
            .arg(scripts::TOPUP_FIELD)
            .arg(scripts::USED_FIELD);
        let (seen, (topup, used)): (bool, (Option<i64>, Option<i64>)) =
            run_pipe(&self.inner.conn, &pipe).await?;
        if seen {
            return Ok(Topup::Duplicate {
                balance_nanos: topup.unwrap_or(0) - used.unwrap_or(0),
            });
        }
        crate::budget::clickhouse_bounded(ledger::insert(&self.inner.db, entry)).await?;
        let mut inv = credit_call(self.prefix(), account, "topup");
        inv.arg(&entry.entry_id).arg(entry.amount_nanos);
        let mut pipe = redis::pipe();
        pipe.invoke_script(&inv);
        let ((_applied, topup, used, _changed),): ((i64, i64, i64, i64),) =
            run_pipe(&self.inner.conn, &pipe).await?;
        let balance_nanos = topup - used;
        // Not seen before this call's ledger row: if the script found the entry applied, a
        // credit rebuild read that row first and applied it for this call. Counted once
        // either way.
        Ok(Topup::Applied { balance_nanos })
    }
}
