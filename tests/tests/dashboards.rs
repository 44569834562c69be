//! The Grafana dashboards against real data: a short load through the proxy and aggregator
//! binaries, then every ClickHouse query of the dashboards (panels and template variables,
//! rendered as Grafana and the ClickHouse plugin do, by `dashboards/tests/grafana_sql.py`) and
//! of docs/querying.md runs on the local ClickHouse 18.16 and — with the same rows — on
//! ClickHouse 26 (chdb); every Prometheus series a panel uses must be exported by the running
//! proxy or aggregator, with the labels the panel filters or groups on.
//!
//! Structure, layout and known-answer checks of the same dashboards are in
//! `dashboards/tests/test_dashboards.py` (`make test-python`).

mod obs_support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use obs_support::{parse_exposition, repo_root, ObsStack};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Plan {
    clickhouse: Vec<ChQuery>,
    prometheus: Vec<PromQuery>,
}

#[derive(Debug, Deserialize)]
struct ChQuery {
    source: String,
    sql: String,
    may_be_empty: bool,
    strict: bool,
}

#[derive(Debug, Deserialize)]
struct PromQuery {
    source: String,
    expr: String,
    series: std::collections::BTreeMap<String, Vec<String>>,
}

/// Arguments of `grafana_sql.py plan|chdb`: last hour, 1-minute interval, and a "selected"
/// rendering with two accounts, two keys and one model.
fn plan_args(now: u64) -> Vec<String> {
    [
        "--from",
        &(now - 3600).to_string(),
        "--to",
        &(now + 60).to_string(),
        "--interval",
        "60",
        "--var",
        "account=acct_obs_0,acct_obs_1",
        "--var",
        "key=key_obs_0,key_obs_2",
        "--var",
        &format!("model={}", obs_support::MODEL),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn grafana_sql(cmd: &str, args: &[String]) -> anyhow::Result<std::process::Output> {
    Command::new("python3")
        .arg(repo_root().join("dashboards/tests/grafana_sql.py"))
        .arg(cmd)
        .args(args)
        .current_dir(repo_root())
        .output()
        .context("running python3 dashboards/tests/grafana_sql.py")
}

/// Run `sql` in `database` over ClickHouse's HTTP interface; returns the row count.
async fn run_sql(http: &reqwest::Client, database: &str, sql: &str) -> anyhow::Result<u64> {
    let resp = http
        .post(tollgate_e2e::clickhouse_url())
        .query(&[("database", database)])
        .body(format!("{sql}\nFORMAT JSONCompact"))
        .send()
        .await?;
    let status = resp.status();
    let body = resp.text().await?;
    anyhow::ensure!(status.is_success(), "{}", body.trim());
    let json: serde_json::Value = serde_json::from_str(&body)?;
    json["rows"].as_u64().context("no `rows` in the answer")
}

async fn export_tsv(http: &reqwest::Client, database: &str, table: &str) -> anyhow::Result<String> {
    let resp = http
        .post(tollgate_e2e::clickhouse_url())
        .query(&[("database", database)])
        .body(format!("SELECT * FROM {table} FORMAT TabSeparated"))
        .send()
        .await?
        .error_for_status()?;
    Ok(resp.text().await?)
}

async fn produce_poison(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .create()?;
    let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
        .partition(0)
        .payload(b"not an avro usage event");
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_run_on_real_data_and_series_exist() -> anyhow::Result<()> {
    let stack = ObsStack::start("dash", "json").await?;
    let events = stack.mixed_load(8, &["no-such-model"]).await?;
    produce_poison(&tollgate_e2e::brokers(), &stack.topic).await?;
    stack.wait_for_rows(events, Duration::from_secs(60)).await?;
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while run_sql(&http, &stack.database, "SELECT 1 FROM usage_dead_letters").await? == 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the poison message never became a dead letter"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let aggregator = stack.wait_for_lag_sample().await?;
    let proxy = parse_exposition(&stack.proxy_metrics().await?)?;

    // Render every query as Grafana would for the last hour.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let args = plan_args(now);
    let out = grafana_sql("plan", &args)?;
    anyhow::ensure!(
        out.status.success(),
        "rendering failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Plan = serde_json::from_slice(&out.stdout)?;
    assert!(
        plan.clickhouse.len() >= 40,
        "{} queries",
        plan.clickhouse.len()
    );
    assert!(
        plan.prometheus.len() >= 30,
        "{} queries",
        plan.prometheus.len()
    );

    // ClickHouse 18.16 (local stack).
    let mut problems = Vec::new();
    for q in &plan.clickhouse {
        match run_sql(&http, &stack.database, &q.sql).await {
            Err(e) => problems.push(format!("{}: {e}\n{}", q.source, q.sql)),
            Ok(0) if q.strict && !q.may_be_empty => {
                problems.push(format!("{}: no rows\n{}", q.source, q.sql))
            }
            Ok(_) => {}
        }
    }
    assert!(
        problems.is_empty(),
        "on ClickHouse 18.16:\n\n{}",
        problems.join("\n\n")
    );

    // ClickHouse 26 (chdb) with the same rows.
    let events_tsv = stack.dir().join("usage_events.tsv");
    std::fs::write(
        &events_tsv,
        export_tsv(&http, &stack.database, "usage_events").await?,
    )?;
    let dead_tsv = stack.dir().join("usage_dead_letters.tsv");
    std::fs::write(
        &dead_tsv,
        export_tsv(&http, &stack.database, "usage_dead_letters").await?,
    )?;
    let mut chdb_args = args.clone();
    chdb_args.extend([
        "--events".to_string(),
        events_tsv.display().to_string(),
        "--dead-letters".to_string(),
        dead_tsv.display().to_string(),
    ]);
    let out = grafana_sql("chdb", &chdb_args)?;
    assert!(
        out.status.success(),
        "on ClickHouse 26 (chdb):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Prometheus: every series a panel uses is exported, with the labels it uses.
    let mut missing = BTreeSet::new();
    for q in &plan.prometheus {
        for (series, labels) in &q.series {
            let exp = if proxy.names().contains(series.as_str()) {
                &proxy
            } else if aggregator.names().contains(series.as_str()) {
                &aggregator
            } else {
                missing.insert(format!("{}: {series} not exported ({})", q.source, q.expr));
                continue;
            };
            let have = exp.label_names(series);
            for l in labels {
                // job / instance / env are added by Prometheus when it scrapes.
                if !have.contains(l.as_str()) && !["job", "instance", "env"].contains(&l.as_str()) {
                    missing.insert(format!("{}: {series} has no label {l}", q.source));
                }
            }
        }
    }
    assert!(missing.is_empty(), "{}", Vec::from_iter(missing).join("\n"));
    Ok(())
}
