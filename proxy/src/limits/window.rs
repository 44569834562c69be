//! The sliding window both backends use (the Redis scripts mirror this code in Lua).
//!
//! A window of `buckets × bucket_ms` keeps per-bucket request and token counts plus running
//! totals. The bucket that straddles the window's start is still counted whole, so the
//! counted span always covers the true sliding window: within any interval of the window's
//! length no more than the limit is admitted (no 2× burst at edges), at the price of capacity
//! coming back up to one bucket later than exact. Expiry is amortized: each bucket is removed
//! once, so a check costs O(1) however busy the window is.

use std::collections::VecDeque;

/// Shape of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Width of one bucket, ms.
    pub bucket_ms: i64,
    /// Buckets in the window (window length = `bucket_ms × buckets`).
    pub buckets: i64,
}

/// The minute window of `rpm`/`tpm`: 60 buckets of 1 s.
pub const MINUTE: Span = Span {
    bucket_ms: 1_000,
    buckets: 60,
};

/// The day window of `rpd`/`tpd`: 288 buckets of 5 min.
pub const DAY: Span = Span {
    bucket_ms: 300_000,
    buckets: 288,
};

impl Span {
    /// Bucket index of a time.
    pub fn index(&self, now_ms: i64) -> i64 {
        now_ms.div_euclid(self.bucket_ms)
    }

    /// Oldest bucket still counted at `now_ms`.
    pub fn first(&self, now_ms: i64) -> i64 {
        self.index(now_ms) - self.buckets
    }

    /// When bucket `idx` stops being counted, ms.
    pub fn leaves_at(&self, idx: i64) -> i64 {
        (idx + self.buckets + 1) * self.bucket_ms
    }
}

/// What a window counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Requests.
    Requests,
    /// Tokens.
    Tokens,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    idx: i64,
    requests: i64,
    tokens: i64,
}

/// Counts of one window (in-process backend).
#[derive(Debug, Default, Clone)]
pub struct Window {
    slots: VecDeque<Slot>,
    requests: i64,
    tokens: i64,
}

impl Window {
    /// Drop buckets that left the window.
    pub fn expire(&mut self, span: Span, now_ms: i64) {
        let first = span.first(now_ms);
        while let Some(s) = self.slots.front().copied() {
            if s.idx >= first {
                break;
            }
            self.requests -= s.requests;
            self.tokens -= s.tokens;
            self.slots.pop_front();
        }
    }

    /// Counted total of `unit` (call [`Window::expire`] first).
    pub fn used(&self, unit: Unit) -> i64 {
        match unit {
            Unit::Requests => self.requests,
            Unit::Tokens => self.tokens,
        }
    }

    /// Whether nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Count a request and its tokens in the current bucket; returns the bucket index.
    pub fn add(&mut self, span: Span, now_ms: i64, requests: i64, tokens: i64) -> i64 {
        let idx = span.index(now_ms);
        match self.slots.back_mut() {
            Some(s) if s.idx == idx => {
                s.requests += requests;
                s.tokens += tokens;
            }
            _ => self.slots.push_back(Slot {
                idx,
                requests,
                tokens,
            }),
        }
        self.requests += requests;
        self.tokens += tokens;
        idx
    }

    /// Correct the counts of bucket `idx` (settlement or refund), never below zero. When that
    /// bucket has left the window, extra tokens are counted now instead.
    pub fn adjust(&mut self, span: Span, now_ms: i64, idx: i64, requests: i64, tokens: i64) {
        self.expire(span, now_ms);
        if let Some(s) = self.slots.iter_mut().rev().find(|s| s.idx == idx) {
            let dr = requests.max(-s.requests);
            let dt = tokens.max(-s.tokens);
            s.requests += dr;
            s.tokens += dt;
            self.requests += dr;
            self.tokens += dt;
        } else if tokens > 0 {
            self.add(span, now_ms, 0, tokens);
        }
    }

    /// Time until the oldest counted usage leaves the window (0 when empty), ms.
    pub fn reset_ms(&self, span: Span, now_ms: i64) -> i64 {
        self.slots
            .front()
            .map_or(0, |s| (span.leaves_at(s.idx) - now_ms).max(0))
    }

    /// Time until at least `excess` of `unit` has left the window, ms.
    pub fn wait_ms(&self, span: Span, now_ms: i64, unit: Unit, excess: i64) -> i64 {
        let mut freed = 0;
        for s in &self.slots {
            freed += match unit {
                Unit::Requests => s.requests,
                Unit::Tokens => s.tokens,
            };
            if freed >= excess {
                return (span.leaves_at(s.idx) - now_ms).max(0);
            }
        }
        (span.leaves_at(span.index(now_ms)) - now_ms).max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Span = MINUTE;

    #[test]
    fn counts_expire_one_window_plus_the_straddling_bucket_later() {
        let mut w = Window::default();
        let t0 = 1_000_000_500; // mid-bucket
        w.add(S, t0, 1, 10);
        w.add(S, t0 + 400, 1, 5);
        w.expire(S, t0 + 59_000);
        assert_eq!((w.used(Unit::Requests), w.used(Unit::Tokens)), (2, 15));
        // The bucket of t0 straddles the start of the window until it is 61 buckets old.
        w.expire(S, t0 + 60_000);
        assert_eq!(w.used(Unit::Requests), 2);
        w.expire(S, t0 + 60_500);
        assert_eq!(w.used(Unit::Requests), 0);
        assert!(w.is_empty());
    }

    #[test]
    fn never_more_than_the_limit_in_any_window_length() {
        // Admit greedily at 10 ms steps with limit 60/min; check every 60 s interval.
        let mut w = Window::default();
        let mut admitted = Vec::new();
        let mut t = 5_000_123;
        while t < 5_000_123 + 180_000 {
            w.expire(S, t);
            if w.used(Unit::Requests) < 60 {
                w.add(S, t, 1, 0);
                admitted.push(t);
            }
            t += 10;
        }
        for (i, &start) in admitted.iter().enumerate() {
            let n = admitted[i..]
                .iter()
                .take_while(|&&x| x < start + 60_000)
                .count();
            assert!(n <= 60, "{n} admitted within 60 s from {start}");
        }
        assert!(
            admitted.len() >= 150,
            "capacity comes back: {}",
            admitted.len()
        );
    }

    #[test]
    fn adjust_settles_in_place_and_clamps() {
        let mut w = Window::default();
        let t0 = 10_000;
        let b = w.add(S, t0, 1, 100);
        w.add(S, t0 + 2_000, 1, 50);
        w.adjust(S, t0 + 3_000, b, 0, -30);
        assert_eq!(w.used(Unit::Tokens), 120);
        w.adjust(S, t0 + 3_000, b, -1, -1_000);
        assert_eq!((w.used(Unit::Requests), w.used(Unit::Tokens)), (1, 50));
        // The reservation's bucket is gone: extra tokens count now, refunds are dropped.
        w.adjust(S, t0 + 120_000, b, 0, 40);
        assert_eq!(w.used(Unit::Tokens), 40);
        w.adjust(S, t0 + 120_000, b - 5, 0, -40);
        assert_eq!(w.used(Unit::Tokens), 40);
    }

    #[test]
    fn reset_and_wait_point_at_the_buckets_that_free_capacity() {
        let mut w = Window::default();
        let t0 = 60_000; // bucket 60
        w.add(S, t0, 1, 10);
        w.add(S, t0 + 10_000, 1, 20);
        let now = t0 + 20_000;
        assert_eq!(w.reset_ms(S, now), 41_000);
        assert_eq!(w.wait_ms(S, now, Unit::Requests, 1), 41_000);
        assert_eq!(w.wait_ms(S, now, Unit::Tokens, 15), 51_000);
        assert_eq!(Window::default().reset_ms(S, now), 0);
    }
}
