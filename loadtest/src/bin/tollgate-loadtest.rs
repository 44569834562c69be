//! `tollgate-loadtest`: fire chat-completion requests and report.
//!
//! * `run`: a fixed number of requests (flags), or a scenario file
//!   (`--scenario`, open or closed loop) with JSON/Markdown/SVG results.
//! * `compare`: a scenario against the mock directly and through the proxy,
//!   interleaved, with added latency, saturation, CPU and RSS.
//! * `bench`: the standard benchmark (`make bench`).

/// mimalloc: the load generator allocates small buffers per request and shares the machine with
/// the proxy it measures; glibc malloc was ~10-15 % of its CPU (Cargo feature `mimalloc`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tollgate_loadtest::compare::bench::{run_bench, utc_stamp, BenchOptions};
use tollgate_loadtest::compare::ramp::{saturation, RampConfig};
use tollgate_loadtest::compare::spawn::{free_port, generated_proxy_config, Launch, Service};
use tollgate_loadtest::compare::{compare_scenario, Sides};
use tollgate_loadtest::loadgen::engine::{run_scenario, Target};
use tollgate_loadtest::loadgen::output::{markdown_runs, write_outputs};
use tollgate_loadtest::loadgen::progress::progress_bar;
use tollgate_loadtest::loadgen::{run, LoadConfig, LoadReport};
use tollgate_loadtest::scenario::{Mode, Scenario, WeightedKey};
use tollgate_loadtest::shutdown::shutdown_signal;
use tollgate_loadtest::verify::{verify_run, VerifyConfig};
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
    /// Run a load test (fixed request count, or a scenario file) and report.
    Run(RunArgs),
    /// Compare a scenario directly against the mock and through the proxy.
    Compare(CompareArgs),
    /// Run the standard benchmark plan and write a dated report.
    Bench(BenchArgs),
    /// Forward HTTP/1.1 to one upstream with nothing in between (the benchmark's reference
    /// hop: what the HTTP stack alone costs here).
    Forward(ForwardArgs),
}

#[derive(Debug, Args)]
struct ForwardArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18087")]
    listen: std::net::SocketAddr,
    /// Upstream base URL (`http://host:port`).
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    upstream: String,
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
    /// API key, sent as `Authorization: Bearer <key>` (with --scenario:
    /// replaces the scenario's keys).
    #[arg(long, env = "TOLLGATE_LOADTEST_KEY")]
    key: Option<String>,
    /// Scenario file (open or closed loop); the request flags below are
    /// then ignored.
    #[arg(long)]
    scenario: Option<PathBuf>,
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
    #[command(flatten)]
    scenario_opts: ScenarioOpts,
}

/// Options of scenario runs.
#[derive(Debug, Args)]
struct ScenarioOpts {
    /// Directory for `<scenario>-<time>.{json,md,svg}`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// `metadata.run_id` of every request (default: generated).
    #[arg(long)]
    run_id: Option<String>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// After the run, check that this ClickHouse (HTTP URL) holds one usage
    /// row per successful request.
    #[arg(long)]
    verify_clickhouse: Option<String>,
    /// Database of `usage_events` for --verify-clickhouse.
    #[arg(long, default_value = "tollgate")]
    clickhouse_database: String,
    /// How long to wait for the rows, seconds.
    #[arg(long, default_value_t = 60.0)]
    verify_deadline_secs: f64,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// Scenario file.
    #[arg(long)]
    scenario: PathBuf,
    /// Mock base URL (direct side). Without it and --proxy-url, the mock and
    /// the proxy are started from --bin-dir.
    #[arg(long, requires = "proxy_url")]
    direct_url: Option<String>,
    /// Proxy base URL.
    #[arg(long, requires = "direct_url")]
    proxy_url: Option<String>,
    /// Proxy process id, for CPU per request and RSS.
    #[arg(long)]
    proxy_pid: Option<u32>,
    /// Directory of tollgate-mock and tollgate-proxy when starting them.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Kafka of a started proxy.
    #[arg(long, env = "TOLLGATE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// Usage topic of a started proxy.
    #[arg(long, default_value = "tollgate.usage.v1")]
    kafka_topic: String,
    /// Length of each interleaved slice, seconds.
    #[arg(long, default_value_t = 3.0)]
    slice_secs: f64,
    /// Run a closed-loop saturation ramp first, through these levels
    /// (comma-separated workers).
    #[arg(long, value_delimiter = ',')]
    saturation_levels: Vec<usize>,
    /// Seconds per ramp level and side.
    #[arg(long, default_value_t = 3.0)]
    saturation_step_secs: f64,
    /// With a ramp and an open-loop scenario: rate = this fraction of the
    /// proxy's saturation throughput.
    #[arg(long)]
    saturation_fraction: Option<f64>,
    #[command(flatten)]
    scenario_opts: ScenarioOpts,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Benchmark plan.
    #[arg(long, default_value = "loadtest/scenarios/bench.yaml")]
    plan: PathBuf,
    /// Report directory.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Directory of the service logs.
    #[arg(
        long,
        env = "TOLLGATE_BENCH_LOG_DIR",
        default_value = ".tollgate/logs/bench"
    )]
    log_dir: PathBuf,
    /// Directory of the release binaries (overrides the plan's `bin_dir`).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Storage engine of the plan's Kafka broker (Tansu), named in the report (`make bench`
    /// passes the one it started).
    #[arg(long, value_parser = ["memory", "sqlite"])]
    kafka_storage: Option<String>,
    /// No progress bars.
    #[arg(long)]
    no_progress: bool,
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

fn stamp() -> String {
    utc_stamp(std::time::SystemTime::now()).0
}

fn run_id(opts: &ScenarioOpts, name: &str) -> String {
    opts.run_id
        .clone()
        .unwrap_or_else(|| format!("{name}-{}-{}", stamp(), std::process::id()))
}

async fn verify(opts: &ScenarioOpts, run_id: &str, expected: u64) -> anyhow::Result<bool> {
    let Some(url) = &opts.verify_clickhouse else {
        return Ok(true);
    };
    let cfg = VerifyConfig {
        clickhouse_url: url.clone(),
        database: opts.clickhouse_database.clone(),
        deadline: Duration::try_from_secs_f64(opts.verify_deadline_secs)
            .context("--verify-deadline-secs")?,
        ..VerifyConfig::default()
    };
    let v = verify_run(&cfg, run_id, expected).await?;
    println!(
        "\nClickHouse rows of run {run_id}: expected {} rows {} distinct {} lost {} duplicated {} extra {}",
        v.expected, v.counts.rows, v.counts.requests, v.lost, v.duplicated, v.extra
    );
    Ok(v.passed())
}

async fn run_scenario_cmd(args: &RunArgs, path: &Path) -> anyhow::Result<ExitCode> {
    let mut scenario = Scenario::load(path)?;
    if let Some(key) = &args.key {
        scenario.keys = vec![WeightedKey {
            key: key.clone(),
            weight: 1,
        }];
    }
    let opts = &args.scenario_opts;
    let run_id = run_id(opts, &scenario.name);
    let bar = progress_bar(
        scenario.warmup() + scenario.duration(),
        &scenario.name,
        !opts.no_progress,
    );
    let summary =
        run_scenario(&scenario, Target::new(&args.url, &args.url)?, &run_id, &bar).await?;
    bar.finish_and_clear();
    let md = format!(
        "# {} ({})\n\nrun_id `{run_id}`, target {}\n\n{}",
        scenario.name,
        scenario.load_label(),
        args.url,
        markdown_runs(&[&summary])
    );
    print!("{md}");
    if let Some(dir) = &opts.out {
        let files = write_outputs(
            dir,
            &format!("{}-{}", scenario.name, stamp()),
            &format!("{} ({})", scenario.name, scenario.load_label()),
            &summary,
            &md,
            &[&summary],
        )?;
        eprintln!("wrote {}, .md and .svg", files.json.display());
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&summary)? + "\n";
        if path.as_os_str() == "-" {
            print!("{json}");
        } else {
            std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let verified = verify(opts, &run_id, summary.total_ok()).await?;
    if summary.sent > 0 && summary.transport_errors == summary.sent {
        eprintln!("error: no request got an HTTP response from {}", args.url);
        return Ok(ExitCode::from(2));
    }
    Ok(if verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

async fn run_cmd(args: RunArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = args.scenario.clone() {
        return run_scenario_cmd(&args, &path).await;
    }
    let cfg = load_config(&args)?;
    let report = run(cfg).await?;
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

/// Mock and proxy started by `compare` itself.
struct Started {
    mock: Service,
    proxy: Service,
    sides: Sides,
}

async fn start_pair(args: &CompareArgs, scenario: &Scenario) -> anyhow::Result<Started> {
    let dir = std::env::temp_dir().join(format!("tollgate-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (mock_port, proxy_port) = (free_port()?, free_port()?);
    let mock_url = format!("http://127.0.0.1:{mock_port}");
    let proxy_url = format!("http://127.0.0.1:{proxy_port}");
    let mut mock = Service::start(Launch {
        name: "mock",
        program: &args.bin_dir.join("tollgate-mock"),
        args: vec!["--listen".into(), format!("127.0.0.1:{mock_port}")],
        env: vec![("RUST_LOG".into(), "warn".into())],
        log_dir: &dir,
    })?;
    mock.wait_healthy(&format!("{mock_url}/healthz"), Duration::from_secs(30))
        .await?;
    let models: Vec<String> = scenario.models.iter().map(|m| m.name.clone()).collect();
    let keys: Vec<String> = scenario.keys.iter().map(|k| k.key.clone()).collect();
    let config = dir.join("proxy.yaml");
    std::fs::write(
        &config,
        generated_proxy_config(
            &format!("127.0.0.1:{proxy_port}"),
            &mock_url,
            &models,
            &keys,
            &args.kafka_brokers,
            &args.kafka_topic,
            &dir.join("spool"),
        ),
    )?;
    let mut proxy = Service::start(Launch {
        name: "proxy",
        program: &args.bin_dir.join("tollgate-proxy"),
        args: vec!["--config".into(), config.display().to_string()],
        env: vec![("TOLLGATE_LOG_FORMAT".into(), "json".into())],
        log_dir: &dir,
    })?;
    proxy
        .wait_healthy(&format!("{proxy_url}/healthz"), Duration::from_secs(30))
        .await?;
    eprintln!(
        "started mock {mock_url} and proxy {proxy_url}; logs in {}",
        dir.display()
    );
    let sides = Sides {
        direct: Target::new("direct", &mock_url)?,
        proxy: Target::new("proxy", &proxy_url)?,
        bare: None,
        proxy_pid: proxy.pid(),
    };
    Ok(Started { mock, proxy, sides })
}

async fn compare_cmd(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let mut scenario = Scenario::load(&args.scenario)?;
    let opts = &args.scenario_opts;
    let run_id = run_id(opts, &scenario.name);
    let (started, sides) = match (&args.direct_url, &args.proxy_url) {
        (Some(d), Some(p)) => (
            None,
            Sides {
                direct: Target::new("direct", d)?,
                proxy: Target::new("proxy", p)?,
                bare: None,
                proxy_pid: args.proxy_pid,
            },
        ),
        _ => {
            let s = start_pair(&args, &scenario).await?;
            let sides = s.sides.clone();
            (Some(s), sides)
        }
    };
    let slice = Duration::try_from_secs_f64(args.slice_secs).context("--slice-secs")?;
    let mut ramp_result = None;
    if !args.saturation_levels.is_empty() {
        let ramp = RampConfig {
            levels: args.saturation_levels.clone(),
            step: Duration::try_from_secs_f64(args.saturation_step_secs)
                .context("--saturation-step-secs")?,
            warmup: Duration::from_millis(500),
            min_growth: 0.05,
            patience: 2,
        };
        let bar = progress_bar(
            (ramp.step + ramp.warmup) * 2 * u32::try_from(ramp.levels.len()).unwrap_or(1),
            "saturation",
            !opts.no_progress,
        );
        let sat = saturation(&scenario, &sides, &ramp, &run_id, &bar).await?;
        bar.finish_and_clear();
        println!(
            "saturation: direct {:.0} ok/s, proxy {:.0} ok/s",
            sat.direct_rps, sat.proxy_rps
        );
        if let (Some(f), Mode::Open) = (args.saturation_fraction, scenario.mode) {
            scenario.rate = Some((sat.proxy_rps * f).max(1.0).round());
        }
        ramp_result = Some(sat);
    }
    let bar = progress_bar(
        (scenario.warmup() + scenario.duration()) * 2,
        &scenario.name,
        !opts.no_progress,
    );
    let c = compare_scenario(&scenario, &sides, slice, &run_id, &bar).await?;
    bar.finish_and_clear();
    let mut md = format!(
        "# compare {} ({})\n\nrun_id `{run_id}`, slices of {} s\n\n{}\n\
         | added | p50 ms | p90 ms | p99 ms | p99.9 ms |\n|---|---:|---:|---:|---:|\n",
        c.scenario,
        c.load,
        c.slice_secs,
        markdown_runs(&[&c.direct, &c.proxy])
    );
    for (name, a) in [("latency", &c.added_latency), ("TTFT", &c.added_ttft)] {
        md.push_str(&format!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            a.p50_ms, a.p90_ms, a.p99_ms, a.p999_ms
        ));
    }
    if let Some(cpu) = c.proxy_cpu_ms_per_request {
        md.push_str(&format!("\nProxy CPU per request: {cpu:.3} ms\n"));
    }
    if let Some(b) = c.machine_busy {
        md.push_str(&format!(
            "Machine CPU busy: direct slices {:.0} %, proxy slices {:.0} %\n",
            b.direct_pct, b.proxy_pct
        ));
    }
    if let Some(m) = c.proxy_memory {
        md.push_str(&format!(
            "Proxy RSS: max sampled {:.1} MB, VmHWM {:.1} MB\n",
            m.rss_max_kib as f64 * 1024.0 / 1e6,
            m.hwm_kib as f64 * 1024.0 / 1e6
        ));
    }
    print!("{md}");
    if let Some(dir) = &opts.out {
        let value = serde_json::json!({"comparison": &c, "saturation": ramp_result});
        let files = write_outputs(
            dir,
            &format!("compare-{}-{}", c.scenario, stamp()),
            &format!("compare {} ({})", c.scenario, c.load),
            &value,
            &md,
            &[&c.direct, &c.proxy],
        )?;
        eprintln!("wrote {}, .md and .svg", files.json.display());
    }
    let expected = c.proxy.total_ok() + ramp_result.as_ref().map_or(0, |s| s.proxy_total_ok());
    let verified = verify(opts, &run_id, expected).await?;
    if let Some(s) = started {
        s.proxy.stop(Duration::from_secs(10)).await;
        s.mock.stop(Duration::from_secs(5)).await;
    }
    Ok(if verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

async fn bench_cmd(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let opts = BenchOptions {
        plan: args.plan,
        out_dir: args.out,
        log_dir: args.log_dir,
        bin_dir: args.bin_dir,
        kafka_storage: args.kafka_storage,
        progress: !args.no_progress,
    };
    let (report, md) = run_bench(&opts).await?;
    println!("{}", report.markdown());
    eprintln!("report: {} (+ .json, .svg)", md.display());
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
    let work = async {
        match cli.command {
            Command::Run(args) => run_cmd(args).await,
            Command::Compare(args) => compare_cmd(args).await,
            Command::Bench(args) => bench_cmd(args).await,
            Command::Forward(args) => {
                tollgate_loadtest::forward::run(
                    args.listen,
                    &args.upstream,
                    std::future::pending::<()>(),
                )
                .await?;
                Ok(ExitCode::SUCCESS)
            }
        }
    };
    let result = tokio::select! {
        r = work => r,
        () = shutdown_signal() => {
            eprintln!("interrupted");
            return ExitCode::from(130);
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
