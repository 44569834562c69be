//! Mock LLM upstream speaking the OpenAI chat-completions and Anthropic Messages wire formats.
//!
//! Endpoints:
//!
//! * `POST /v1/chat/completions`: plain JSON or SSE stream (`"stream": true`);
//!   token counts follow the deterministic rules of [`tokens`]. Per-request
//!   overrides: [`HEADER_LATENCY_MS`], [`HEADER_CHUNK_DELAY_MS`],
//!   [`HEADER_STATUS`]. The `Authorization` header is ignored. A body that is
//!   not a valid request gets a 400 with an OpenAI-shaped error.
//! * `POST /v1/messages`: Anthropic's Messages API, plain JSON or SSE stream, with the same
//!   token rules, overrides and counters (see [`anthropic`]).
//! * `GET /v1/models`: a small fixed model list ([`openai::MODELS`]).
//! * `GET /__mock/stats`: [`MockStats`] as JSON; `POST /__mock/reset` zeroes
//!   it (and answers with the zeroed stats).
//! * `GET /healthz`: `{"status":"ok"}`.
//!
//! Unknown paths answer 404 and wrong methods 405, both OpenAI-shaped.

pub mod anthropic;
pub mod config;
mod extra;
mod handlers;
pub mod openai;
mod stats;
mod stream;
pub mod tokens;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::MockConfig;
pub use handlers::{HEADER_CHUNK_DELAY_MS, HEADER_LATENCY_MS, HEADER_STATUS};
pub use stats::MockStats;

use handlers::{router, AppState};
use stats::StatsCounters;

/// How long [`MockServer::shutdown`] waits for open connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running mock upstream. Dropping it stops it too (gracefully, in the
/// background); [`MockServer::shutdown`] waits for it.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    stats: Arc<StatsCounters>,
    shutdown_tx: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl MockServer {
    /// Binds `addr` (port 0 picks a free port), spawns the server on the
    /// current Tokio runtime and returns once it accepts connections.
    pub async fn start(addr: SocketAddr, cfg: MockConfig) -> io::Result<MockServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let stats = Arc::new(StatsCounters::default());
        let app = router(AppState {
            cfg: Arc::new(cfg),
            stats: Arc::clone(&stats),
            shutdown: shutdown_rx.clone(),
        });
        let mut signal = shutdown_rx;
        // Small SSE chunks must not wait for Nagle / delayed ACKs.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    // Also resolves (with an error) if the sender is gone.
                    let _ = signal.wait_for(|stop| *stop).await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "mock server failed");
            }
        });
        tracing::info!(%addr, "mock upstream listening");
        Ok(MockServer {
            addr,
            stats,
            shutdown_tx,
            task: Some(task),
        })
    }

    /// The bound address (with the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`; an unspecified bind address (`0.0.0.0`, `::`) is
    /// replaced by the loopback address.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// A snapshot of the served-request counters.
    pub fn stats(&self) -> MockStats {
        self.stats.snapshot()
    }

    /// Zeroes the counters (same as `POST /__mock/reset`).
    pub fn reset_stats(&self) {
        self.stats.reset();
    }

    /// Stops accepting connections, ends in-flight latencies (with 503) and
    /// streams (truncated), and waits up to 5 s for connections to close
    /// before aborting the server task.
    pub async fn shutdown(mut self) {
        self.shutdown_tx.send_replace(true);
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        tracing::info!(addr = %self.addr, "mock upstream stopped");
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.shutdown_tx.send_replace(true);
    }
}
