//! The aggregator's HTTP listener: `/metrics` (Prometheus text), `/healthz` (the process
//! answers) and `/readyz` (the consume loop runs and ClickHouse answers; 503 with the reason
//! otherwise). Served by the shared [`tollgate_schemas::listener`]: header read timeout and
//! optional TLS (`tls:` of the config).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tollgate_schemas::tls::TlsAcceptor;

use crate::state::Shared;

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    match shared.not_ready() {
        None => (StatusCode::OK, "ready\n".into()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// The routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

/// Serve plain HTTP until `stop` turns true.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    serve_with(listener, shared, Router::new(), None, stop).await;
}

/// [`serve`] with more routes (the payment webhook), over TLS when `tls` is set.
pub async fn serve_with(
    listener: TcpListener,
    shared: Arc<Shared>,
    extra: Router,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let header_timeout =
        Duration::from_millis(tollgate_schemas::listener::default_header_read_timeout_ms());
    let app = router(shared).merge(extra);
    if let Err(e) =
        tollgate_schemas::listener::serve(listener, app, header_timeout, tls, shutdown).await
    {
        tracing::error!(error = %e, "aggregator HTTP listener failed");
    }
}
