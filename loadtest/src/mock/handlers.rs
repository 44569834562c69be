//! HTTP routes of the mock upstream.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use tokio::sync::watch;

use super::anthropic;
use super::config::MockConfig;
use super::openai::{
    completion_body, completion_id, error_body, models_body, unix_now, ChatRequest, ChunkHeader,
    Usage,
};
use super::stats::StatsCounters;
use super::stream::{sse_response, StreamPlan};
use super::tokens::{completion_text, plan_completion, prompt_tokens};

/// Header overriding [`MockConfig::latency_ms`] for one request.
pub const HEADER_LATENCY_MS: &str = "x-mock-latency-ms";
/// Header overriding [`MockConfig::chunk_delay_ms`] for one request.
pub const HEADER_CHUNK_DELAY_MS: &str = "x-mock-chunk-delay-ms";
/// Header making the mock answer with this status (400..=599) and an
/// OpenAI-shaped error body, without counting tokens. `200` means no
/// injection.
pub const HEADER_STATUS: &str = "x-mock-status";

/// Largest accepted request body.
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Shared state of the routes.
#[derive(Clone, Debug)]
pub(crate) struct AppState {
    pub(crate) cfg: Arc<MockConfig>,
    pub(crate) stats: Arc<StatsCounters>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// The mock's router.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/completions", post(super::extra::completions))
        .route("/v1/embeddings", post(super::extra::embeddings))
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(super::extra::azure_chat),
        )
        .route(
            "/openai/deployments/{deployment}/{operation}",
            post(super::extra::azure),
        )
        .route("/v1/models", get(models))
        .route("/__mock/stats", get(stats))
        .route("/__mock/reset", post(reset))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_http2,
        ))
        .with_state(state)
}

/// Counts requests that arrived over HTTP/2 (`MockStats::http2_requests`).
async fn count_http2(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if req.version() == axum::http::Version::HTTP_2 {
        state.stats.add_http2();
    }
    next.run(req).await
}

/// Sleeps `ms` milliseconds unless the server shuts down first.
/// Returns `false` when interrupted by shutdown.
pub(crate) async fn sleep_or_shutdown(ms: u64, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    if ms == 0 {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(ms)) => true,
        _ = shutdown.wait_for(|stop| *stop) => false,
    }
}

/// An OpenAI-shaped error response.
fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(error_body(status, message))).into_response()
}

fn shutting_down() -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "mock server is shutting down",
    )
}

/// Per-request overrides read from `x-mock-*` headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Overrides {
    pub(crate) latency_ms: u64,
    pub(crate) chunk_delay_ms: u64,
    pub(crate) status: Option<StatusCode>,
}

fn header_u64(headers: &HeaderMap, name: &str) -> Result<Option<u64>, String> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| format!("invalid {name} header: expected a non-negative integer")),
    }
}

pub(crate) fn overrides(headers: &HeaderMap, cfg: &MockConfig) -> Result<Overrides, String> {
    let latency_ms = header_u64(headers, HEADER_LATENCY_MS)?.unwrap_or(cfg.latency_ms);
    let chunk_delay_ms = header_u64(headers, HEADER_CHUNK_DELAY_MS)?.unwrap_or(cfg.chunk_delay_ms);
    let status = match header_u64(headers, HEADER_STATUS)? {
        None | Some(200) => None,
        Some(code @ 400..=599) => u16::try_from(code)
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok()),
        Some(_) => {
            return Err(format!(
                "invalid {HEADER_STATUS} header: expected 200 or 400..=599"
            ))
        }
    };
    Ok(Overrides {
        latency_ms,
        chunk_delay_ms,
        status,
    })
}

/// Model-name prefix making the mock fail, e.g. `mock-status-503`: lets a proxy's model
/// deployment fail on purpose without the client sending mock headers.
pub const MODEL_STATUS_PREFIX: &str = "mock-status-";

pub(crate) fn model_status(model: &str) -> Option<StatusCode> {
    let code: u16 = model.strip_prefix(MODEL_STATUS_PREFIX)?.parse().ok()?;
    (400..=599)
        .contains(&code)
        .then(|| StatusCode::from_u16(code).ok())
        .flatten()
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    state.stats.add_request();
    let ov = match overrides(&headers, &state.cfg) {
        Ok(ov) => ov,
        Err(msg) => return error_response(StatusCode::BAD_REQUEST, &msg),
    };
    let mut shutdown = state.shutdown.clone();

    if let Some(status) = ov.status {
        if !sleep_or_shutdown(ov.latency_ms, &mut shutdown).await {
            return shutting_down();
        }
        tracing::debug!(status = status.as_u16(), "injecting error");
        let msg = format!("mock injected error ({HEADER_STATUS}: {})", status.as_u16());
        return error_response(status, &msg);
    }

    let body = match body {
        Ok(b) => b,
        Err(rej) => return error_response(rej.status(), &rej.body_text()),
    };
    let req: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("invalid chat completion request body: {e}"),
            )
        }
    };

    if let Some(status) = model_status(&req.model) {
        if !sleep_or_shutdown(ov.latency_ms, &mut shutdown).await {
            return shutting_down();
        }
        let msg = format!("mock injected error (model {})", req.model);
        return error_response(status, &msg);
    }

    let prompt = prompt_tokens(req.messages.iter().map(|m| m.content.as_ref()));
    let (completion, finish) = plan_completion(
        req.token_limit(),
        state.cfg.default_completion_tokens,
        state.cfg.max_completion_tokens,
    );
    let usage = Usage {
        prompt_tokens: prompt,
        completion_tokens: u64::from(completion),
    };

    if !sleep_or_shutdown(ov.latency_ms, &mut shutdown).await {
        return shutting_down();
    }
    let stream = req.is_stream();
    state.stats.add_served(stream, usage);
    tracing::debug!(
        model = %req.model,
        stream,
        prompt_tokens = prompt,
        completion_tokens = completion,
        "serving chat completion"
    );

    let id = completion_id();
    let created = unix_now();
    if stream {
        let include_usage = req.include_usage();
        let plan = StreamPlan {
            header: ChunkHeader {
                id,
                created,
                model: req.model,
                usage_null: include_usage,
            },
            tokens: completion,
            finish,
            usage: include_usage.then_some(usage),
            chunk_delay_ms: ov.chunk_delay_ms,
        };
        sse_response(plan, shutdown)
    } else {
        let content = completion_text(completion);
        Json(completion_body(
            &id, created, &req.model, &content, finish, usage,
        ))
        .into_response()
    }
}

/// `GET /v1/models`.
async fn models() -> Response {
    Json(models_body()).into_response()
}

/// `GET /__mock/stats`.
async fn stats(State(state): State<AppState>) -> Response {
    Json(state.stats.snapshot()).into_response()
}

/// `POST /__mock/reset`.
async fn reset(State(state): State<AppState>) -> Response {
    state.stats.reset();
    Json(state.stats.snapshot()).into_response()
}

/// `GET /healthz`.
async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "unknown mock endpoint")
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this mock endpoint",
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn parses_overrides() {
        let cfg = MockConfig {
            latency_ms: 3,
            chunk_delay_ms: 4,
            ..MockConfig::default()
        };
        let mut h = HeaderMap::new();
        let ov = overrides(&h, &cfg).unwrap();
        assert_eq!((ov.latency_ms, ov.chunk_delay_ms, ov.status), (3, 4, None));

        h.insert(HEADER_LATENCY_MS, HeaderValue::from_static("10"));
        h.insert(HEADER_CHUNK_DELAY_MS, HeaderValue::from_static(" 0 "));
        h.insert(HEADER_STATUS, HeaderValue::from_static("429"));
        let ov = overrides(&h, &cfg).unwrap();
        assert_eq!(ov.latency_ms, 10);
        assert_eq!(ov.chunk_delay_ms, 0);
        assert_eq!(ov.status, Some(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(
            model_status("mock-status-503"),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(model_status("mock-status-200"), None);
        assert_eq!(model_status("gpt-4o"), None);

        h.insert(HEADER_STATUS, HeaderValue::from_static("200"));
        assert_eq!(overrides(&h, &cfg).unwrap().status, None);
        h.insert(HEADER_STATUS, HeaderValue::from_static("302"));
        assert!(overrides(&h, &cfg).is_err());
        h.insert(HEADER_STATUS, HeaderValue::from_static("abc"));
        assert!(overrides(&h, &cfg).is_err());
    }
}
