//! The HTTP front: router, shared state, request ids, health.

pub mod auth;
pub mod body;
pub mod chunk;
pub mod client_body;
pub mod error;
pub mod forward;
pub mod pipeline;
pub mod sse;
pub mod stream;
pub mod translate;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::watch;

use crate::routing::{Catalog, Health};
use crate::usage::UsageSink;

/// State shared by all handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Current models and keys (swapped on config change).
    pub catalog: watch::Receiver<Arc<Catalog>>,
    /// Deployment health.
    pub health: Arc<Health>,
    /// Upstream HTTP clients (pooled).
    pub clients: Arc<crate::providers::client::Clients>,
    /// Usage event sink.
    pub usage: UsageSink,
    /// This process's id in usage events.
    pub proxy_id: Arc<str>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Renders `/metrics` (absent when another recorder is installed).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Rate limits of keys and models.
    pub limits: crate::limits::Limiter,
    /// Budget and credit decisions.
    pub budgets: crate::budget::BudgetGate,
}

/// Build the public API router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(pipeline::chat_completions))
        .route("/v1/completions", post(pipeline::completions))
        .route("/v1/embeddings", post(pipeline::embeddings))
        .route("/v1/messages", post(pipeline::messages))
        .route("/v1/models", get(pipeline::list_models))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        .route("/metrics", get(metrics_page))
        .fallback(not_found)
        // The handlers enforce `max_body_bytes` themselves to answer with an OpenAI-shaped 413.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn metrics_page(axum::extract::State(st): axum::extract::State<AppState>) -> String {
    st.metrics.as_ref().map(|h| h.render()).unwrap_or_default()
}

async fn not_found() -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = serde_json::json!({"error": {
        "message": "Unknown path. Tollgate serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/messages and /v1/models.",
        "type": "invalid_request_error", "param": null, "code": "unknown_url"}});
    (axum::http::StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

/// The request id: the client's `x-request-id` when it is sane, else a new UUIDv7.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get("x-request-id")
        .filter(|v| {
            let b = v.as_bytes();
            !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
        })
        .cloned()
        .or_else(|| HeaderValue::from_str(&uuid::Uuid::now_v7().to_string()).ok())
        .unwrap_or_else(|| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_is_kept_when_sane_and_generated_otherwise() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }
}
