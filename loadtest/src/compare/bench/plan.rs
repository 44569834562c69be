//! The benchmark plan (`loadtest/scenarios/bench.yaml`): what to start, which scenarios to
//! run and how, and the goals reported next to the figures.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::super::cpu::CpuSpec;
use super::super::reference::ReferenceSpec;
use super::super::report::Targets;
use super::super::Sides;
use crate::loadgen::engine::Target;
use crate::scenario::Scenario;

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

    pub(super) fn mock(&self, name: &str) -> anyhow::Result<&MockSpec> {
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

/// Scenarios of a plan, loaded.
pub(super) struct Loaded<'p> {
    pub(super) compares: Vec<(&'p CompareSpec, Scenario, &'p MockSpec)>,
    pub(super) cpu: Option<Scenario>,
    pub(super) streams: Option<Scenario>,
}

pub(super) fn load_scenarios<'p>(plan: &'p BenchPlan, base: &Path) -> anyhow::Result<Loaded<'p>> {
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

pub(super) fn sides(
    plan: &BenchPlan,
    mock: &MockSpec,
    proxy_pid: Option<u32>,
) -> anyhow::Result<Sides> {
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
