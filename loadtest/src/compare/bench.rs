//! `tollgate-loadtest bench`: the standard benchmark of `make bench`.
//!
//! Starts the mocks, the aggregator and the proxy (release binaries, the
//! proxy config a file next to the plan), ramps to saturation, compares
//! direct and proxied latency at a fraction of it, holds many open streams
//! through the proxy, checks that ClickHouse holds one row per successful
//! request, and writes the report (see [`super::report`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::cpu::{cpu_profile, CpuProfile, CpuSpec, Proc, Processes};
use super::ramp::{saturation, RampConfig, Saturation};
use super::reference::{self, ReferenceRun, ReferenceSpec};
use super::report::{BenchReport, Machine, ProxyUsage, StreamsResult, Targets};
use super::spawn::{http_url, Launch, Service};
use super::{compare_scenario, Comparison, Sides};
use crate::loadgen::engine::{Runner, Target};
use crate::loadgen::progress::progress_bar;
use crate::procstat;
use crate::scenario::{Mode, Scenario};
use crate::verify::{drop_database, verify_run, VerifyConfig};

fn default_bin_dir() -> PathBuf {
    PathBuf::from("target/release")
}
fn default_slice() -> f64 {
    3.0
}
fn default_deadline() -> f64 {
    120.0
}
fn default_min_growth() -> f64 {
    0.05
}
fn default_patience() -> usize {
    2
}
fn default_log() -> String {
    "info".to_owned()
}

/// A mock upstream to start.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MockSpec {
    /// Name used by the phases (`mock: fast`).
    pub name: String,
    /// Listen address.
    pub listen: SocketAddr,
    /// Delay before each response, ms.
    #[serde(default)]
    pub latency_ms: u64,
    /// Delay between stream chunks, ms.
    #[serde(default)]
    pub chunk_delay_ms: u64,
}

/// Kafka settings passed to the proxy and the aggregator.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSpec {
    /// Bootstrap servers.
    pub brokers: String,
    /// Usage topic (must exist).
    pub topic: String,
}

/// The aggregator to start.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AggregatorSpec {
    /// Its HTTP listener (health, metrics).
    pub listen: String,
    /// Consumer group.
    pub group: String,
    /// ClickHouse database.
    pub database: String,
    /// ClickHouse HTTP URL.
    pub clickhouse_url: String,
    /// Drop `database` before the aggregator starts (it recreates the tables): every run
    /// starts on empty tables instead of the rows of all earlier runs, whose ever larger
    /// background merges would otherwise share the machine with the proxy.
    #[serde(default)]
    pub fresh_database: bool,
}

/// The saturation ramp run, closed-loop, on each comparison scenario that
/// has a `saturation_fraction`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SaturationSpec {
    /// Concurrency levels.
    pub levels: Vec<usize>,
    /// Measured seconds per level and side.
    pub step_secs: f64,
    /// Warm-up seconds per level and side.
    #[serde(default)]
    pub warmup_secs: f64,
    /// Growth below this fraction counts as flat.
    #[serde(default = "default_min_growth")]
    pub min_growth: f64,
    /// Flat levels in a row before stopping.
    #[serde(default = "default_patience")]
    pub patience: usize,
}

/// What a comparison is checked against.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Added request latency p50 and p99.
    AddedLatency,
    /// Added TTFT p50.
    AddedTtft,
}

/// A second proxy with every optional feature off (metering, rate limits, budgets), ramped
/// next to the full one so the report shows what those features cost at saturation.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BareProxySpec {
    /// Its configuration file (relative to the plan); same models and keys as the full one.
    pub config: PathBuf,
    /// Its base URL (the config's `listen`).
    pub url: String,
}

/// One interleaved comparison.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompareSpec {
    /// Scenario file.
    pub scenario: PathBuf,
    /// Mock of the direct side.
    pub mock: String,
    /// Ramp this scenario to saturation first and run it open-loop at this
    /// fraction of the proxy's saturation throughput (the scenario's `rate`
    /// otherwise).
    #[serde(default)]
    pub saturation_fraction: Option<f64>,
    /// Targets judged on this comparison.
    #[serde(default)]
    pub checks: Vec<Check>,
    /// Overrides the scenario's `duration_secs`.
    #[serde(default)]
    pub duration_secs: Option<f64>,
    /// Overrides the scenario's `warmup_secs`.
    #[serde(default)]
    pub warmup_secs: Option<f64>,
    /// Then the same comparison, at the same load, through the features-off proxy
    /// (`bare_proxy`): what the extra hop alone adds on this machine.
    #[serde(default)]
    pub features_off: bool,
    /// Then the same comparison, at the same load, through each of the plan's `references`.
    #[serde(default)]
    pub references: bool,
}

/// Many open streams through the proxy, for its memory.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamsSpec {
    /// Scenario file (closed loop, `concurrency` = streams held open).
    pub scenario: PathBuf,
    /// Overrides the scenario's `concurrency`.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Overrides the scenario's `duration_secs`.
    #[serde(default)]
    pub duration_secs: Option<f64>,
    /// Overrides the scenario's `warmup_secs`.
    #[serde(default)]
    pub warmup_secs: Option<f64>,
}

/// A benchmark plan (`loadtest/scenarios/bench.yaml`). Relative scenario
/// and proxy-config paths are relative to the plan file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BenchPlan {
    /// Name in file names and titles.
    pub name: String,
    /// Directory of the release binaries.
    #[serde(default = "default_bin_dir")]
    pub bin_dir: PathBuf,
    /// Proxy configuration file.
    pub proxy_config: PathBuf,
    /// Proxy base URL (its `listen`).
    pub proxy_url: String,
    /// The features-off proxy of the saturation ramps.
    #[serde(default)]
    pub bare_proxy: Option<BareProxySpec>,
    /// Proxies that are not Tollgate, compared at the same load (what one hop costs here).
    #[serde(default)]
    pub references: Vec<ReferenceSpec>,
    /// `RUST_LOG` of the proxy and the aggregator.
    #[serde(default = "default_log")]
    pub log_level: String,
    /// Mock upstreams (the proxy config routes models to them).
    pub mocks: Vec<MockSpec>,
    /// Kafka.
    pub kafka: KafkaSpec,
    /// Aggregator.
    pub aggregator: AggregatorSpec,
    /// Interleaving slice, seconds.
    #[serde(default = "default_slice")]
    pub slice_secs: f64,
    /// Saturation ramp settings.
    pub saturation: SaturationSpec,
    /// Comparisons.
    #[serde(default)]
    pub compare: Vec<CompareSpec>,
    /// CPU per request of every process, features on and off (needs `bare_proxy`).
    #[serde(default)]
    pub cpu_profile: Option<CpuSpec>,
    /// Open-streams memory phase.
    #[serde(default)]
    pub streams: Option<StreamsSpec>,
    /// How long to wait for usage rows, seconds.
    #[serde(default = "default_deadline")]
    pub verify_deadline_secs: f64,
    /// Goals reported next to the figures.
    pub targets: Targets,
}

impl BenchPlan {
    /// Reads a plan; errors name the offending key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let de = serde_yaml::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(de)
            .map_err(|e| anyhow::anyhow!("{} at `{}`: {}", path.display(), e.path(), e.inner()))
    }

    fn mock(&self, name: &str) -> anyhow::Result<&MockSpec> {
        self.mocks
            .iter()
            .find(|m| m.name == name)
            .with_context(|| format!("plan names mock {name:?}, which is not under `mocks`"))
    }
}

/// Where the bench writes and what it runs with.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Plan file.
    pub plan: PathBuf,
    /// Report directory (`bench/results`).
    pub out_dir: PathBuf,
    /// Service logs.
    pub log_dir: PathBuf,
    /// Overrides the plan's `bin_dir`.
    pub bin_dir: Option<PathBuf>,
    /// Storage engine of the Kafka broker, for the report.
    pub kafka_storage: Option<String>,
    /// Draw progress bars.
    pub progress: bool,
}

struct Services {
    mocks: Vec<Service>,
    references: Vec<reference::Running>,
    aggregator: Service,
    proxy: Option<Service>,
    bare: Option<Service>,
}

const GRACE: Duration = Duration::from_secs(15);

async fn start_services(plan: &BenchPlan, base: &Path, logs: &Path) -> anyhow::Result<Services> {
    let health = Duration::from_secs(60);
    let mut mocks = Vec::new();
    for m in &plan.mocks {
        let mut s = Service::start(Launch {
            name: &format!("mock-{}", m.name),
            program: &plan.bin_dir.join("tollgate-mock"),
            args: vec![
                "--listen".into(),
                m.listen.to_string(),
                "--latency-ms".into(),
                m.latency_ms.to_string(),
                "--chunk-delay-ms".into(),
                m.chunk_delay_ms.to_string(),
            ],
            env: vec![("RUST_LOG".into(), "warn".into())],
            log_dir: logs,
        })?;
        s.wait_healthy(&format!("http://{}/healthz", m.listen), health)
            .await?;
        mocks.push(s);
    }
    let mut references = Vec::new();
    for r in &plan.references {
        let mock = plan.mock(&r.mock)?;
        if let Some(running) =
            reference::start(r, &mock.listen.to_string(), &plan.bin_dir, logs).await?
        {
            references.push(running);
        }
    }
    let env = |extra: &[(&str, &str)]| service_env(plan, extra);
    let a = &plan.aggregator;
    if a.fresh_database {
        drop_database(&VerifyConfig {
            clickhouse_url: a.clickhouse_url.clone(),
            database: a.database.clone(),
            ..VerifyConfig::default()
        })
        .await
        .with_context(|| format!("dropping the benchmark database {}", a.database))?;
    }
    let mut aggregator = Service::start(Launch {
        name: "aggregator",
        program: &plan.bin_dir.join("tollgate-aggregator"),
        args: vec!["run".into()],
        env: env(&[
            ("TOLLGATE_AGGREGATOR_LISTEN", &a.listen),
            ("TOLLGATE_AGGREGATOR_GROUP", &a.group),
            ("TOLLGATE_CLICKHOUSE_URL", &a.clickhouse_url),
            ("TOLLGATE_CLICKHOUSE_DATABASE", &a.database),
        ]),
        log_dir: logs,
    })?;
    aggregator
        .wait_healthy(&format!("{}/healthz", http_url(&a.listen)), health)
        .await?;
    let proxy = Some(start_proxy(plan, base, logs, "proxy").await?);
    let bare = match &plan.bare_proxy {
        Some(b) => {
            Some(launch_proxy(plan, &base.join(&b.config), &b.url, logs, "proxy-bare").await?)
        }
        None => None,
    };
    Ok(Services {
        mocks,
        references,
        aggregator,
        proxy,
        bare,
    })
}

fn service_env(plan: &BenchPlan, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = vec![
        ("RUST_LOG".into(), plan.log_level.clone()),
        ("TOLLGATE_LOG_FORMAT".into(), "json".into()),
        ("TOLLGATE_KAFKA_BROKERS".into(), plan.kafka.brokers.clone()),
        ("TOLLGATE_KAFKA_TOPIC".into(), plan.kafka.topic.clone()),
    ];
    v.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    v
}

async fn start_proxy(
    plan: &BenchPlan,
    base: &Path,
    logs: &Path,
    name: &str,
) -> anyhow::Result<Service> {
    launch_proxy(
        plan,
        &base.join(&plan.proxy_config),
        &plan.proxy_url,
        logs,
        name,
    )
    .await
}

async fn launch_proxy(
    plan: &BenchPlan,
    config: &Path,
    url: &str,
    logs: &Path,
    name: &str,
) -> anyhow::Result<Service> {
    let mut proxy = Service::start(Launch {
        name,
        program: &plan.bin_dir.join("tollgate-proxy"),
        args: vec!["--config".into(), config.display().to_string()],
        env: service_env(plan, &[]),
        log_dir: logs,
    })?;
    proxy
        .wait_healthy(
            &format!("{}/healthz", url.trim_end_matches('/')),
            Duration::from_secs(60),
        )
        .await?;
    Ok(proxy)
}

/// Scenarios of a plan, loaded.
struct Loaded<'p> {
    compares: Vec<(&'p CompareSpec, Scenario, &'p MockSpec)>,
    cpu: Option<Scenario>,
    streams: Option<Scenario>,
}

fn load_scenarios<'p>(plan: &'p BenchPlan, base: &Path) -> anyhow::Result<Loaded<'p>> {
    let load = |p: &Path| {
        let path = base.join(p);
        Scenario::load(&path).with_context(|| format!("scenario {}", path.display()))
    };
    let overridden = |mut s: Scenario, duration: Option<f64>, warmup: Option<f64>| {
        if let Some(d) = duration {
            s.duration_secs = d;
        }
        if let Some(w) = warmup {
            s.warmup_secs = w;
        }
        s.validate().map(|()| s)
    };
    let mut compares = Vec::new();
    for c in &plan.compare {
        if c.features_off && plan.bare_proxy.is_none() {
            anyhow::bail!(
                "compare {}: features_off needs a bare_proxy to compare with",
                c.scenario.display()
            );
        }
        let s = overridden(load(&c.scenario)?, c.duration_secs, c.warmup_secs)?;
        compares.push((c, s, plan.mock(&c.mock)?));
    }
    let cpu = match &plan.cpu_profile {
        Some(_) if plan.bare_proxy.is_none() => {
            anyhow::bail!("cpu_profile needs a bare_proxy to compare with")
        }
        Some(spec) => Some(spec.shape(load(&spec.scenario)?)?),
        None => None,
    };
    let streams = match &plan.streams {
        Some(spec) => {
            let mut s = load(&spec.scenario)?;
            if spec.concurrency.is_some() {
                s.concurrency = spec.concurrency;
            }
            Some(overridden(s, spec.duration_secs, spec.warmup_secs)?)
        }
        None => None,
    };
    Ok(Loaded {
        compares,
        cpu,
        streams,
    })
}

fn sides(plan: &BenchPlan, mock: &MockSpec, proxy_pid: Option<u32>) -> anyhow::Result<Sides> {
    Ok(Sides {
        direct: Target::new("direct", &format!("http://{}", mock.listen))?,
        proxy: Target::new("proxy", &plan.proxy_url)?,
        bare: plan
            .bare_proxy
            .as_ref()
            .map(|b| Target::new("proxy-off", &b.url))
            .transpose()?,
        proxy_pid,
    })
}

/// Samples the proxy's RSS and the requests in flight during a phase.
struct StreamSampler {
    task: tokio::task::JoinHandle<()>,
    rss_max_kib: Arc<AtomicU64>,
    /// Sum and count of in-flight samples after the warm-up, and their minimum.
    open: Arc<[AtomicU64; 3]>,
}

impl StreamSampler {
    fn start(
        pid: Option<u32>,
        in_flight: Arc<AtomicUsize>,
        warmup: Duration,
        end: Duration,
    ) -> Self {
        let rss_max_kib = Arc::new(AtomicU64::new(0));
        let open = Arc::new([
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(u64::MAX),
        ]);
        let (rss, stats) = (Arc::clone(&rss_max_kib), Arc::clone(&open));
        let start = Instant::now();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                if let Some(m) = pid.and_then(|p| procstat::memory(p).ok()) {
                    rss.fetch_max(m.rss_kib, Ordering::Relaxed);
                }
                let t = start.elapsed();
                if t >= warmup && t < end {
                    let n = in_flight.load(Ordering::Relaxed) as u64;
                    stats[0].fetch_add(n, Ordering::Relaxed);
                    stats[1].fetch_add(1, Ordering::Relaxed);
                    stats[2].fetch_min(n, Ordering::Relaxed);
                }
            }
        });
        Self {
            task,
            rss_max_kib,
            open,
        }
    }

    /// Largest RSS (KiB) and `(mean, min)` requests in flight between the
    /// end of the warm-up and the end of the measured part.
    fn stop(self) -> (u64, (f64, u64)) {
        self.task.abort();
        let [sum, count, min] = &*self.open;
        let count = count.load(Ordering::Relaxed);
        let open = if count == 0 {
            (0.0, 0)
        } else {
            (
                sum.load(Ordering::Relaxed) as f64 / count as f64,
                min.load(Ordering::Relaxed),
            )
        };
        (self.rss_max_kib.load(Ordering::Relaxed), open)
    }
}

/// What the load phases produced.
struct PhaseResults {
    comparisons: Vec<Comparison>,
    cpu: Option<CpuProfile>,
    streams: Option<StreamsResult>,
}

impl PhaseResults {
    /// Successful requests through the proxy, warm-ups and ramps included.
    fn proxy_total_ok(&self) -> u64 {
        self.comparisons
            .iter()
            .map(|c| {
                c.proxy.total_ok() + c.saturation.as_ref().map_or(0, Saturation::proxy_total_ok)
            })
            .sum::<u64>()
            + self.cpu.as_ref().map_or(0, |c| c.on_ok)
            + self.streams.as_ref().map_or(0, |s| s.summary.total_ok())
    }
}

fn ramp_config(s: &SaturationSpec) -> anyhow::Result<RampConfig> {
    Ok(RampConfig {
        levels: s.levels.clone(),
        step: Duration::try_from_secs_f64(s.step_secs).context("saturation.step_secs")?,
        warmup: Duration::try_from_secs_f64(s.warmup_secs).context("saturation.warmup_secs")?,
        min_growth: s.min_growth,
        patience: s.patience,
    })
}

/// Where the phases run.
struct Ctx<'a> {
    plan: &'a BenchPlan,
    base: &'a Path,
    logs: &'a Path,
    run_id: &'a str,
    progress: bool,
}

async fn compare_phase(
    ctx: &Ctx<'_>,
    spec: &CompareSpec,
    scenario: &Scenario,
    mock: &MockSpec,
    pids: [Option<u32>; 2],
    references: &[reference::Running],
) -> anyhow::Result<Comparison> {
    let [proxy_pid, bare_pid] = pids;
    let sides = sides(ctx.plan, mock, proxy_pid)?;
    let mut scenario = scenario.clone();
    let mut sat = None;
    if let (Some(f), Mode::Open) = (spec.saturation_fraction, scenario.mode) {
        let ramp = ramp_config(&ctx.plan.saturation)?;
        let levels = u32::try_from(ramp.levels.len()).unwrap_or(u32::MAX);
        eprintln!("saturation of {}: levels {:?}", scenario.name, ramp.levels);
        let bar = progress_bar(
            (ramp.step + ramp.warmup) * 2 * levels,
            &format!("{} ramp", scenario.name),
            ctx.progress,
        );
        let s = saturation(&scenario, &sides, &ramp, ctx.run_id, &bar).await?;
        bar.finish_and_clear();
        eprintln!(
            "  direct {:.0} ok/s, proxy {:.0} ok/s (at {} workers)",
            s.direct_rps, s.proxy_rps, s.proxy_concurrency
        );
        scenario.rate = Some((s.proxy_rps * f).max(1.0).round());
        sat = Some(s);
    }
    let mut c = interleaved(ctx, &scenario, &sides, "").await?;
    c.saturation = sat;
    if let (true, Some(bare)) = (spec.features_off, &sides.bare) {
        let off_sides = Sides {
            direct: sides.direct.clone(),
            proxy: bare.clone(),
            bare: None,
            proxy_pid: bare_pid,
        };
        let off = interleaved(ctx, &scenario, &off_sides, " (features off)").await?;
        c.features_off = Some(Box::new(off));
    }
    if spec.references {
        for r in references {
            let ref_sides = Sides {
                direct: sides.direct.clone(),
                proxy: Target::new(&r.spec.name, &r.url())?,
                bare: None,
                proxy_pid: r.serving_pid(),
            };
            let which = format!(" ({})", r.spec.name);
            let comparison = interleaved(ctx, &scenario, &ref_sides, &which).await?;
            c.references.push(ReferenceRun {
                name: r.spec.name.clone(),
                comparison,
            });
        }
    }
    Ok(c)
}

/// One interleaved comparison of `sides` with its progress bar; `which` tells the proxy side
/// apart in the output.
async fn interleaved(
    ctx: &Ctx<'_>,
    scenario: &Scenario,
    sides: &Sides,
    which: &str,
) -> anyhow::Result<Comparison> {
    eprintln!(
        "compare {}{which}: {}",
        scenario.name,
        scenario.load_label()
    );
    let bar = progress_bar(
        (scenario.duration() + scenario.warmup()) * 2,
        &format!("{}{which}", scenario.name),
        ctx.progress,
    );
    let slice = Duration::try_from_secs_f64(ctx.plan.slice_secs).context("slice_secs")?;
    let c = compare_scenario(scenario, sides, slice, ctx.run_id, &bar).await?;
    bar.finish_and_clear();
    eprintln!(
        "  added latency p50 {:.3} ms p99 {:.3} ms; added TTFT p50 {:.3} ms",
        c.added_latency.p50_ms, c.added_latency.p99_ms, c.added_ttft.p50_ms
    );
    Ok(c)
}

/// Sums of the proxy's `tollgate_usage_*` metrics (over all labels) from
/// its `/metrics` text.
pub fn usage_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("tollgate_usage_")) {
        let name = line
            .split(|c: char| c == '{' || c.is_whitespace())
            .next()
            .unwrap_or_default();
        if let Some(v) = line
            .split_whitespace()
            .last()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *out.entry(name.to_owned()).or_insert(0.0) += v;
        }
    }
    out
}

/// Whether every submitted event has an outcome (published, spooled or dropped): the last
/// events of a phase wait up to the producer's linger in its queue.
pub fn usage_settled(m: &BTreeMap<String, f64>) -> bool {
    let get = |k: &str| m.get(&format!("tollgate_usage_{k}")).copied();
    let Some(submitted) = get("events_submitted_total") else {
        return true;
    };
    let done: f64 = ["published", "spooled", "dropped"]
        .iter()
        .filter_map(|k| get(&format!("events_{k}_total")))
        .sum();
    done >= submitted
}

/// Scrapes the proxy's usage metrics once the events of the last phase have an outcome (up
/// to 10 s), then stops it (gracefully).
async fn stop_proxy(ctx: &Ctx<'_>, proxy: Service, metrics: &mut Vec<ProxyUsage>) {
    let url = format!("{}/metrics", ctx.plan.proxy_url.trim_end_matches('/'));
    let client = reqwest::Client::builder().no_proxy().build().ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut usage = BTreeMap::new();
    if let Some(c) = client {
        loop {
            let text = match c.get(&url).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            usage = usage_metrics(&text);
            if usage_settled(&usage) || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    metrics.push(ProxyUsage {
        instance: proxy.name.clone(),
        metrics: usage,
    });
    proxy.stop(GRACE).await;
}

/// Many open streams through a freshly started proxy (so that its RSS
/// reflects this load only, not the earlier phases).
async fn streams_phase(
    ctx: &Ctx<'_>,
    scenario: &Scenario,
    services: &mut Services,
    usage: &mut Vec<ProxyUsage>,
) -> anyhow::Result<StreamsResult> {
    if let Some(old) = services.proxy.take() {
        stop_proxy(ctx, old, usage).await;
    }
    let proxy = start_proxy(ctx.plan, ctx.base, ctx.logs, "proxy-streams").await?;
    let pid = proxy.pid();
    services.proxy = Some(proxy);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle_kib = pid
        .and_then(|p| procstat::memory(p).ok())
        .map_or(0, |m| m.rss_kib);
    eprintln!(
        "open streams {} (fresh proxy): {}",
        scenario.name,
        scenario.load_label()
    );
    let bar = progress_bar(
        scenario.duration() + scenario.warmup(),
        &scenario.name,
        ctx.progress,
    );
    let runner = Runner::new(
        scenario,
        Target::new("proxy", &ctx.plan.proxy_url)?,
        ctx.run_id,
    )?;
    let sampler = StreamSampler::start(
        pid,
        Arc::clone(&runner.in_flight),
        scenario.warmup(),
        scenario.warmup() + scenario.duration(),
    );
    let summary = runner.run(scenario, ctx.run_id, &bar).await?;
    bar.finish_and_clear();
    let (rss_max_kib, open) = sampler.stop();
    let hwm_kib = pid
        .and_then(|p| procstat::memory(p).ok())
        .map_or(0, |m| m.hwm_kib);
    let r = StreamsResult {
        summary,
        workers: scenario.concurrency.unwrap_or(0),
        mean_open_streams: open.0,
        min_open_streams: open.1,
        rss_idle_kib,
        rss_max_kib,
        hwm_kib,
    };
    eprintln!(
        "  streams open: mean {:.0}; proxy RSS max {:.1} MB",
        r.mean_open_streams,
        r.rss_max_mb()
    );
    Ok(r)
}

/// CPU per request of every process, features on and off.
async fn cpu_phase(
    ctx: &Ctx<'_>,
    scenario: &Scenario,
    services: &Services,
) -> anyhow::Result<CpuProfile> {
    let (Some(spec), Some(bare)) = (&ctx.plan.cpu_profile, &ctx.plan.bare_proxy) else {
        anyhow::bail!("cpu_profile needs a bare_proxy");
    };
    let pid = |s: Option<&Service>, name: &str| {
        s.and_then(Service::pid)
            .map(|pid| Proc {
                name: name.to_owned(),
                pid,
            })
            .with_context(|| format!("cpu profile: no pid for {name}"))
    };
    let mut others: Vec<Proc> = services
        .mocks
        .iter()
        .filter_map(|m| {
            m.pid().map(|pid| Proc {
                name: m.name.clone(),
                pid,
            })
        })
        .collect();
    others.push(pid(Some(&services.aggregator), "aggregator")?);
    others.push(Proc {
        name: "load generator".into(),
        pid: std::process::id(),
    });
    others.extend(spec.watch.iter().filter_map(Proc::watched));
    let procs = Processes {
        on: pid(services.proxy.as_ref(), "proxy")?,
        off: pid(services.bare.as_ref(), "proxy-off")?,
        others,
    };
    eprintln!(
        "cpu profile {}: {} per side, features off then on",
        scenario.name,
        scenario.load_label()
    );
    let drain = Duration::try_from_secs_f64(spec.drain_secs).context("cpu_profile.drain_secs")?;
    let bar = progress_bar(
        (scenario.duration() + scenario.warmup() + drain) * 2,
        &format!("{} cpu", scenario.name),
        ctx.progress,
    );
    let targets = (
        Target::new("proxy", &ctx.plan.proxy_url)?,
        Target::new("proxy-off", &bare.url)?,
    );
    let p = cpu_profile(scenario, targets, &procs, drain, ctx.run_id, &bar).await?;
    bar.finish_and_clear();
    let (on, off) = p.totals();
    eprintln!(
        "  on {:.0} ok/s, {on:.0} µs CPU per request; off {:.0} ok/s, {off:.0} µs",
        p.on_rps, p.off_rps
    );
    Ok(p)
}

async fn phases(
    ctx: &Ctx<'_>,
    loaded: &Loaded<'_>,
    services: &mut Services,
    usage: &mut Vec<ProxyUsage>,
) -> anyhow::Result<PhaseResults> {
    let mut comparisons = Vec::new();
    for (spec, scenario, mock) in &loaded.compares {
        let pids = [
            services.proxy.as_ref().and_then(Service::pid),
            services.bare.as_ref().and_then(Service::pid),
        ];
        comparisons
            .push(compare_phase(ctx, spec, scenario, mock, pids, &services.references).await?);
    }
    let cpu = match &loaded.cpu {
        Some(scenario) => Some(cpu_phase(ctx, scenario, services).await?),
        None => None,
    };
    let streams = match &loaded.streams {
        Some(scenario) => Some(streams_phase(ctx, scenario, services, usage).await?),
        None => None,
    };
    Ok(PhaseResults {
        comparisons,
        cpu,
        streams,
    })
}

/// Runs the benchmark of `opts.plan` and writes its report; returns the
/// report and the Markdown path.
pub async fn run_bench(opts: &BenchOptions) -> anyhow::Result<(BenchReport, PathBuf)> {
    let mut plan = BenchPlan::load(&opts.plan)?;
    if let Some(dir) = &opts.bin_dir {
        plan.bin_dir = dir.clone();
    }
    let base = opts
        .plan
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let loaded = load_scenarios(&plan, &base)?;
    let (stamp, date) = utc_stamp(std::time::SystemTime::now());
    let run_id = format!("bench-{}-{stamp}", plan.name);
    eprintln!("bench {}: run_id {run_id}; starting services", plan.name);
    let mut services = start_services(&plan, &base, &opts.log_dir).await?;
    let ctx = Ctx {
        plan: &plan,
        base: &base,
        logs: &opts.log_dir,
        run_id: &run_id,
        progress: opts.progress,
    };
    let mut usage = Vec::new();
    let result = phases(&ctx, &loaded, &mut services, &mut usage).await;
    // Stop the proxy first: a graceful stop flushes its usage events.
    if let Some(proxy) = services.proxy.take() {
        stop_proxy(&ctx, proxy, &mut usage).await;
    }
    let verification = match &result {
        Ok(r) => {
            let expected = r.proxy_total_ok();
            eprintln!("verifying {expected} usage rows in ClickHouse");
            let cfg = VerifyConfig {
                clickhouse_url: plan.aggregator.clickhouse_url.clone(),
                database: plan.aggregator.database.clone(),
                deadline: Duration::try_from_secs_f64(plan.verify_deadline_secs)
                    .context("verify_deadline_secs")?,
                ..VerifyConfig::default()
            };
            Some(verify_run(&cfg, &run_id, expected).await)
        }
        Err(_) => None,
    };
    if let Some(bare) = services.bare.take() {
        bare.stop(GRACE).await;
    }
    services.aggregator.stop(GRACE).await;
    for r in services.references {
        r.service.stop(GRACE).await;
    }
    for m in services.mocks {
        m.stop(GRACE).await;
    }
    let r = result?;
    let verification = verification.transpose()?;
    let report = BenchReport {
        name: plan.name.clone(),
        date,
        run_id,
        machine: Machine::detect(),
        targets: plan.targets.clone(),
        comparisons: r.comparisons,
        cpu: r.cpu,
        streams: r.streams,
        verification,
        checks: plan.compare.iter().map(|c| c.checks.clone()).collect(),
        proxy_usage: usage,
        kafka_storage: opts.kafka_storage.clone(),
    };
    let md = report.write(&opts.out_dir, &stamp)?;
    Ok((report, md))
}

/// `(stamp, date)` of a time in UTC: `20250102T030405Z`, `2025-01-02 03:04:05 UTC`.
pub fn utc_stamp(t: std::time::SystemTime) -> (String, String) {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    (
        format!("{y:04}{mo:02}{d:02}T{h:02}{m:02}{s:02}Z"),
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02} UTC"),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn sums_usage_metrics() {
        let text = "# HELP x\ntollgate_usage_events_spooled_total 5\n\
                    tollgate_usage_events_published_total{topic=\"a\"} 3\n\
                    tollgate_usage_events_published_total{topic=\"b\"} 4\n\
                    tollgate_http_requests_total 9\n";
        let m = usage_metrics(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m["tollgate_usage_events_published_total"], 7.0);
        assert_eq!(m["tollgate_usage_events_spooled_total"], 5.0);
    }

    #[test]
    fn usage_settles_when_every_event_has_an_outcome() {
        let m = |pairs: &[(&str, f64)]| {
            pairs
                .iter()
                .map(|(k, v)| (format!("tollgate_usage_events_{k}_total"), *v))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(!usage_settled(&m(&[
            ("submitted", 10.0),
            ("published", 7.0)
        ])));
        assert!(usage_settled(&m(&[
            ("submitted", 10.0),
            ("published", 7.0),
            ("spooled", 2.0),
            ("dropped", 1.0)
        ])));
        assert!(usage_settled(&m(&[])), "no publisher: nothing to wait for");
    }

    #[test]
    fn stamps_utc() {
        let t = |s| std::time::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(utc_stamp(t(0)).0, "19700101T000000Z");
        assert_eq!(utc_stamp(t(951_782_400)).1, "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_stamp(t(1_767_225_599)).0, "20251231T235959Z");
    }

    #[test]
    fn shipped_plans_and_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        for plan in ["bench.yaml", "bench-quick.yaml"] {
            let p = BenchPlan::load(&dir.join(plan)).unwrap();
            load_scenarios(&p, &dir).unwrap();
            assert!(
                p.aggregator.fresh_database,
                "{plan}: runs start on empty tables"
            );
            assert!(dir.join(&p.proxy_config).is_file());
            let bare = p.bare_proxy.expect("the plans ramp a features-off proxy");
            assert!(dir.join(&bare.config).is_file());
        }
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".yaml") && !name.starts_with("bench") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
}
