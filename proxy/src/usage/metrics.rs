//! Request metrics of finished requests, recorded through handles that are made once per
//! series and then kept: a request adds to atomics instead of building a label set (a few
//! string copies) and looking it up in the recorder's registry for each of its seven series.
//!
//! A handle is made on the series' first sample, so a series appears in `/metrics` only once
//! it has one (as with the `metrics` macros). Handles of the same series made twice (one per
//! catalogue version of a model) share the recorder's storage.

use std::sync::{OnceLock, PoisonError, RwLock};

use metrics::{Counter, Histogram};
use tollgate_schemas::telemetry as t;
use tollgate_schemas::UsageEvent;

use crate::providers::Endpoint;

fn endpoint_index(e: Endpoint) -> usize {
    match e {
        Endpoint::ChatCompletions => 0,
        Endpoint::Completions => 1,
        Endpoint::Embeddings => 2,
        Endpoint::Messages => 3,
    }
}

/// Token kinds of `tollgate_proxy_tokens_total`.
const TOKEN_KINDS: [&str; 3] = ["prompt", "completion", "cached"];

/// The series of one model label (a configured public model, or `unknown`).
#[derive(Debug, Default)]
pub struct ModelMetrics {
    endpoints: [EndpointSeries; 4],
    upstream: OnceLock<Histogram>,
    ttft: OnceLock<Histogram>,
    tokens: [OnceLock<Counter>; 3],
    cost: OnceLock<Counter>,
}

/// The series of one model label and endpoint.
#[derive(Debug, Default)]
struct EndpointSeries {
    duration: OnceLock<Histogram>,
    /// `tollgate_proxy_overhead_seconds` (endpoint label only: the same series for every model).
    overhead: OnceLock<Histogram>,
    /// Request counters by status: a handful per endpoint, found by a scan.
    requests: RwLock<Vec<(u16, Counter)>>,
}

/// The series of requests whose model did not resolve (label `unknown`).
pub fn unknown_model() -> &'static ModelMetrics {
    static UNKNOWN: OnceLock<ModelMetrics> = OnceLock::new();
    UNKNOWN.get_or_init(ModelMetrics::default)
}

impl ModelMetrics {
    /// Record a finished request; `model` is the label of these series.
    pub fn record(&self, model: &str, endpoint: Endpoint, ev: &UsageEvent) {
        let i = endpoint_index(endpoint);
        let ep = endpoint.as_str();
        let series = &self.endpoints[i];
        series.requests(model, ep, ev.status_code).increment(1);
        series
            .duration
            .get_or_init(|| {
                metrics::histogram!(t::PROXY_REQUEST_DURATION, "model" => model.to_owned(), "endpoint" => ep)
            })
            .record(ev.latency_us as f64 / 1e6);
        if ev.upstream_latency_us > 0 {
            let overhead = (ev.latency_us - ev.upstream_latency_us).max(0) as f64 / 1e6;
            series
                .overhead
                .get_or_init(|| metrics::histogram!(t::PROXY_OVERHEAD, "endpoint" => ep))
                .record(overhead);
            self.upstream
                .get_or_init(
                    || metrics::histogram!(t::PROXY_UPSTREAM_DURATION, "model" => model.to_owned()),
                )
                .record(ev.upstream_latency_us as f64 / 1e6);
        }
        if let Some(ttft) = ev.ttft_us {
            self.ttft
                .get_or_init(|| metrics::histogram!(t::PROXY_TTFT, "model" => model.to_owned()))
                .record(ttft as f64 / 1e6);
        }
        let counts = [ev.prompt_tokens, ev.completion_tokens, ev.cached_tokens];
        for ((kind, slot), n) in TOKEN_KINDS.iter().zip(&self.tokens).zip(counts) {
            if n > 0 {
                slot.get_or_init(|| {
                    metrics::counter!(t::PROXY_TOKENS, "model" => model.to_owned(), "kind" => *kind)
                })
                .increment(n as u64);
            }
        }
        if ev.cost_nanos > 0 {
            self.cost
                .get_or_init(|| metrics::counter!(t::PROXY_COST, "model" => model.to_owned()))
                .increment(ev.cost_nanos as u64);
        }
    }
}

impl EndpointSeries {
    /// The request counter of this status, made on its first use.
    fn requests(&self, model: &str, endpoint: &'static str, status: i32) -> Counter {
        let status = u16::try_from(status).unwrap_or(0);
        let found = self
            .requests
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, c)| c.clone());
        if let Some(c) = found {
            return c;
        }
        let mut all = self
            .requests
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, c)) = all.iter().find(|(s, _)| *s == status) {
            return c.clone();
        }
        let c = metrics::counter!(t::PROXY_REQUESTS, "model" => model.to_owned(), "endpoint" => endpoint, "status" => status.to_string());
        all.push((status, c.clone()));
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    fn event(status: i32, ttft: Option<i64>) -> UsageEvent {
        UsageEvent {
            status_code: status,
            latency_us: 3_000,
            upstream_latency_us: 2_000,
            ttft_us: ttft,
            prompt_tokens: 10,
            completion_tokens: 5,
            cached_tokens: 0,
            cost_nanos: 42,
            ..UsageEvent::default()
        }
    }

    #[test]
    fn records_every_series_with_its_labels_once_per_sample() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let m = ModelMetrics::default();
            m.record("gpt", Endpoint::ChatCompletions, &event(200, None));
            m.record("gpt", Endpoint::ChatCompletions, &event(200, Some(700)));
            m.record("gpt", Endpoint::ChatCompletions, &event(429, None));
            m.record("gpt", Endpoint::Messages, &event(200, None));
            unknown_model().record("unknown", Endpoint::Embeddings, &event(404, None));
        });
        let text = handle.render();
        let value = |series: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .map(str::to_owned)
        };
        let requests = "tollgate_proxy_requests_total";
        for (labels, n) in [
            (
                r#"model="gpt",endpoint="chat.completions",status="200""#,
                "2",
            ),
            (
                r#"model="gpt",endpoint="chat.completions",status="429""#,
                "1",
            ),
            (r#"model="gpt",endpoint="messages",status="200""#, "1"),
            (r#"model="unknown",endpoint="embeddings",status="404""#, "1"),
        ] {
            assert_eq!(
                value(&format!("{requests}{{{labels}}}")).as_deref(),
                Some(n),
                "{labels}\n{text}"
            );
        }
        let tokens = "tollgate_proxy_tokens_total";
        assert_eq!(
            value(&format!(r#"{tokens}{{model="gpt",kind="prompt"}}"#)).as_deref(),
            Some("40")
        );
        assert_eq!(
            value(&format!(r#"{tokens}{{model="gpt",kind="completion"}}"#)).as_deref(),
            Some("20")
        );
        assert!(
            !text.contains(r#"kind="cached""#),
            "no series before its first token:\n{text}"
        );
        assert_eq!(
            value(r#"tollgate_proxy_cost_nanousd_total{model="gpt"}"#).as_deref(),
            Some("168")
        );
        assert_eq!(
            value(r#"tollgate_proxy_ttft_seconds_count{model="gpt"}"#).as_deref(),
            Some("1")
        );
        assert_eq!(
            value(r#"tollgate_proxy_upstream_duration_seconds_count{model="gpt"}"#).as_deref(),
            Some("4")
        );
        assert_eq!(
            value(r#"tollgate_proxy_overhead_seconds_count{endpoint="chat.completions"}"#)
                .as_deref(),
            Some("3")
        );
        assert_eq!(
            value(r#"tollgate_proxy_request_duration_seconds_count{model="gpt",endpoint="chat.completions"}"#).as_deref(),
            Some("3")
        );
    }
}
