//! Tollgate aggregator: consumes usage events from Kafka into ClickHouse, exactly once.
//!
//! Data path: [`consumer`] (Kafka group) → [`pipeline`] (per-partition [`buffer`]s, batching,
//! backoff) → [`write`] (skip stored offsets, insert, bisect refused rows, dead letters;
//! errors sorted by [`classify`]) → [`sink`] (ClickHouse) → offset commit. [`sequence`] counts
//! `proxy_seq` gaps and duplicates, [`lag`] samples consumer lag, [`http`] serves `/metrics`,
//! `/healthz` and `/readyz`. [`summary`] reads the stored usage back. [`budget`] counts every
//! stored batch on budget and credit counters (before the commit) and writes decisions;
//! [`webhook`] credits signed payments.

pub mod budget;
pub mod budget_config;
pub mod budget_eval;
pub mod budget_rebuild;
pub mod buffer;
pub mod classify;
pub mod config;
pub mod consumer;
pub mod credits;
pub mod http;
pub mod lag;
pub mod pipeline;
pub mod sequence;
pub mod sink;
pub mod state;
pub mod summary;
pub mod telemetry;
pub mod webhook;
pub mod write;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use config::AggregatorConfig;
pub use state::AggregatorStats;

/// How often consumer lag is sampled.
const LAG_EVERY: Duration = Duration::from_secs(2);

/// Failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Migrations failed.
    #[error(transparent)]
    Migrate(#[from] tollgate_schemas::migrate::MigrateError),
    /// The consumer could not be created.
    #[error("cannot create the Kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The budget settings are unusable.
    #[error(transparent)]
    Budgets(#[from] budget::BudgetsError),
    /// `tls` is unusable (the error names the key).
    #[error(transparent)]
    Tls(#[from] tollgate_schemas::tls::TlsError),
    /// The HTTP listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Configured address.
        addr: String,
        /// IO error.
        source: std::io::Error,
    },
}

/// A running aggregator instance.
#[derive(Debug)]
pub struct AggregatorHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shared: Arc<state::Shared>,
    addr: SocketAddr,
}

/// Apply migrations (when configured), start the HTTP listener, join the consumer group and
/// start the loop.
pub async fn start(cfg: AggregatorConfig) -> Result<AggregatorHandle, StartError> {
    telemetry::install();
    let tls = cfg
        .tls
        .as_ref()
        .map(|t| tollgate_schemas::tls::acceptor_at("tls", t))
        .transpose()?;
    let listen_err = |source| StartError::Listen {
        addr: cfg.listen.clone(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(listen_err)?;
    let addr = listener.local_addr().map_err(listen_err)?;
    let shared = Arc::new(state::Shared::default());
    let sink = sink::ClickHouseSink::new(&cfg.clickhouse, &cfg.kafka.topic);
    if cfg.clickhouse.migrate {
        tollgate_schemas::migrate::run_on(
            &sink::client(&cfg.clickhouse),
            &cfg.clickhouse.database,
            cfg.clickhouse.cluster.as_deref(),
        )
        .await?;
        shared.clickhouse_result(&Ok::<(), String>(()));
    } else {
        shared.clickhouse_result(&sink.ping().await);
    }
    let consumer = Arc::new(consumer::consumer(&cfg, shared.stats.clone())?);
    let budgets = budget::Budgets::new(
        &cfg.budgets,
        &cfg.kafka.topic,
        sink::client(&cfg.clickhouse).with_database(&cfg.clickhouse.database),
    )?;
    let (budgets, evaluator) = budgets.unzip();
    let pipeline = pipeline::Pipeline::new(&cfg, consumer.clone(), sink, shared.clone())
        .with_budgets(budgets.clone());
    let (stop, stopped) = watch::channel(false);
    let extra = match &budgets {
        Some(b) => webhook::router(
            b.clone(),
            cfg.budgets.secret(|k| std::env::var(k).ok()),
            cfg.budgets.webhook_tolerance_secs,
        ),
        None => axum::Router::new(),
    };
    let mut tasks = vec![
        tokio::spawn(pipeline.run(stopped.clone())),
        tokio::spawn(lag::run(
            consumer,
            cfg.kafka.topic.clone(),
            shared.clone(),
            LAG_EVERY,
            cfg.sequence.window,
            stopped.clone(),
        )),
        tokio::spawn(http::serve_with(
            listener,
            shared.clone(),
            extra,
            tls,
            stopped.clone(),
        )),
    ];
    if let Some(evaluator) = evaluator {
        tasks.push(tokio::spawn(evaluator.run(stopped)));
    }
    tracing::info!(
        topic = cfg.kafka.topic,
        group = cfg.kafka.group_id,
        database = cfg.clickhouse.database,
        %addr,
        "aggregator started"
    );
    Ok(AggregatorHandle {
        stop,
        tasks,
        shared,
        addr,
    })
}

impl AggregatorHandle {
    /// Counters.
    pub fn stats(&self) -> Arc<AggregatorStats> {
        self.shared.stats.clone()
    }

    /// Address of the HTTP listener (`/metrics`, `/healthz`, `/readyz`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `None` when ready, else why not (as `/readyz` answers).
    pub fn not_ready(&self) -> Option<String> {
        self.shared.not_ready()
    }

    /// Whether `proxy_seq` gaps are being counted now (this instance owns every partition and
    /// is not catching up a backlog; see [`sequence`]).
    pub fn gaps_reliable(&self) -> bool {
        self.shared
            .gaps_reliable
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Store and commit what is buffered, leave the group.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "aggregator task failed");
            }
        }
    }

    /// Stop without flushing, as a crash would (for tests of recovery).
    pub fn abort(self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
