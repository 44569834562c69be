//! `tollgate-loadtest`: fire chat-completion requests and report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tollgate_loadtest::loadgen::{run, LoadConfig, LoadReport};
use tollgate_loadtest::shutdown::shutdown_signal;
use tracing_subscriber::EnvFilter;

/// Load generator for OpenAI-compatible chat completions (Tollgate or the
/// mock).
#[derive(Debug, Parser)]
#[command(name = "tollgate-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a load test and print a report.
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Base URL of the proxy or mock (`/v1/chat/completions` is appended).
    #[arg(
        long,
        env = "TOLLGATE_LOADTEST_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// API key, sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "TOLLGATE_LOADTEST_KEY")]
    key: Option<String>,
    /// Model of every request.
    #[arg(long, env = "TOLLGATE_LOADTEST_MODEL", default_value = "gpt-4o-mini")]
    model: String,
    /// Total number of requests.
    #[arg(long, env = "TOLLGATE_LOADTEST_REQUESTS", default_value_t = 300)]
    requests: u64,
    /// Requests in flight at most.
    #[arg(long, env = "TOLLGATE_LOADTEST_CONCURRENCY", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,
    /// Share of streaming requests, 0.0 to 1.0.
    #[arg(long, env = "TOLLGATE_LOADTEST_STREAM_SHARE", default_value_t = 0.0,
          value_parser = parse_share)]
    stream_share: f64,
    /// max_tokens of every request.
    #[arg(long, env = "TOLLGATE_LOADTEST_MAX_TOKENS", default_value_t = 16)]
    max_tokens: u32,
    /// Content of the user message.
    #[arg(
        long,
        env = "TOLLGATE_LOADTEST_PROMPT",
        default_value = "Write a short poem about toll bridges."
    )]
    prompt: String,
    /// Do not set stream_options.include_usage on streaming requests.
    #[arg(long)]
    no_include_usage: bool,
    /// JSON object sent as the request's top-level "metadata".
    #[arg(long, env = "TOLLGATE_LOADTEST_METADATA", value_parser = parse_json)]
    metadata: Option<serde_json::Value>,
    /// Per-request timeout in seconds.
    #[arg(long, env = "TOLLGATE_LOADTEST_TIMEOUT_SECS", default_value_t = 60.0)]
    timeout_secs: f64,
    /// Also write the report as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be between 0.0 and 1.0".to_owned())
    }
}

fn parse_json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("invalid JSON: {e}"))
}

fn load_config(args: &RunArgs) -> anyhow::Result<LoadConfig> {
    let timeout = Duration::try_from_secs_f64(args.timeout_secs)
        .context("--timeout-secs must be a positive number")?;
    Ok(LoadConfig {
        base_url: args.url.clone(),
        api_key: args.key.clone(),
        model: args.model.clone(),
        requests: args.requests,
        concurrency: usize::try_from(args.concurrency).context("--concurrency too large")?,
        stream_share: args.stream_share,
        max_tokens: args.max_tokens,
        prompt: args.prompt.clone(),
        include_usage: !args.no_include_usage,
        metadata: args.metadata.clone(),
        timeout,
    })
}

fn write_json(report: &LoadReport, path: &PathBuf) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    if path.as_os_str() == "-" {
        println!("{json}");
    } else {
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn run_cmd(args: RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(&args)?;
    let report = tokio::select! {
        r = run(cfg) => r?,
        () = shutdown_signal() => {
            eprintln!("interrupted");
            return Ok(ExitCode::from(130));
        }
    };
    print!("{}", report.to_text());
    if let Some(path) = &args.json {
        write_json(&report, path)?;
    }
    if report.all_transport_failed() {
        eprintln!(
            "error: none of the {} requests got an HTTP response from {}",
            report.sent, args.url
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run(args) => run_cmd(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
