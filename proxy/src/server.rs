//! Wiring: bind, serve, and shut down in phases (stop accepting, finish streams, flush events).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{AdminServer, AdminStartError};
use crate::config::ProxyConfig;
use crate::http::{AppState, PublicApi};
use crate::limits::{LimitStartError, Limiter};
use crate::routing::{Catalog, Health};
use crate::store::{ControlPlane, StoreError};
use crate::usage::{Publisher, PublisherStats};

/// A running proxy.
#[derive(Debug)]
pub struct ProxyHandle {
    addr: SocketAddr,
    control: ControlPlane,
    admin: Option<AdminServer>,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    publisher: Publisher,
    limits: Limiter,
    budgets: crate::budget::BudgetGate,
    grace: Duration,
    draining: Arc<std::sync::atomic::AtomicBool>,
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
    /// The config store could not be set up.
    #[error("config store: {0}")]
    Store(#[from] StoreError),
    /// The admin API could not start.
    #[error("admin API: {0}")]
    Admin(#[from] AdminStartError),
    /// The rate limiter could not be set up.
    #[error("rate limits: {0}")]
    Limits(#[from] LimitStartError),
    /// The budget gate could not be set up.
    #[error(transparent)]
    Budgets(#[from] crate::budget::GateStartError),
    /// TLS could not be set up.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
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
    let control = ControlPlane::start(&cfg).await?;
    let (budgets, credits) = match &cfg.redis {
        Some(r) => (
            crate::budget::BudgetGate::start_with(
                &cfg.budgets,
                r.url.expose(),
                &r.prefix,
                r.cluster,
            )?,
            Some(crate::budget::ledger::Credits::new(
                r.url.expose(),
                &r.prefix,
                r.cluster,
                cfg.budgets.clickhouse.as_ref(),
            )?),
        ),
        None => (crate::budget::BudgetGate::disabled(), None),
    };
    let admin = match &cfg.admin {
        Some(a) => Some(AdminServer::start_with(a, &control, credits).await?),
        None => None,
    };
    let limits = Limiter::start(&cfg.limits, cfg.redis.as_ref().map(|r| r.url.expose()))?;
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let state = AppState {
        catalog: control.catalog(),
        health: Arc::new(Health::default()),
        clients: Arc::new(crate::providers::client::Clients::new(
            cfg.upstream_http2_max_streams,
        )),
        usage: sink,
        proxy_id: proxy_id.clone().into(),
        max_body_bytes: cfg.max_body_bytes,
        metrics: crate::telemetry::prometheus(),
        limits: limits.clone(),
        budgets: budgets.clone(),
        draining: draining.clone(),
    };
    let app = PublicApi::new(state);
    let header_timeout = Duration::from_millis(cfg.header_read_timeout_ms);
    let tls = cfg.tls.as_ref().map(crate::tls::acceptor).transpose()?;
    let (stop, server) = crate::listener::spawn_service(listener, app, header_timeout, tls);
    tracing::info!(%addr, proxy_id, "proxy listening");
    Ok(ProxyHandle {
        addr,
        control,
        admin,
        stop,
        server,
        publisher,
        limits,
        budgets,
        grace: Duration::from_secs(cfg.shutdown_grace_secs),
        draining,
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

    /// The admin API's address, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::addr)
    }

    /// The current catalog snapshot.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.control.current()
    }

    /// Publishing counters.
    pub fn publisher_stats(&self) -> Arc<PublisherStats> {
        self.publisher.stats()
    }

    /// The rate limiter.
    pub fn limits(&self) -> &Limiter {
        &self.limits
    }

    /// Stop accepting, let in-flight requests and streams finish within the grace period,
    /// then flush usage events.
    pub async fn shutdown(self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
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
                // Aborting the server drops its set of connection tasks, which cancels them:
                // their meters emit the events of the requests cut short (status 499) before
                // the publisher flushes below.
                server.abort();
                let _ = server.await;
            }
        }
        self.limits.shutdown().await;
        self.budgets.shutdown();
        if let Some(admin) = self.admin {
            admin.shutdown().await;
        }
        self.control.shutdown().await;
        self.publisher.shutdown(Duration::from_secs(10)).await;
    }
}
