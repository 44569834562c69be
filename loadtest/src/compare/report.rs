//! The benchmark report: figures next to their targets, as Markdown, JSON
//! and an SVG chart.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::bench::Check;
use super::Comparison;
use crate::loadgen::output::{markdown_runs, write_outputs};
use crate::loadgen::recorder::RunSummary;
use crate::verify::Verification;

/// Goals printed next to the measured figures.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Added latency p50, ms.
    pub added_p50_ms: f64,
    /// Added latency p99, ms.
    pub added_p99_ms: f64,
    /// Added TTFT p50, ms.
    pub added_ttft_p50_ms: f64,
    /// Proxy RSS with the open streams, MB (10^6 bytes).
    pub rss_mb: f64,
    /// Open streams of the memory target.
    pub open_streams: usize,
    /// Saturation throughput with every feature on, as a share of the features-off proxy's.
    #[serde(default = "default_features_ratio")]
    pub features_ratio: f64,
}

fn default_features_ratio() -> f64 {
    0.7
}

/// The open-streams phase.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StreamsResult {
    /// The run through the proxy.
    pub summary: RunSummary,
    /// Workers (streams kept open).
    pub workers: usize,
    /// Requests in flight on average during the measured part (sampled
    /// every 200 ms).
    pub mean_open_streams: f64,
    /// Fewest requests in flight in a sample of the measured part.
    pub min_open_streams: u64,
    /// RSS of the freshly started, idle proxy, KiB.
    pub rss_idle_kib: u64,
    /// Largest sampled proxy `VmRSS`, KiB.
    pub rss_max_kib: u64,
    /// Proxy `VmHWM` at the end of the phase, KiB.
    pub hwm_kib: u64,
}

impl StreamsResult {
    /// Largest sampled RSS in MB (10^6 bytes).
    pub fn rss_max_mb(&self) -> f64 {
        self.rss_max_kib as f64 * 1024.0 / 1e6
    }
}

/// The proxy's usage-publisher metrics when an instance was stopped.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ProxyUsage {
    /// Instance (`proxy`, `proxy-streams`).
    pub instance: String,
    /// `tollgate_usage_*` metrics summed over labels.
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// The machine the benchmark ran on.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    /// CPUs available.
    pub cpus: usize,
    /// CPU model (`/proc/cpuinfo`).
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads what it can; unknown fields stay empty.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

/// Everything `make bench` measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BenchReport {
    /// Plan name.
    pub name: String,
    /// Start, UTC.
    pub date: String,
    /// `metadata.run_id` of every request.
    pub run_id: String,
    /// Where it ran.
    pub machine: Machine,
    /// Goals.
    pub targets: Targets,
    /// Interleaved comparisons.
    pub comparisons: Vec<Comparison>,
    /// CPU per request of every process, features on and off.
    #[serde(default)]
    pub cpu: Option<super::cpu::CpuProfile>,
    /// Open-streams phase.
    pub streams: Option<StreamsResult>,
    /// ClickHouse row check.
    pub verification: Option<Verification>,
    /// Checks of each comparison (same order).
    pub checks: Vec<Vec<Check>>,
    /// Usage-publisher metrics of each proxy instance at its stop.
    pub proxy_usage: Vec<ProxyUsage>,
    /// Storage engine of the Kafka broker (Tansu), when known.
    #[serde(default)]
    pub kafka_storage: Option<String>,
}

impl Default for Targets {
    fn default() -> Self {
        Self {
            added_p50_ms: 0.25,
            added_p99_ms: 1.0,
            added_ttft_p50_ms: 0.3,
            rss_mb: 100.0,
            open_streams: 2000,
            features_ratio: default_features_ratio(),
        }
    }
}

/// One line of the targets table.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetRow {
    /// What is measured.
    pub what: String,
    /// The goal.
    pub goal: String,
    /// The figure.
    pub measured: String,
    /// Met, missed, or not measured (`None`).
    pub met: Option<bool>,
}

fn row(what: String, goal: String, measured: Option<(f64, String)>, limit: f64) -> TargetRow {
    match measured {
        Some((v, text)) => TargetRow {
            what,
            goal,
            measured: text,
            met: Some(v <= limit),
        },
        None => TargetRow {
            what,
            goal,
            measured: "not measured".to_owned(),
            met: None,
        },
    }
}

impl BenchReport {
    fn checked(&self, check: Check) -> Option<&Comparison> {
        self.comparisons
            .iter()
            .zip(&self.checks)
            .find(|(_, checks)| checks.contains(&check))
            .map(|(c, _)| c)
    }

    /// The targets with their figures.
    pub fn target_rows(&self) -> Vec<TargetRow> {
        let t = &self.targets;
        let lat = self.checked(Check::AddedLatency);
        let ttft = self.checked(Check::AddedTtft);
        let at = |c: &Comparison| format!(" ({}, {})", c.scenario, c.load);
        let ms = |v: f64, c: &Comparison| (v, format!("{v:.3} ms{}", at(c)));
        let mut rows = vec![
            row(
                "added latency p50 vs direct, half saturation".into(),
                format!("≤ {} ms", t.added_p50_ms),
                lat.map(|c| ms(c.added_latency.p50_ms, c)),
                t.added_p50_ms,
            ),
            row(
                "added latency p99 vs direct, half saturation".into(),
                format!("≤ {} ms", t.added_p99_ms),
                lat.map(|c| ms(c.added_latency.p99_ms, c)),
                t.added_p99_ms,
            ),
            row(
                "added TTFT p50 vs direct".into(),
                format!("≤ {} ms", t.added_ttft_p50_ms),
                ttft.map(|c| ms(c.added_ttft.p50_ms, c)),
                t.added_ttft_p50_ms,
            ),
        ];
        let sat = self.comparisons.iter().find_map(|c| {
            c.saturation
                .as_ref()
                .filter(|s| s.bare_rps.is_some())
                .map(|s| (c, s))
        });
        rows.push(TargetRow {
            what: "saturation, all features on vs off".into(),
            goal: format!("≥ {:.0} %", t.features_ratio * 100.0),
            measured: sat.map_or("not measured".to_owned(), |(c, s)| {
                format!(
                    "{:.0} % ({:.0} vs {:.0} ok/s, {})",
                    s.features_ratio().unwrap_or(0.0) * 100.0,
                    s.proxy_rps,
                    s.bare_rps.unwrap_or(0.0),
                    c.scenario
                )
            }),
            met: sat
                .and_then(|(_, s)| s.features_ratio())
                .map(|r| r >= t.features_ratio),
        });
        rows.push(row(
            format!("proxy RSS with {} open streams", t.open_streams),
            format!("≤ {} MB", t.rss_mb),
            self.streams.as_ref().map(|s| {
                (
                    s.rss_max_mb(),
                    format!(
                        "{:.1} MB max sampled RSS; streams open: mean {:.0}, min {} ({} workers)",
                        s.rss_max_mb(),
                        s.mean_open_streams,
                        s.min_open_streams,
                        s.workers
                    ),
                )
            }),
            t.rss_mb,
        ));
        let mut lost = row(
            "lost usage rows".into(),
            "0".into(),
            self.verification.as_ref().map(|v| {
                (
                    v.lost as f64,
                    format!(
                        "{} lost, {} duplicated of {} successful requests",
                        v.lost, v.duplicated, v.expected
                    ),
                )
            }),
            0.0,
        );
        if let (Some(v), Some(met)) = (&self.verification, lost.met) {
            lost.met = Some(met && v.duplicated == 0);
        }
        rows.push(lost);
        rows
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(out, "# Tollgate benchmark `{}`, {}\n", self.name, self.date);
        let _ = writeln!(
            out,
            "Machine: {} CPUs ({}), Linux {}. Load generator, mock, proxy, aggregator, Kafka \
             (Tansu) and ClickHouse all share it, so absolute figures are noisy; the \
             direct and proxied sides run in interleaved slices to share that noise. \
             run_id `{}`.\n",
            m.cpus, m.cpu_model, m.kernel, self.run_id
        );
        match self.kafka_storage.as_deref() {
            Some("memory") => out.push_str(
                "Kafka broker: a throwaway Tansu with its `memory` storage engine (its `sqlite` \
                 engine parses and plans SQL for every record, a cost a Kafka broker does not \
                 have; `make bench BENCH_KAFKA_STORAGE=sqlite` measures with it).\n\n",
            ),
            Some(engine) => {
                let _ = writeln!(
                    out,
                    "Kafka broker: Tansu with its `{engine}` storage engine.\n"
                );
            }
            None => {}
        }
        out.push_str("## Targets\n\n| target | goal | measured | met |\n|---|---|---|---|\n");
        for r in self.target_rows() {
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            };
            let _ = writeln!(out, "| {} | {} | {} | {met} |", r.what, r.goal, r.measured);
        }
        if let Some((c, off)) = self
            .checked(Check::AddedLatency)
            .and_then(|c| c.features_off.as_deref().map(|off| (c, off)))
        {
            let _ = writeln!(
                out,
                "\nThe hop alone: at the same load ({}, {}) the features-off proxy adds p50 {:.3} ms, \
                 p99 {:.3} ms (metering, rate limits and budgets add the rest).",
                c.scenario, c.load, off.added_latency.p50_ms, off.added_latency.p99_ms
            );
        }
        for (check, what) in [(Check::AddedLatency, "latency"), (Check::AddedTtft, "TTFT")] {
            let Some(c) = self.checked(check).filter(|c| !c.references.is_empty()) else {
                continue;
            };
            let hops: Vec<String> = c
                .references
                .iter()
                .map(|r| {
                    let a = if check == Check::AddedTtft {
                        &r.comparison.added_ttft
                    } else {
                        &r.comparison.added_latency
                    };
                    format!(
                        "{} adds p50 {:.3} ms, p99 {:.3} ms",
                        r.name, a.p50_ms, a.p99_ms
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "\nReference proxies, added {what} at the same load ({}, {}): {}. What one \
                 proxy hop costs on this machine, whatever the proxy.",
                c.scenario,
                c.load,
                hops.join("; ")
            );
        }

        for c in &self.comparisons {
            let Some(s) = &c.saturation else { continue };
            let bare = s.bare_rps.map_or(String::new(), |b| {
                format!(", features-off proxy {b:.0} ok/s")
            });
            let _ = writeln!(
                out,
                "\n## Saturation of `{}` (closed-loop ramp)\n\nHighest throughput: direct {:.0} \
                 ok/s, proxy {:.0} ok/s (at {} workers){bare}; the comparison below ran \
                 open-loop at {}.\n",
                c.scenario, s.direct_rps, s.proxy_rps, s.proxy_concurrency, c.load
            );
            out.push_str(
                "| workers | direct ok/s | proxy ok/s | off ok/s | direct p50 ms | proxy p50 ms \
                 | off p50 ms | direct p99 ms | proxy p99 ms | off p99 ms | errors (d/p/off) \
                 |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
            );
            let dash = || "-".to_owned();
            for p in &s.points {
                let b = p.bare.as_ref();
                let _ = writeln!(
                    out,
                    "| {} | {:.0} | {:.0} | {} | {:.3} | {:.3} | {} | {:.3} | {:.3} | {} | {}/{}/{} |",
                    p.concurrency,
                    p.direct.throughput_rps,
                    p.proxy.throughput_rps,
                    b.map_or_else(dash, |b| format!("{:.0}", b.throughput_rps)),
                    p.direct.latency.p50_ms,
                    p.proxy.latency.p50_ms,
                    b.map_or_else(dash, |b| format!("{:.3}", b.latency.p50_ms)),
                    p.direct.latency.p99_ms,
                    p.proxy.latency.p99_ms,
                    b.map_or_else(dash, |b| format!("{:.3}", b.latency.p99_ms)),
                    p.direct.errors,
                    p.proxy.errors,
                    b.map_or_else(dash, |b| b.errors.to_string()),
                );
            }
        }

        out.push_str(
            "\n## Added by the proxy (interleaved slices)\n\n| scenario | load | added p50 ms \
             | p90 | p99 | p99.9 | added TTFT p50 ms | TTFT p99 | proxy CPU ms/request \
             | machine busy % direct / proxy |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let rows = self.comparisons.iter().flat_map(|c| {
            std::iter::once((c, String::new()))
                .chain(
                    c.features_off
                        .as_deref()
                        .map(|o| (o, " (features off)".to_owned())),
                )
                .chain(
                    c.references
                        .iter()
                        .map(|r| (&r.comparison, format!(" ({})", r.name))),
                )
        });
        for (c, which) in rows {
            let (a, t) = (&c.added_latency, &c.added_ttft);
            let streams = c.proxy.ttft.count > 0;
            let tt = |v: f64| {
                if streams {
                    format!("{v:.3}")
                } else {
                    "-".to_owned()
                }
            };
            let cpu = c
                .proxy_cpu_ms_per_request
                .map_or("-".to_owned(), |v| format!("{v:.3}"));
            let busy = c.machine_busy.map_or("-".to_owned(), |b| {
                format!("{:.0} / {:.0}", b.direct_pct, b.proxy_pct)
            });
            let _ = writeln!(
                out,
                "| {}{which} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {cpu} | {busy} |",
                c.scenario,
                c.load,
                a.p50_ms,
                a.p90_ms,
                a.p99_ms,
                a.p999_ms,
                tt(t.p50_ms),
                tt(t.p99_ms)
            );
        }

        if self.comparisons.iter().any(|c| c.machine_busy.is_some()) {
            out.push_str(
                "\nMachine busy: the share of all CPUs in use during that side's slices, every \
                 process included (load generator, mock, and on the proxy side the proxy with its \
                 broker, aggregator, ClickHouse and Redis). Queueing for a CPU grows steeply as it \
                 nears 100 %; the tail of the added latency follows it.\n",
            );
        }

        if let Some(p) = &self.cpu {
            out.push_str(&cpu_markdown(p));
        }

        out.push_str("\n## Runs\n\n");
        let mut runs = self.chart_runs();
        if let Some(s) = &self.streams {
            runs.push(&s.summary);
        }
        out.push_str(&markdown_runs(&runs));

        if let Some(st) = &self.streams {
            let _ = writeln!(
                out,
                "\n## Open streams\n\n{} workers through a freshly started proxy; streams open \
                 during the measured part: mean {:.0}, min {}; proxy RSS: idle {:.1} MB, max \
                 sampled {:.1} MB, VmHWM {:.1} MB.",
                st.workers,
                st.mean_open_streams,
                st.min_open_streams,
                st.rss_idle_kib as f64 * 1024.0 / 1e6,
                st.rss_max_mb(),
                st.hwm_kib as f64 * 1024.0 / 1e6
            );
        }
        if let Some(v) = &self.verification {
            let _ = writeln!(
                out,
                "\n## Usage rows in ClickHouse\n\n| successful requests | rows | distinct requests \
                 | lost | duplicated | extra | waited s |\n|---:|---:|---:|---:|---:|---:|---:|\n\
                 | {} | {} | {} | {} | {} | {} | {:.1} |",
                v.expected,
                v.counts.rows,
                v.counts.requests,
                v.lost,
                v.duplicated,
                v.extra,
                v.waited_secs
            );
        }
        if !self.proxy_usage.is_empty() {
            out.push_str(
                "\nProxy usage publisher before its stop, once every event had an outcome or \
                 after 10 s (`tollgate_usage_*`; events still spooled are replayed by the next \
                 start, so they count as missing above):\n\n\
                 | instance | submitted | published | spooled | replayed | dropped | spool events \
                 |\n|---|---:|---:|---:|---:|---:|---:|\n",
            );
            for u in &self.proxy_usage {
                let m = |k: &str| {
                    u.metrics
                        .get(&format!("tollgate_usage_{k}"))
                        .map_or("-".to_owned(), |v| format!("{v:.0}"))
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    u.instance,
                    m("events_submitted_total"),
                    m("events_published_total"),
                    m("events_spooled_total"),
                    m("events_replayed_total"),
                    m("events_dropped_total"),
                    m("spool_events")
                );
            }
        }
        out
    }

    /// Runs shown in the chart: both sides of every comparison (the
    /// open-streams run, seconds long, would flatten them).
    pub fn chart_runs(&self) -> Vec<&RunSummary> {
        self.comparisons
            .iter()
            .flat_map(|c| {
                [&c.direct, &c.proxy]
                    .into_iter()
                    .chain(c.features_off.as_deref().map(|o| &o.proxy))
            })
            .collect()
    }

    /// Writes `<dir>/<stamp>-<name>.{md,json,svg}`; returns the Markdown path.
    pub fn write(&self, dir: &Path, stamp: &str) -> anyhow::Result<PathBuf> {
        let files = write_outputs(
            dir,
            &format!("{stamp}-{}", self.name),
            &format!("Tollgate benchmark {} ({})", self.name, self.date),
            self,
            &self.markdown(),
            &self.chart_runs(),
        )?;
        Ok(files.markdown)
    }
}

/// The CPU table: µs of each process per successful request, features on and off.
fn cpu_markdown(p: &super::cpu::CpuProfile) -> String {
    let us = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    let mut out = format!(
        "\n## CPU per request by process\n\n`{}` closed-loop at {} workers through each proxy \
         in turn (CPU read from /proc before and after, a drain pause included): full proxy \
         {:.0} ok/s, features-off proxy {:.0} ok/s. Every process shares the same {} cores, \
         so the sum is what bounds throughput.\n\n| process | features on µs/request | \
         features off µs/request |\n|---|---:|---:|\n",
        p.scenario,
        p.concurrency,
        p.on_rps,
        p.off_rps,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for r in &p.rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            r.process,
            us(r.on_us),
            us(r.off_us)
        );
    }
    let (on, off) = p.totals();
    let _ = writeln!(out, "| **total** | **{on:.0}** | **{off:.0}** |");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::loadgen::recorder::{Added, Percentiles};
    use crate::verify::RowCounts;

    /// A comparison of scenario "plain" at 100 req/s with the given added p50 and p99.
    fn plain(p50_ms: f64, p99_ms: f64) -> Comparison {
        Comparison {
            scenario: "plain".into(),
            load: "open 100 req/s".into(),
            added_latency: Added {
                p50_ms,
                p99_ms,
                ..Added::default()
            },
            ..Comparison::default()
        }
    }

    #[test]
    fn targets_are_judged_and_printed() {
        let comparison = plain(0.2, 1.5);
        let mut stream = comparison.clone();
        stream.scenario = "stream".into();
        stream.added_ttft.p50_ms = 0.1;
        stream.proxy.ttft = Percentiles {
            count: 5,
            ..Percentiles::default()
        };
        let report = BenchReport {
            name: "t".into(),
            comparisons: vec![comparison, stream],
            checks: vec![vec![Check::AddedLatency], vec![Check::AddedTtft]],
            verification: Some(Verification::new(
                "r",
                10,
                RowCounts {
                    rows: 11,
                    requests: 10,
                    ok_requests: 10,
                },
                std::time::Duration::ZERO,
            )),
            ..BenchReport::default()
        };
        let rows = report.target_rows();
        let met: Vec<Option<bool>> = rows.iter().map(|r| r.met).collect();
        assert_eq!(
            met,
            vec![Some(true), Some(false), Some(true), None, None, Some(false)]
        );
        assert!(
            rows[1].measured.starts_with("1.500 ms (plain"),
            "{:?}",
            rows[1]
        );
        let md = report.markdown();
        assert!(!md.contains("Kafka broker:"), "engine unknown: not named");
        assert!(md.contains("| added latency p99 vs direct, half saturation | ≤ 1 ms | 1.500 ms"));
        assert!(md.contains("| not measured | - |"));
        assert!(md.contains("0 lost, 1 duplicated of 10"));
    }

    #[test]
    fn features_off_comparison_and_broker_are_reported() {
        let mut off = plain(0.123, 0.456);
        off.proxy.target = "proxy-off".into();
        let full = Comparison {
            features_off: Some(Box::new(off)),
            machine_busy: Some(crate::compare::MachineBusy {
                direct_pct: 41.4,
                proxy_pct: 88.6,
            }),
            ..plain(0.0, 0.0)
        };
        let report = BenchReport {
            comparisons: vec![full],
            checks: vec![vec![Check::AddedLatency]],
            kafka_storage: Some("memory".into()),
            ..BenchReport::default()
        };
        let md = report.markdown();
        assert!(md.contains("Kafka broker: a throwaway Tansu with its `memory` storage engine"));
        assert!(
            md.contains("the features-off proxy adds p50 0.123 ms, p99 0.456 ms"),
            "{md}"
        );
        assert!(md.contains("| plain (features off) | open 100 req/s | 0.123 |"));
        assert!(md.contains("| - | 41 / 89 |\n"), "{md}");
        assert!(md.contains("| - | - |\n"), "{md}");
        let targets: Vec<&str> = report
            .chart_runs()
            .iter()
            .map(|r| r.target.as_str())
            .collect();
        assert_eq!(targets.len(), 3);
        assert_eq!(targets[2], "proxy-off");
    }

    #[test]
    fn reference_proxies_are_reported_next_to_the_proxy() {
        let mut nginx = plain(0.21, 0.55);
        nginx.proxy.target = "nginx".into();
        let full = Comparison {
            references: vec![crate::compare::reference::ReferenceRun {
                name: "nginx".into(),
                comparison: nginx,
            }],
            ..plain(0.6, 4.0)
        };
        let report = BenchReport {
            comparisons: vec![full],
            checks: vec![vec![Check::AddedLatency]],
            ..BenchReport::default()
        };
        let md = report.markdown();
        assert!(
            md.contains("Reference proxies, added latency at the same load (plain, open 100 req/s): nginx adds p50 0.210 ms, p99 0.550 ms."),
            "{md}"
        );
        assert!(
            md.contains("| plain (nginx) | open 100 req/s | 0.210 |"),
            "{md}"
        );
        assert!(
            !md.contains("added TTFT at the same load"),
            "no stream comparison"
        );
    }

    #[test]
    fn features_ratio_is_judged_against_the_off_proxy() {
        let sat = |proxy_rps, bare_rps| Comparison {
            scenario: "plain".into(),
            saturation: Some(crate::compare::ramp::Saturation {
                proxy_rps,
                bare_rps: Some(bare_rps),
                ..Default::default()
            }),
            ..Comparison::default()
        };
        let judged = |c: Comparison| {
            let report = BenchReport {
                comparisons: vec![c],
                checks: vec![vec![]],
                ..BenchReport::default()
            };
            report
                .target_rows()
                .into_iter()
                .find(|r| r.what.starts_with("saturation"))
                .unwrap()
        };
        let low = judged(sat(650.0, 1000.0));
        assert_eq!(low.met, Some(false));
        assert!(
            low.measured.starts_with("65 % (650 vs 1000 ok/s"),
            "{low:?}"
        );
        assert_eq!(judged(sat(700.0, 1000.0)).met, Some(true));
    }
}
