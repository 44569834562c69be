//! `tollgate-loadtest bench`: the standard benchmark of `make bench`.
//!
//! Starts the mocks, the aggregator and the proxy (release binaries, the
//! proxy config a file next to the plan), ramps to saturation, compares
//! direct and proxied latency at a fraction of it, holds many open streams
//! through the proxy, checks that ClickHouse holds one row per successful
//! request, and writes the report (see [`super::report`]).
//!
//! * `plan`: the plan file ([`BenchPlan`]) and its scenarios, loaded and checked up front;
//! * `services`: starting and stopping the processes under test;
//! * `phases`: the load phases and what each measures.

mod phases;
mod plan;
mod services;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::report::{BenchReport, Machine};
use crate::verify::{verify_run, VerifyConfig};

pub use plan::{
    AggregatorSpec, BareProxySpec, BenchOptions, BenchPlan, Check, CompareSpec, KafkaSpec,
    MockSpec, SaturationSpec, StreamsSpec,
};
pub use services::{usage_metrics, usage_settled};

use phases::phases;
use plan::load_scenarios;
use services::{start_services, stop_proxy, GRACE};

/// Where the phases run.
struct Ctx<'a> {
    plan: &'a BenchPlan,
    base: &'a Path,
    logs: &'a Path,
    run_id: &'a str,
    progress: bool,
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
    use crate::scenario::Scenario;

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
