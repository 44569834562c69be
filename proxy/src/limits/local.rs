//! In-process backend: the same windows as Redis, in memory, for one proxy (or as the
//! fail-open fallback while Redis is unreachable). A request's checks for the key and the
//! model happen under one lock, so a refused request counts nowhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tollgate_schemas::redis_keys::LimitEntity;

use super::decision::{evaluate, Checked, Target};
use super::headers::Usage;
use super::window::{Window, DAY, MINUTE};

/// Entities kept before idle ones are pruned.
const PRUNE_ABOVE: usize = 4_096;
/// Least time between prunes, ms.
const PRUNE_EVERY_MS: i64 = 10_000;

#[derive(Debug, Default)]
struct Counts {
    minute: Window,
    day: Window,
    in_flight: i64,
}

impl Counts {
    fn usage(&self, now_ms: i64) -> Usage {
        Usage {
            minute_requests: self.minute.used(super::window::Unit::Requests),
            day_requests: self.day.used(super::window::Unit::Requests),
            minute_tokens: self.minute.used(super::window::Unit::Tokens),
            day_tokens: self.day.used(super::window::Unit::Tokens),
            minute_reset_ms: self.minute.reset_ms(MINUTE, now_ms),
            day_reset_ms: self.day.reset_ms(DAY, now_ms),
            in_flight: self.in_flight,
        }
    }

    fn idle(&self) -> bool {
        self.in_flight == 0 && self.minute.is_empty() && self.day.is_empty()
    }
}

#[derive(Debug, Default)]
struct State {
    entities: HashMap<(LimitEntity, Arc<str>), Counts>,
    pruned_at: i64,
}

/// A correction to apply after a request: settlement, refund or lease release.
#[derive(Debug, Clone)]
pub struct Adjust {
    /// The target it was counted for.
    pub target: Target,
    /// Minute bucket of the request.
    pub minute_bucket: i64,
    /// Day bucket of the request.
    pub day_bucket: i64,
    /// Requests to add (−1 refunds).
    pub requests: i64,
    /// Tokens to add (negative returns part of a reservation).
    pub tokens: i64,
    /// Release the concurrency lease.
    pub release: bool,
}

impl Adjust {
    /// Whether it changes anything.
    pub fn is_noop(&self) -> bool {
        self.requests == 0 && self.tokens == 0 && !self.release
    }
}

/// In-memory limiter.
#[derive(Debug, Default)]
pub struct LocalLimiter {
    state: Mutex<State>,
}

/// Wall-clock milliseconds that never go backwards within the process (bucket indexes line up
/// with Redis time, give or take clock skew).
pub fn now_ms() -> i64 {
    static BASE: OnceLock<(Instant, i64)> = OnceLock::new();
    let (at, wall) = BASE.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        (Instant::now(), wall)
    });
    wall + at.elapsed().as_millis() as i64
}

impl LocalLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Check every target; count the request in all of them only if all pass.
    pub fn acquire(&self, targets: &[Target]) -> Vec<Checked> {
        self.acquire_at(targets, now_ms())
    }

    /// [`LocalLimiter::acquire`] at a given time.
    pub fn acquire_at(&self, targets: &[Target], now: i64) -> Vec<Checked> {
        let mut st = self.lock();
        if st.entities.len() > PRUNE_ABOVE && now - st.pruned_at > PRUNE_EVERY_MS {
            st.pruned_at = now;
            st.entities.retain(|_, c| {
                c.minute.expire(MINUTE, now);
                c.day.expire(DAY, now);
                !c.idle()
            });
        }
        let mut out = Vec::with_capacity(targets.len());
        for t in targets {
            let c = st.entities.entry((t.entity, t.id.clone())).or_default();
            c.minute.expire(MINUTE, now);
            c.day.expire(DAY, now);
            let (denied, retry_ms) =
                evaluate(t, (&c.minute, MINUTE), (&c.day, DAY), c.in_flight, now);
            out.push(Checked {
                denied,
                retry_ms,
                usage: c.usage(now),
                minute_bucket: MINUTE.index(now),
                day_bucket: DAY.index(now),
                pooled: false,
            });
        }
        if out.iter().any(|c| c.denied.is_some()) {
            return out;
        }
        for (t, checked) in targets.iter().zip(out.iter_mut()) {
            let c = st.entities.entry((t.entity, t.id.clone())).or_default();
            if t.uses_minute() {
                c.minute.add(MINUTE, now, 1, t.reserve);
            }
            if t.uses_day() {
                c.day.add(DAY, now, 1, t.reserve);
            }
            if t.leases() {
                c.in_flight += 1;
            }
            checked.usage = c.usage(now);
        }
        out
    }

    /// Apply corrections.
    pub fn apply(&self, adjustments: &[Adjust]) {
        self.apply_at(adjustments, now_ms());
    }

    /// [`LocalLimiter::apply`] at a given time.
    pub fn apply_at(&self, adjustments: &[Adjust], now: i64) {
        let mut st = self.lock();
        for a in adjustments {
            let Some(c) = st.entities.get_mut(&(a.target.entity, a.target.id.clone())) else {
                continue;
            };
            if a.requests != 0 || a.tokens != 0 {
                if a.target.uses_minute() {
                    c.minute
                        .adjust(MINUTE, now, a.minute_bucket, a.requests, a.tokens);
                }
                if a.target.uses_day() {
                    c.day.adjust(DAY, now, a.day_bucket, a.requests, a.tokens);
                }
            }
            if a.release && a.target.leases() {
                c.in_flight = (c.in_flight - 1).max(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entities::RateLimit;
    use crate::limits::decision::Metric;

    fn target(entity: LimitEntity, limit: RateLimit, reserve: i64) -> Target {
        Target {
            entity,
            id: "x".into(),
            limit,
            reserve,
        }
    }

    #[test]
    fn a_refusal_by_the_model_does_not_count_for_the_key() {
        let l = LocalLimiter::new();
        let key = target(
            LimitEntity::Key,
            RateLimit {
                rpm: Some(10),
                ..RateLimit::default()
            },
            0,
        );
        let model = target(
            LimitEntity::Model,
            RateLimit {
                rpm: Some(1),
                ..RateLimit::default()
            },
            0,
        );
        let t0 = 1_000_000;
        let both = [key.clone(), model];
        assert!(l.acquire_at(&both, t0).iter().all(|c| c.denied.is_none()));
        let second = l.acquire_at(&both, t0 + 10);
        assert_eq!(second[1].denied, Some(Metric::Rpm));
        assert_eq!(second[1].retry_ms, 60_990);
        let only_key = l.acquire_at(&[key], t0 + 20);
        assert_eq!(only_key[0].usage.minute_requests, 2, "1 before + this one");
    }

    #[test]
    fn tokens_settle_and_concurrency_releases() {
        let l = LocalLimiter::new();
        let t = target(
            LimitEntity::Model,
            RateLimit {
                tpm: Some(1_000),
                concurrency: Some(1),
                ..RateLimit::default()
            },
            800,
        );
        let now = 5_000_000;
        let c = l.acquire_at(std::slice::from_ref(&t), now);
        assert_eq!(c[0].usage.minute_tokens, 800);
        assert_eq!(c[0].usage.in_flight, 1);
        let busy = l.acquire_at(std::slice::from_ref(&t), now + 1);
        assert_eq!(busy[0].denied, Some(Metric::Tpm), "tpm waits longest");
        l.apply_at(
            &[Adjust {
                target: t.clone(),
                minute_bucket: c[0].minute_bucket,
                day_bucket: c[0].day_bucket,
                requests: 0,
                tokens: -700,
                release: true,
            }],
            now + 2,
        );
        let again = l.acquire_at(std::slice::from_ref(&t), now + 3);
        assert_eq!(again[0].denied, None);
        assert_eq!(again[0].usage.minute_tokens, 900);
    }
}
