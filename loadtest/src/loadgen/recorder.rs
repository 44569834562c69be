//! HDR-histogram recording of scenario runs and their serialisable summary.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::report::Outcome;

/// Largest recordable latency (one hour, µs); longer samples are clamped.
const MAX_MICROS: u64 = 3_600_000_000;

/// Percentiles of a distribution, in milliseconds (from microsecond HDR
/// histograms with 3 significant digits).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl Percentiles {
    /// Percentiles of a histogram of microseconds (all zero when empty).
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// A point of a latency distribution: the value (ms) at a quantile.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct QuantilePoint {
    /// Quantile in `0.0..1.0`.
    pub q: f64,
    /// Value at that quantile, ms.
    pub ms: f64,
}

/// Quantiles of a distribution chart: `1 - 10^-x` for x from 0 to 4 in
/// steps of 0.1 (0 % to 99.99 %).
pub fn chart_quantiles() -> Vec<f64> {
    (0..=40)
        .map(|i| 1.0 - 10f64.powf(-f64::from(i) / 10.0))
        .collect()
}

/// The distribution of a histogram at [`chart_quantiles`] (empty when the
/// histogram is).
pub fn distribution(h: &Histogram<u64>) -> Vec<QuantilePoint> {
    if h.is_empty() {
        return Vec::new();
    }
    chart_quantiles()
        .into_iter()
        .map(|q| QuantilePoint {
            q,
            ms: h.value_at_quantile(q) as f64 / 1000.0,
        })
        .collect()
}

/// One second of a run (by intended send time from the measured start).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TimelinePoint {
    /// Start of the second, seconds from the measured start.
    pub t_secs: f64,
    /// Successful requests sent in that second.
    pub ok: u64,
    /// Failed requests sent in that second.
    pub errors: u64,
    /// Median request latency, ms.
    pub latency_p50_ms: f64,
    /// 99th percentile request latency, ms.
    pub latency_p99_ms: f64,
    /// Median time to first token of streams, ms (0 without streams).
    pub ttft_p50_ms: f64,
    /// 99th percentile time to first token, ms.
    pub ttft_p99_ms: f64,
}

/// Serialisable result of one scenario run against one target.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RunSummary {
    /// Scenario name.
    pub scenario: String,
    /// Target label (`direct`, `proxy`, or the URL).
    pub target: String,
    /// Load description (`open 200 req/s`, `closed 16 workers`).
    pub load: String,
    /// Value of `metadata.run_id` of every request.
    pub run_id: String,
    /// Measured wall time, seconds.
    pub measured_secs: f64,
    /// Measured requests sent.
    pub sent: u64,
    /// Measured successful requests.
    pub ok: u64,
    /// Measured failed requests.
    pub errors: u64,
    /// Measured streaming requests sent.
    pub stream_sent: u64,
    /// Measured successful streams.
    pub streamed_ok: u64,
    /// Measured requests without any HTTP response.
    pub transport_errors: u64,
    /// Responses per status code (measured).
    pub status_counts: BTreeMap<u16, u64>,
    /// Errors per kind (measured).
    pub error_kinds: BTreeMap<String, u64>,
    /// Warm-up requests sent (not in the figures above).
    pub warmup_sent: u64,
    /// Successful warm-up requests.
    pub warmup_ok: u64,
    /// Successful measured requests per second.
    pub throughput_rps: f64,
    /// Request latency (end of body) of successful measured requests.
    pub latency: Percentiles,
    /// Time to first content token of successful measured streams.
    pub ttft: Percentiles,
    /// Latency distribution for charts.
    pub latency_distribution: Vec<QuantilePoint>,
    /// TTFT distribution for charts.
    pub ttft_distribution: Vec<QuantilePoint>,
    /// Per-second timeline.
    pub timeline: Vec<TimelinePoint>,
}

impl RunSummary {
    /// Successful requests of the whole run, warm-up included (what the
    /// usage store should hold).
    pub fn total_ok(&self) -> u64 {
        self.ok.saturating_add(self.warmup_ok)
    }
}

/// Latency added by the proxy: proxy minus direct, per percentile, ms.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Added {
    /// Added median.
    pub p50_ms: f64,
    /// Added 90th percentile.
    pub p90_ms: f64,
    /// Added 99th percentile.
    pub p99_ms: f64,
    /// Added 99.9th percentile.
    pub p999_ms: f64,
}

impl Added {
    /// `through - direct` for each percentile (may be negative: noise).
    pub fn between(direct: &Percentiles, through: &Percentiles) -> Self {
        Self {
            p50_ms: through.p50_ms - direct.p50_ms,
            p90_ms: through.p90_ms - direct.p90_ms,
            p99_ms: through.p99_ms - direct.p99_ms,
            p999_ms: through.p999_ms - direct.p999_ms,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    ok: u64,
    errors: u64,
    latency: Histogram<u64>,
    ttft: Histogram<u64>,
}

fn histogram(sigfig: u8) -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, MAX_MICROS, sigfig)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_MICROS)
}

/// Accumulates outcomes of a scenario run; recorders of several slices of
/// one side can be [merged](Recorder::merge).
#[derive(Debug)]
pub struct Recorder {
    summary: RunSummary,
    latency: Histogram<u64>,
    ttft: Histogram<u64>,
    timeline: Vec<Bucket>,
    /// Empty histogram cloned for new timeline buckets.
    bucket: Histogram<u64>,
}

impl Recorder {
    /// An empty recorder.
    pub fn new(
        scenario: &str,
        target: &str,
        load: &str,
        run_id: &str,
    ) -> Result<Self, hdrhistogram::CreationError> {
        Ok(Self {
            summary: RunSummary {
                scenario: scenario.to_owned(),
                target: target.to_owned(),
                load: load.to_owned(),
                run_id: run_id.to_owned(),
                ..RunSummary::default()
            },
            latency: histogram(3)?,
            ttft: histogram(3)?,
            timeline: Vec::new(),
            bucket: histogram(2)?,
        })
    }

    /// Records a warm-up outcome (counted, not measured).
    pub(crate) fn record_warmup(&mut self, o: &Outcome) {
        self.summary.warmup_sent += 1;
        if o.ok {
            self.summary.warmup_ok += 1;
        }
    }

    /// Records a measured outcome sent `at` after the measured start.
    pub(crate) fn record(&mut self, o: Outcome, at: Duration) {
        let r = &mut self.summary;
        r.sent += 1;
        if o.stream {
            r.stream_sent += 1;
        }
        match o.status {
            Some(code) => *r.status_counts.entry(code).or_default() += 1,
            None => r.transport_errors += 1,
        }
        let second = usize::try_from(at.as_secs())
            .unwrap_or(usize::MAX)
            .min(86_400);
        while self.timeline.len() <= second {
            self.timeline.push(Bucket {
                ok: 0,
                errors: 0,
                latency: self.bucket.clone(),
                ttft: self.bucket.clone(),
            });
        }
        let bucket = &mut self.timeline[second];
        if o.ok {
            r.ok += 1;
            bucket.ok += 1;
            if o.stream {
                r.streamed_ok += 1;
            }
            self.latency.saturating_record(micros(o.latency));
            bucket.latency.saturating_record(micros(o.latency));
            if let Some(t) = o.ttft {
                self.ttft.saturating_record(micros(t));
                bucket.ttft.saturating_record(micros(t));
            }
        } else {
            r.errors += 1;
            bucket.errors += 1;
            let kind = o.error_kind.unwrap_or_else(|| "unknown".to_owned());
            *r.error_kinds.entry(kind).or_default() += 1;
        }
    }

    /// Adds measured wall time.
    pub(crate) fn add_measured(&mut self, d: Duration) {
        self.summary.measured_secs += d.as_secs_f64();
    }

    /// Measured wall time so far.
    pub fn measured(&self) -> Duration {
        Duration::from_secs_f64(self.summary.measured_secs)
    }

    /// Successful requests so far (measured and warm-up).
    pub fn ok_so_far(&self) -> (u64, u64) {
        (self.summary.ok, self.summary.errors)
    }

    /// Requests sent so far, warm-up included.
    pub fn sent_total(&self) -> u64 {
        self.summary.sent + self.summary.warmup_sent
    }

    /// Adds `other` (a later slice of the same side); its timeline is
    /// appended after this one's measured time.
    pub fn merge(&mut self, other: Recorder) {
        let (a, b) = (&mut self.summary, other.summary);
        a.measured_secs += b.measured_secs;
        a.sent += b.sent;
        a.ok += b.ok;
        a.errors += b.errors;
        a.stream_sent += b.stream_sent;
        a.streamed_ok += b.streamed_ok;
        a.transport_errors += b.transport_errors;
        a.warmup_sent += b.warmup_sent;
        a.warmup_ok += b.warmup_ok;
        for (k, v) in b.status_counts {
            *a.status_counts.entry(k).or_default() += v;
        }
        for (k, v) in b.error_kinds {
            *a.error_kinds.entry(k).or_default() += v;
        }
        // Same bounds on both sides: add cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.ttft.add(&other.ttft);
        self.timeline.extend(other.timeline);
    }

    /// The summary with percentiles, distributions and timeline.
    pub fn summary(&self) -> RunSummary {
        let mut s = self.summary.clone();
        s.latency = Percentiles::from_histogram(&self.latency);
        s.ttft = Percentiles::from_histogram(&self.ttft);
        s.latency_distribution = distribution(&self.latency);
        s.ttft_distribution = distribution(&self.ttft);
        s.throughput_rps = if s.measured_secs > 0.0 {
            s.ok as f64 / s.measured_secs
        } else {
            0.0
        };
        let ms = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        s.timeline = self
            .timeline
            .iter()
            .enumerate()
            .map(|(i, b)| TimelinePoint {
                t_secs: i as f64,
                ok: b.ok,
                errors: b.errors,
                latency_p50_ms: ms(&b.latency, 0.5),
                latency_p99_ms: ms(&b.latency, 0.99),
                ttft_p50_ms: ms(&b.ttft, 0.5),
                ttft_p99_ms: ms(&b.ttft, 0.99),
            })
            .collect();
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ok(ms: u64, stream: bool) -> Outcome {
        Outcome {
            stream,
            status: Some(200),
            ok: true,
            latency: Duration::from_millis(ms),
            ttft: stream.then(|| Duration::from_millis(ms / 2)),
            ..Outcome::default()
        }
    }

    #[test]
    fn percentile_math() {
        let mut h = histogram(3).unwrap();
        for us in 1..=10_000u64 {
            h.record(us * 1000).unwrap(); // 1 ms .. 10 s
        }
        let p = Percentiles::from_histogram(&h);
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 1e-9;
        assert_eq!(p.count, 10_000);
        assert!(close(p.p50_ms, 5000.0), "{p:?}");
        assert!(close(p.p90_ms, 9000.0), "{p:?}");
        assert!(close(p.p99_ms, 9900.0), "{p:?}");
        assert!(close(p.p999_ms, 9990.0), "{p:?}");
        assert!(close(p.max_ms, 10_000.0), "{p:?}");
        assert!(close(p.mean_ms, 5000.5), "{p:?}");
        assert_eq!(
            Percentiles::from_histogram(&histogram(3).unwrap()),
            Percentiles::default()
        );

        let d = distribution(&h);
        assert_eq!(d.len(), 41);
        assert_eq!(d[0].q, 0.0);
        assert!(close(d[10].ms, 9000.0), "{:?}", d[10]);
        assert!(d.windows(2).all(|w| w[1].ms >= w[0].ms && w[1].q > w[0].q));
    }

    #[test]
    fn added_latency_is_proxy_minus_direct() {
        let direct = Percentiles {
            p50_ms: 1.0,
            p90_ms: 2.0,
            p99_ms: 4.0,
            p999_ms: 8.0,
            ..Percentiles::default()
        };
        let proxy = Percentiles {
            p50_ms: 1.2,
            p90_ms: 2.5,
            p99_ms: 3.5,
            p999_ms: 9.0,
            ..Percentiles::default()
        };
        let a = Added::between(&direct, &proxy);
        assert!((a.p50_ms - 0.2).abs() < 1e-9);
        assert!((a.p90_ms - 0.5).abs() < 1e-9);
        assert!((a.p99_ms + 0.5).abs() < 1e-9, "noise may make it negative");
        assert!((a.p999_ms - 1.0).abs() < 1e-9);
    }

    #[test]
    fn records_merges_and_builds_timeline() {
        let mut a = Recorder::new("s", "proxy", "open 1 req/s", "r1").unwrap();
        a.record_warmup(&ok(1, false));
        a.record(ok(10, true), Duration::from_millis(100));
        a.record(ok(20, false), Duration::from_millis(1500));
        a.record(
            Outcome {
                error_kind: Some("connect".into()),
                ..Outcome::default()
            },
            Duration::from_millis(1600),
        );
        a.add_measured(Duration::from_secs(2));
        let mut b = Recorder::new("s", "proxy", "open 1 req/s", "r1").unwrap();
        b.record(ok(30, true), Duration::from_millis(200));
        b.add_measured(Duration::from_secs(1));
        a.merge(b);
        let s = a.summary();
        assert_eq!((s.sent, s.ok, s.errors, s.transport_errors), (4, 3, 1, 1));
        assert_eq!((s.warmup_sent, s.warmup_ok, s.total_ok()), (1, 1, 4));
        assert_eq!((s.stream_sent, s.streamed_ok), (2, 2));
        assert_eq!(s.error_kinds.get("connect"), Some(&1));
        assert!((s.measured_secs - 3.0).abs() < 1e-9);
        assert!((s.throughput_rps - 1.0).abs() < 1e-9);
        assert_eq!(s.timeline.len(), 3);
        assert_eq!((s.timeline[1].ok, s.timeline[1].errors), (1, 1));
        assert_eq!(s.timeline[2].t_secs, 2.0);
        assert!(
            (s.timeline[2].ttft_p50_ms - 15.0).abs() < 0.1,
            "{:?}",
            s.timeline
        );
        assert_eq!(s.ttft.count, 2);
        assert!((s.latency.max_ms - 30.0).abs() < 0.1);
    }
}
