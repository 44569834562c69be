//! The processes a benchmark runs: mocks, reference proxies, the aggregator and the proxies,
//! started from the release binaries and stopped gracefully (the proxy once its usage events
//! have an outcome).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::super::reference;
use super::super::report::ProxyUsage;
use super::super::spawn::{http_url, Launch, Service};
use super::plan::BenchPlan;
use super::Ctx;
use crate::verify::{drop_database, VerifyConfig};

pub(super) struct Services {
    pub(super) mocks: Vec<Service>,
    pub(super) references: Vec<reference::Running>,
    pub(super) aggregator: Service,
    pub(super) proxy: Option<Service>,
    pub(super) bare: Option<Service>,
}

pub(super) const GRACE: Duration = Duration::from_secs(15);

pub(super) async fn start_services(
    plan: &BenchPlan,
    base: &Path,
    logs: &Path,
) -> anyhow::Result<Services> {
    let health = Duration::from_secs(60);
    let mut mocks = Vec::new();
    for m in &plan.mocks {
        let mut s = Service::start(Launch {
            name: &format!("mock-{}", m.name),
            program: &plan.bin_dir.join("tollgate-mock"),
            args: vec![
                "--listen".into(),
                m.listen.to_string(),
                "--latency-ms".into(),
                m.latency_ms.to_string(),
                "--chunk-delay-ms".into(),
                m.chunk_delay_ms.to_string(),
            ],
            env: vec![("RUST_LOG".into(), "warn".into())],
            log_dir: logs,
        })?;
        s.wait_healthy(&format!("http://{}/healthz", m.listen), health)
            .await?;
        mocks.push(s);
    }
    let mut references = Vec::new();
    for r in &plan.references {
        let mock = plan.mock(&r.mock)?;
        if let Some(running) =
            reference::start(r, &mock.listen.to_string(), &plan.bin_dir, logs).await?
        {
            references.push(running);
        }
    }
    let env = |extra: &[(&str, &str)]| service_env(plan, extra);
    let a = &plan.aggregator;
    if a.fresh_database {
        drop_database(&VerifyConfig {
            clickhouse_url: a.clickhouse_url.clone(),
            database: a.database.clone(),
            ..VerifyConfig::default()
        })
        .await
        .with_context(|| format!("dropping the benchmark database {}", a.database))?;
    }
    let mut aggregator = Service::start(Launch {
        name: "aggregator",
        program: &plan.bin_dir.join("tollgate-aggregator"),
        args: vec!["run".into()],
        env: env(&[
            ("TOLLGATE_AGGREGATOR_LISTEN", &a.listen),
            ("TOLLGATE_AGGREGATOR_GROUP", &a.group),
            ("TOLLGATE_CLICKHOUSE_URL", &a.clickhouse_url),
            ("TOLLGATE_CLICKHOUSE_DATABASE", &a.database),
        ]),
        log_dir: logs,
    })?;
    aggregator
        .wait_healthy(&format!("{}/healthz", http_url(&a.listen)), health)
        .await?;
    let proxy = Some(start_proxy(plan, base, logs, "proxy").await?);
    let bare = match &plan.bare_proxy {
        Some(b) => {
            Some(launch_proxy(plan, &base.join(&b.config), &b.url, logs, "proxy-bare").await?)
        }
        None => None,
    };
    Ok(Services {
        mocks,
        references,
        aggregator,
        proxy,
        bare,
    })
}

fn service_env(plan: &BenchPlan, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = vec![
        ("RUST_LOG".into(), plan.log_level.clone()),
        ("TOLLGATE_LOG_FORMAT".into(), "json".into()),
        ("TOLLGATE_KAFKA_BROKERS".into(), plan.kafka.brokers.clone()),
        ("TOLLGATE_KAFKA_TOPIC".into(), plan.kafka.topic.clone()),
    ];
    v.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    v
}

pub(super) async fn start_proxy(
    plan: &BenchPlan,
    base: &Path,
    logs: &Path,
    name: &str,
) -> anyhow::Result<Service> {
    launch_proxy(
        plan,
        &base.join(&plan.proxy_config),
        &plan.proxy_url,
        logs,
        name,
    )
    .await
}

async fn launch_proxy(
    plan: &BenchPlan,
    config: &Path,
    url: &str,
    logs: &Path,
    name: &str,
) -> anyhow::Result<Service> {
    let mut proxy = Service::start(Launch {
        name,
        program: &plan.bin_dir.join("tollgate-proxy"),
        args: vec!["--config".into(), config.display().to_string()],
        env: service_env(plan, &[]),
        log_dir: logs,
    })?;
    proxy
        .wait_healthy(
            &format!("{}/healthz", url.trim_end_matches('/')),
            Duration::from_secs(60),
        )
        .await?;
    Ok(proxy)
}

/// Sums of the proxy's `tollgate_usage_*` metrics (over all labels) from
/// its `/metrics` text.
pub fn usage_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("tollgate_usage_")) {
        let name = line
            .split(|c: char| c == '{' || c.is_whitespace())
            .next()
            .unwrap_or_default();
        if let Some(v) = line
            .split_whitespace()
            .last()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *out.entry(name.to_owned()).or_insert(0.0) += v;
        }
    }
    out
}

/// Whether every submitted event has an outcome (published, spooled or dropped): the last
/// events of a phase wait up to the producer's linger in its queue.
pub fn usage_settled(m: &BTreeMap<String, f64>) -> bool {
    let get = |k: &str| m.get(&format!("tollgate_usage_{k}")).copied();
    let Some(submitted) = get("events_submitted_total") else {
        return true;
    };
    let done: f64 = ["published", "spooled", "dropped"]
        .iter()
        .filter_map(|k| get(&format!("events_{k}_total")))
        .sum();
    done >= submitted
}

/// Scrapes the proxy's usage metrics once the events of the last phase have an outcome (up
/// to 10 s), then stops it (gracefully).
pub(super) async fn stop_proxy(ctx: &Ctx<'_>, proxy: Service, metrics: &mut Vec<ProxyUsage>) {
    let url = format!("{}/metrics", ctx.plan.proxy_url.trim_end_matches('/'));
    let client = reqwest::Client::builder().no_proxy().build().ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut usage = BTreeMap::new();
    if let Some(c) = client {
        loop {
            let text = match c.get(&url).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            usage = usage_metrics(&text);
            if usage_settled(&usage) || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    metrics.push(ProxyUsage {
        instance: proxy.name.clone(),
        metrics: usage,
    });
    proxy.stop(GRACE).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn sums_usage_metrics() {
        let text = "# HELP x\ntollgate_usage_events_spooled_total 5\n\
                    tollgate_usage_events_published_total{topic=\"a\"} 3\n\
                    tollgate_usage_events_published_total{topic=\"b\"} 4\n\
                    tollgate_http_requests_total 9\n";
        let m = usage_metrics(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m["tollgate_usage_events_published_total"], 7.0);
        assert_eq!(m["tollgate_usage_events_spooled_total"], 5.0);
    }

    #[test]
    fn usage_settles_when_every_event_has_an_outcome() {
        let m = |pairs: &[(&str, f64)]| {
            pairs
                .iter()
                .map(|(k, v)| (format!("tollgate_usage_events_{k}_total"), *v))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(!usage_settled(&m(&[
            ("submitted", 10.0),
            ("published", 7.0)
        ])));
        assert!(usage_settled(&m(&[
            ("submitted", 10.0),
            ("published", 7.0),
            ("spooled", 2.0),
            ("dropped", 1.0)
        ])));
        assert!(usage_settled(&m(&[])), "no publisher: nothing to wait for");
    }
}
