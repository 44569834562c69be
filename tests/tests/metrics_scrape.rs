//! `/metrics` of the proxy and aggregator binaries after a short mixed load: every catalogue
//! series (`tollgate_schemas::telemetry`) is exported with its kind, no other `tollgate_*`
//! series exists, labels are the catalogue's and their values bounded — no API key, account,
//! key id or request id, and unknown model names collapse into `unknown`.

mod obs_support;

use std::collections::BTreeSet;
use std::time::Duration;

use obs_support::{parse_exposition, Exposition, ObsStack, KEYS, LIMITED_KEY, MODEL};
use tollgate_schemas::telemetry::{Kind, Metric, CATALOGUE};

/// Catalogue entry of a series name (`_bucket`/`_sum`/`_count` stripped for histograms).
fn catalogue_entry(series: &str) -> Option<&'static Metric> {
    CATALOGUE.iter().find(|m| {
        m.name == series
            || (m.kind == Kind::Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| series.strip_suffix(s) == Some(m.name)))
    })
}

/// The values a bounded label may take (`None`: checked by pattern below).
fn allowed_values(label: &str) -> Option<&'static [&'static str]> {
    Some(match label {
        "model" => &[MODEL, "failing-model", "unreachable-model", "unknown"],
        "endpoint" => &["chat.completions", "completions", "embeddings", "messages"],
        "kind" => &[
            "prompt",
            "completion",
            "cached",
            "transient",
            "bad_data",
            "block",
            "reserve",
            "clear",
        ],
        "backend" => &["local", "redis", "slice", "fallback"],
        "op" => &[
            "acquire", "settle", "renew", "read", "reserve", "apply", "decide", "rebuild", "load",
        ],
        _ => return None,
    })
}

fn check_series(exp: &Exposition, forbidden: &[&str], partitions: i32) -> Vec<String> {
    let mut problems = Vec::new();
    for s in &exp.samples {
        if !s.name.starts_with("tollgate_") {
            continue;
        }
        let Some(entry) = catalogue_entry(&s.name) else {
            problems.push(format!("{} is not in the catalogue", s.name));
            continue;
        };
        for (k, v) in &s.labels {
            let structural = (k == "le" && s.name.ends_with("_bucket")) || k == "quantile";
            if !structural && !entry.labels.contains(&k.as_str()) {
                problems.push(format!("{}: label {k} is not in the catalogue", s.name));
            }
            if let Some(allowed) = allowed_values(k) {
                if !allowed.contains(&v.as_str()) {
                    problems.push(format!("{}: {k}={v:?} is not a bounded value", s.name));
                }
            }
            let ok = match k.as_str() {
                "status" => v.len() == 3 && v.bytes().all(|b| b.is_ascii_digit()),
                "reason" => v.len() <= 40 && v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "partition" => v.parse::<i32>().is_ok_and(|p| (0..partitions).contains(&p)),
                _ => true,
            };
            if !ok {
                problems.push(format!("{}: {k}={v:?} out of bounds", s.name));
            }
            if let Some(f) = forbidden.iter().find(|f| v.contains(*f)) {
                problems.push(format!("{}: {k}={v:?} carries {f:?}", s.name));
            }
        }
    }
    // Types as the catalogue says.
    for m in CATALOGUE {
        let want = match m.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        if let Some(t) = exp.types.get(m.name) {
            if t != want {
                problems.push(format!("{} has TYPE {t}, catalogue says {want}", m.name));
            }
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_catalogue_after_a_short_load() -> anyhow::Result<()> {
    let stack = ObsStack::start("scrape", "json").await?;
    let unknown: Vec<String> = (0..12).map(|i| format!("no-such-model-{i}")).collect();
    let unknown_refs: Vec<&str> = unknown.iter().map(String::as_str).collect();
    let events = stack.mixed_load(6, &unknown_refs).await?;
    // A request whose id must not become a label value.
    let rid = tollgate_e2e::unique("rid_scrape");
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", stack.proxy_url))
        .bearer_auth(KEYS[0].1)
        .header("x-request-id", &rid)
        .json(&serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "{}", resp.status());
    stack
        .wait_for_rows(events + 1, Duration::from_secs(60))
        .await?;
    let aggregator = stack.wait_for_lag_sample().await?;
    let proxy = parse_exposition(&stack.proxy_metrics().await?)?;

    // Every catalogue series is exported by the process that owns it.
    let mut missing = Vec::new();
    for m in CATALOGUE {
        let exp = if tollgate_schemas::telemetry::aggregator_owned(m.name) {
            &aggregator
        } else {
            &proxy
        };
        let name = if m.kind == Kind::Histogram {
            format!("{}_bucket", m.name)
        } else {
            m.name.to_string()
        };
        if !exp.names().contains(name.as_str()) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "series not exported: {missing:?}");

    // Labels: catalogue names, bounded values, nothing identifying.
    let mut forbidden: Vec<&str> = vec![LIMITED_KEY, &rid, "acct_", "key_obs", "sk-"];
    forbidden.extend(KEYS.iter().map(|k| k.1));
    let mut problems = check_series(&proxy, &forbidden, stack.partitions);
    problems.extend(check_series(&aggregator, &forbidden, stack.partitions));
    assert!(
        problems.is_empty(),
        "label problems:\n{}",
        problems.join("\n")
    );

    // The values tell the story of the load.
    let requests = proxy.label_values("tollgate_proxy_requests_total", "model");
    let want: BTreeSet<&str> = [MODEL, "failing-model", "unknown"].into();
    assert_eq!(requests, want, "model label values");
    assert!(
        proxy.sum("tollgate_proxy_requests_total") >= events as f64 + 1.0,
        "requests counted"
    );
    let reasons = proxy.label_values("tollgate_proxy_rejections_total", "reason");
    for r in ["invalid_api_key", "rate_limit_exceeded", "model_not_found"] {
        assert!(
            reasons.contains(r),
            "rejection reason {r} missing: {reasons:?}"
        );
    }
    let statuses = proxy.label_values("tollgate_proxy_requests_total", "status");
    for s in ["200", "404", "429", "503"] {
        assert!(statuses.contains(s), "status {s} missing: {statuses:?}");
    }
    assert!(proxy.sum("tollgate_proxy_cost_nanousd_total") > 0.0);
    assert!(proxy.sum("tollgate_proxy_ttft_seconds_count") > 0.0);
    // Redis is up: decisions are shared (a round trip, or a quota slice taken from Redis),
    // never local or the fallback.
    let backends = proxy.label_values(
        "tollgate_ratelimit_decision_duration_seconds_count",
        "backend",
    );
    assert!(backends.contains("redis"), "backends {backends:?}");
    assert!(
        backends.is_subset(&BTreeSet::from(["redis", "slice"])),
        "backends {backends:?}"
    );
    assert_eq!(
        proxy.sum("tollgate_usage_events_published_total"),
        proxy.sum("tollgate_usage_events_submitted_total"),
        "every submitted event published"
    );
    assert_eq!(proxy.sum("tollgate_usage_events_dropped_total"), 0.0);
    assert!(aggregator.sum("tollgate_aggregator_rows_inserted_total") >= events as f64 + 1.0);
    assert_eq!(
        aggregator.sum("tollgate_aggregator_sequence_gaps_total"),
        0.0
    );
    Ok(())
}
