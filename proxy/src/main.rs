//! `tollgate-proxy`: parse the CLI, load config, serve until SIGTERM/SIGINT.

/// mimalloc: the hot path allocates small buffers per request; glibc malloc showed up as
/// ~15 % of the proxy's CPU in profiles (docs/benchmarks.md).
/// (Cargo feature `mimalloc`, on by default.)
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Tollgate proxy: OpenAI-compatible LLM gateway with metering.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// YAML configuration file.
    #[arg(
        short,
        long,
        env = "TOLLGATE_PROXY_CONFIG",
        default_value = "proxy.yaml"
    )]
    config: PathBuf,
    /// Log format: `pretty` or `json`.
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", default_value = "pretty")]
    log_format: String,
    /// Only validate the configuration and exit.
    #[arg(long)]
    check: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if cli.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        // Colours only on a terminal: a log file should not hold escape codes.
        tracing_subscriber::fmt()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_env_filter(filter)
            .init();
    }
    let cfg = tollgate_proxy::ProxyConfig::load(&cli.config)?;
    if cli.check {
        println!(
            "config OK: {} models, {} keys",
            cfg.models.len(),
            cfg.api_keys.len()
        );
        return Ok(());
    }
    // Install the metrics recorder before anything records (the spool gauges are set when
    // the publisher opens the spool).
    let _ = tollgate_proxy::telemetry::prometheus();
    let proxy = tollgate_proxy::start(cfg).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    proxy.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
