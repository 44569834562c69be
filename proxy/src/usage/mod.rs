//! Metering: one usage event per request, emitted exactly once even when the client leaves.

pub mod metrics;
pub mod publisher;
pub mod spool;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tollgate_schemas::UsageEvent;

pub use publisher::{Publisher, PublisherStats, UsageSink};

use crate::providers::Endpoint;
use crate::routing::{ApiKey, Deployment, Model};

/// Most metadata entries kept per event, and the longest key and value.
pub const METADATA_MAX_ENTRIES: usize = 16;
/// Longest metadata key kept.
pub const METADATA_MAX_KEY: usize = 64;
/// Longest metadata value kept.
pub const METADATA_MAX_VALUE: usize = 512;

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Input tokens (including cached).
    pub prompt: i64,
    /// Output tokens.
    pub completion: i64,
    /// Cached input tokens.
    pub cached: i64,
    /// Whether these were estimated by the proxy.
    pub estimated: bool,
}

/// How a request ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Status returned to the client.
    pub status: u16,
    /// Error class, if any.
    pub error_type: Option<String>,
    /// Token usage.
    pub tokens: Tokens,
    /// Time to first token, for streams.
    pub ttft_us: Option<i64>,
    /// Time spent waiting on the upstream.
    pub upstream_latency_us: i64,
    /// Upstream attempts.
    pub attempts: i32,
}

/// Drop guard that emits exactly one usage event for a request.
///
/// Call [`Meter::finish`] when the request ends; if the meter is dropped unfinished (the client
/// disconnected, or a task was cancelled) it emits the fallback outcome it was last given with
/// status 499 `client_disconnected`.
#[derive(Debug)]
pub struct Meter {
    sink: UsageSink,
    started: Instant,
    endpoint: Endpoint,
    event: Option<UsageEvent>,
    model: Option<Arc<Model>>,
    permit: Option<crate::limits::Permit>,
    reservation: Option<crate::budget::Reservation>,
    /// Tokens metered when the meter is dropped unfinished.
    fallback: Tokens,
}

impl Meter {
    /// Start metering an authenticated request.
    pub fn start(
        sink: UsageSink,
        proxy_id: &str,
        request_id: &str,
        key: &ApiKey,
        endpoint: Endpoint,
    ) -> Self {
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        let event = UsageEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            request_id: request_id.to_string(),
            ts_ms,
            proxy_id: proxy_id.to_string(),
            api_key_id: key.id.clone(),
            account_id: key.account_id.clone(),
            team_id: key.team_id.clone(),
            endpoint: endpoint.as_str().to_string(),
            attempts: 0,
            ..UsageEvent::default()
        };
        Self {
            sink,
            started: Instant::now(),
            endpoint,
            event: Some(event),
            model: None,
            permit: None,
            reservation: None,
            fallback: Tokens::default(),
        }
    }

    /// Tokens to meter if the request is cut short before it has an outcome: once it went
    /// upstream, the provider bills it whether or not the client waits for the answer.
    pub fn set_fallback_tokens(&mut self, tokens: Tokens) {
        self.fallback = tokens;
    }

    /// When the request started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Record the resolved model.
    pub fn set_model(&mut self, model: &Arc<Model>, stream: bool) {
        if let Some(ev) = self.event.as_mut() {
            ev.model = model.name.clone();
            ev.stream = stream;
        }
        self.model = Some(model.clone());
    }

    /// Record the deployment that is being tried (the last one tried is kept).
    pub fn set_deployment(&mut self, d: &Deployment) {
        if let Some(ev) = self.event.as_mut() {
            ev.provider = d.provider.as_str().to_string();
            ev.upstream_model.clone_from(&d.upstream_model);
        }
    }

    /// Record the requested model name before it is resolved (kept if resolution fails).
    pub fn set_requested_model(&mut self, name: &str) {
        if let Some(ev) = self.event.as_mut() {
            ev.model = name.to_string();
        }
    }

    /// Keep client metadata (string values only, bounded).
    pub fn set_metadata(&mut self, entries: Vec<(String, String)>) {
        if let Some(ev) = self.event.as_mut() {
            ev.metadata = entries.into_iter().collect();
        }
    }

    /// The request id (empty once the event is emitted).
    pub fn request_id(&self) -> &str {
        self.event.as_ref().map_or("", |e| e.request_id.as_str())
    }

    /// The usage event id (also names the request's budget reservation).
    pub fn event_id(&self) -> &str {
        self.event.as_ref().map_or("", |e| e.event_id.as_str())
    }

    /// Hold the request's budget reservation; it is settled with the final cost when the
    /// event is emitted.
    pub fn set_reservation(&mut self, reservation: Option<crate::budget::Reservation>) {
        self.reservation = reservation;
    }

    /// Hold the request's rate-limit permit; it is settled with the final token counts when
    /// the event is emitted (finish or drop), exactly once.
    pub fn set_permit(&mut self, permit: Option<crate::limits::Permit>) {
        self.permit = permit;
    }

    /// Emit the event with its final outcome.
    pub fn finish(mut self, outcome: Outcome) {
        self.emit(outcome);
    }

    fn emit(&mut self, outcome: Outcome) {
        let Some(mut ev) = self.event.take() else {
            return;
        };
        if let Some(p) = self.permit.take() {
            p.settle(&outcome.tokens);
        }
        ev.latency_us = self.started.elapsed().as_micros() as i64;
        ev.status_code = i32::from(outcome.status);
        ev.error_type = outcome.error_type;
        ev.ttft_us = outcome.ttft_us;
        ev.upstream_latency_us = outcome.upstream_latency_us;
        ev.attempts = outcome.attempts;
        ev.prompt_tokens = outcome.tokens.prompt;
        ev.completion_tokens = outcome.tokens.completion;
        ev.cached_tokens = outcome.tokens.cached;
        ev.usage_estimated = outcome.tokens.estimated;
        ev.cost_nanos = self.model.as_ref().map_or(0, |m| {
            m.cost_nanos(
                outcome.tokens.prompt,
                outcome.tokens.completion,
                outcome.tokens.cached,
            )
        });
        if let Some(r) = self.reservation.take() {
            r.settle(
                ev.cost_nanos,
                ev.prompt_tokens.saturating_add(ev.completion_tokens),
            );
        }
        // The model label is the public name only when it resolved (a bounded set); names
        // requested by clients that did not resolve are `unknown`.
        match &self.model {
            Some(m) => m.metrics.record(&m.name, self.endpoint, &ev),
            None => metrics::unknown_model().record("unknown", self.endpoint, &ev),
        }
        self.sink.submit(ev);
    }
}

/// `error_type` of a request whose client went away before it was answered.
pub const CLIENT_DISCONNECTED: &str = "client_disconnected";

impl Drop for Meter {
    fn drop(&mut self) {
        if self.event.is_some() {
            // A stream's relay finishes its meter itself with what was delivered (see
            // `http::stream`); a meter dropped anywhere else meters its fallback (zero until
            // the request went upstream).
            self.emit(Outcome {
                status: 499,
                error_type: Some(CLIENT_DISCONNECTED.into()),
                tokens: self.fallback,
                ..Outcome::default()
            });
        }
    }
}
