//! Wiring: bind, serve, and shut down in phases (stop accepting, finish streams, flush events).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ProxyConfig;
use crate::http::{router, AppState};
use crate::providers::openai;
use crate::routing::Catalog;
use crate::usage::{Publisher, PublisherStats};

/// A running proxy.
#[derive(Debug)]
pub struct ProxyHandle {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    publisher: Publisher,
    grace: Duration,
}

/// Failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// IO error.
        source: std::io::Error,
    },
    /// The Kafka producer could not be created.
    #[error("cannot create the Kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The HTTP client could not be created.
    #[error("cannot create the upstream HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Start serving `cfg` (already validated).
pub async fn start(cfg: ProxyConfig) -> Result<ProxyHandle, StartError> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let proxy_id = if cfg.proxy_id.is_empty() {
        format!("proxy-{}", uuid::Uuid::now_v7())
    } else {
        cfg.proxy_id.clone()
    };
    let (publisher, sink) = Publisher::start(&cfg.kafka)?;
    let state = AppState {
        catalog: Arc::new(Catalog::from_config(&cfg, |k| std::env::var(k).ok())),
        client: openai::client(Duration::from_secs(10))?,
        usage: sink,
        proxy_id: proxy_id.clone().into(),
        max_body_bytes: cfg.max_body_bytes,
    };
    let (stop, mut stopped) = watch::channel(false);
    let app = router(state);
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
    });
    tracing::info!(%addr, proxy_id, "proxy listening");
    Ok(ProxyHandle {
        addr,
        stop,
        server,
        publisher,
        grace: Duration::from_secs(cfg.shutdown_grace_secs),
    })
}

impl ProxyHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Publishing counters.
    pub fn publisher_stats(&self) -> Arc<PublisherStats> {
        self.publisher.stats()
    }

    /// Stop accepting, let in-flight requests and streams finish within the grace period,
    /// then flush usage events.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut server = self.server;
        match tokio::time::timeout(self.grace, &mut server).await {
            Ok(Ok(Ok(()))) => tracing::info!("all connections finished"),
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "server error during shutdown"),
            Ok(Err(e)) => tracing::error!(error = %e, "server task failed"),
            Err(_) => {
                tracing::warn!(
                    grace_secs = self.grace.as_secs(),
                    "grace period over; closing remaining connections"
                );
                server.abort();
            }
        }
        self.publisher.shutdown(Duration::from_secs(10)).await;
    }
}
