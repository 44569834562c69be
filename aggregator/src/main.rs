//! `tollgate-aggregator`: run the Kafka → ClickHouse pipeline, apply migrations, or print a
//! usage summary.

/// mimalloc: the hot path allocates small buffers per request; glibc malloc showed up as
/// ~15 % of the proxy's CPU in profiles (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Tollgate aggregator.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// YAML configuration file (every key optional).
    #[arg(short, long, env = "TOLLGATE_AGGREGATOR_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log format: `pretty` or `json`.
    #[arg(
        long,
        env = "TOLLGATE_LOG_FORMAT",
        default_value = "pretty",
        global = true
    )]
    log_format: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume usage events into ClickHouse (the default).
    Run,
    /// Apply ClickHouse migrations and exit.
    Migrate,
    /// Print the usage summary per model.
    Summary {
        /// Only requests tagged with this `run_id` metadata value.
        #[arg(long)]
        run_id: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild budget and credit counters from ClickHouse (current windows; safe while
    /// aggregators run).
    RebuildBudgets {
        /// Only print counter and recount side by side.
        #[arg(long)]
        dry_run: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    let cfg = tollgate_aggregator::AggregatorConfig::load(cli.config.as_deref())?;
    let ch = tollgate_aggregator::sink::client(&cfg.clickhouse);
    match cli.command.unwrap_or(Command::Run) {
        Command::Migrate => {
            let applied = tollgate_schemas::migrate::run_on(
                &ch,
                &cfg.clickhouse.database,
                cfg.clickhouse.cluster.as_deref(),
            )
            .await?;
            println!("applied migrations: {applied:?}");
        }
        Command::Summary { run_id, json } => {
            let db = ch.with_database(&cfg.clickhouse.database);
            let rows = tollgate_aggregator::summary::summarize(&db, run_id.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", tollgate_aggregator::summary::to_table(&rows));
            }
        }
        Command::RebuildBudgets { dry_run } => {
            let db = ch.with_database(&cfg.clickhouse.database);
            let Some((budgets, _)) =
                tollgate_aggregator::budget::Budgets::new(&cfg.budgets, &cfg.kafka.topic, db)?
            else {
                anyhow::bail!(
                    "budgets are off: set budgets.redis_url (or TOLLGATE_BUDGETS_REDIS_URL)"
                );
            };
            let report =
                tollgate_aggregator::budget_rebuild::rebuild_all(&budgets, dry_run).await?;
            println!(
                "{:<8} {:<32} {:<10} {:>20} {:>20} written",
                "kind", "id", "window", "counter", "recount"
            );
            for r in report {
                println!(
                    "{:<8} {:<32} {:<10} {:>20} {:>20} {}",
                    r.kind, r.id, r.window, r.before, r.after, r.written
                );
            }
        }
        Command::Run => {
            let handle = tollgate_aggregator::start(cfg).await?;
            shutdown_signal().await;
            tracing::info!("shutting down: storing buffered rows and committing");
            handle.shutdown().await;
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = ctrl_c.await;
        }
    }
}
