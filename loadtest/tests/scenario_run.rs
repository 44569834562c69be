//! `tollgate-loadtest run --scenario` (open and closed loop) and `compare`
//! against in-process mocks: the JSON, Markdown and SVG outputs exist and
//! parse. No assertion about speed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

use tollgate_loadtest::loadgen::RunSummary;
use tollgate_loadtest::mock::{MockConfig, MockServer};

async fn mock() -> MockServer {
    let cfg = MockConfig {
        chunk_delay_ms: 1,
        ..MockConfig::default()
    };
    MockServer::start(SocketAddr::from(([127, 0, 0, 1], 0)), cfg)
        .await
        .unwrap()
}

fn scenario(dir: &Path, name: &str, load: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    let yaml = format!(
        "name: {name}\n{load}\nduration_secs: 2\nwarmup_secs: 0.5\nstream_share: 0.5\n\
         max_tokens: 8\nmodels: [{{name: m1, weight: 2}}, {{name: m2}}]\n\
         keys: [{{key: k1}}]\nmetadata: {{suite: test}}\ntimeout_secs: 10\n"
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

async fn loadtest(args: Vec<String>) -> Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate-loadtest"))
        .args(&args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The single file in `dir` ending in `ext` whose name starts with `prefix`.
fn output(dir: &Path, prefix: &str, ext: &str) -> String {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(prefix) && name.ends_with(ext)
        })
        .collect();
    assert_eq!(files.len(), 1, "{prefix}*{ext} in {dir:?}: {files:?}");
    std::fs::read_to_string(&files[0]).unwrap()
}

/// A cheap well-formedness check: one root `<svg>` element, and every
/// opening tag closed.
fn check_svg(svg: &str) {
    assert!(svg.trim_start().starts_with("<svg"), "{}", &svg[..80]);
    assert!(svg.trim_end().ends_with("</svg>"));
    let opened = svg.matches('<').count() - svg.matches("</").count() * 2;
    let self_closed = svg.matches("/>").count();
    assert_eq!(opened, self_closed, "unbalanced tags");
    assert!(
        svg.contains("<polyline") || svg.contains("<path"),
        "no series"
    );
}

fn check_markdown(md: &str, rows: usize) {
    let table: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
    assert!(table[0].starts_with("| scenario | target |"), "{md}");
    assert!(table.len() >= 2 + rows, "{md}");
}

#[tokio::test]
async fn run_open_and_closed_scenarios_write_outputs() {
    let server = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cases = [
        ("open-test", "mode: open\nrate: 40"),
        ("closed-test", "mode: closed\nconcurrency: 3"),
    ];
    for (name, load) in cases {
        let path = scenario(dir.path(), name, load);
        let stdout = loadtest(vec![
            "run".into(),
            "--url".into(),
            server.base_url(),
            "--scenario".into(),
            path.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--run-id".into(),
            format!("{name}-run"),
            "--no-progress".into(),
        ])
        .await;
        assert!(String::from_utf8_lossy(&stdout.stdout).contains(name));

        let summary: RunSummary = serde_json::from_str(&output(&out, name, ".json")).unwrap();
        assert_eq!(summary.scenario, name);
        assert_eq!(summary.run_id, format!("{name}-run"));
        assert!(
            summary.sent > 0 && summary.ok == summary.sent,
            "{summary:?}"
        );
        assert!(summary.warmup_sent > 0, "{summary:?}");
        assert!(
            summary.stream_sent > 0 && summary.ttft.count > 0,
            "{summary:?}"
        );
        assert!(summary.latency.p50_ms > 0.0 && summary.latency.p999_ms >= summary.latency.p50_ms);
        assert!(!summary.timeline.is_empty() && !summary.latency_distribution.is_empty());
        if name == "open-test" {
            // 40 req/s for 2 s after a 0.5 s warm-up: the schedule, exactly.
            assert_eq!((summary.warmup_sent, summary.sent), (20, 80));
        }
        check_markdown(&output(&out, name, ".md"), 1);
        check_svg(&output(&out, name, ".svg"));
    }
    let stats = server.stats();
    assert!(stats.requests > 0, "{stats:?}");
}

#[tokio::test]
async fn compare_two_targets_writes_outputs() {
    let (direct, proxy) = (mock().await, mock().await);
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(dir.path(), "cmp", "mode: open\nrate: 30");
    let out = dir.path().join("out");
    let stdout = loadtest(vec![
        "compare".into(),
        "--scenario".into(),
        path.display().to_string(),
        "--direct-url".into(),
        direct.base_url(),
        "--proxy-url".into(),
        proxy.base_url(),
        "--slice-secs".into(),
        "1".into(),
        "--out".into(),
        out.display().to_string(),
        "--no-progress".into(),
    ])
    .await;
    let text = String::from_utf8_lossy(&stdout.stdout);
    assert!(
        text.contains("| latency |") && text.contains("| TTFT |"),
        "{text}"
    );

    let v: serde_json::Value = serde_json::from_str(&output(&out, "compare-cmp", ".json")).unwrap();
    let c = &v["comparison"];
    assert_eq!(c["direct"]["target"], "direct");
    assert_eq!(c["proxy"]["target"], "proxy");
    // Both sides ran the same schedule: 30 req/s for 2 s in two slices.
    assert_eq!(c["direct"]["sent"], 60);
    assert_eq!(c["proxy"]["sent"], 60);
    assert!(c["added_latency"]["p99_ms"].is_number());
    check_markdown(&output(&out, "compare-cmp", ".md"), 2);
    check_svg(&output(&out, "compare-cmp", ".svg"));
    assert_eq!(direct.stats().requests, proxy.stats().requests);
}
