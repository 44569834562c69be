//! The same scenario directly against the mock and through the proxy, in
//! interleaved slices so that machine noise hits both sides alike; the
//! difference is the latency the proxy adds.
//!
//! * [`compare_scenario`]: interleaved open- or closed-loop comparison,
//!   proxy CPU per request and RSS.
//! * [`ramp`]: closed-loop saturation ramp of both sides.
//! * [`cpu`]: CPU per request of every process, features on and off.
//! * [`bench`](mod@bench): the `make bench` orchestration (binaries, scenarios,
//!   ClickHouse verification, report).

pub mod bench;
pub mod cpu;
pub mod ramp;
pub mod reference;
pub mod report;
pub mod spawn;

use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::loadgen::engine::{client_for, Runner, Slice, Target, Workload};
use crate::loadgen::recorder::{Added, Recorder, RunSummary};
use crate::procstat::{self, RssSampler};
use crate::scenario::Scenario;

/// The two sides of a comparison.
#[derive(Clone, Debug)]
pub struct Sides {
    /// Straight to the mock upstream.
    pub direct: Target,
    /// Through the proxy.
    pub proxy: Target,
    /// Through a second proxy with every optional feature off (no metering, rate limits or
    /// budgets): the saturation ramp measures it too, for the cost of those features.
    pub bare: Option<Target>,
    /// Proxy process, for CPU and memory readings.
    pub proxy_pid: Option<u32>,
}

/// Memory of the proxy during a phase.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ProxyMemory {
    /// Largest `VmRSS` sampled during the phase, KiB.
    pub rss_max_kib: u64,
    /// `VmHWM` (peak RSS over the process lifetime) at the end, KiB.
    pub hwm_kib: u64,
}

/// Result of [`compare_scenario`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Comparison {
    /// Scenario name.
    pub scenario: String,
    /// Load description.
    pub load: String,
    /// Length of one slice, seconds.
    pub slice_secs: f64,
    /// Direct-to-mock side.
    pub direct: RunSummary,
    /// Through-the-proxy side.
    pub proxy: RunSummary,
    /// Request latency added by the proxy.
    pub added_latency: Added,
    /// Time to first token added by the proxy (zero without streams).
    pub added_ttft: Added,
    /// Proxy CPU time (user + system) per request, ms.
    pub proxy_cpu_ms_per_request: Option<f64>,
    /// Proxy memory.
    pub proxy_memory: Option<ProxyMemory>,
    /// How busy the machine's CPUs were during each side's slices: everything on the
    /// machine counts (load generator, mock, proxy, broker, ClickHouse, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_busy: Option<MachineBusy>,
    /// Saturation ramp that set the rate, if any.
    pub saturation: Option<ramp::Saturation>,
    /// The same comparison through the features-off proxy (its `proxy` side), when asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features_off: Option<Box<Comparison>>,
    /// The same comparison through each reference proxy of the plan, when asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<reference::ReferenceRun>,
}

/// Share of CPU time the whole machine was busy during a side's slices, percent.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MachineBusy {
    /// During the direct slices.
    pub direct_pct: f64,
    /// During the proxy slices.
    pub proxy_pct: f64,
}

/// Busy and total machine ticks summed over one side's slices.
#[derive(Debug, Default)]
struct BusyTally {
    sides: [(u64, u64); 2],
    failed: bool,
}

impl BusyTally {
    /// Adds the time since `before` (a reading at the start of the slice) to `side`.
    fn add(&mut self, side: usize, before: Result<procstat::MachineTicks, procstat::ProcError>) {
        match (before, procstat::machine_ticks()) {
            (Ok(before), Ok(after)) => {
                let (busy, total) = &mut self.sides[side];
                *busy += after.busy.saturating_sub(before.busy);
                *total += after.total.saturating_sub(before.total);
            }
            _ => self.failed = true,
        }
    }

    fn result(&self) -> Option<MachineBusy> {
        let pct = |(busy, total): (u64, u64)| {
            procstat::MachineTicks { busy, total }
                .busy_pct_since(&procstat::MachineTicks::default())
        };
        if self.failed {
            return None;
        }
        Some(MachineBusy {
            direct_pct: pct(self.sides[0])?,
            proxy_pct: pct(self.sides[1])?,
        })
    }
}

/// Which side a slice runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Straight to the mock.
    Direct,
    /// Through the proxy.
    Proxy,
    /// Through the features-off proxy (saturation ramp only).
    Bare,
}

/// Lengths of the measured slices of each side: `measured` cut into pieces
/// of `slice` (the last one shorter).
pub fn slice_plan(measured: Duration, slice: Duration) -> Vec<Duration> {
    if slice.is_zero() || slice >= measured {
        return vec![measured];
    }
    let mut out = Vec::new();
    let mut left = measured;
    while !left.is_zero() {
        let d = left.min(slice);
        out.push(d);
        left -= d;
    }
    out
}

/// Order of the two sides in slice `k`: alternates so that neither side
/// always follows the other.
pub fn side_order(k: usize) -> [Side; 2] {
    if k.is_multiple_of(2) {
        [Side::Direct, Side::Proxy]
    } else {
        [Side::Proxy, Side::Direct]
    }
}

/// CPU ticks of the proxy over the proxy slices, and the requests they sent.
#[derive(Debug, Default)]
struct CpuTally {
    ticks: u64,
    requests: u64,
    failed: bool,
}

impl CpuTally {
    fn ms_per_request(&self) -> Option<f64> {
        if self.failed || self.requests == 0 {
            return None;
        }
        let tps = procstat::ticks_per_second() as f64;
        Some(self.ticks as f64 * 1000.0 / tps / self.requests as f64)
    }
}

/// Runs `scenario` on both sides in interleaved slices of `slice` (the
/// warm-up of each side precedes its first slice) and compares them.
pub async fn compare_scenario(
    scenario: &Scenario,
    sides: &Sides,
    slice: Duration,
    run_id: &str,
    bar: &ProgressBar,
) -> anyhow::Result<Comparison> {
    let workload = Arc::new(Workload::new(scenario, run_id)?);
    let client = client_for(scenario)?;
    let runner = |t: &Target| Runner::with_client(client.clone(), t.clone(), Arc::clone(&workload));
    let (direct, proxy) = (runner(&sides.direct), runner(&sides.proxy));
    let load = scenario.load_label();
    let mut recs = [
        Recorder::new(&scenario.name, &sides.direct.label, &load, run_id)?,
        Recorder::new(&scenario.name, &sides.proxy.label, &load, run_id)?,
    ];
    let mut next = [0u64; 2];
    let mut cpu = CpuTally::default();
    let mut busy = BusyTally::default();
    let sampler = sides
        .proxy_pid
        .map(|pid| RssSampler::start(pid, Duration::from_millis(250)));
    for (k, len) in slice_plan(scenario.duration(), slice)
        .into_iter()
        .enumerate()
    {
        for side in side_order(k) {
            let (r, i) = match side {
                Side::Direct => (&direct, 0),
                Side::Proxy | Side::Bare => (&proxy, 1),
            };
            let part = Slice {
                first_index: next[i],
                warmup: if k == 0 {
                    scenario.warmup()
                } else {
                    Duration::ZERO
                },
                measured: len,
            };
            let before = (side == Side::Proxy)
                .then(|| sides.proxy_pid.map(procstat::cpu_ticks))
                .flatten();
            let sent_before = recs[i].sent_total();
            let machine_before = procstat::machine_ticks();
            next[i] = r.run_slice(scenario, part, &mut recs[i], bar).await?;
            busy.add(i, machine_before);
            if let Some(before) = before {
                match (before, sides.proxy_pid.map(procstat::cpu_ticks)) {
                    (Ok(b), Some(Ok(a))) => {
                        cpu.ticks += a.saturating_sub(b);
                        cpu.requests += recs[i].sent_total() - sent_before;
                    }
                    _ => cpu.failed = true,
                }
            }
        }
    }
    let proxy_memory = match (sampler, sides.proxy_pid) {
        (Some(s), Some(pid)) => {
            let rss_max_kib = s.stop();
            procstat::memory(pid).ok().map(|m| ProxyMemory {
                rss_max_kib,
                hwm_kib: m.hwm_kib,
            })
        }
        _ => None,
    };
    let [d, p] = recs;
    let (direct, proxy) = (d.summary(), p.summary());
    Ok(Comparison {
        scenario: scenario.name.clone(),
        load,
        slice_secs: slice.as_secs_f64(),
        added_latency: Added::between(&direct.latency, &proxy.latency),
        added_ttft: Added::between(&direct.ttft, &proxy.ttft),
        direct,
        proxy,
        proxy_cpu_ms_per_request: cpu.ms_per_request(),
        proxy_memory,
        machine_busy: busy.result(),
        saturation: None,
        features_off: None,
        references: Vec::new(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn plans_slices() {
        let s = |ms| Duration::from_millis(ms);
        assert_eq!(
            slice_plan(s(10_000), s(3000)),
            vec![s(3000), s(3000), s(3000), s(1000)]
        );
        assert_eq!(slice_plan(s(2000), s(3000)), vec![s(2000)]);
        assert_eq!(slice_plan(s(2000), Duration::ZERO), vec![s(2000)]);
        assert_eq!(side_order(0), [Side::Direct, Side::Proxy]);
        assert_eq!(side_order(1), [Side::Proxy, Side::Direct]);
    }

    #[test]
    fn cpu_per_request() {
        let t = CpuTally {
            ticks: 50,
            requests: 1000,
            failed: false,
        };
        let tps = procstat::ticks_per_second() as f64;
        let expected = 50.0 * 1000.0 / tps / 1000.0;
        assert!((t.ms_per_request().unwrap() - expected).abs() < 1e-12);
        assert_eq!(CpuTally::default().ms_per_request(), None);
        let b = BusyTally {
            sides: [(40, 200), (150, 200)],
            failed: false,
        };
        assert_eq!(
            b.result(),
            Some(MachineBusy {
                direct_pct: 20.0,
                proxy_pct: 75.0
            })
        );
        assert_eq!(BusyTally::default().result(), None);
    }
}
