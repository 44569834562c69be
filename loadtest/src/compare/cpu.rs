//! Where the CPU goes: the same closed-loop load through the proxy with every feature on and
//! through the features-off proxy, one after the other, with the CPU time of every process of
//! the benchmark (proxy, mock, load generator, aggregator, Redis, ClickHouse, the broker)
//! read from `/proc` before and after each run, including a drain pause after it so that the
//! usage events of the run are stored by then. On a machine where all of them share the same
//! cores, this table explains the saturation ratio.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::loadgen::engine::{Runner, Target};
use crate::procstat;
use crate::scenario::{Mode, Scenario};

/// A process outside the benchmark's own, found by its pid file (e.g. the local stack's).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Watch {
    /// Name in the report.
    pub name: String,
    /// File holding its pid (relative to the working directory).
    pub pid_file: PathBuf,
}

/// `cpu_profile:` of a plan.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CpuSpec {
    /// Scenario file (run closed-loop at `concurrency`).
    pub scenario: PathBuf,
    /// Workers.
    pub concurrency: usize,
    /// Measured seconds per side.
    pub duration_secs: f64,
    /// Warm-up seconds per side (counted too: its requests cost the same).
    #[serde(default)]
    pub warmup_secs: f64,
    /// Pause after each side before the CPU is read again, seconds.
    #[serde(default)]
    pub drain_secs: f64,
    /// Processes of the local stack to read as well.
    #[serde(default)]
    pub watch: Vec<Watch>,
}

impl CpuSpec {
    /// The scenario as it runs here.
    pub fn shape(&self, mut s: Scenario) -> anyhow::Result<Scenario> {
        s.mode = Mode::Closed;
        s.concurrency = Some(self.concurrency.max(1));
        s.duration_secs = self.duration_secs;
        s.warmup_secs = self.warmup_secs;
        s.validate()?;
        Ok(s)
    }
}

/// A process read during the profile.
#[derive(Clone, Debug)]
pub struct Proc {
    /// Name in the report.
    pub name: String,
    /// Its pid.
    pub pid: u32,
}

impl Proc {
    /// A process of the plan's `watch` list; `None` (with a warning) if its pid file is
    /// missing or unreadable.
    pub fn watched(w: &Watch) -> Option<Self> {
        let text = std::fs::read_to_string(&w.pid_file)
            .map_err(|e| eprintln!("cpu profile: {} ({}): {e}", w.name, w.pid_file.display()))
            .ok()?;
        let pid = text.trim().parse().ok()?;
        Some(Self {
            name: w.name.clone(),
            pid,
        })
    }
}

/// One process's CPU per successful request, µs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuRow {
    /// Process.
    pub process: String,
    /// With every feature on.
    pub on_us: Option<f64>,
    /// With them off.
    pub off_us: Option<f64>,
}

/// Result of [`cpu_profile`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuProfile {
    /// Scenario name.
    pub scenario: String,
    /// Workers.
    pub concurrency: usize,
    /// Throughput through the full proxy, ok/s.
    pub on_rps: f64,
    /// Throughput through the features-off proxy, ok/s.
    pub off_rps: f64,
    /// Successful requests through the full proxy (they have usage rows).
    pub on_ok: u64,
    /// Per process.
    pub rows: Vec<CpuRow>,
}

impl CpuProfile {
    /// Sum over the processes, µs per request: `(on, off)`.
    pub fn totals(&self) -> (f64, f64) {
        let sum = |f: fn(&CpuRow) -> Option<f64>| self.rows.iter().filter_map(f).sum();
        (sum(|r| r.on_us), sum(|r| r.off_us))
    }
}

/// CPU ticks of every process; `None` for a process that vanished.
fn ticks(procs: &[Proc]) -> Vec<Option<u64>> {
    procs
        .iter()
        .map(|p| procstat::cpu_ticks(p.pid).ok())
        .collect()
}

/// Runs `scenario` through `target` and returns successful requests, ok/s and each
/// process's CPU µs per successful request.
async fn side(
    scenario: &Scenario,
    target: Target,
    procs: &[Proc],
    drain: Duration,
    run_id: &str,
    bar: &ProgressBar,
) -> anyhow::Result<(u64, f64, Vec<Option<f64>>)> {
    let runner = Runner::new(scenario, target, run_id)?;
    let before = ticks(procs);
    let summary = runner.run(scenario, run_id, bar).await?;
    tokio::time::sleep(drain).await;
    let after = ticks(procs);
    let ok = summary.total_ok();
    let tps = procstat::ticks_per_second() as f64;
    let per = before
        .iter()
        .zip(&after)
        .map(|(b, a)| match (b, a) {
            (Some(b), Some(a)) if ok > 0 => {
                Some(a.saturating_sub(*b) as f64 * 1e6 / tps / ok as f64)
            }
            _ => None,
        })
        .collect();
    Ok((ok, summary.throughput_rps, per))
}

/// The proxy processes and the rest, for [`cpu_profile`].
#[derive(Clone, Debug)]
pub struct Processes {
    /// The full proxy.
    pub on: Proc,
    /// The features-off proxy.
    pub off: Proc,
    /// Everything else (mock, aggregator, load generator, watched ones).
    pub others: Vec<Proc>,
}

/// Off first, then on (whose usage events the drain lets the pipeline store).
pub async fn cpu_profile(
    scenario: &Scenario,
    targets: (Target, Target),
    procs: &Processes,
    drain: Duration,
    run_id: &str,
    bar: &ProgressBar,
) -> anyhow::Result<CpuProfile> {
    let (on, off) = targets;
    let with = |p: &Proc| {
        let mut v = vec![p.clone()];
        v.extend(procs.others.iter().cloned());
        v
    };
    let (_, off_rps, off_us) = side(scenario, off, &with(&procs.off), drain, run_id, bar)
        .await
        .context("cpu profile, features off")?;
    let (on_ok, on_rps, on_us) = side(scenario, on, &with(&procs.on), drain, run_id, bar)
        .await
        .context("cpu profile, features on")?;
    let names =
        std::iter::once("proxy".to_owned()).chain(procs.others.iter().map(|p| p.name.clone()));
    let rows = names
        .zip(on_us.into_iter().zip(off_us))
        .map(|(process, (on_us, off_us))| CpuRow {
            process,
            on_us,
            off_us,
        })
        .collect();
    Ok(CpuProfile {
        scenario: scenario.name.clone(),
        concurrency: scenario.concurrency.unwrap_or(0),
        on_rps,
        off_rps,
        on_ok,
        rows,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn totals_skip_missing_readings() {
        let p = CpuProfile {
            rows: vec![
                CpuRow {
                    process: "proxy".into(),
                    on_us: Some(100.0),
                    off_us: Some(60.0),
                },
                CpuRow {
                    process: "redis".into(),
                    on_us: Some(50.0),
                    off_us: None,
                },
            ],
            ..CpuProfile::default()
        };
        assert_eq!(p.totals(), (150.0, 60.0));
    }

    #[test]
    fn a_missing_pid_file_is_skipped() {
        let w = Watch {
            name: "x".into(),
            pid_file: "/nonexistent/x.pid".into(),
        };
        assert!(Proc::watched(&w).is_none());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("self.pid");
        std::fs::write(&f, format!("{}\n", std::process::id())).unwrap();
        let p = Proc::watched(&Watch {
            name: "me".into(),
            pid_file: f,
        })
        .unwrap();
        assert_eq!(p.pid, std::process::id());
        assert!(procstat::cpu_ticks(p.pid).is_ok());
    }
}
