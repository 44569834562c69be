//! Arrival schedules and request mixes, as pure functions of the request
//! index so that every run of a scenario sends the same sequence.

use std::time::Duration;

/// Intended send time of request `index` (0-based) of a constant arrival
/// rate, as an offset from the start: `index / rate` seconds. Request 0 is
/// due at once. A non-positive or non-finite rate yields `Duration::MAX`.
pub fn intended_offset(index: u64, rate: f64) -> Duration {
    if !(rate.is_finite() && rate > 0.0) {
        return Duration::MAX;
    }
    Duration::try_from_secs_f64(index as f64 / rate).unwrap_or(Duration::MAX)
}

/// How many requests of a constant-rate schedule are due within `span`
/// from the start (intended offset strictly below `span`): `ceil(span *
/// rate)`.
pub fn due_within(span: Duration, rate: f64) -> u64 {
    if !(rate.is_finite() && rate > 0.0) {
        return 0;
    }
    let n = (span.as_secs_f64() * rate).ceil();
    if n >= u64::MAX as f64 {
        u64::MAX
    } else {
        n as u64
    }
}

/// An open-loop schedule: `warmup` requests followed by `measured` ones at a
/// constant rate. Offsets are relative to the schedule's start, and
/// continue across calls so that a run split into slices keeps the rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpenSchedule {
    /// Requests per second.
    pub rate: f64,
    /// Requests sent during the warm-up (not measured).
    pub warmup: u64,
    /// Requests measured.
    pub measured: u64,
}

impl OpenSchedule {
    /// The schedule of `warmup` then `duration` at `rate`.
    pub fn new(rate: f64, warmup: Duration, duration: Duration) -> Self {
        Self {
            rate,
            warmup: due_within(warmup, rate),
            measured: due_within(duration, rate),
        }
    }

    /// Total number of requests.
    pub fn total(&self) -> u64 {
        self.warmup.saturating_add(self.measured)
    }

    /// Intended offset of request `index` from the start.
    pub fn offset(&self, index: u64) -> Duration {
        intended_offset(index, self.rate)
    }

    /// Whether request `index` belongs to the warm-up.
    pub fn is_warmup(&self, index: u64) -> bool {
        index < self.warmup
    }

    /// Offset where the measured part starts (intended time of its first
    /// request).
    pub fn measured_start(&self) -> Duration {
        self.offset(self.warmup)
    }
}

/// Picks an entry of a weighted list for request `index`, spreading the
/// choices evenly (a low-discrepancy sequence: `frac(index * salt)` scaled
/// to the total weight). Proportions converge to the weights; different
/// `salt`s decorrelate several mixes. Returns 0 for an empty list or all
/// zero weights.
pub fn pick_weighted(weights: &[u32], index: u64, salt: f64) -> usize {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return 0;
    }
    let frac = (index as f64 * salt).fract();
    let target = (frac * total as f64) as u64;
    let mut acc = 0u64;
    for (i, &w) in weights.iter().enumerate() {
        acc += u64::from(w);
        if target < acc {
            return i;
        }
    }
    weights.iter().rposition(|&w| w > 0).unwrap_or(0)
}

/// Salt of the model mix (the golden ratio's fractional part).
pub const MODEL_SALT: f64 = 0.618_033_988_749_894_9;
/// Salt of the key mix (`sqrt(2) - 1`).
pub const KEY_SALT: f64 = 0.414_213_562_373_095_1;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_follow_the_rate() {
        assert_eq!(intended_offset(0, 100.0), Duration::ZERO);
        assert_eq!(intended_offset(1, 100.0), Duration::from_millis(10));
        assert_eq!(intended_offset(250, 100.0), Duration::from_millis(2500));
        assert_eq!(intended_offset(3, 0.5), Duration::from_secs(6));
        assert_eq!(intended_offset(1, 0.0), Duration::MAX);
        assert_eq!(intended_offset(1, f64::NAN), Duration::MAX);
        // Strictly increasing and evenly spaced.
        let offs: Vec<Duration> = (0..1000).map(|i| intended_offset(i, 333.0)).collect();
        for w in offs.windows(2) {
            let gap = (w[1] - w[0]).as_secs_f64();
            assert!((gap - 1.0 / 333.0).abs() < 1e-9, "{gap}");
        }
    }

    #[test]
    fn counts_due_requests() {
        assert_eq!(due_within(Duration::from_secs(2), 100.0), 200);
        assert_eq!(due_within(Duration::from_millis(1005), 100.0), 101);
        assert_eq!(due_within(Duration::ZERO, 100.0), 0);
        assert_eq!(due_within(Duration::from_secs(1), -1.0), 0);
        // Every counted request is due strictly within the span.
        for rate in [1.0, 7.5, 100.0, 1234.5] {
            let span = Duration::from_millis(2345);
            let n = due_within(span, rate);
            assert!(intended_offset(n - 1, rate) < span, "rate {rate}");
            assert!(intended_offset(n, rate) >= span, "rate {rate}");
        }
    }

    #[test]
    fn open_schedule_splits_warmup() {
        let s = OpenSchedule::new(50.0, Duration::from_secs(1), Duration::from_secs(4));
        assert_eq!((s.warmup, s.measured, s.total()), (50, 200, 250));
        assert!(s.is_warmup(49));
        assert!(!s.is_warmup(50));
        assert_eq!(s.measured_start(), Duration::from_secs(1));
        assert_eq!(s.offset(249), Duration::from_millis(4980));
        let none = OpenSchedule::new(50.0, Duration::ZERO, Duration::from_secs(1));
        assert_eq!(none.warmup, 0);
        assert_eq!(none.measured_start(), Duration::ZERO);
    }

    #[test]
    fn weighted_picks_match_weights() {
        let weights = [3, 1, 0, 6];
        let mut counts = [0u64; 4];
        for i in 0..10_000 {
            counts[pick_weighted(&weights, i, MODEL_SALT)] += 1;
        }
        assert_eq!(counts[2], 0);
        for (c, w) in counts.iter().zip(weights) {
            let share = *c as f64 / 10_000.0;
            assert!((share - f64::from(w) / 10.0).abs() < 0.01, "{counts:?}");
        }
        // Evenly spread: every window of 100 holds roughly its share.
        let first: usize = (0..100)
            .filter(|&i| pick_weighted(&weights, i, MODEL_SALT) == 3)
            .count();
        assert!((55..=65).contains(&first), "{first}");
        assert_eq!(pick_weighted(&[], 5, MODEL_SALT), 0);
        assert_eq!(pick_weighted(&[0, 0], 5, MODEL_SALT), 0);
        assert_eq!(pick_weighted(&[0, 4], 5, KEY_SALT), 1);
    }
}
