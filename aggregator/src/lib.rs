//! Tollgate aggregator: consumes usage events from Kafka into ClickHouse.
//!
//! Data path: [`consumer`] (Kafka group, batching, watermarks) → [`sink`] (ClickHouse insert)
//! → offset commit. [`summary`] reads the stored usage back.

pub mod config;
pub mod consumer;
pub mod sink;
pub mod summary;

use std::sync::Arc;

use tokio::sync::watch;

pub use config::AggregatorConfig;
pub use consumer::AggregatorStats;

/// Failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Migrations failed.
    #[error(transparent)]
    Migrate(#[from] tollgate_schemas::migrate::MigrateError),
    /// The consumer could not be created.
    #[error("cannot create the Kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// A running aggregator instance.
#[derive(Debug)]
pub struct AggregatorHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<AggregatorStats>,
}

/// Apply migrations (when configured), join the consumer group and start the loop.
pub async fn start(cfg: AggregatorConfig) -> Result<AggregatorHandle, StartError> {
    if cfg.clickhouse.migrate {
        tollgate_schemas::migrate::run(&sink::client(&cfg.clickhouse), &cfg.clickhouse.database)
            .await?;
    }
    let stats = Arc::new(AggregatorStats::default());
    let consumer = consumer::consumer(&cfg, stats.clone())?;
    let pipeline = consumer::Pipeline::new(
        &cfg,
        consumer,
        sink::ClickHouseSink::new(&cfg.clickhouse),
        stats.clone(),
    );
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(pipeline.run(stopped));
    tracing::info!(
        topic = cfg.kafka.topic,
        group = cfg.kafka.group_id,
        database = cfg.clickhouse.database,
        "aggregator started"
    );
    Ok(AggregatorHandle { stop, task, stats })
}

impl AggregatorHandle {
    /// Counters.
    pub fn stats(&self) -> Arc<AggregatorStats> {
        self.stats.clone()
    }

    /// Store and commit what is buffered, leave the group.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "aggregator task failed");
        }
    }

    /// Stop without flushing, as a crash would (for tests of recovery).
    pub fn abort(self) {
        self.task.abort();
    }
}
