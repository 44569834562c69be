//! The load phases of a benchmark: saturation ramps and interleaved comparisons, CPU per
//! request of every process, and many open streams through a fresh proxy.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::super::cpu::{cpu_profile, CpuProfile, Proc, Processes};
use super::super::ramp::{saturation, RampConfig, Saturation};
use super::super::reference::{self, ReferenceRun};
use super::super::report::{ProxyUsage, StreamsResult};
use super::super::spawn::Service;
use super::super::{compare_scenario, Comparison, Sides};
use super::plan::{sides, CompareSpec, Loaded, MockSpec, SaturationSpec};
use super::services::{start_proxy, stop_proxy, Services};
use super::Ctx;
use crate::loadgen::engine::{Runner, Target};
use crate::loadgen::progress::progress_bar;
use crate::procstat;
use crate::scenario::{Mode, Scenario};

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
pub(super) struct PhaseResults {
    pub(super) comparisons: Vec<Comparison>,
    pub(super) cpu: Option<CpuProfile>,
    pub(super) streams: Option<StreamsResult>,
}

impl PhaseResults {
    /// Successful requests through the proxy, warm-ups and ramps included.
    pub(super) fn proxy_total_ok(&self) -> u64 {
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

pub(super) async fn phases(
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
