//! `tollgate-mock`: a deterministic OpenAI-compatible mock LLM upstream.

/// mimalloc: the mock allocates small buffers per request and shares the machine with
/// the proxy it measures; glibc malloc was ~10-15 % of its CPU (Cargo feature `mimalloc`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;

use clap::Parser;
use tollgate_loadtest::mock::{MockConfig, MockServer};
use tollgate_loadtest::shutdown::shutdown_signal;
use tracing_subscriber::EnvFilter;

/// Mock LLM upstream speaking the OpenAI chat-completions wire format.
#[derive(Debug, Parser)]
#[command(name = "tollgate-mock", version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "TOLLGATE_MOCK_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Delay before each chat-completion response, in milliseconds.
    #[arg(long, env = "TOLLGATE_MOCK_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Delay between stream chunks, in milliseconds.
    #[arg(long, env = "TOLLGATE_MOCK_CHUNK_DELAY_MS", default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Completion tokens when a request sets no max_tokens.
    #[arg(
        long,
        env = "TOLLGATE_MOCK_DEFAULT_COMPLETION_TOKENS",
        default_value_t = 16
    )]
    default_completion_tokens: u32,
    /// Upper bound on completion tokens.
    #[arg(
        long,
        env = "TOLLGATE_MOCK_MAX_COMPLETION_TOKENS",
        default_value_t = 4096
    )]
    max_completion_tokens: u32,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "TOLLGATE_MOCK_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if cli.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }

    let cfg = MockConfig {
        latency_ms: cli.latency_ms,
        chunk_delay_ms: cli.chunk_delay_ms,
        default_completion_tokens: cli.default_completion_tokens,
        max_completion_tokens: cli.max_completion_tokens,
    };
    tracing::info!(?cfg, "starting mock upstream");
    let server = MockServer::start(cli.listen, cfg).await?;
    shutdown_signal().await;
    tracing::info!(stats = ?server.stats(), "shutting down");
    server.shutdown().await;
    Ok(())
}
