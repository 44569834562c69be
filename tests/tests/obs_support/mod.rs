//! Helpers of the observability tests (`metrics_scrape`, `dashboards`, `request_logs`): the
//! proxy and aggregator *binaries* as child processes (each its own `/metrics`, as in
//! production, and their log output in files), a short mixed load, and a Prometheus text
//! parser.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use tollgate_e2e::{brokers, clickhouse, clickhouse_url, create_topic, unique};
use tollgate_loadtest::{LoadConfig, MockConfig, MockServer};

/// Public model served by the mock.
pub const MODEL: &str = "test-model";
/// Keys with their accounts: (key id, secret, account id). Two keys share one account.
pub const KEYS: [(&str, &str, &str); 4] = [
    ("key_obs_0", "sk-tollgate-obs-secret-0000", "acct_obs_0"),
    ("key_obs_1", "sk-tollgate-obs-secret-0001", "acct_obs_0"),
    ("key_obs_2", "sk-tollgate-obs-secret-0002", "acct_obs_1"),
    ("key_obs_3", "sk-tollgate-obs-secret-0003", "acct_obs_2"),
];
/// A key limited to one request per minute (its second request is rejected).
pub const LIMITED_KEY: &str = "sk-tollgate-obs-limited-0009";
/// Prompt text of the load; it must never reach a log line.
pub const PROMPT: &str = "confidential-prompt-text: the toll gate opens at dawn";
/// Prices (USD per 1M tokens).
pub const PRICES: (f64, f64) = (1.0, 2.0);

/// A port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A workspace binary next to this test executable (`target/<profile>/NAME`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no parent directory")?;
    let bin = dir.join(name);
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins` (`make test` does)",
        bin.display()
    );
    Ok(bin)
}

/// Mock upstream + proxy binary + aggregator binary on a fresh topic and database.
#[derive(Debug)]
pub struct ObsStack {
    /// Kafka topic.
    pub topic: String,
    /// Partitions of the topic.
    pub partitions: i32,
    /// ClickHouse database.
    pub database: String,
    /// `http://127.0.0.1:PORT` of the proxy (API and `/metrics`).
    pub proxy_url: String,
    /// `http://127.0.0.1:PORT` of the aggregator (`/metrics`, `/readyz`).
    pub aggregator_url: String,
    /// The proxy's stdout (its log).
    pub proxy_log: PathBuf,
    /// The aggregator's stderr (its log).
    pub aggregator_log: PathBuf,
    /// The mock upstream (in this process).
    pub mock: MockServer,
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl Drop for ObsStack {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn proxy_yaml(port: u16, mock: &str, topic: &str, spool: &Path, prefix: &str) -> String {
    let keys: String = KEYS
        .iter()
        .map(|(id, secret, account)| {
            format!(
                "  - {{ id: {id}, secret: {secret}, account_id: {account}, team_id: team_obs }}\n"
            )
        })
        .collect();
    format!(
        r#"
listen: 127.0.0.1:{port}
proxy_id: {topic}-proxy
shutdown_grace_secs: 2
models:
  - name: {MODEL}
    base_url: {mock}/v1
    upstream_model: mock-upstream-model
    pricing: {{ input_per_mtok: {input}, output_per_mtok: {output} }}
  - name: failing-model
    base_url: {mock}/v1
    upstream_model: mock-status-503
  - name: unreachable-model
    base_url: http://127.0.0.1:9/v1
api_keys:
{keys}  - {{ id: key_obs_limited, secret: {LIMITED_KEY}, account_id: acct_obs_limited, rate_limit: {{ rpm: 1 }} }}
kafka:
  brokers: "{brokers}"
  topic: {topic}
  spool: {{ dir: "{spool}" }}
limits: {{ backend: redis, redis_url: "{redis}", prefix: {prefix} }}
"#,
        input = PRICES.0,
        output = PRICES.1,
        brokers = brokers(),
        spool = spool.display(),
        redis =
            std::env::var("TOLLGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    )
}

fn aggregator_yaml(port: u16, topic: &str, group: &str, database: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:{port}
kafka: {{ brokers: "{brokers}", topic: {topic}, group_id: {group} }}
clickhouse: {{ url: "{ch}", database: {database} }}
batch: {{ max_rows: 50, max_wait_ms: 200 }}
"#,
        brokers = brokers(),
        ch = clickhouse_url(),
    )
}

/// `RUST_LOG` of the spawned binaries unless a test asks for another.
pub const DEBUG_LOG: &str = "info,tollgate_proxy=debug,tollgate_aggregator=debug";

fn spawn(
    bin: &str,
    args: &[&str],
    log: &Path,
    to_stdout: bool,
    rust_log: &str,
) -> anyhow::Result<Child> {
    let file = std::fs::File::create(log)?;
    let (out, err) = if to_stdout {
        (Stdio::from(file), Stdio::null())
    } else {
        (Stdio::null(), Stdio::from(file))
    };
    // A clean environment: TOLLGATE_* variables of the caller would override the config files.
    Command::new(binary(bin)?)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", rust_log)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("spawning {bin}"))
}

/// GET `url`: status and body.
pub async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let resp = reqwest::get(url).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

async fn wait_ready(what: &str, url: &str, log: &Path) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = get(url).await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            anyhow::bail!("{what} not ready at {url}; log:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl ObsStack {
    /// Topic (3 partitions) and migrated database, mock, proxy (`--log-format log_format`)
    /// and aggregator binaries; returns once both answer.
    pub async fn start(name: &str, log_format: &str) -> anyhow::Result<Self> {
        Self::start_logging(name, log_format, DEBUG_LOG).await
    }

    /// [`Self::start`] with the binaries' `RUST_LOG`.
    pub async fn start_logging(
        name: &str,
        log_format: &str,
        rust_log: &str,
    ) -> anyhow::Result<Self> {
        tollgate_e2e::init_tracing();
        let partitions = 3;
        let topic = unique(&format!("t_{name}"));
        let database = unique(&format!("tg_{name}"));
        create_topic(&topic, partitions).await?;
        tollgate_schemas::migrate::run(&clickhouse(), &database).await?;
        let mock = MockServer::start(
            "127.0.0.1:0".parse()?,
            MockConfig {
                latency_ms: 5,
                chunk_delay_ms: 2,
                ..MockConfig::default()
            },
        )
        .await?;
        let dir = tempfile::Builder::new().prefix("tollgate-obs-").tempdir()?;
        let (pport, aport) = (free_port()?, free_port()?);
        let proxy_cfg = dir.path().join("proxy.yaml");
        std::fs::write(
            &proxy_cfg,
            proxy_yaml(
                pport,
                &mock.base_url(),
                &topic,
                &dir.path().join("spool"),
                &unique("obs"),
            ),
        )?;
        let agg_cfg = dir.path().join("aggregator.yaml");
        std::fs::write(
            &agg_cfg,
            aggregator_yaml(aport, &topic, &unique("g_obs"), &database),
        )?;
        let proxy_log = dir.path().join("proxy.log");
        let aggregator_log = dir.path().join("aggregator.log");
        let mut stack = Self {
            topic,
            partitions,
            database,
            proxy_url: format!("http://127.0.0.1:{pport}"),
            aggregator_url: format!("http://127.0.0.1:{aport}"),
            proxy_log,
            aggregator_log,
            mock,
            dir,
            children: Vec::new(),
        };
        let cfg = proxy_cfg.display().to_string();
        stack.children.push(spawn(
            "tollgate-proxy",
            &["--config", &cfg, "--log-format", log_format],
            &stack.proxy_log,
            true,
            rust_log,
        )?);
        let cfg = agg_cfg.display().to_string();
        stack.children.push(spawn(
            "tollgate-aggregator",
            &["--config", &cfg, "--log-format", log_format, "run"],
            &stack.aggregator_log,
            false,
            rust_log,
        )?);
        wait_ready(
            "proxy",
            &format!("{}/healthz", stack.proxy_url),
            &stack.proxy_log,
        )
        .await?;
        wait_ready(
            "aggregator",
            &format!("{}/readyz", stack.aggregator_url),
            &stack.aggregator_log,
        )
        .await?;
        Ok(stack)
    }

    /// ClickHouse client bound to this stack's database.
    pub fn db(&self) -> clickhouse::Client {
        clickhouse().with_database(&self.database)
    }

    /// Load-generator config aimed at the proxy with key `key`.
    pub fn load_config(&self, key: &str, model: &str, requests: u64) -> LoadConfig {
        LoadConfig {
            base_url: self.proxy_url.clone(),
            api_key: Some(key.to_string()),
            model: model.to_string(),
            requests,
            concurrency: 4,
            stream_share: 0.5,
            max_tokens: 12,
            prompt: PROMPT.into(),
            include_usage: true,
            metadata: Some(serde_json::json!({"run_id": "obs-test"})),
            timeout: Duration::from_secs(30),
        }
    }

    /// A short mixed load: `per_key` requests (half streamed) with every key, a few upstream
    /// failures (503), an unknown model per name in `unknown_models`, a rate-limited request
    /// and a request with a wrong key. Returns how many usage events it should produce.
    pub async fn mixed_load(&self, per_key: u64, unknown_models: &[&str]) -> anyhow::Result<u64> {
        let runs = KEYS
            .iter()
            .map(|(_, secret, _)| tollgate_loadtest::run(self.load_config(secret, MODEL, per_key)));
        let reports = futures::future::try_join_all(runs).await?;
        let ok: u64 = reports.iter().map(|r| r.ok).sum();
        anyhow::ensure!(
            ok == per_key * KEYS.len() as u64,
            "load failed: {reports:?}"
        );
        let mut events = ok;
        let failing =
            tollgate_loadtest::run(self.load_config(KEYS[0].1, "failing-model", 3)).await?;
        anyhow::ensure!(failing.ok == 0, "failing-model answered: {failing:?}");
        events += failing.sent;
        for m in unknown_models {
            let r = tollgate_loadtest::run(self.load_config(KEYS[2].1, m, 1)).await?;
            events += r.sent;
        }
        let limited = tollgate_loadtest::run(LoadConfig {
            concurrency: 1,
            ..self.load_config(LIMITED_KEY, MODEL, 2)
        })
        .await?;
        anyhow::ensure!(limited.ok == 1, "rate limit not applied: {limited:?}");
        events += limited.sent;
        let bad = tollgate_loadtest::run(self.load_config("sk-not-a-key", MODEL, 1)).await?;
        anyhow::ensure!(bad.ok == 0, "a wrong key was accepted");
        Ok(events)
    }

    /// Wait until `usage_events` holds at least `n` rows.
    pub async fn wait_for_rows(&self, n: u64, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let count: u64 = self
                .db()
                .query("SELECT count() FROM usage_events")
                .fetch_one()
                .await?;
            if count >= n {
                return Ok(count);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "timed out with {count} of {n} rows; aggregator log: {}",
                self.aggregator_log.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The proxy's `/metrics` text.
    pub async fn proxy_metrics(&self) -> anyhow::Result<String> {
        scrape(&format!("{}/metrics", self.proxy_url)).await
    }

    /// The aggregator's `/metrics` text.
    pub async fn aggregator_metrics(&self) -> anyhow::Result<String> {
        scrape(&format!("{}/metrics", self.aggregator_url)).await
    }

    /// The aggregator's exposition once the lag sampler (every 2 s, in the background) has
    /// reported every partition.
    pub async fn wait_for_lag_sample(&self) -> anyhow::Result<Exposition> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let exp = parse_exposition(&self.aggregator_metrics().await?)?;
            let parts = exp.label_values("tollgate_aggregator_consumer_lag_events", "partition");
            if parts.len() == self.partitions as usize {
                return Ok(exp);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no lag sample for every partition: {parts:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stop the proxy and the aggregator now (SIGKILL; logs stay readable).
    pub fn kill(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }

    /// The temporary directory holding configs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

async fn scrape(url: &str) -> anyhow::Result<String> {
    let (status, body) = get(url).await?;
    anyhow::ensure!(status == 200, "GET {url}: {status}");
    Ok(body)
}

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Series name (with `_bucket`/`_sum`/`_count` suffixes).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// A parsed exposition: samples and `# TYPE` lines.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Every sample.
    pub samples: Vec<Sample>,
    /// Metric family name → type (`counter`, `gauge`, `histogram`, `summary`).
    pub types: BTreeMap<String, String>,
}

impl Exposition {
    /// Series names present.
    pub fn names(&self) -> BTreeSet<&str> {
        self.samples.iter().map(|s| s.name.as_str()).collect()
    }

    /// Label names seen on series `name`.
    pub fn label_names(&self, name: &str) -> BTreeSet<&str> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .flat_map(|s| s.labels.keys().map(String::as_str))
            .collect()
    }

    /// Values of label `label` on series `name`.
    pub fn label_values(&self, name: &str, label: &str) -> BTreeSet<&str> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get(label).map(String::as_str))
            .collect()
    }

    /// Sum of the values of series `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }
}

/// Parse the Prometheus text format (the subset metrics-exporter-prometheus writes).
pub fn parse_exposition(text: &str) -> anyhow::Result<Exposition> {
    let mut out = Exposition::default();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(n), Some(t)) = (it.next(), it.next()) {
                out.types.insert(n.to_string(), t.to_string());
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("bad sample line {line:?}"))?;
        let value: f64 = value
            .parse()
            .with_context(|| format!("bad value in {line:?}"))?;
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .with_context(|| format!("bad labels in {line:?}"))?;
                (name.to_string(), parse_labels(body)?)
            }
        };
        out.samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    Ok(out)
}

fn parse_labels(body: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let key = key.trim().trim_start_matches(',').trim().to_string();
        if key.is_empty() {
            return Ok(labels);
        }
        anyhow::ensure!(
            chars.next() == Some('"'),
            "label {key} without a quoted value"
        );
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key, value);
    }
}
