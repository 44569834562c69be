//! Prepaid balances for the admin API: read a balance, apply an admin top-up (ledger row in
//! ClickHouse first, then the balance in Redis, idempotent on the entry id), clear decisions
//! of deleted budgets and credit accounts.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use tollgate_schemas::budgets::ledger::{self, LedgerEntry};
use tollgate_schemas::budgets::{scripts, CreditAccount, Decision};
use tollgate_schemas::redis_keys;

use super::config::ClickHouseSettings;
use crate::redis_conn::{ConnSettings, RedisConn, RedisTarget};

static CREDIT: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::CREDIT));
static DECIDE: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::DECIDE));

const TIMEOUT: Duration = Duration::from_secs(5);

/// A failed balance operation.
#[derive(Debug, thiserror::Error)]
pub enum CreditError {
    /// Redis failed or did not answer.
    #[error("the budget store is unavailable: {0}")]
    Redis(String),
    /// ClickHouse failed.
    #[error("the ledger (ClickHouse) is unavailable: {0}")]
    Ledger(String),
    /// No ClickHouse is configured (`budgets.clickhouse`).
    #[error("no ledger configured: set budgets.clickhouse in the proxy config")]
    NoLedger,
}

/// A balance, nano-USD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Balance {
    /// Sum of top-ups.
    pub topups_nanos: i64,
    /// Usage debited.
    pub used_nanos: i64,
    /// `topups - used`.
    pub balance_nanos: i64,
}

impl Balance {
    fn of(topup: i64, used: i64) -> Self {
        Self {
            topups_nanos: topup,
            used_nanos: used,
            balance_nanos: topup - used,
        }
    }
}

/// What a top-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topup {
    /// Credited now.
    Applied(Balance),
    /// This entry id was credited before; nothing changed.
    Duplicate(Balance),
}

/// Redis (balances, decisions) and ClickHouse (ledger) of the admin API.
#[derive(Clone)]
pub struct Credits {
    conn: RedisConn,
    prefix: String,
    db: Option<clickhouse::Client>,
}

impl std::fmt::Debug for Credits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credits")
            .field("prefix", &self.prefix)
            .field("ledger", &self.db.is_some())
            .finish()
    }
}

async fn bounded<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, CreditError> {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(r) => r.map_err(|e| CreditError::Redis(e.to_string())),
        Err(_) => Err(CreditError::Redis("timed out".into())),
    }
}

/// A ClickHouse client set up like the aggregator's (18.16 and modern servers).
pub fn clickhouse_client(cfg: &ClickHouseSettings) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_password(cfg.password.as_ref().map_or("", |p| p.expose()))
        .with_compression(clickhouse::Compression::None)
        .with_validation(false)
        .with_database(&cfg.database)
}

impl Credits {
    /// Connect lazily to `url` (a Redis Cluster when `cluster` is set or `url` lists several
    /// nodes) under `prefix`; the ledger lives in `clickhouse` (if any).
    pub fn new(
        url: &str,
        prefix: &str,
        cluster: bool,
        clickhouse: Option<&ClickHouseSettings>,
    ) -> Result<Self, super::GateStartError> {
        let target = RedisTarget::parse(url, cluster)?;
        let conn = target.connect(ConnSettings {
            connect_timeout: Duration::from_secs(1),
            response_timeout: TIMEOUT,
        })?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            db: clickhouse.map(clickhouse_client),
        })
    }

    /// Key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The ledger database, when configured.
    pub fn db(&self) -> Result<&clickhouse::Client, CreditError> {
        self.db.as_ref().ok_or(CreditError::NoLedger)
    }

    /// A connection for other reads.
    pub fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    /// The account's balance now.
    pub async fn balance(&self, account_id: &str) -> Result<Balance, CreditError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("HMGET")
            .arg(redis_keys::credit_balance(&self.prefix, account_id))
            .arg(scripts::TOPUP_FIELD)
            .arg(scripts::USED_FIELD)
            .clone();
        let (topup, used): (Option<i64>, Option<i64>) = bounded(cmd.query_async(&mut conn)).await?;
        Ok(Balance::of(topup.unwrap_or(0), used.unwrap_or(0)))
    }

    /// Credit `entry.amount_nanos` to the account once per `entry.entry_id`: the ledger row
    /// first, then the balance (which also lifts a block at zero and notifies proxies).
    pub async fn topup(
        &self,
        account: &CreditAccount,
        entry: &LedgerEntry,
    ) -> Result<Topup, CreditError> {
        let key = redis_keys::credit_balance(&self.prefix, &account.id);
        let mut conn = self.conn.clone();
        let seen: bool = bounded(
            redis::cmd("HEXISTS")
                .arg(&key)
                .arg(format!("p:{}", entry.entry_id))
                .query_async(&mut conn),
        )
        .await?;
        if seen {
            return Ok(Topup::Duplicate(self.balance(&account.id).await?));
        }
        ledger::insert(self.db()?, entry)
            .await
            .map_err(|e| CreditError::Ledger(e.to_string()))?;
        let scope = tollgate_schemas::budgets::entities::scope_ref(
            tollgate_schemas::budgets::Scope::Account,
            &account.id,
        );
        let mut inv = CREDIT.key(&key);
        inv.key(redis_keys::budget_decisions(&self.prefix, &scope))
            .arg("topup")
            .arg(if account.block_at_zero { "1" } else { "0" })
            .arg(Decision::credits(&account.id).to_json())
            .arg(redis_keys::budget_notices(&self.prefix))
            .arg(&scope)
            .arg(&entry.entry_id)
            .arg(entry.amount_nanos);
        let (_applied, topup, used, _): (i64, i64, i64, i64) =
            bounded(inv.invoke_async(&mut conn)).await?;
        let balance = Balance::of(topup, used);
        // Not seen before this call's ledger row: if the script found the entry applied, a
        // credit rebuild (an aggregator recounting the account from the ledger) read that row
        // first and applied it for this call. Either way it is counted once.
        Ok(Topup::Applied(balance))
    }

    /// Clear the decision `field` of a scope (after a delete) and notify proxies.
    pub async fn clear_decision(&self, scope: &str, field: &str) -> Result<(), CreditError> {
        let mut conn = self.conn.clone();
        let mut inv = DECIDE.key(redis_keys::budget_decisions(&self.prefix, scope));
        inv.arg(field)
            .arg("")
            .arg(0)
            .arg(redis_keys::budget_notices(&self.prefix))
            .arg(scope);
        let _: i64 = bounded(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// A budget's counter fields `(spent, reserved)` in a window.
    pub async fn counter(&self, key: &str) -> Result<(i64, i64), CreditError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("HMGET")
            .arg(key)
            .arg(scripts::VALUE_FIELD)
            .arg(scripts::RESERVED_FIELD)
            .clone();
        let (v, r): (Option<i64>, Option<i64>) = bounded(cmd.query_async(&mut conn)).await?;
        Ok((v.unwrap_or(0), r.unwrap_or(0)))
    }

    /// The decision field `field` of a scope, if set.
    pub async fn decision(
        &self,
        scope: &str,
        field: &str,
    ) -> Result<Option<Decision>, CreditError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("HGET")
            .arg(redis_keys::budget_decisions(&self.prefix, scope))
            .arg(field)
            .clone();
        let json: Option<String> = bounded(cmd.query_async(&mut conn)).await?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }
}
