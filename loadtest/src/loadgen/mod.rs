//! A load generator for OpenAI-compatible chat completions.
//!
//! * [`run`] sends [`LoadConfig::requests`] requests with at most
//!   [`LoadConfig::concurrency`] in flight, a deterministic share of them
//!   streaming (see [`is_stream_request`]), and returns a [`LoadReport`].
//! * [`run_scenario`] runs a [`Scenario`](crate::scenario::Scenario) file:
//!   open loop (constant arrival rate, latency measured from each request's
//!   intended send time) or closed loop (fixed concurrency), with warm-up,
//!   model/key mixes and HDR histograms, into a [`RunSummary`].

pub mod engine;
pub mod output;
pub mod progress;
pub mod recorder;
mod report;
mod request;
pub mod schedule;
pub mod sse;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;

pub use engine::{run_scenario, Runner, Slice, Target, Workload};
pub use progress::progress_bar;
pub use recorder::{Added, Percentiles, Recorder, RunSummary};
pub use report::{LatencySummary, LoadReport};
pub use request::request_body;

use report::Collector;
use request::Bodies;

/// What to send, where, and how hard.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Base URL of the proxy or mock, e.g. `http://127.0.0.1:8080`. Requests
    /// go to `{base}/v1/chat/completions`; a base already ending in `/v1` or
    /// in `/chat/completions` is completed accordingly.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// Model name of every request.
    pub model: String,
    /// Total number of requests.
    pub requests: u64,
    /// Maximum requests in flight (at least 1).
    pub concurrency: usize,
    /// Share of streaming requests, in `0.0..=1.0`: exactly
    /// `round(requests * stream_share)` of them stream, spread evenly (see
    /// [`is_stream_request`]).
    pub stream_share: f64,
    /// `max_tokens` of every request.
    pub max_tokens: u32,
    /// Content of the single user message.
    pub prompt: String,
    /// Set `stream_options.include_usage` on streaming requests.
    pub include_usage: bool,
    /// Sent as the request's top-level `metadata` field when set.
    pub metadata: Option<serde_json::Value>,
    /// Timeout of each whole request (until the end of the body).
    pub timeout: Duration,
}

impl Default for LoadConfig {
    /// 100 requests to `http://127.0.0.1:8080`, model `gpt-4o-mini`,
    /// concurrency 8, no streaming, 16 max tokens, usage included, 30 s
    /// timeout.
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8080".to_owned(),
            api_key: None,
            model: "gpt-4o-mini".to_owned(),
            requests: 100,
            concurrency: 8,
            stream_share: 0.0,
            max_tokens: 16,
            prompt: "Write a short poem about toll bridges.".to_owned(),
            include_usage: true,
            metadata: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Whether request number `index` (0-based) streams, for a given share.
///
/// Request `i` streams iff `round((i + 1) * share) > round(i * share)`, so
/// the first `n` requests contain exactly `round(n * share)` streams (the sum
/// telescopes), evenly spread. `share` is clamped to `0.0..=1.0` (NaN counts
/// as 0).
pub fn is_stream_request(index: u64, share: f64) -> bool {
    let share = if share.is_nan() {
        0.0
    } else {
        share.clamp(0.0, 1.0)
    };
    let i = index as f64;
    ((i + 1.0) * share).round() > (i * share).round()
}

/// The chat-completions URL for a base URL (see [`LoadConfig::base_url`]).
pub fn chat_completions_url(base_url: &str) -> anyhow::Result<reqwest::Url> {
    let base = base_url.trim().trim_end_matches('/');
    let full = if base.ends_with("/chat/completions") {
        base.to_owned()
    } else if base.ends_with("/v1") {
        format!("{base}/chat/completions")
    } else {
        format!("{base}/v1/chat/completions")
    };
    let url =
        reqwest::Url::parse(&full).with_context(|| format!("invalid base URL {base_url:?}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("base URL {base_url:?} must be http or https");
    }
    Ok(url)
}

/// Runs the load test described by `cfg`.
///
/// Fails only on an invalid configuration (bad URL, zero concurrency, share
/// outside `0.0..=1.0`, zero timeout) or if the HTTP client cannot be built;
/// failed requests, including unreachable targets, are counted in the report
/// (see [`LoadReport::all_transport_failed`]).
pub async fn run(cfg: LoadConfig) -> anyhow::Result<LoadReport> {
    if cfg.concurrency == 0 {
        bail!("concurrency must be at least 1");
    }
    if !(0.0..=1.0).contains(&cfg.stream_share) {
        bail!(
            "stream_share must be within 0.0..=1.0, got {}",
            cfg.stream_share
        );
    }
    if cfg.timeout.is_zero() {
        bail!("timeout must be positive");
    }
    let url = chat_completions_url(&cfg.base_url)?;
    let client = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .no_proxy()
        .pool_max_idle_per_host(cfg.concurrency)
        .build()
        .context("building the HTTP client")?;
    let bodies = Bodies::new(&cfg)?;
    let cfg = Arc::new(cfg);
    let mut collector = Collector::new()?;

    let start = Instant::now();
    let mut results = futures::stream::iter(0..cfg.requests)
        .map(|i| {
            let (client, url, cfg, bodies) = (&client, &url, Arc::clone(&cfg), &bodies);
            async move {
                let stream = is_stream_request(i, cfg.stream_share);
                request::send(client, url, &cfg, bodies, stream).await
            }
        })
        .buffer_unordered(cfg.concurrency);
    while let Some(outcome) = results.next().await {
        collector.record(outcome);
    }
    Ok(collector.finish(start.elapsed()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn streams(n: u64, share: f64) -> Vec<u64> {
        (0..n).filter(|&i| is_stream_request(i, share)).collect()
    }

    #[test]
    fn stream_share_selects_rounded_count() {
        assert!(streams(100, 0.0).is_empty());
        assert_eq!(streams(100, 1.0).len(), 100);
        assert_eq!(streams(50, 0.3).len(), 15);
        assert_eq!(streams(10, 0.3).len(), 3);
        assert_eq!(streams(300, 0.3).len(), 90);
        assert_eq!(streams(3, 0.5).len(), 2); // round(1.5) = 2
        assert_eq!(streams(7, 0.25).len(), 2); // round(1.75) = 2
        assert_eq!(streams(1, 0.4).len(), 0);
        for n in 0..200u64 {
            for share in [0.0, 0.1, 0.25, 0.3, 1.0 / 3.0, 0.5, 0.7, 0.99, 1.0] {
                let expected = (n as f64 * share).round() as usize;
                assert_eq!(streams(n, share).len(), expected, "n={n} share={share}");
            }
        }
    }

    #[test]
    fn stream_share_is_spread_evenly() {
        assert_eq!(streams(10, 0.5), vec![0, 2, 4, 6, 8]);
        let s = streams(20, 0.25);
        assert_eq!(s.len(), 5);
        assert!(s.windows(2).all(|w| w[1] - w[0] == 4), "{s:?}");
        assert!(streams(10, f64::NAN).is_empty());
        assert_eq!(streams(10, 7.0).len(), 10);
    }

    #[test]
    fn builds_urls() {
        let u = |b: &str| chat_completions_url(b).unwrap().to_string();
        assert_eq!(
            u("http://127.0.0.1:8080"),
            "http://127.0.0.1:8080/v1/chat/completions"
        );
        assert_eq!(u("http://h:1/"), "http://h:1/v1/chat/completions");
        assert_eq!(u("http://h:1/v1/"), "http://h:1/v1/chat/completions");
        assert_eq!(
            u("https://h/openai/v1/chat/completions"),
            "https://h/openai/v1/chat/completions"
        );
        assert!(chat_completions_url("not a url").is_err());
        assert!(chat_completions_url("ftp://h").is_err());
    }

    #[tokio::test]
    async fn rejects_bad_config() {
        let bad = [
            LoadConfig {
                concurrency: 0,
                ..LoadConfig::default()
            },
            LoadConfig {
                stream_share: 1.5,
                ..LoadConfig::default()
            },
            LoadConfig {
                stream_share: f64::NAN,
                ..LoadConfig::default()
            },
            LoadConfig {
                timeout: Duration::ZERO,
                ..LoadConfig::default()
            },
            LoadConfig {
                base_url: "::".into(),
                ..LoadConfig::default()
            },
        ];
        for cfg in bad {
            assert!(run(cfg.clone()).await.is_err(), "{cfg:?}");
        }
    }
}
