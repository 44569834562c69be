//! The HTTP front: router, shared state, request ids, health.

pub mod chat;
pub mod error;
pub mod stream;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue};
use axum::routing::{get, post};
use axum::Router;

use crate::routing::Catalog;
use crate::usage::UsageSink;

/// State shared by all handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Models and keys.
    pub catalog: Arc<Catalog>,
    /// Upstream HTTP client (pooled).
    pub client: reqwest::Client,
    /// Usage event sink.
    pub usage: UsageSink,
    /// This process's id in usage events.
    pub proxy_id: Arc<str>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
}

/// Build the public API router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        // The handlers enforce `max_body_bytes` themselves to answer with an OpenAI-shaped 413.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
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
