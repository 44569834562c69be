//! Rate limits of API keys and models: rpm, rpd, tpm, tpd and concurrency, checked before a
//! request is forwarded and settled with its real usage afterwards.
//!
//! - [`window`]: the sliding window (no 2× bursts at window edges).
//! - [`decision`]: targets (key, model), metrics and the admission rule.
//! - [`local`]: in-process counters; [`redis`]: shared counters (Lua, Redis time, one round
//!   trip per request); [`slices`]: a busy entity's quota reserved ahead in Redis and handed
//!   out locally; [`lease`]: concurrency leases and their renewal.
//! - [`permit`]: what an admitted request holds until its `usage::Meter` settles it.
//! - [`headers`]: `x-ratelimit-*` headers. See `docs/rate-limits.md`.

mod batcher;
pub mod config;
pub mod decision;
pub mod headers;
pub mod lease;
pub mod local;
pub mod permit;
pub mod redis;
pub mod settle;
pub mod slices;
pub mod window;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate_schemas::redis_keys::LimitEntity;

pub use config::{Backend, FailureMode, LimitsConfig};
pub use decision::{Checked, Metric, Target};
pub use headers::RateHeaders;
pub use permit::Permit;

use self::local::LocalLimiter;
use self::permit::{Held, Store};
use self::redis::RedisLimiter;
use crate::routing::{ApiKey, Model};

/// What a request asks of its limits.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The calling key.
    pub key: &'a ApiKey,
    /// The resolved model.
    pub model: &'a Model,
    /// Estimated prompt tokens.
    pub prompt_tokens: i64,
    /// `max_completion_tokens` / `max_tokens` of the request, if given.
    pub max_completion_tokens: Option<i64>,
}

/// An admitted request: its hold on the limits (none when nothing is limited) and the
/// headers to send.
#[derive(Debug, Default)]
pub struct Admission {
    /// Settle through the request's meter.
    pub permit: Option<Permit>,
    /// `x-ratelimit-*` values.
    pub headers: RateHeaders,
}

/// A refused request.
#[derive(Debug, Clone)]
pub struct Denial {
    /// Which entity refused, as messages name it (`API key ID: x`, `model 'm'`).
    pub entity: String,
    /// Which limit.
    pub metric: Metric,
    /// Its configured value.
    pub limit: u64,
    /// What is left of it.
    pub remaining: u64,
    /// When the request could pass, ms.
    pub retry_after_ms: i64,
    /// `x-ratelimit-*` values.
    pub headers: RateHeaders,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LimitError {
    /// A limit is used up.
    #[error("rate limit exceeded for {}: {}", .0.entity, .0.metric.as_str())]
    Denied(Box<Denial>),
    /// Redis is unreachable and `failure_mode` is `closed`.
    #[error("the rate-limit store is unavailable")]
    Unavailable,
}

/// Failure to set up the limiter.
#[derive(Debug, thiserror::Error)]
pub enum LimitStartError {
    /// The Redis URL is unusable.
    #[error("limits: redis URL is not usable ({0})")]
    Redis(String),
}

/// The rate limiter of a proxy (cheap to clone).
#[derive(Debug, Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    local: Arc<LocalLimiter>,
    redis: Option<Arc<RedisLimiter>>,
    failure_mode: FailureMode,
    renewer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The decision duration of requests admitted from quota slices (the hot path), registered
    /// by the first such request (so the scrape lists only backends that decided something).
    slice_duration: std::sync::OnceLock<metrics::Histogram>,
}

fn decision_duration(backend: &'static str) -> metrics::Histogram {
    metrics::histogram!(tollgate_schemas::telemetry::RATELIMIT_DECISION_DURATION, "backend" => backend)
}

impl Default for Limiter {
    fn default() -> Self {
        Self::local()
    }
}

impl Limiter {
    /// In-process limits only.
    pub fn local() -> Self {
        Self {
            inner: Arc::new(Inner {
                local: Arc::new(LocalLimiter::new()),
                redis: None,
                failure_mode: FailureMode::Open,
                renewer: Mutex::new(None),
                sweeper: Mutex::new(None),
                slice_duration: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The limiter `cfg` asks for (`store_url`: the config store's Redis). With Redis, starts
    /// the lease renewal task (call inside a Tokio runtime).
    pub fn start(cfg: &LimitsConfig, store_url: Option<&str>) -> Result<Self, LimitStartError> {
        let (backend, url) = cfg.resolve(store_url);
        let redis = match (backend, url) {
            (Backend::Redis, Some(url)) => {
                let lease_ms =
                    i64::try_from(cfg.lease_secs.saturating_mul(1_000)).unwrap_or(30_000);
                let r = RedisLimiter::new(
                    url,
                    &cfg.prefix,
                    lease_ms,
                    Duration::from_millis(cfg.timeout_ms),
                    cfg.cluster,
                    slices::Slices::new(cfg.slices, cfg.slice_share),
                )
                .map_err(|e| LimitStartError::Redis(e.category().to_string()))?;
                Some(Arc::new(r))
            }
            _ => None,
        };
        if let Some(r) = &redis {
            // The settle batcher runs on the proxy's runtime (refills may apply corrections
            // from the acquire batcher's thread first).
            let _ = r.settle_tx();
        }
        let renewer = redis
            .as_ref()
            .map(|r| lease::spawn_renewer(r.clone(), lease::renew_every(r.lease_ms())));
        let sweeper = redis
            .as_ref()
            .filter(|_| cfg.slices)
            .map(|r| spawn_sweeper(r.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                local: Arc::new(LocalLimiter::new()),
                redis,
                failure_mode: cfg.failure_mode,
                slice_duration: std::sync::OnceLock::new(),
                renewer: Mutex::new(renewer),
                sweeper: Mutex::new(sweeper),
            }),
        })
    }

    /// Give back the quota slices and free slots this proxy holds, then stop renewing leases
    /// (after in-flight requests finished).
    pub async fn shutdown(&self) {
        for task in [&self.inner.sweeper, &self.inner.renewer] {
            let task = task.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(t) = task {
                t.abort();
            }
        }
        if let Some(r) = &self.inner.redis {
            r.sweep(true).await;
        }
    }

    /// Requests and concurrency slots this proxy holds in quota slices (0 for the local
    /// backend).
    pub fn slices_held(&self) -> (i64, usize) {
        self.inner
            .redis
            .as_ref()
            .map_or((0, 0), |r| r.slices().held())
    }

    /// Leases this proxy holds in Redis (0 for the local backend).
    pub fn leases_held(&self) -> usize {
        self.inner.redis.as_ref().map_or(0, |r| r.leases().len())
    }

    /// Pre-check calls sent to Redis so far: fewer than requests when concurrent requests were
    /// batched (0 for the local backend).
    pub fn store_acquire_calls(&self) -> u64 {
        self.inner.redis.as_ref().map_or(0, |r| r.acquire_calls())
    }

    /// Requests checked in Redis so far, not admitted from quota slices (0 for the local
    /// backend).
    pub fn store_checked_requests(&self) -> u64 {
        self.inner
            .redis
            .as_ref()
            .map_or(0, |r| r.checked_requests())
    }

    /// Check the key's and the model's limits; count the request if both pass.
    pub async fn acquire(&self, ask: &Ask<'_>) -> Result<Admission, LimitError> {
        let targets: Vec<Target> = [
            Target::new(
                LimitEntity::Key,
                &ask.key.id,
                ask.key.rate_limit.as_ref(),
                ask.prompt_tokens,
                ask.max_completion_tokens,
            ),
            Target::new(
                LimitEntity::Model,
                &ask.model.name,
                ask.model.rate_limit.as_ref(),
                ask.prompt_tokens,
                ask.max_completion_tokens,
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        if targets.is_empty() {
            return Ok(Admission::default());
        }
        let started = Instant::now();
        if let Some(r) = &self.inner.redis {
            // Admitted from quota slices: no round trip, and no lease id of its own.
            if let Some(checked) = r.from_slices(&targets) {
                (self.inner.slice_duration)
                    .get_or_init(|| decision_duration("slice"))
                    .record(started.elapsed().as_secs_f64());
                return conclude(targets, checked, Store::Redis(r.clone()), None);
            }
        }
        let lease: Option<Arc<str>> = targets
            .iter()
            .any(Target::leases)
            .then(|| uuid::Uuid::now_v7().simple().to_string().into());
        let (checked, store, backend) = self.check(&targets, lease.as_ref()).await?;
        decision_duration(backend).record(started.elapsed().as_secs_f64());
        conclude(targets, checked, store, lease)
    }

    async fn check(
        &self,
        targets: &[Target],
        lease: Option<&Arc<str>>,
    ) -> Result<(Vec<Checked>, Store, &'static str), LimitError> {
        if let Some(r) = &self.inner.redis {
            if r.available() {
                match r.acquire(targets, lease).await {
                    Ok(c) => {
                        if r.recovered() {
                            tracing::info!("rate-limit store reachable again");
                        }
                        return Ok((c, Store::Redis(r.clone()), "redis"));
                    }
                    Err(e) => {
                        metrics::counter!(tollgate_schemas::telemetry::RATELIMIT_BACKEND_ERRORS, "op" => "acquire")
                            .increment(1);
                        if r.trip() {
                            tracing::warn!(error = %e, mode = ?self.inner.failure_mode, "rate-limit store unreachable; falling back");
                        }
                    }
                }
            }
            if self.inner.failure_mode == FailureMode::Closed {
                return Err(LimitError::Unavailable);
            }
            let local = self.inner.local.clone();
            return Ok((local.acquire(targets), Store::Local(local), "fallback"));
        }
        let local = self.inner.local.clone();
        Ok((local.acquire(targets), Store::Local(local), "local"))
    }
}

/// Build the admission, or the denial (refunding what other targets counted).
fn conclude(
    targets: Vec<Target>,
    checked: Vec<Checked>,
    store: Store,
    lease: Option<Arc<str>>,
) -> Result<Admission, LimitError> {
    let mut headers = RateHeaders::default();
    for (t, c) in targets.iter().zip(&checked) {
        headers.merge(&RateHeaders::of(&t.limit, &c.usage));
    }
    let held: Vec<Held> = targets
        .iter()
        .zip(&checked)
        .map(|(t, c)| Held {
            target: t.clone(),
            minute_bucket: c.minute_bucket,
            day_bucket: c.day_bucket,
            pooled: c.pooled,
        })
        .collect();
    let refused = targets
        .iter()
        .zip(&checked)
        .find_map(|(t, c)| c.denied.map(|m| (t, c, m)));
    let Some((t, c, metric)) = refused else {
        return Ok(Admission {
            permit: Some(Permit::new(store, held, lease)),
            headers,
        });
    };
    if let Store::Redis(_) = store {
        // Redis counted the targets that passed: undo them.
        let passed: Vec<Held> = held
            .into_iter()
            .zip(&checked)
            .filter(|(_, c)| c.denied.is_none())
            .map(|(h, _)| h)
            .collect();
        store.apply(passed.iter().map(Held::refund).collect(), lease);
        store.finished(&passed);
    }
    let limit = metric.limit_of(&t.limit).unwrap_or(0);
    let used = u64::try_from(metric.used_in(&c.usage)).unwrap_or(0);
    Err(LimitError::Denied(Box::new(Denial {
        entity: t.describe(),
        metric,
        limit,
        remaining: limit.saturating_sub(used),
        retry_after_ms: c.retry_ms,
        headers,
    })))
}

/// Give back expired quota slices and idle slots every [`slices::SWEEP_EVERY`] until aborted.
fn spawn_sweeper(redis: Arc<RedisLimiter>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(slices::SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            redis.sweep(false).await;
        }
    })
}
