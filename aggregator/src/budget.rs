//! Budgets and prepaid credits in the aggregator (see `docs/budgets.md`).
//!
//! - [`Budgets::apply`] runs after every stored batch, before its offset commit: it adds the
//!   batch's spend to the counter of every matching budget window and debits prepaid accounts,
//!   one Lua call per counter key (all in one round trip). Each counter remembers the last
//!   offset counted per partition, so a replayed batch (after a crash or a rebalance) is not
//!   counted twice. Hard budgets at their limit get a block decision at once.
//! - [`Budgets::run`] (every `eval_interval_ms`) reloads budgets and credit accounts, builds
//!   missing counters from ClickHouse ([`crate::budget_rebuild`]), re-asserts decisions and
//!   records threshold alerts ([`crate::budget_eval`]).
//! - A failed counter call never holds up ingestion: it is logged and counted, and every
//!   current counter is rebuilt from ClickHouse once Redis answers again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::Duration;

use redis::Script;
use tokio::sync::mpsc;
use tollgate_schemas::budgets::entities::scope_ref;
use tollgate_schemas::budgets::{scripts, Budget, CreditAccount, Decision, Scope, Window};
use tollgate_schemas::redis_conn::{ConnSettings, RedisConn, RedisTarget, TargetError};
use tollgate_schemas::redis_keys::{self, ConfigKind};
use tollgate_schemas::telemetry::BUDGET_REDIS_ERRORS;

use crate::budget_config::BudgetsConfig;
use crate::budget_eval::{AlertJob, Evaluator};
use crate::buffer::{Body, Msg};

pub(crate) static APPLY: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::APPLY));
pub(crate) static REBUILD: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::REBUILD));
pub(crate) static DECIDE: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::DECIDE));
pub(crate) static CREDIT: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::CREDIT));
pub(crate) static CREDIT_REBUILD: LazyLock<Script> =
    LazyLock::new(|| Script::new(scripts::CREDIT_REBUILD));

/// Longest wait for one Redis call.
pub(crate) const REDIS_TIMEOUT: Duration = Duration::from_secs(3);

/// Failure to set budgets up.
#[derive(Debug, thiserror::Error)]
pub enum BudgetsError {
    /// The connection settings were refused.
    #[error("budgets: unusable redis settings: {0}")]
    Redis(#[from] redis::RedisError),
    /// `budgets.redis_url` is not usable.
    #[error("budgets: {0}")]
    Target(#[from] TargetError),
}

/// A failed Redis call.
#[derive(Debug, thiserror::Error)]
pub enum RedisFailure {
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// The budgets and credit accounts of the config store at one version.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Config version they were read at.
    pub version: u64,
    /// Every budget (enabled or not), by id order.
    pub budgets: Vec<Budget>,
    /// Credit accounts by account id.
    pub credits: HashMap<String, CreditAccount>,
}

/// One counted event of a stored batch.
#[derive(Debug, Clone, Copy)]
pub struct Spend<'a> {
    /// Kafka offset.
    pub offset: i64,
    /// Request start, Unix seconds (as in `usage_events.ts`).
    pub ts: u32,
    /// Event id (drops the request's reservation).
    pub event_id: &'a str,
    /// API key id.
    pub key: &'a str,
    /// Team id.
    pub team: &'a str,
    /// Account id.
    pub account: &'a str,
    /// Public model.
    pub model: &'a str,
    /// Cost, nano-USD.
    pub cost_nanos: i64,
    /// Prompt + completion tokens.
    pub tokens: i64,
}

/// Shared state.
pub(crate) struct Inner {
    pub(crate) conn: RedisConn,
    pub(crate) target: RedisTarget,
    pub(crate) prefix: String,
    pub(crate) topic: String,
    pub(crate) db: clickhouse::Client,
    pub(crate) cfg: BudgetsConfig,
    pub(crate) loaded: RwLock<Arc<Loaded>>,
    /// Counters may have missed batches (a Redis failure): rebuild every current one.
    pub(crate) dirty: AtomicBool,
    /// Decision this instance last wrote per (budget id, window label): `None` = cleared.
    pub(crate) decided: Mutex<HashMap<(String, String), Option<String>>>,
    pub(crate) alerts: mpsc::Sender<AlertJob>,
}

/// Budgets and credits of one aggregator (cheap to clone).
#[derive(Clone)]
pub struct Budgets {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets")
            .field("prefix", &self.inner.prefix)
            .field("topic", &self.inner.topic)
            .finish()
    }
}

/// Run a pipeline of script calls (one sub-pipeline per hash slot on a Redis Cluster),
/// loading the budget scripts once if Redis lost them (every budget script is safe to repeat).
pub(crate) async fn run_pipe<T: redis::FromRedisValue>(
    conn: &RedisConn,
    pipe: &redis::Pipeline,
) -> Result<T, RedisFailure> {
    let scripts = [&*APPLY, &*REBUILD, &*DECIDE, &*CREDIT, &*CREDIT_REBUILD];
    let call = conn.run_pipeline(pipe, &scripts);
    match tokio::time::timeout(REDIS_TIMEOUT, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(RedisFailure::Timeout(REDIS_TIMEOUT)),
    }
}

/// Longest wait for one ClickHouse call of budgets and credits (alert rows, recounts, ledger
/// entries): a hung server must not freeze the evaluator or a payment webhook.
pub(crate) const CLICKHOUSE_TIMEOUT: Duration = Duration::from_secs(30);

/// `call`, failing with `TimedOut` after [`CLICKHOUSE_TIMEOUT`].
pub(crate) async fn clickhouse_bounded<T>(
    call: impl std::future::Future<Output = Result<T, clickhouse::error::Error>>,
) -> Result<T, clickhouse::error::Error> {
    tokio::time::timeout(CLICKHOUSE_TIMEOUT, call)
        .await
        .unwrap_or(Err(clickhouse::error::Error::TimedOut))
}

/// Now, Unix ms.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A counter that a batch adds to.
struct Group {
    budget: usize,
    window: Window,
    with_ids: bool,
    items: Vec<(i64, i64, String)>,
}

impl Budgets {
    /// Budgets on `cfg.redis_url` (None when it is unset; a Redis Cluster when
    /// `cfg.redis_cluster` is set or the URL lists several nodes), counting events of `topic` stored
    /// in `db` (a client bound to the aggregator's database). Returns the handle and the
    /// background evaluator (spawn [`Evaluator::run`]).
    pub fn new(
        cfg: &BudgetsConfig,
        topic: &str,
        db: clickhouse::Client,
    ) -> Result<Option<(Self, Evaluator)>, BudgetsError> {
        let Some(url) = &cfg.redis_url else {
            return Ok(None);
        };
        let target = RedisTarget::parse(url, cfg.redis_cluster)?;
        let conn = target.connect(ConnSettings {
            connect_timeout: Duration::from_secs(1),
            response_timeout: REDIS_TIMEOUT,
        })?;
        let (tx, rx) = mpsc::channel(10_000);
        let budgets = Self {
            inner: Arc::new(Inner {
                conn,
                target,
                prefix: cfg.prefix.clone(),
                topic: topic.to_string(),
                db,
                cfg: cfg.clone(),
                loaded: RwLock::new(Arc::new(Loaded::default())),
                dirty: AtomicBool::new(false),
                decided: Mutex::new(HashMap::new()),
                alerts: tx,
            }),
        };
        let evaluator = Evaluator::new(budgets.clone(), rx);
        Ok(Some((budgets, evaluator)))
    }

    /// The budgets and credit accounts in use.
    pub fn loaded(&self) -> Arc<Loaded> {
        self.inner
            .loaded
            .read()
            .map(|l| Arc::clone(&l))
            .unwrap_or_default()
    }

    /// Read budgets and credit accounts from the config store (when its version moved).
    /// Returns the previous set when something changed.
    pub async fn reload(&self) -> Result<Option<Arc<Loaded>>, RedisFailure> {
        let p = &self.inner.prefix;
        let pipe = redis::pipe()
            .atomic()
            .get(redis_keys::version(p))
            .hgetall(redis_keys::entities(p, ConfigKind::Budgets))
            .hgetall(redis_keys::entities(p, ConfigKind::CreditAccounts))
            .clone();
        type Raw = (
            Option<u64>,
            HashMap<String, String>,
            HashMap<String, String>,
        );
        let (version, budgets, credits): Raw = run_pipe(&self.inner.conn, &pipe).await?;
        let version = version.unwrap_or(0);
        let current = self.loaded();
        let mut next = Loaded {
            version,
            budgets: decode_all::<Budget>(&budgets, |b| b.validate().is_ok(), |b| &b.id),
            credits: decode_all::<CreditAccount>(&credits, |c| c.validate().is_ok(), |c| &c.id)
                .into_iter()
                .map(|c| (c.id.clone(), c))
                .collect(),
        };
        next.budgets.sort_by(|a, b| a.id.cmp(&b.id));
        let same = current.version == version
            && current.budgets == next.budgets
            && current.credits == next.credits;
        if same && version != 0 {
            return Ok(None);
        }
        if let Ok(mut l) = self.inner.loaded.write() {
            *l = Arc::new(next);
        }
        tracing::info!(
            version,
            budgets = budgets.len(),
            credit_accounts = credits.len(),
            "budgets loaded"
        );
        Ok(Some(current))
    }

    /// Count the events of a stored batch (`msgs` of `partition`, minus the indices in
    /// `uncounted`: events the write did not store in `usage_events`).
    pub async fn apply(&self, partition: i32, msgs: &[Msg], uncounted: &[usize]) {
        let skip: HashSet<usize> = uncounted.iter().copied().collect();
        let items: Vec<Spend<'_>> = msgs
            .iter()
            .enumerate()
            .filter(|(i, _)| !skip.contains(i))
            .filter_map(|(_, m)| match &m.body {
                Body::Event(row) => Some(Spend {
                    offset: m.offset,
                    ts: row.ts(),
                    event_id: row.event_id(),
                    key: row.api_key_id(),
                    team: row.team_id(),
                    account: row.account_id(),
                    model: row.model(),
                    cost_nanos: row.cost_nanos(),
                    tokens: row.total_tokens(),
                }),
                Body::Poison { .. } => None,
            })
            .collect();
        self.apply_spend(partition, &items).await;
    }

    /// Count `items` (one partition) on every matching budget and prepaid account.
    pub async fn apply_spend(&self, partition: i32, items: &[Spend<'_>]) {
        let loaded = self.loaded();
        if items.is_empty() || (loaded.budgets.is_empty() && loaded.credits.is_empty()) {
            return;
        }
        let p = &self.inner.prefix;
        let mut groups: HashMap<String, Group> = HashMap::new();
        let mut debits: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
        for it in items {
            let ts_ms = i64::from(it.ts) * 1000;
            for (i, b) in loaded.budgets.iter().enumerate() {
                if !b.enabled || !b.matches(it.key, it.team, it.account, it.model) {
                    continue;
                }
                let amount = b.amount(it.cost_nanos, it.tokens);
                if amount == 0 {
                    continue;
                }
                let window = Window::of(b.period, ts_ms);
                let key = b.counter_key(p, &window);
                let with_ids = b.reserve_above_pct.is_some();
                let g = groups.entry(key).or_insert_with(|| Group {
                    budget: i,
                    window,
                    with_ids,
                    items: Vec::new(),
                });
                let eid = if with_ids { it.event_id } else { "" };
                g.items.push((it.offset, amount, eid.to_string()));
            }
            if let Some(c) = loaded.credits.get(it.account) {
                if ts_ms >= c.since() / 1000 * 1000 && it.cost_nanos != 0 {
                    debits
                        .entry(c.id.as_str())
                        .or_default()
                        .push((it.offset, it.cost_nanos));
                }
            }
        }
        if groups.is_empty() && debits.is_empty() {
            return;
        }
        let keys: Vec<(&String, &Group)> = groups.iter().collect();
        let mut pipe = redis::pipe();
        for (key, g) in &keys {
            let mut inv = APPLY.key(key.as_str());
            inv.arg(partition)
                .arg(scripts::VALUE_FIELD)
                .arg(Budget::counter_expiry_ms(&g.window))
                .arg(if g.with_ids { "1" } else { "0" });
            for (offset, amount, eid) in &g.items {
                inv.arg(*offset).arg(*amount);
                if g.with_ids {
                    inv.arg(eid.as_str());
                }
            }
            pipe.invoke_script(&inv);
        }
        let accounts: Vec<(&&str, &Vec<(i64, i64)>)> = debits.iter().collect();
        for (account, list) in &accounts {
            let Some(c) = loaded.credits.get(**account) else {
                continue;
            };
            let mut inv = credit_call(p, c, "apply");
            inv.arg(partition);
            for (offset, amount) in *list {
                inv.arg(*offset).arg(*amount);
            }
            pipe.invoke_script(&inv);
        }
        let replies: Vec<redis::Value> = match run_pipe(&self.inner.conn, &pipe).await {
            Ok(r) => r,
            Err(e) => {
                self.failed("apply", &e);
                return;
            }
        };
        let now = now_ms();
        let mut current = Vec::new();
        for ((_, g), reply) in keys.iter().zip(&replies) {
            let Ok((_applied, value)) = redis::from_redis_value_ref::<(i64, i64)>(reply) else {
                continue;
            };
            if g.window.contains(now) {
                current.push((g.budget, g.window.clone(), value));
            }
        }
        if !current.is_empty() {
            let jobs: Vec<(Budget, Window, i64)> = current
                .into_iter()
                .filter_map(|(i, w, v)| loaded.budgets.get(i).map(|b| (b.clone(), w, v)))
                .collect();
            if let Err(e) = self.decide_many(&jobs, false).await {
                self.failed("decide", &e);
            }
            for (b, w, v) in jobs {
                if crate::budget_eval::crossed(&b, v) {
                    // A shortcut only: every evaluation round checks each budget's thresholds
                    // again, so a job that does not fit the bounded queue delays its alert by
                    // at most `eval_interval_ms` and loses nothing.
                    let _ = self.inner.alerts.try_send(AlertJob {
                        budget: b,
                        window: w,
                        spent: v,
                    });
                }
            }
        }
    }

    /// Record a failed Redis call. A failed counter update (`apply`) makes every current
    /// counter be rebuilt from ClickHouse once Redis answers; other calls are retried by the
    /// next evaluation.
    pub(crate) fn failed(&self, op: &'static str, e: &RedisFailure) {
        metrics::counter!(BUDGET_REDIS_ERRORS, "op" => op).increment(1);
        if op != "apply" {
            tracing::warn!(error = %e, op, "budget store call failed; retried at the next evaluation");
        } else if !self.inner.dirty.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, op, "budget counters not updated; they will be rebuilt from ClickHouse when Redis answers");
        }
    }

    /// Set or clear the decision of each `(budget, window, spend)`, skipping those this
    /// instance already wrote unless `force`.
    pub(crate) async fn decide_many(
        &self,
        jobs: &[(Budget, Window, i64)],
        force: bool,
    ) -> Result<(), RedisFailure> {
        let p = &self.inner.prefix;
        let mut calls = Vec::new();
        let now = now_ms();
        {
            let decided = self
                .inner
                .decided
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (b, w, v) in jobs {
                let wanted = crate::budget_eval::wanted(b, w, *v, now)
                    .map(|kind| b.decision(p, w, kind).to_json());
                let id = (b.id.clone(), w.label.clone());
                if !force && decided.get(&id) == Some(&wanted) {
                    continue;
                }
                calls.push((b, w, wanted, id));
            }
        }
        if calls.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (b, w, wanted, _) in &calls {
            let scope = b.scope_ref();
            let mut inv = DECIDE.key(redis_keys::budget_decisions(p, &scope));
            inv.arg(&b.id)
                .arg(wanted.as_deref().unwrap_or(""))
                .arg(w.end_ms.unwrap_or(0))
                .arg(redis_keys::budget_notices(p))
                .arg(&scope);
            pipe.invoke_script(&inv);
        }
        let changed: Vec<i64> = run_pipe(&self.inner.conn, &pipe).await?;
        let mut decided = self
            .inner
            .decided
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((b, w, wanted, id), c) in calls.into_iter().zip(changed) {
            if c == 1 {
                let kind = wanted
                    .as_deref()
                    .and_then(|j| serde_json::from_str::<Decision>(j).ok())
                    .map_or("clear", |d| match d.kind {
                        tollgate_schemas::budgets::DecisionKind::Block => "block",
                        tollgate_schemas::budgets::DecisionKind::Reserve => "reserve",
                    });
                metrics::counter!(tollgate_schemas::telemetry::BUDGET_DECISIONS, "kind" => kind)
                    .increment(1);
                tracing::info!(budget = %b.id, scope = %b.scope_ref(), window = %w.label, decision = kind, "budget decision");
            }
            decided.insert(id, wanted);
        }
        Ok(())
    }

    /// Forget what this instance wrote for windows other than the current ones of `jobs`.
    pub(crate) fn forget_old_windows(&self, jobs: &[(Budget, Window, i64)]) {
        let current: HashSet<(&str, &str)> = jobs
            .iter()
            .map(|(b, w, _)| (b.id.as_str(), w.label.as_str()))
            .collect();
        if let Ok(mut decided) = self.inner.decided.lock() {
            decided.retain(|(id, label), _| current.contains(&(id.as_str(), label.as_str())));
        }
    }

    /// Clear every decision of budgets and credit accounts that were removed.
    pub(crate) async fn clear_removed(&self, old: &Loaded) -> Result<(), RedisFailure> {
        let now = self.loaded();
        let p = &self.inner.prefix;
        let mut pipe = redis::pipe();
        let mut any = false;
        for b in &old.budgets {
            let moved = now
                .budgets
                .iter()
                .find(|n| n.id == b.id)
                .is_none_or(|n| n.scope_ref() != b.scope_ref());
            if moved {
                let scope = b.scope_ref();
                let mut inv = DECIDE.key(redis_keys::budget_decisions(p, &scope));
                inv.arg(&b.id)
                    .arg("")
                    .arg(0)
                    .arg(redis_keys::budget_notices(p))
                    .arg(&scope);
                pipe.invoke_script(&inv);
                any = true;
            }
        }
        for id in old
            .credits
            .keys()
            .filter(|id| !now.credits.contains_key(*id))
        {
            let scope = scope_ref(Scope::Account, id);
            let mut inv = DECIDE.key(redis_keys::budget_decisions(p, &scope));
            inv.arg(tollgate_schemas::budgets::decision::CREDITS_FIELD)
                .arg("")
                .arg(0)
                .arg(redis_keys::budget_notices(p))
                .arg(&scope);
            pipe.invoke_script(&inv);
            any = true;
        }
        if any {
            run_pipe::<Vec<i64>>(&self.inner.conn, &pipe).await?;
        }
        Ok(())
    }

    /// Key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }
}

/// A call of the credit script for `account` (`op`: apply | topup | eval); the op's own
/// arguments follow.
pub(crate) fn credit_call<'a>(
    prefix: &str,
    account: &CreditAccount,
    op: &str,
) -> redis::ScriptInvocation<'a> {
    let scope = scope_ref(Scope::Account, &account.id);
    let mut inv = CREDIT.key(redis_keys::credit_balance(prefix, &account.id));
    inv.key(redis_keys::budget_decisions(prefix, &scope))
        .arg(op)
        .arg(if account.block_at_zero { "1" } else { "0" })
        .arg(Decision::credits(&account.id).to_json())
        .arg(redis_keys::budget_notices(prefix))
        .arg(&scope);
    inv
}

fn decode_all<E: serde::de::DeserializeOwned>(
    raw: &HashMap<String, String>,
    valid: impl Fn(&E) -> bool,
    id: impl Fn(&E) -> &String,
) -> Vec<E> {
    raw.iter()
        .filter_map(|(key, json)| match serde_json::from_str::<E>(json) {
            Ok(e) if valid(&e) && id(&e) == key => Some(e),
            Ok(_) => {
                tracing::warn!(id = %key, "skipping invalid stored budget entity");
                None
            }
            Err(e) => {
                tracing::warn!(id = %key, error = %e, "skipping unreadable stored budget entity");
                None
            }
        })
        .collect()
}
