//! An admitted request's hold on its limits: settled exactly once with the real usage
//! (through the request's `usage::Meter`), or released when dropped.

use std::sync::Arc;

use super::decision::Target;
use super::local::{Adjust, LocalLimiter};
use super::redis::RedisLimiter;
use crate::usage::Tokens;

/// Where a permit's counts live.
#[derive(Debug, Clone)]
pub(crate) enum Store {
    /// In this process.
    Local(Arc<LocalLimiter>),
    /// In Redis.
    Redis(Arc<RedisLimiter>),
}

impl Store {
    /// Apply corrections (Redis: in the background).
    pub(crate) fn apply(&self, adjustments: Vec<Adjust>, lease: Option<Arc<str>>) {
        let adjustments: Vec<Adjust> = adjustments.into_iter().filter(|a| !a.is_noop()).collect();
        if adjustments.is_empty() {
            return;
        }
        match self {
            Self::Local(l) => l.apply(&adjustments),
            Self::Redis(r) => {
                // Corrections in a quota slice's buckets stay in this process.
                let mut adjustments = adjustments;
                for a in &mut adjustments {
                    r.slices().fold(a);
                }
                adjustments.retain(|a| !a.is_noop());
                if !adjustments.is_empty() {
                    r.apply(adjustments, lease);
                }
            }
        }
    }

    /// Requests of `held` are over: their entities' in-flight counts (and slots) in this
    /// proxy's quota slices go down.
    pub(crate) fn finished(&self, held: &[Held]) {
        if let Self::Redis(r) = self {
            for h in held {
                r.slices().release(&h.target, h.pooled);
            }
        }
    }
}

/// A counted target of an admitted request.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    /// What was counted.
    pub target: Target,
    /// Minute bucket it was counted in.
    pub minute_bucket: i64,
    /// Day bucket it was counted in.
    pub day_bucket: i64,
    /// Admitted on a concurrency slot of this proxy's slice (freed here, not in Redis).
    pub pooled: bool,
}

impl Held {
    /// Correction after the request: real tokens instead of the reservation, lease released.
    pub(crate) fn settlement(&self, tokens: Option<&Tokens>) -> Adjust {
        let t = &self.target;
        let delta = match tokens {
            Some(u) if t.counts_tokens() => t.tokens_of(u.prompt, u.completion) - t.reserve,
            _ => 0,
        };
        self.adjust(0, delta)
    }

    /// Undo the request entirely (another entity refused it).
    pub(crate) fn refund(&self) -> Adjust {
        self.adjust(-1, -self.target.reserve)
    }

    fn adjust(&self, requests: i64, tokens: i64) -> Adjust {
        Adjust {
            target: self.target.clone(),
            minute_bucket: self.minute_bucket,
            day_bucket: self.day_bucket,
            requests,
            tokens,
            release: self.target.leases() && !self.pooled,
        }
    }
}

/// The rate-limit hold of an admitted request.
#[derive(Debug)]
pub struct Permit {
    store: Store,
    held: Vec<Held>,
    lease: Option<Arc<str>>,
    done: bool,
}

impl Permit {
    pub(crate) fn new(store: Store, held: Vec<Held>, lease: Option<Arc<str>>) -> Self {
        Self {
            store,
            held,
            lease,
            done: false,
        }
    }

    /// Settle with the request's final token counts: token counters are corrected from the
    /// reservation to the real usage and the concurrency lease is released.
    pub fn settle(mut self, tokens: &Tokens) {
        self.finish(Some(tokens));
    }

    fn finish(&mut self, tokens: Option<&Tokens>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let adjustments = self.held.iter().map(|h| h.settlement(tokens)).collect();
        self.store.apply(adjustments, self.lease.clone());
        self.store.finished(&self.held);
    }
}

impl Drop for Permit {
    /// Unsettled permits keep their reservation and release their lease.
    fn drop(&mut self) {
        self.finish(None);
    }
}
