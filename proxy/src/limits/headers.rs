//! `x-ratelimit-*` response headers: the strictest applicable limit of the key and the model.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::BytesMut;

use crate::entities::RateLimit;

/// Usage counted for one entity after a decision (including the request when admitted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Requests in the minute window.
    pub minute_requests: i64,
    /// Requests in the day window.
    pub day_requests: i64,
    /// Tokens in the minute window.
    pub minute_tokens: i64,
    /// Tokens in the day window.
    pub day_tokens: i64,
    /// Time until the minute window's oldest usage leaves it, ms.
    pub minute_reset_ms: i64,
    /// Time until the day window's oldest usage leaves it, ms.
    pub day_reset_ms: i64,
    /// Requests in flight (concurrency leases).
    pub in_flight: i64,
}

/// One limit as headers show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Configured limit.
    pub limit: u64,
    /// What is left in the window.
    pub remaining: u64,
    /// Time until capacity is freed, ms.
    pub reset_ms: u64,
}

impl Quota {
    fn new(limit: u64, used: i64, reset_ms: i64) -> Self {
        Self {
            limit,
            remaining: limit.saturating_sub(u64::try_from(used).unwrap_or(0)),
            reset_ms: u64::try_from(reset_ms).unwrap_or(0),
        }
    }

    /// Whether `self` is stricter than `other`: less remaining, then a lower limit.
    fn stricter(&self, other: &Self) -> bool {
        (self.remaining, self.limit) < (other.remaining, other.limit)
    }
}

/// The limits reported on a response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    /// Strictest of rpm / rpd.
    pub requests: Option<Quota>,
    /// Strictest of tpm / tpd.
    pub tokens: Option<Quota>,
    /// Concurrency: (limit, remaining).
    pub concurrent: Option<(u64, u64)>,
}

fn pick(a: Option<Quota>, b: Option<Quota>) -> Option<Quota> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.stricter(&a) { b } else { a }),
        (a, b) => a.or(b),
    }
}

impl RateHeaders {
    /// The headers of one entity's limits given its usage.
    pub fn of(limit: &RateLimit, u: &Usage) -> Self {
        let q = |l: Option<u64>, used: i64, reset: i64| l.map(|l| Quota::new(l, used, reset));
        Self {
            requests: pick(
                q(limit.rpm, u.minute_requests, u.minute_reset_ms),
                q(limit.rpd, u.day_requests, u.day_reset_ms),
            ),
            tokens: pick(
                q(limit.tpm, u.minute_tokens, u.minute_reset_ms),
                q(limit.tpd, u.day_tokens, u.day_reset_ms),
            ),
            concurrent: limit.concurrency.map(|c| {
                let used = u64::try_from(u.in_flight).unwrap_or(0);
                (c, c.saturating_sub(used))
            }),
        }
    }

    /// Keep the strictest of `self` and `other` per header group.
    pub fn merge(&mut self, other: &Self) {
        self.requests = pick(self.requests, other.requests);
        self.tokens = pick(self.tokens, other.tokens);
        self.concurrent = match (self.concurrent, other.concurrent) {
            (Some(a), Some(b)) => Some(if (b.1, b.0) < (a.1, a.0) { b } else { a }),
            (a, b) => a.or(b),
        };
    }

    /// Whether there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none() && self.concurrent.is_none()
    }

    /// Write the headers. Their values are written into one buffer and share it: one
    /// allocation per response instead of one or two per header; the names are constants.
    pub fn apply(&self, h: &mut HeaderMap) {
        let mut buf = BytesMut::with_capacity(96);
        h.reserve(8);
        let mut set = |name: &HeaderName, value: Value| {
            match value {
                Value::Count(n) => buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
                Value::Reset(ms) => write_human(&mut buf, ms),
            }
            if let Ok(v) = HeaderValue::from_maybe_shared(buf.split().freeze()) {
                h.insert(name.clone(), v);
            }
        };
        if let Some(q) = self.requests {
            set(&LIMIT_REQUESTS, Value::Count(q.limit));
            set(&REMAINING_REQUESTS, Value::Count(q.remaining));
            set(&RESET_REQUESTS, Value::Reset(q.reset_ms));
        }
        if let Some(q) = self.tokens {
            set(&LIMIT_TOKENS, Value::Count(q.limit));
            set(&REMAINING_TOKENS, Value::Count(q.remaining));
            set(&RESET_TOKENS, Value::Reset(q.reset_ms));
        }
        if let Some((limit, remaining)) = self.concurrent {
            set(&LIMIT_CONCURRENT, Value::Count(limit));
            set(&REMAINING_CONCURRENT, Value::Count(remaining));
        }
    }
}

const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
const LIMIT_CONCURRENT: HeaderName = HeaderName::from_static("x-ratelimit-limit-concurrent");
const REMAINING_CONCURRENT: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining-concurrent");

/// A header value before it is written.
enum Value {
    Count(u64),
    Reset(u64),
}

/// Write a duration as OpenAI does: `250ms`, `55s`, `6m0s`, `23h59m0s`.
fn write_human(out: &mut BytesMut, ms: u64) {
    let mut num = |n: u64, unit: &str| {
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(unit.as_bytes());
    };
    if ms < 1_000 {
        return num(ms, "ms");
    }
    let secs = ms.div_ceil(1_000);
    let (h, m, s) = (secs / 3_600, secs / 60 % 60, secs % 60);
    if h > 0 {
        num(h, "h");
    }
    if h > 0 || m > 0 {
        num(m, "m");
    }
    num(s, "s");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn human(ms: u64) -> String {
        let mut out = BytesMut::new();
        write_human(&mut out, ms);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn durations_read_like_openai() {
        assert_eq!(human(0), "0ms");
        assert_eq!(human(999), "999ms");
        assert_eq!(human(1_000), "1s");
        assert_eq!(human(54_001), "55s");
        assert_eq!(human(360_000), "6m0s");
        assert_eq!(human(3_600_000), "1h0m0s");
        assert_eq!(human(86_400_000), "24h0m0s");
    }

    #[test]
    fn strictest_limit_wins_across_windows_and_entities() {
        let key = RateLimit {
            rpm: Some(100),
            rpd: Some(1_000),
            concurrency: Some(5),
            ..RateLimit::default()
        };
        let usage = Usage {
            minute_requests: 10,
            day_requests: 995,
            minute_reset_ms: 50_000,
            day_reset_ms: 3_600_000,
            in_flight: 2,
            ..Usage::default()
        };
        let mut h = RateHeaders::of(&key, &usage);
        assert_eq!(
            h.requests,
            Some(Quota {
                limit: 1_000,
                remaining: 5,
                reset_ms: 3_600_000
            })
        );
        assert_eq!(h.concurrent, Some((5, 3)));
        let model = RateLimit {
            rpm: Some(3),
            tpm: Some(500),
            concurrency: Some(10),
            ..RateLimit::default()
        };
        let mu = Usage {
            minute_requests: 1,
            minute_tokens: 100,
            minute_reset_ms: 59_000,
            in_flight: 1,
            ..Usage::default()
        };
        h.merge(&RateHeaders::of(&model, &mu));
        assert_eq!(h.requests.map(|q| (q.limit, q.remaining)), Some((3, 2)));
        assert_eq!(h.tokens.map(|q| (q.limit, q.remaining)), Some((500, 400)));
        assert_eq!(h.concurrent, Some((5, 3)));
        let mut map = HeaderMap::new();
        h.apply(&mut map);
        assert_eq!(map["x-ratelimit-limit-requests"], "3");
        assert_eq!(map["x-ratelimit-remaining-requests"], "2");
        assert_eq!(map["x-ratelimit-reset-requests"], "59s");
        assert_eq!(map["x-ratelimit-remaining-tokens"], "400");
        assert_eq!(map["x-ratelimit-limit-concurrent"], "5");
        assert_eq!(map["x-ratelimit-remaining-concurrent"], "3");
    }
}
