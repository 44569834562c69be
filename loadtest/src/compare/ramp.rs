//! Saturation throughput: a closed-loop ramp of concurrency levels, both
//! sides interleaved per level, until throughput stops growing.

use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::{side_order, Side, Sides};
use crate::loadgen::engine::{client_for, Runner, Slice, Target, Workload};
use crate::loadgen::recorder::{Recorder, RunSummary};
use crate::scenario::{Mode, Scenario};

/// How to ramp.
#[derive(Clone, Debug, PartialEq)]
pub struct RampConfig {
    /// Concurrency levels, increasing.
    pub levels: Vec<usize>,
    /// Measured time per level and side.
    pub step: Duration,
    /// Unmeasured lead-in per level and side.
    pub warmup: Duration,
    /// Growth below this fraction over the best so far counts as flat.
    pub min_growth: f64,
    /// Stop after this many flat levels in a row (on both sides).
    pub patience: usize,
}

/// One level of the ramp.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RampPoint {
    /// Workers.
    pub concurrency: usize,
    /// Direct side.
    pub direct: RunSummary,
    /// Proxy side.
    pub proxy: RunSummary,
    /// Features-off proxy side, when the plan has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bare: Option<RunSummary>,
}

/// Result of [`saturation`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Saturation {
    /// Levels run (summaries without distributions and timelines).
    pub points: Vec<RampPoint>,
    /// Highest direct throughput, ok/s.
    pub direct_rps: f64,
    /// Highest proxy throughput, ok/s.
    pub proxy_rps: f64,
    /// Concurrency of the highest proxy throughput.
    pub proxy_concurrency: usize,
    /// Highest throughput of the features-off proxy, ok/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bare_rps: Option<f64>,
}

impl Saturation {
    /// Saturation with every feature on as a share of the features-off proxy's.
    pub fn features_ratio(&self) -> Option<f64> {
        self.bare_rps
            .filter(|b| *b > 0.0)
            .map(|b| self.proxy_rps / b)
    }
}

/// Sides of level `k`: direct and proxy alternate first; the features-off proxy, when
/// present, moves through the three positions so that none always follows another.
pub fn ramp_order(k: usize, bare: bool) -> Vec<Side> {
    let mut order = side_order(k).to_vec();
    if bare {
        order.insert(k % 3, Side::Bare);
    }
    order
}

impl Saturation {
    /// Successful requests of the whole ramp through the metering proxy, warm-up included
    /// (the features-off proxy writes no usage rows).
    pub fn proxy_total_ok(&self) -> u64 {
        self.points.iter().map(|p| p.proxy.total_ok()).sum()
    }
}

/// Whether a series has stopped growing: none of its last `patience` values
/// beats the best value before them by more than `min_growth` (a fraction).
pub fn stopped_growing(history: &[f64], min_growth: f64, patience: usize) -> bool {
    if patience == 0 || history.len() <= patience {
        return false;
    }
    let (before, recent) = history.split_at(history.len() - patience);
    let best = before.iter().copied().fold(f64::MIN, f64::max);
    recent.iter().all(|&v| v <= best * (1.0 + min_growth))
}

fn slim(mut s: RunSummary) -> RunSummary {
    s.latency_distribution.clear();
    s.ttft_distribution.clear();
    s.timeline.clear();
    s
}

/// Ramps `template` (turned closed-loop) through `cfg.levels` on both sides.
pub async fn saturation(
    template: &Scenario,
    sides: &Sides,
    cfg: &RampConfig,
    run_id: &str,
    bar: &ProgressBar,
) -> anyhow::Result<Saturation> {
    let top = cfg.levels.iter().copied().max().unwrap_or(1);
    let mut pool_scenario = template.clone();
    pool_scenario.mode = Mode::Closed;
    pool_scenario.concurrency = Some(top);
    let client = client_for(&pool_scenario)?;
    let workload = Arc::new(Workload::new(template, run_id)?);
    let runner = |t: &Target| Runner::with_client(client.clone(), t.clone(), Arc::clone(&workload));
    let (direct, proxy) = (runner(&sides.direct), runner(&sides.proxy));
    let bare = sides.bare.as_ref().map(runner);
    let mut out = Saturation::default();
    let (mut hist_d, mut hist_p, mut hist_b) = (Vec::new(), Vec::new(), Vec::new());
    let mut next = 0u64;
    for (k, &level) in cfg.levels.iter().enumerate() {
        let mut s = template.clone();
        s.mode = Mode::Closed;
        s.concurrency = Some(level.max(1));
        let label = s.load_label();
        let mut point = RampPoint {
            concurrency: level,
            ..RampPoint::default()
        };
        for side in ramp_order(k, bare.is_some()) {
            let r = match (side, &bare) {
                (Side::Direct, _) => &direct,
                (Side::Bare, Some(b)) => b,
                _ => &proxy,
            };
            let mut rec = Recorder::new(&s.name, &r.target.label, &label, run_id)?;
            let slice = Slice {
                first_index: next,
                warmup: cfg.warmup,
                measured: cfg.step,
            };
            next = r.run_slice(&s, slice, &mut rec, bar).await?;
            let summary = slim(rec.summary());
            match side {
                Side::Direct => point.direct = summary,
                Side::Proxy => point.proxy = summary,
                Side::Bare => point.bare = Some(summary),
            }
        }
        hist_d.push(point.direct.throughput_rps);
        hist_p.push(point.proxy.throughput_rps);
        if let Some(b) = &point.bare {
            hist_b.push(b.throughput_rps);
            out.bare_rps = Some(out.bare_rps.unwrap_or(0.0).max(b.throughput_rps));
        }
        if point.direct.throughput_rps > out.direct_rps {
            out.direct_rps = point.direct.throughput_rps;
        }
        if point.proxy.throughput_rps > out.proxy_rps {
            out.proxy_rps = point.proxy.throughput_rps;
            out.proxy_concurrency = level;
        }
        out.points.push(point);
        if stopped_growing(&hist_d, cfg.min_growth, cfg.patience)
            && stopped_growing(&hist_p, cfg.min_growth, cfg.patience)
            && (hist_b.is_empty() || stopped_growing(&hist_b, cfg.min_growth, cfg.patience))
        {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn detects_flat_throughput() {
        assert!(!stopped_growing(&[100.0, 200.0], 0.05, 2));
        assert!(!stopped_growing(&[100.0, 200.0, 400.0], 0.05, 2));
        assert!(!stopped_growing(&[100.0, 200.0, 400.0, 410.0], 0.05, 2));
        assert!(stopped_growing(
            &[100.0, 200.0, 400.0, 410.0, 405.0],
            0.05,
            2
        ));
        // A drop counts as flat; a late jump does not.
        assert!(stopped_growing(&[100.0, 400.0, 300.0, 350.0], 0.05, 2));
        assert!(!stopped_growing(&[100.0, 400.0, 300.0, 450.0], 0.05, 2));
        assert!(!stopped_growing(&[1.0, 1.0, 1.0], 0.05, 0));
    }

    #[test]
    fn the_features_off_side_rotates_through_every_position() {
        assert_eq!(ramp_order(0, false), vec![Side::Direct, Side::Proxy]);
        assert_eq!(
            ramp_order(0, true),
            vec![Side::Bare, Side::Direct, Side::Proxy]
        );
        assert_eq!(
            ramp_order(1, true),
            vec![Side::Proxy, Side::Bare, Side::Direct]
        );
        assert_eq!(
            ramp_order(2, true),
            vec![Side::Direct, Side::Proxy, Side::Bare]
        );
        let s = Saturation {
            proxy_rps: 700.0,
            bare_rps: Some(1000.0),
            ..Saturation::default()
        };
        assert_eq!(s.features_ratio(), Some(0.7));
        assert_eq!(Saturation::default().features_ratio(), None);
    }
}
