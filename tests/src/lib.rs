//! Harness for end-to-end tests against the real local stack (`infra/dev/stack.sh up`).
//!
//! Every test gets its own Kafka topic, ClickHouse database and consumer group, so tests run
//! in parallel without seeing each other's rows. Service addresses come from
//! `TOLLGATE_KAFKA_BROKERS` and `TOLLGATE_CLICKHOUSE_URL` (defaults: the local stack).

pub mod private;

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use tollgate_aggregator::{AggregatorConfig, AggregatorHandle};
use tollgate_loadtest::{MockConfig, MockServer};
use tollgate_proxy::{ProxyConfig, ProxyHandle};

/// The API key secret every test proxy accepts.
pub const TEST_KEY: &str = "sk-tollgate-test-0001";
/// Extra keys, each owned by its own account (`acct_test_<i>`), so that events spread over
/// partitions (the Kafka key is the account).
pub const EXTRA_KEYS: [&str; 4] = [
    "sk-tollgate-test-0011",
    "sk-tollgate-test-0012",
    "sk-tollgate-test-0013",
    "sk-tollgate-test-0014",
];
/// Public model name of test proxies.
pub const TEST_MODEL: &str = "test-model";
/// Input price, USD per 1M tokens (1000 nano-USD per token, so costs are exact integers).
pub const INPUT_PER_MTOK: f64 = 1.0;
/// Output price, USD per 1M tokens (2000 nano-USD per token).
pub const OUTPUT_PER_MTOK: f64 = 2.0;

/// Kafka bootstrap servers of the local stack.
pub fn brokers() -> String {
    std::env::var("TOLLGATE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// ClickHouse HTTP URL of the local stack.
pub fn clickhouse_url() -> String {
    std::env::var("TOLLGATE_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// Log to the test output (`RUST_LOG` filters; default info). Safe to call many times.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A name unique to this test run: `prefix_<12 hex>`.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}_{}", &id[id.len() - 12..])
}

/// Create a topic on the shared broker (Tansu does not auto-create topics).
pub async fn create_topic(name: &str, partitions: i32) -> anyhow::Result<()> {
    create_topic_on(&brokers(), name, partitions).await
}

/// Create a topic on the broker at `brokers`; an existing topic is fine.
pub async fn create_topic_on(brokers: &str, name: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("admin client")?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .context("create_topics")?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

/// A ClickHouse client for the local server, without a database.
pub fn clickhouse() -> clickhouse::Client {
    let cfg = tollgate_aggregator::config::ClickHouseConfig {
        url: clickhouse_url(),
        ..Default::default()
    };
    tollgate_aggregator::sink::client(&cfg)
}

/// Everything one test needs: a topic, a database, a mock upstream and a proxy.
#[derive(Debug)]
pub struct TestStack {
    /// Kafka topic of this test.
    pub topic: String,
    /// ClickHouse database of this test.
    pub database: String,
    /// The mock upstream.
    pub mock: MockServer,
    /// The proxy under test.
    pub proxy: ProxyHandle,
    /// Redis key prefix of this stack's config store and budgets (set by
    /// [`TestStack::start_budgets`]; None: the proxy runs standalone).
    pub redis_prefix: Option<String>,
}

/// Admin key of budget stacks ([`TestStack::start_budgets`]).
pub const ADMIN_KEY: &str = "tg-admin-budget-test-0001";
/// Payment webhook secret of budget stacks' aggregators.
pub const WEBHOOK_SECRET: &str = "whsec-budget-test-0001";

/// Redis of the local stack.
pub fn redis_url() -> String {
    std::env::var("TOLLGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

impl TestStack {
    /// Create topic + database (migrated), start mock and proxy.
    pub async fn start(name: &str, partitions: i32, mock_cfg: MockConfig) -> anyhow::Result<Self> {
        init_tracing();
        let topic = unique(&format!("t_{name}"));
        let database = unique(&format!("tg_{name}"));
        create_topic(&topic, partitions).await?;
        tollgate_schemas::migrate::run(&clickhouse(), &database).await?;
        let mock = MockServer::start("127.0.0.1:0".parse()?, mock_cfg).await?;
        let proxy = tollgate_proxy::start(proxy_config(&mock.base_url(), &topic)?).await?;
        Ok(Self {
            topic,
            database,
            mock,
            proxy,
            redis_prefix: None,
        })
    }

    /// Like [`Self::start`], with budgets: the proxy keeps its config in Redis under a unique
    /// prefix, serves the admin API ([`ADMIN_KEY`]) with this test's database as the credit
    /// ledger, and [`Self::aggregator_config`] turns budgets and the payment webhook
    /// ([`WEBHOOK_SECRET`]) on.
    pub async fn start_budgets(
        name: &str,
        partitions: i32,
        mock_cfg: MockConfig,
    ) -> anyhow::Result<Self> {
        init_tracing();
        let topic = unique(&format!("t_{name}"));
        let database = unique(&format!("tg_{name}"));
        let prefix = unique(&format!("tgb_{name}"));
        create_topic(&topic, partitions).await?;
        tollgate_schemas::migrate::run(&clickhouse(), &database).await?;
        let mock = MockServer::start("127.0.0.1:0".parse()?, mock_cfg).await?;
        let mut cfg = proxy_config(&mock.base_url(), &topic)?;
        let admin_hash: String = tollgate_proxy::routing::hash_secret(ADMIN_KEY)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let extra = format!(
            "redis: {{url: \"{}\", prefix: {prefix}, resync_ms: 1000}}\n\
             admin: {{listen: \"127.0.0.1:0\", key_sha256: \"{admin_hash}\"}}\n\
             budgets: {{cache_ttl_ms: 1000, clickhouse: {{url: \"{}\", database: {database}}}}}\n",
            redis_url(),
            clickhouse_url()
        );
        let patch: ProxyConfig = ProxyConfig::from_yaml(
            &format!("{extra}kafka: {{brokers: \"x:1\"}}\nmodels: []\n"),
            "test",
        )?;
        cfg.redis = patch.redis;
        cfg.admin = patch.admin;
        cfg.budgets = patch.budgets;
        cfg.validate()?;
        let proxy = tollgate_proxy::start(cfg).await?;
        Ok(Self {
            topic,
            database,
            mock,
            proxy,
            redis_prefix: Some(prefix),
        })
    }

    /// Base URL of the proxy's admin API (budget stacks).
    pub fn admin_url(&self) -> String {
        self.proxy
            .admin_addr()
            .map(|a| format!("http://{a}"))
            .unwrap_or_default()
    }

    /// ClickHouse client bound to this test's database.
    pub fn db(&self) -> clickhouse::Client {
        clickhouse().with_database(&self.database)
    }

    /// Aggregator config for this test's topic and database in consumer group `group`.
    pub fn aggregator_config(&self, group: &str) -> AggregatorConfig {
        let mut cfg = AggregatorConfig {
            listen: "127.0.0.1:0".into(),
            ..Default::default()
        };
        cfg.kafka.brokers = brokers();
        cfg.kafka.topic = self.topic.clone();
        cfg.kafka.group_id = group.to_string();
        cfg.clickhouse.url = clickhouse_url();
        cfg.clickhouse.database = self.database.clone();
        cfg.batch.max_rows = 50;
        cfg.batch.max_wait_ms = 200;
        if let Some(prefix) = &self.redis_prefix {
            cfg.budgets.redis_url = Some(redis_url());
            cfg.budgets.prefix = prefix.clone();
            cfg.budgets.eval_interval_ms = 300;
            cfg.budgets.webhook_secret = Some(WEBHOOK_SECRET.into());
        }
        cfg
    }

    /// Start an aggregator in group `group`.
    pub async fn aggregator(&self, group: &str) -> anyhow::Result<AggregatorHandle> {
        Ok(tollgate_aggregator::start(self.aggregator_config(group)).await?)
    }

    /// Count rows in `usage_events`.
    pub async fn row_count(&self) -> anyhow::Result<u64> {
        Ok(self
            .db()
            .query("SELECT count() FROM usage_events")
            .fetch_one::<u64>()
            .await?)
    }

    /// Wait until `usage_events` holds `n` rows (or fail after `timeout`). Then waits a little
    /// longer and checks that no extra row arrives.
    pub async fn wait_for_rows(&self, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let count = self.row_count().await?;
            if count >= n {
                tokio::time::sleep(Duration::from_millis(700)).await;
                let after = self.row_count().await?;
                anyhow::ensure!(after == n, "expected exactly {n} rows, found {after}");
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "timed out with {count} of {n} rows"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Run `per_key` requests with every key of [`EXTRA_KEYS`] concurrently; returns the
    /// number of successful requests.
    pub async fn load_all_accounts(&self, per_key: u64, stream_share: f64) -> anyhow::Result<u64> {
        let runs = EXTRA_KEYS.iter().map(|k| {
            let mut cfg = self.load(per_key, stream_share);
            cfg.api_key = Some((*k).to_string());
            cfg.concurrency = 4;
            tollgate_loadtest::run(cfg)
        });
        let reports = futures::future::try_join_all(runs).await?;
        Ok(reports.iter().map(|r| r.ok).sum())
    }

    /// Load-generator config aimed at this proxy.
    pub fn load(&self, requests: u64, stream_share: f64) -> tollgate_loadtest::LoadConfig {
        tollgate_loadtest::LoadConfig {
            base_url: self.proxy.base_url(),
            api_key: Some(TEST_KEY.into()),
            model: TEST_MODEL.into(),
            requests,
            concurrency: 8,
            stream_share,
            max_tokens: 12,
            prompt: "tell me a short story about a toll gate".into(),
            include_usage: true,
            metadata: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// The proxy config used by tests: one model on the mock, one key.
pub fn proxy_config(mock_base_url: &str, topic: &str) -> anyhow::Result<ProxyConfig> {
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
proxy_id: {topic}-proxy
shutdown_grace_secs: 5
models:
  - name: {TEST_MODEL}
    base_url: {mock_base_url}/v1
    upstream_model: mock-upstream-model
    pricing: {{ input_per_mtok: {INPUT_PER_MTOK}, output_per_mtok: {OUTPUT_PER_MTOK} }}
  - name: failing-model
    base_url: {mock_base_url}/v1
    upstream_model: mock-status-503
  - name: unreachable-model
    base_url: http://127.0.0.1:9/v1
api_keys:
  - id: key_test
    secret: {TEST_KEY}
    account_id: acct_test
    team_id: team_test
{extra}kafka:
  brokers: "{brokers}"
  topic: {topic}
  # Tansu 0.6 (the local broker) can crash on idempotent-producer paths; see docs/operations.md.
  idempotence: false
  spool: {{ dir: "{spool}" }}
"#,
        brokers = brokers(),
        spool = spool_dir().display(),
        extra = EXTRA_KEYS
            .iter()
            .enumerate()
            .map(|(i, k)| format!(
                "  - {{ id: key_test_{i}, secret: {k}, account_id: acct_test_{i} }}\n"
            ))
            .collect::<String>(),
    );
    let cfg = ProxyConfig::from_yaml(&yaml, "test")?;
    cfg.validate()?;
    Ok(cfg)
}

/// A fresh spool directory for one test proxy (each proxy process needs its own: it is locked).
pub fn spool_dir() -> std::path::PathBuf {
    std::env::temp_dir()
        .join("tollgate-e2e-spool")
        .join(unique("spool"))
}
