//! [`BudgetGate`]: cached decisions per scope, refusals and reservations.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use tokio::sync::watch;
use tollgate_schemas::budgets::{Decision, DecisionKind};
use tollgate_schemas::redis_keys;
use tollgate_schemas::telemetry::{BUDGET_CHECK_DURATION, BUDGET_REDIS_ERRORS};

use crate::redis_conn::{ConnSettings, RedisConn, RedisTarget};

use super::error::{BudgetError, Exceeded};
use super::reserve::{self, Reservation};
use super::{now_ms, Ask, BudgetConfig};

/// How long the request path skips Redis after a failure, ms.
const BREAKER_MS: i64 = 1_000;
/// How long the last known decisions of a scope are kept for Redis outages.
const LAST_KNOWN: Duration = Duration::from_secs(3_600);
/// Most scopes cached.
const CAPACITY: u64 = 100_000;

type Decisions = Arc<[Decision]>;
/// Scope ref → decisions (foldhash: moka's default SipHash was a third of a lookup).
type ScopeCache = Cache<Arc<str>, Decisions, foldhash::fast::RandomState>;

/// Shared state of the gate.
pub(super) struct Inner {
    pub(super) conn: RedisConn,
    pub(super) target: RedisTarget,
    pub(super) prefix: String,
    pub(super) cfg: BudgetConfig,
    fresh: ScopeCache,
    last: ScopeCache,
    down_until: AtomicI64,
    /// In front of `fresh`: what requests read first, without moka's bookkeeping per lookup
    /// (five scopes per request made moka a quarter of the gate's cost). Entries live half
    /// the TTL, on top of at most half in `fresh`; any invalidation drops them all.
    front: Front,
}

/// Recently read decisions by scope, valid for one generation (bumped on every invalidation).
#[derive(Default)]
struct Front {
    map: std::sync::RwLock<foldhash::HashMap<Arc<str>, FrontEntry>>,
    generation: std::sync::atomic::AtomicU64,
}

struct FrontEntry {
    decisions: Decisions,
    read_at: Instant,
    generation: u64,
}

impl Front {
    /// Fill `slots` (one per scope of `scopes`) from entries younger than `ttl`.
    fn lookup<'a>(
        &self,
        scopes: impl Iterator<Item = &'a str>,
        slots: &mut [Option<Decisions>],
        ttl: Duration,
    ) -> u64 {
        let generation = self.generation.load(Ordering::Acquire);
        let now = Instant::now();
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        for (slot, scope) in slots.iter_mut().zip(scopes) {
            *slot = map
                .get(scope)
                .filter(|e| e.generation == generation && now.duration_since(e.read_at) < ttl)
                .map(|e| Arc::clone(&e.decisions));
        }
        generation
    }

    /// Remember `decisions` of `scope`, read during `generation` (dropped if it has passed).
    fn insert(&self, scope: &str, decisions: &Decisions, generation: u64) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if map.len() >= CAPACITY as usize && !map.contains_key(scope) {
            map.clear();
        }
        let entry = FrontEntry {
            decisions: Arc::clone(decisions),
            read_at: Instant::now(),
            generation,
        };
        match map.get_mut(scope) {
            Some(e) => *e = entry,
            None => {
                map.insert(scope.into(), entry);
            }
        }
    }

    fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Checks budget decisions and reserves near the limit (cheap to clone).
#[derive(Clone)]
pub struct BudgetGate {
    inner: Option<Arc<Inner>>,
    stop: Option<watch::Sender<bool>>,
    /// `tollgate_budget_check_duration_seconds`, registered once.
    check_duration: metrics::Histogram,
}

impl std::fmt::Debug for BudgetGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetGate")
            .field("enabled", &self.inner.is_some())
            .field("prefix", &self.inner.as_ref().map(|i| i.prefix.clone()))
            .finish()
    }
}

/// The gate could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum GateStartError {
    /// The connection settings were refused.
    #[error("budgets: redis settings unusable: {0}")]
    Redis(#[from] redis::RedisError),
    /// The URL is not usable.
    #[error("budgets: {0}")]
    Target(#[from] crate::redis_conn::TargetError),
}

impl BudgetGate {
    /// A gate that admits everything (no Redis, or budgets disabled).
    pub fn disabled() -> Self {
        Self {
            inner: None,
            stop: None,
            check_duration: metrics::histogram!(BUDGET_CHECK_DURATION),
        }
    }

    /// A gate on the config store's Redis (`url`, key `prefix`; a Redis Cluster when `url`
    /// lists several nodes); see [`Self::start_with`].
    pub fn start(cfg: &BudgetConfig, url: &str, prefix: &str) -> Result<Self, GateStartError> {
        Self::start_with(cfg, url, prefix, false)
    }

    /// A gate on the config store's Redis (`url`, key `prefix`; a Redis Cluster when
    /// `cluster` is set or `url` lists several nodes); subscribes to decision notices in the
    /// background. Returns [`Self::disabled`] when `cfg.enabled` is false.
    pub fn start_with(
        cfg: &BudgetConfig,
        url: &str,
        prefix: &str,
        cluster: bool,
    ) -> Result<Self, GateStartError> {
        if !cfg.enabled {
            return Ok(Self::disabled());
        }
        let target = RedisTarget::parse(url, cluster)?;
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let conn = target.connect(ConnSettings {
            connect_timeout: timeout.max(Duration::from_millis(200)),
            response_timeout: timeout,
        })?;
        let inner = Arc::new(Inner {
            conn,
            target,
            prefix: prefix.to_string(),
            cfg: cfg.clone(),
            fresh: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(Duration::from_millis(cfg.cache_ttl_ms).div_f64(2.0))
                .build_with_hasher(Default::default()),
            last: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(LAST_KNOWN)
                .build_with_hasher(Default::default()),
            down_until: AtomicI64::new(0),
            front: Front::default(),
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(super::notices::run(Arc::clone(&inner), stopped));
        Ok(Self {
            inner: Some(inner),
            stop: Some(stop),
            check_duration: metrics::histogram!(BUDGET_CHECK_DURATION),
        })
    }

    /// Whether budgets are enforced.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// `default_max_tokens` of the config (worst case of requests without `max_tokens`).
    pub fn default_max_tokens(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(4_096, |i| i.cfg.default_max_tokens)
    }

    /// Refuse the request if a decision of one of its scopes blocks it; under reserve
    /// decisions, reserve its worst case on each such budget (all or none). The returned
    /// reservation must be settled when the request ends (dropping it releases it).
    pub async fn check(&self, ask: &Ask<'_>) -> Result<Option<Reservation>, BudgetError> {
        let Some(inner) = &self.inner else {
            return Ok(None);
        };
        let started = Instant::now();
        // Recently read decisions first; the scopes not among them are looked up together.
        let mut lists: Vec<Option<Decisions>> = vec![None; ask.scopes.refs().count()];
        let ttl = Duration::from_millis(inner.cfg.cache_ttl_ms).div_f64(2.0);
        let generation = inner.front.lookup(ask.scopes.refs(), &mut lists, ttl);
        if lists.iter().any(Option::is_none) {
            let reads = ask
                .scopes
                .refs()
                .zip(lists.iter_mut())
                .filter(|(_, l)| l.is_none());
            futures::future::join_all(reads.map(|(scope, slot)| async move {
                let d = Inner::decisions(inner, scope).await;
                inner.front.insert(scope, &d, generation);
                *slot = Some(d);
            }))
            .await;
        }
        let now = now_ms();
        let mut reserve = Vec::new();
        let mut result = Ok(None);
        for d in lists.iter().flatten().flat_map(|l| l.iter()) {
            if !d.active(now) {
                continue;
            }
            match d.kind {
                DecisionKind::Block => {
                    result = Err(BudgetError::Exceeded(Box::new(Exceeded {
                        decision: d.clone(),
                        reserved: None,
                    })));
                    break;
                }
                DecisionKind::Reserve => reserve.push(d.clone()),
            }
        }
        if result.is_ok() && !reserve.is_empty() {
            result = reserve::reserve(inner, ask, reserve).await;
        }
        self.check_duration.record(started.elapsed().as_secs_f64());
        result
    }

    /// [`Self::check`] for a request of `key` on `model`: its scopes and worst case (prompt
    /// estimate, requested completion tokens).
    pub async fn check_request(
        &self,
        key: &crate::routing::ApiKey,
        model: &crate::routing::Model,
        prompt_estimate: i64,
        max_completion: Option<i64>,
        event_id: &str,
    ) -> Result<Option<Reservation>, BudgetError> {
        if self.inner.is_none() {
            // Recorded even when budgets are off: the check costs nothing then.
            self.check_duration.record(0.0);
            return Ok(None);
        }
        let (worst_cost_nanos, worst_tokens) = super::worst_case(
            model,
            prompt_estimate,
            max_completion,
            self.default_max_tokens(),
        );
        let ask = Ask {
            scopes: super::Scopes {
                key: &key.budget_scopes,
                model: &model.budget_scope,
            },
            event_id,
            worst_cost_nanos,
            worst_tokens,
        };
        self.check(&ask).await
    }

    /// Drop every cached decision (the next request of each scope reads Redis).
    pub async fn invalidate_all(&self) {
        if let Some(inner) = &self.inner {
            inner.invalidate_all();
        }
    }

    /// Stop the notice subscription.
    pub fn shutdown(&self) {
        if let Some(stop) = &self.stop {
            let _ = stop.send(true);
        }
    }
}

impl Inner {
    pub(super) fn available(&self) -> bool {
        now_ms() >= self.down_until.load(Ordering::Relaxed)
    }

    pub(super) fn trip(&self, op: &'static str, e: &dyn std::fmt::Display) {
        metrics::counter!(BUDGET_REDIS_ERRORS, "op" => op).increment(1);
        let was = self
            .down_until
            .swap(now_ms() + BREAKER_MS, Ordering::Relaxed);
        if was < now_ms() {
            tracing::warn!(error = %e, op, "budget store unreachable; serving the last known decisions");
        }
    }

    pub(super) fn timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.timeout_ms)
    }

    /// The decisions of one scope: cached, else read (one read per scope at a time), else the
    /// last known ones while Redis fails.
    async fn decisions(self: &Arc<Self>, scope: &str) -> Decisions {
        if let Some(d) = self.fresh.get(scope).await {
            return d;
        }
        if !self.available() {
            return self.last.get(scope).await.unwrap_or_else(|| Arc::from([]));
        }
        let me = Arc::clone(self);
        let key: Arc<str> = scope.into();
        let read = {
            let key = Arc::clone(&key);
            async move { me.read(key).await }
        };
        match self.fresh.try_get_with(key, read).await {
            Ok(d) => d,
            Err(e) => {
                self.trip("read", &e);
                self.last.get(scope).await.unwrap_or_else(|| Arc::from([]))
            }
        }
    }

    async fn read(&self, scope: Arc<str>) -> Result<Decisions, String> {
        let key = redis_keys::budget_decisions(&self.prefix, &scope);
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("HGETALL").arg(&key).clone();
        let fields: Vec<(String, String)> =
            match tokio::time::timeout(self.timeout(), cmd.query_async(&mut conn)).await {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err(format!("no answer within {:?}", self.timeout())),
            };
        let list: Decisions = fields
            .iter()
            .filter_map(|(field, json)| match serde_json::from_str::<Decision>(json) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(scope = &*scope, field, error = %e, "unreadable budget decision skipped");
                    None
                }
            })
            .collect();
        self.last.insert(scope, Arc::clone(&list)).await;
        Ok(list)
    }

    /// Drop the cached decisions of one scope (a notice arrived).
    pub(super) async fn invalidate(&self, scope: &str) {
        self.front.invalidate();
        self.fresh.invalidate(scope).await;
    }

    /// Drop every cached decision (resubscribed: notices may have been missed).
    pub(super) fn invalidate_all(&self) {
        self.front.invalidate();
        self.fresh.invalidate_all();
    }
}
