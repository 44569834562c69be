//! Aggregated results of a load run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Percentiles of a latency distribution, in milliseconds (recorded with
/// microsecond resolution in an HDR histogram, 3 significant digits).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
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
    /// Largest sample.
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarises a histogram of microsecond samples (all zero when empty).
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        Self::from(super::recorder::Percentiles::from_histogram(h))
    }
}

impl From<super::recorder::Percentiles> for LatencySummary {
    fn from(p: super::recorder::Percentiles) -> Self {
        Self {
            count: p.count,
            mean_ms: p.mean_ms,
            p50_ms: p.p50_ms,
            p90_ms: p.p90_ms,
            p99_ms: p.p99_ms,
            max_ms: p.max_ms,
        }
    }
}

/// Result of [`run`](super::run).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LoadReport {
    /// Requests sent (all of them, whatever the outcome).
    pub sent: u64,
    /// Successful requests: a 2xx with a JSON body, or for streams a 200
    /// whose body delivered `data: [DONE]`.
    pub ok: u64,
    /// `sent - ok`: HTTP errors, transport errors, incomplete streams.
    pub errors: u64,
    /// Requests sent with `"stream": true`.
    pub stream_sent: u64,
    /// Successful streaming requests.
    pub streamed_ok: u64,
    /// Requests that got no HTTP response at all (connect failure, timeout
    /// before headers, ...).
    pub transport_errors: u64,
    /// Responses per HTTP status code.
    pub status_counts: BTreeMap<u16, u64>,
    /// Errors per kind (`http 500`, `connect`, `timeout`, `stream incomplete`,
    /// `invalid json`, ...).
    pub error_kinds: BTreeMap<String, u64>,
    /// Sum of `usage.prompt_tokens` reported by responses (non-stream JSON
    /// usage, and the stream usage chunk when `include_usage` is set; streams
    /// without usage contribute nothing).
    pub prompt_tokens: u64,
    /// Sum of `usage.completion_tokens`, same sources as `prompt_tokens`.
    pub completion_tokens: u64,
    /// Full request latency (send to end of body) of successful requests.
    pub latency: LatencySummary,
    /// Time to first content chunk (first non-empty `delta.content`) of
    /// successful streams.
    pub ttft: LatencySummary,
    /// Wall time of the whole run (serialised as seconds, a float).
    #[serde(with = "duration_secs")]
    pub elapsed: Duration,
    /// Completed requests per second: `sent / elapsed`.
    pub rps: f64,
}

impl LoadReport {
    /// True when requests were sent and none got any HTTP response (the
    /// target is unreachable).
    pub fn all_transport_failed(&self) -> bool {
        self.sent > 0 && self.transport_errors == self.sent
    }

    /// A human-readable summary table.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Tollgate load test report");
        let _ = writeln!(
            out,
            "  requests     sent {}  ok {}  errors {}  (transport {})",
            self.sent, self.ok, self.errors, self.transport_errors
        );
        let _ = writeln!(
            out,
            "  streams      sent {}  ok {}",
            self.stream_sent, self.streamed_ok
        );
        let _ = writeln!(
            out,
            "  elapsed      {:.3} s  ({:.1} req/s)",
            self.elapsed.as_secs_f64(),
            self.rps
        );
        let statuses = join_counts(self.status_counts.iter().map(|(k, v)| (k.to_string(), *v)));
        let _ = writeln!(out, "  status       {statuses}");
        if !self.error_kinds.is_empty() {
            let kinds = join_counts(self.error_kinds.iter().map(|(k, v)| (k.clone(), *v)));
            let _ = writeln!(out, "  error kinds  {kinds}");
        }
        let _ = writeln!(
            out,
            "  tokens       prompt {}  completion {}  total {}",
            self.prompt_tokens,
            self.completion_tokens,
            self.prompt_tokens.saturating_add(self.completion_tokens)
        );
        let _ = writeln!(
            out,
            "  {:<12} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency ms", "count", "mean", "p50", "p90", "p99", "max"
        );
        for (name, s) in [("request", &self.latency), ("ttft", &self.ttft)] {
            let _ = writeln!(
                out,
                "  {:<12} {:>7} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                name, s.count, s.mean_ms, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
            );
        }
        out
    }
}

fn join_counts(items: impl Iterator<Item = (String, u64)>) -> String {
    let parts: Vec<String> = items.map(|(k, v)| format!("{k}: {v}")).collect();
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

/// What happened to one request.
#[derive(Clone, Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) stream: bool,
    pub(crate) status: Option<u16>,
    pub(crate) ok: bool,
    pub(crate) error_kind: Option<String>,
    pub(crate) latency: Duration,
    pub(crate) ttft: Option<Duration>,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
}

/// Accumulates [`Outcome`]s into a [`LoadReport`].
#[derive(Debug)]
pub(crate) struct Collector {
    report: LoadReport,
    latency: Histogram<u64>,
    ttft: Histogram<u64>,
}

/// Largest recordable latency (one hour); longer samples are clamped.
const MAX_MICROS: u64 = 3_600_000_000;

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Collector {
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Self {
            report: LoadReport::default(),
            latency: Histogram::new_with_bounds(1, MAX_MICROS, 3)?,
            ttft: Histogram::new_with_bounds(1, MAX_MICROS, 3)?,
        })
    }

    pub(crate) fn record(&mut self, o: Outcome) {
        let r = &mut self.report;
        r.sent += 1;
        if o.stream {
            r.stream_sent += 1;
        }
        match o.status {
            Some(code) => *r.status_counts.entry(code).or_default() += 1,
            None => r.transport_errors += 1,
        }
        r.prompt_tokens = r.prompt_tokens.saturating_add(o.prompt_tokens);
        r.completion_tokens = r.completion_tokens.saturating_add(o.completion_tokens);
        if o.ok {
            r.ok += 1;
            if o.stream {
                r.streamed_ok += 1;
            }
            self.latency.saturating_record(micros(o.latency));
            if let Some(t) = o.ttft {
                self.ttft.saturating_record(micros(t));
            }
        } else {
            r.errors += 1;
            let kind = o.error_kind.unwrap_or_else(|| "unknown".to_owned());
            *r.error_kinds.entry(kind).or_default() += 1;
        }
    }

    pub(crate) fn finish(mut self, elapsed: Duration) -> LoadReport {
        self.report.latency = LatencySummary::from_histogram(&self.latency);
        self.report.ttft = LatencySummary::from_histogram(&self.ttft);
        self.report.elapsed = elapsed;
        let secs = elapsed.as_secs_f64();
        self.report.rps = if secs > 0.0 {
            self.report.sent as f64 / secs
        } else {
            0.0
        };
        self.report
    }
}

/// Serde helper: a [`Duration`] as floating-point seconds.
mod duration_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ok(stream: bool, ms: u64) -> Outcome {
        Outcome {
            stream,
            status: Some(200),
            ok: true,
            latency: Duration::from_millis(ms),
            ttft: stream.then(|| Duration::from_millis(ms / 2)),
            prompt_tokens: 10,
            completion_tokens: 5,
            ..Outcome::default()
        }
    }

    #[test]
    fn collects_outcomes() {
        let mut c = Collector::new().unwrap();
        for ms in 1..=100 {
            c.record(ok(ms % 4 == 0, ms));
        }
        c.record(Outcome {
            status: Some(500),
            error_kind: Some("http 500".into()),
            ..Outcome::default()
        });
        c.record(Outcome {
            error_kind: Some("connect".into()),
            ..Outcome::default()
        });
        let r = c.finish(Duration::from_secs(2));
        assert_eq!(r.sent, 102);
        assert_eq!(r.ok, 100);
        assert_eq!(r.errors, 2);
        assert_eq!(r.stream_sent, 25);
        assert_eq!(r.streamed_ok, 25);
        assert_eq!(r.transport_errors, 1);
        assert_eq!(r.status_counts.get(&200), Some(&100));
        assert_eq!(r.status_counts.get(&500), Some(&1));
        assert_eq!(r.error_kinds.get("connect"), Some(&1));
        assert_eq!(r.prompt_tokens, 1000);
        assert_eq!(r.completion_tokens, 500);
        assert_eq!(r.latency.count, 100);
        assert!((r.latency.p50_ms - 50.0).abs() < 0.1, "{:?}", r.latency);
        assert!((r.latency.max_ms - 100.0).abs() < 0.1, "{:?}", r.latency);
        assert_eq!(r.ttft.count, 25);
        assert!((r.rps - 51.0).abs() < 1e-9);
        assert!(!r.all_transport_failed());

        let text = r.to_text();
        assert!(text.contains("sent 102"), "{text}");
        assert!(text.contains("200: 100, 500: 1"), "{text}");

        let json = serde_json::to_string(&r).unwrap();
        let back: LoadReport = serde_json::from_str(&json).unwrap();
        // Floats may lose their last bit through JSON; compare the rest.
        assert_eq!(back.status_counts, r.status_counts);
        assert_eq!(back.error_kinds, r.error_kinds);
        assert_eq!((back.sent, back.ok, back.errors), (r.sent, r.ok, r.errors));
        assert_eq!(back.elapsed, r.elapsed);
        assert!((back.ttft.mean_ms - r.ttft.mean_ms).abs() < 1e-9);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["elapsed"], 2.0);
        assert_eq!(v["status_counts"]["500"], 1);
    }

    #[test]
    fn empty_report() {
        let r = Collector::new().unwrap().finish(Duration::ZERO);
        assert_eq!(r.latency, LatencySummary::default());
        assert_eq!(r.rps, 0.0);
        assert!(!r.all_transport_failed());
        assert!(r.to_text().contains("status       -"));
    }
}
