//! What is checked for a request (targets), what a check returns, and the rule that decides
//! (shared by the in-process backend; `acquire.lua` applies the same rule in Redis).

use std::sync::Arc;

use tollgate_schemas::redis_keys::LimitEntity;

use super::headers::Usage;
use super::window::{Span, Unit, Window};
use crate::entities::{RateLimit, TokenKind};

/// A limit that can refuse a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Requests per minute.
    Rpm,
    /// Requests per day.
    Rpd,
    /// Tokens per minute.
    Tpm,
    /// Tokens per day.
    Tpd,
    /// Requests in flight.
    Concurrency,
}

impl Metric {
    /// Name in messages: `rpm`, `rpd`, `tpm`, `tpd`, `concurrency`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rpm => "rpm",
            Self::Rpd => "rpd",
            Self::Tpm => "tpm",
            Self::Tpd => "tpd",
            Self::Concurrency => "concurrency",
        }
    }

    /// Number used by the Redis scripts (1-5).
    pub fn code(self) -> i64 {
        match self {
            Self::Rpm => 1,
            Self::Rpd => 2,
            Self::Tpm => 3,
            Self::Tpd => 4,
            Self::Concurrency => 5,
        }
    }

    /// Inverse of [`Metric::code`].
    pub fn from_code(code: i64) -> Option<Self> {
        [
            Self::Rpm,
            Self::Rpd,
            Self::Tpm,
            Self::Tpd,
            Self::Concurrency,
        ]
        .into_iter()
        .find(|m| m.code() == code)
    }

    /// The configured value of this metric.
    pub fn limit_of(self, l: &RateLimit) -> Option<u64> {
        match self {
            Self::Rpm => l.rpm,
            Self::Rpd => l.rpd,
            Self::Tpm => l.tpm,
            Self::Tpd => l.tpd,
            Self::Concurrency => l.concurrency,
        }
    }

    /// The usage this metric is compared with.
    pub fn used_in(self, u: &Usage) -> i64 {
        match self {
            Self::Rpm => u.minute_requests,
            Self::Rpd => u.day_requests,
            Self::Tpm => u.minute_tokens,
            Self::Tpd => u.day_tokens,
            Self::Concurrency => u.in_flight,
        }
    }
}

/// One entity whose limits a request must pass.
#[derive(Debug, Clone)]
pub struct Target {
    /// Key or model.
    pub entity: LimitEntity,
    /// Key id or model name.
    pub id: Arc<str>,
    /// Its limits.
    pub limit: RateLimit,
    /// Tokens reserved before the call (0 without token limits).
    pub reserve: i64,
}

impl Target {
    /// A target for `limit`, or `None` when it sets nothing. The reservation is the prompt
    /// estimate and/or `max_completion` tokens, by the limit's token kind.
    pub fn new(
        entity: LimitEntity,
        id: &str,
        limit: Option<&RateLimit>,
        prompt: i64,
        max_completion: Option<i64>,
    ) -> Option<Self> {
        let limit = *limit?;
        let any = [
            limit.rpm,
            limit.rpd,
            limit.tpm,
            limit.tpd,
            limit.concurrency,
        ]
        .iter()
        .any(Option::is_some);
        if !any {
            return None;
        }
        let mut t = Self {
            entity,
            id: id.into(),
            limit,
            reserve: 0,
        };
        if t.counts_tokens() {
            t.reserve = t.tokens_of(prompt, max_completion.unwrap_or(0));
        }
        Some(t)
    }

    /// Whether the minute window is used (rpm or tpm).
    pub fn uses_minute(&self) -> bool {
        self.limit.rpm.is_some() || self.limit.tpm.is_some()
    }

    /// Whether the day window is used (rpd or tpd).
    pub fn uses_day(&self) -> bool {
        self.limit.rpd.is_some() || self.limit.tpd.is_some()
    }

    /// Whether tokens are limited.
    pub fn counts_tokens(&self) -> bool {
        self.limit.tpm.is_some() || self.limit.tpd.is_some()
    }

    /// Whether requests take a concurrency lease.
    pub fn leases(&self) -> bool {
        self.limit.concurrency.is_some()
    }

    /// Tokens that count against this target's token limits.
    pub fn tokens_of(&self, prompt: i64, completion: i64) -> i64 {
        let n = match self.limit.tokens {
            TokenKind::Total => prompt.saturating_add(completion),
            TokenKind::Prompt => prompt,
            TokenKind::Completion => completion,
        };
        n.max(0)
    }

    /// How 429 messages name it: `API key ID: my-app` or `model 'gpt-4o'`.
    pub fn describe(&self) -> String {
        match self.entity {
            LimitEntity::Key => format!("API key ID: {}", self.id),
            LimitEntity::Model => format!("model '{}'", self.id),
        }
    }
}

/// The outcome of checking one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// The metric that refused the request (the one freeing up last), if any.
    pub denied: Option<Metric>,
    /// When the request could pass, ms (0 when admitted).
    pub retry_ms: i64,
    /// Counts after the decision.
    pub usage: Usage,
    /// Minute bucket the request was counted in.
    pub minute_bucket: i64,
    /// Day bucket the request was counted in.
    pub day_bucket: i64,
    /// Admitted on a concurrency slot of this proxy's slice (no lease of its own).
    pub pooled: bool,
}

/// Tokens a reservation must fit: at least 1 (the window must not be full), at most the
/// limit (a request larger than the whole limit passes only in an empty window).
pub fn token_need(reserve: i64, limit: i64) -> i64 {
    reserve.min(limit).max(1)
}

/// Wait before a lease may free up, when concurrency refuses (leases have no fixed end).
pub const CONCURRENCY_RETRY_MS: i64 = 1_000;

/// Apply the rule to in-process windows: every set limit must pass; when several fail, the
/// one freeing up last is reported with its wait.
pub fn evaluate(
    t: &Target,
    minute: (&Window, Span),
    day: (&Window, Span),
    in_flight: i64,
    now_ms: i64,
) -> (Option<Metric>, i64) {
    let mut verdict: (Option<Metric>, i64) = (None, 0);
    let mut deny = |m: Metric, wait: i64| {
        if verdict.0.is_none() || wait > verdict.1 {
            verdict = (Some(m), wait);
        }
    };
    let lim = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
    for (metric, limit, (w, span), unit) in [
        (Metric::Rpm, lim(t.limit.rpm), minute, Unit::Requests),
        (Metric::Rpd, lim(t.limit.rpd), day, Unit::Requests),
        (Metric::Tpm, lim(t.limit.tpm), minute, Unit::Tokens),
        (Metric::Tpd, lim(t.limit.tpd), day, Unit::Tokens),
    ] {
        let Some(limit) = limit else { continue };
        let need = match unit {
            Unit::Requests => 1,
            Unit::Tokens => token_need(t.reserve, limit),
        };
        let used = w.used(unit);
        if used + need > limit {
            deny(metric, w.wait_ms(span, now_ms, unit, used + need - limit));
        }
    }
    if let Some(c) = lim(t.limit.concurrency) {
        if in_flight + 1 > c {
            deny(Metric::Concurrency, CONCURRENCY_RETRY_MS);
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::window::MINUTE;

    fn target(limit: RateLimit, reserve: i64) -> Target {
        Target {
            entity: LimitEntity::Key,
            id: "k".into(),
            limit,
            reserve,
        }
    }

    #[test]
    fn reservations_follow_the_token_kind() {
        let l = RateLimit {
            tpm: Some(100),
            tokens: TokenKind::Completion,
            ..RateLimit::default()
        };
        let t = Target::new(LimitEntity::Model, "m", Some(&l), 30, Some(50)).unwrap();
        assert_eq!(t.reserve, 50);
        assert_eq!(t.describe(), "model 'm'");
        let l = RateLimit {
            rpm: Some(1),
            ..RateLimit::default()
        };
        let t = Target::new(LimitEntity::Key, "k", Some(&l), 30, Some(50)).unwrap();
        assert_eq!(t.reserve, 0, "no token limit, no reservation");
        assert!(Target::new(LimitEntity::Key, "k", Some(&RateLimit::default()), 1, None).is_none());
        assert!(Target::new(LimitEntity::Key, "k", None, 1, None).is_none());
    }

    #[test]
    fn the_metric_freeing_last_is_reported() {
        let now = 100_000;
        let mut m = Window::default();
        m.add(MINUTE, now - 30_000, 1, 50);
        m.add(MINUTE, now - 1_000, 1, 900);
        let d = Window::default();
        let l = RateLimit {
            rpm: Some(2),
            tpm: Some(1_000),
            ..RateLimit::default()
        };
        // rpm frees at the first bucket (31 s), tpm needs both buckets gone (60 s).
        let (metric, wait) = evaluate(&target(l, 200), (&m, MINUTE), (&d, MINUTE), 0, now);
        assert_eq!(metric, Some(Metric::Tpm));
        assert_eq!(wait, 60_000);
        let (metric, _) = evaluate(&target(l, 10), (&m, MINUTE), (&d, MINUTE), 0, now);
        assert_eq!(metric, Some(Metric::Rpm));
        let big = RateLimit {
            tpm: Some(100),
            ..RateLimit::default()
        };
        let empty = Window::default();
        let (metric, _) = evaluate(&target(big, 5_000), (&empty, MINUTE), (&d, MINUTE), 0, now);
        assert_eq!(metric, None, "an oversized request passes an empty window");
        let c = RateLimit {
            concurrency: Some(2),
            ..RateLimit::default()
        };
        let (metric, wait) = evaluate(&target(c, 0), (&empty, MINUTE), (&d, MINUTE), 2, now);
        assert_eq!((metric, wait), (Some(Metric::Concurrency), 1_000));
    }
}
