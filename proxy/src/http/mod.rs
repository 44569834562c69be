//! The HTTP front: router, shared state, request ids, health.

pub mod auth;
pub mod body;
pub mod chunk;
pub mod client_body;
pub mod error;
pub mod forward;
pub mod json_scan;
pub mod pipeline;
pub mod sse;
pub mod stream;
pub mod translate;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use crate::providers::Endpoint;
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
    /// Set when shutdown begins: `/readyz` then answers 503, so a load balancer probing over
    /// a kept-alive connection stops sending before the connection closes.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

/// The public API as a hyper service. Requests are routed by method and path here, with no
/// router layers in between: axum's boxing, extraction and per-request copy of the state were
/// about 3 % of the proxy's instructions per request.
#[derive(Clone, Debug)]
pub struct PublicApi(Arc<AppState>);

impl PublicApi {
    /// The API over `state`.
    pub fn new(state: AppState) -> Self {
        Self(Arc::new(state))
    }
}

impl hyper::service::Service<axum::http::Request<hyper::body::Incoming>> for PublicApi {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send>>;

    fn call(&self, req: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        let st = Arc::clone(&self.0);
        Box::pin(async move { Ok(route(&st, req.map(Body::new)).await) })
    }
}

/// The model endpoints by path.
fn endpoint(path: &str) -> Option<Endpoint> {
    Some(match path {
        "/v1/chat/completions" => Endpoint::ChatCompletions,
        "/v1/completions" => Endpoint::Completions,
        "/v1/embeddings" => Endpoint::Embeddings,
        "/v1/messages" => Endpoint::Messages,
        _ => return None,
    })
}

/// Answer one request: the model endpoints (`POST`), `/v1/models`, health, readiness and
/// `/metrics` (`GET`, and `HEAD`, which hyper answers without the body).
pub async fn route(st: &AppState, req: axum::http::Request<Body>) -> Response {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    let path = req.uri().path();
    if let Some(e) = endpoint(path) {
        if req.method() == Method::POST {
            return pipeline::handle(st, req, e).await;
        }
        return method_not_allowed("POST");
    }
    match (get, path) {
        (true, "/v1/models") => pipeline::list_models(st, req).await,
        (true, "/healthz") => "ok".into_response(),
        (true, "/readyz") => {
            if st.draining.load(std::sync::atomic::Ordering::Relaxed) {
                (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
            } else {
                "ready".into_response()
            }
        }
        (true, "/metrics") => st
            .metrics
            .as_ref()
            .map(|h| h.render())
            .unwrap_or_default()
            .into_response(),
        (false, "/v1/models" | "/healthz" | "/readyz" | "/metrics") => method_not_allowed("GET"),
        _ => not_found(),
    }
}

fn not_found() -> Response {
    let body = serde_json::json!({"error": {
        "message": "Unknown path. Tollgate serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/messages and /v1/models.",
        "type": "invalid_request_error", "param": null, "code": "unknown_url"}});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

fn method_not_allowed(allow: &'static str) -> Response {
    let body = serde_json::json!({"error": {
        "message": format!("This path only answers {allow}."),
        "type": "invalid_request_error", "param": null, "code": "method_not_allowed"}});
    let mut resp = (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response();
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
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
