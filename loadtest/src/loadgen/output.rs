//! Results on disk: JSON, a Markdown table and an SVG chart.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use super::recorder::RunSummary;
use crate::chart::render_svg;

/// A Markdown table of runs: counts, throughput, latency and TTFT
/// percentiles.
pub fn markdown_runs(runs: &[&RunSummary]) -> String {
    let mut out = String::new();
    out.push_str(
        "| scenario | target | load | sent | ok | errors | ok/s | p50 ms | p90 ms | p99 ms \
         | p99.9 ms | max ms | TTFT p50 ms | TTFT p99 ms |\n",
    );
    out.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in runs {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} |",
            r.scenario,
            r.target,
            r.load,
            r.sent,
            r.ok,
            r.errors,
            r.throughput_rps,
            r.latency.p50_ms,
            r.latency.p90_ms,
            r.latency.p99_ms,
            r.latency.p999_ms,
            r.latency.max_ms,
            ttft(r.ttft.count, r.ttft.p50_ms),
            ttft(r.ttft.count, r.ttft.p99_ms),
        );
    }
    let errors: Vec<String> = runs
        .iter()
        .filter(|r| !r.error_kinds.is_empty())
        .map(|r| {
            let kinds: Vec<String> = r
                .error_kinds
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            format!("- {} {}: {}", r.scenario, r.target, kinds.join(", "))
        })
        .collect();
    if !errors.is_empty() {
        out.push_str("\nErrors:\n");
        for e in errors {
            out.push_str(&e);
            out.push('\n');
        }
    }
    out
}

fn ttft(count: u64, ms: f64) -> String {
    if count == 0 {
        "-".to_owned()
    } else {
        format!("{ms:.3}")
    }
}

/// Paths written by [`write_outputs`].
#[derive(Clone, Debug)]
pub struct OutputFiles {
    /// `<stem>.json`.
    pub json: PathBuf,
    /// `<stem>.md`.
    pub markdown: PathBuf,
    /// `<stem>.svg`.
    pub svg: PathBuf,
}

/// Writes `<dir>/<stem>.{json,md,svg}`: `value` as pretty JSON, `markdown`
/// as is, and the chart of `runs` titled `title`. Creates `dir`.
pub fn write_outputs(
    dir: &Path,
    stem: &str,
    title: &str,
    value: &impl Serialize,
    markdown: &str,
    runs: &[&RunSummary],
) -> anyhow::Result<OutputFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = OutputFiles {
        json: dir.join(format!("{stem}.json")),
        markdown: dir.join(format!("{stem}.md")),
        svg: dir.join(format!("{stem}.svg")),
    };
    let json = serde_json::to_string_pretty(value)? + "\n";
    let svg = render_svg(title, runs)?;
    for (path, text) in [
        (&files.json, json.as_str()),
        (&files.markdown, markdown),
        (&files.svg, svg.as_str()),
    ] {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(files)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn markdown_table() {
        let mut r = RunSummary {
            scenario: "s".into(),
            target: "proxy".into(),
            load: "open 10 req/s".into(),
            sent: 10,
            ok: 9,
            errors: 1,
            ..RunSummary::default()
        };
        r.error_kinds.insert("http 502".into(), 1);
        let md = markdown_runs(&[&r]);
        let lines: Vec<&str> = md.lines().collect();
        assert!(lines[0].starts_with("| scenario |"));
        assert!(lines[2].starts_with("| s | proxy | open 10 req/s | 10 | 9 | 1 |"));
        assert!(lines[2].ends_with("| - | - |"), "{}", lines[2]);
        assert!(md.contains("- s proxy: http 502: 1"));
    }
}
