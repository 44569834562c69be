//! Harness of the proxy's integration tests: a mock upstream speaking every provider's wire
//! format, a proxy configured with one model per provider, and a reader of the usage events
//! the proxy produced to its own Kafka topic (shared local broker).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use tollgate_loadtest::{MockConfig, MockServer};
use tollgate_proxy::{ProxyConfig, ProxyHandle};
use tollgate_schemas::UsageEvent;

pub const KEY: &str = "sk-proxy-test-all-models";
pub const LIMITED_KEY: &str = "sk-proxy-test-limited";

pub fn brokers() -> String {
    std::env::var("TOLLGATE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}_{}", &id[id.len() - 12..])
}

pub struct Env {
    pub mock: MockServer,
    pub slow_mock: MockServer,
    pub proxy: ProxyHandle,
    pub topic: String,
    pub http: reqwest::Client,
}

pub async fn create_topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    admin
        .create_topics([&NewTopic::new(name, 1, TopicReplication::Fixed(1))], &opts)
        .await
        .unwrap();
}

pub fn config(mock: &str, slow: &str, topic: &str, extra: &str) -> ProxyConfig {
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
max_body_bytes: 65536
shutdown_grace_secs: 5
models:
  - name: gpt-mock
    base_url: {mock}/v1
    upstream_model: mock-gpt-upstream
    pricing: {{input_per_mtok: 1.0, output_per_mtok: 2.0, cached_input_per_mtok: 0.5}}
  - name: azure-mock
    pricing: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
    deployments:
      - {{provider: azure, base_url: "{mock}", upstream_model: my-azure-deployment, api_key: azure-secret-1}}
  - name: claude-mock
    pricing: {{input_per_mtok: 3.0, output_per_mtok: 15.0, cached_input_per_mtok: 0.3}}
    deployments:
      - {{provider: anthropic, base_url: "{mock}", upstream_model: claude-mock-upstream, api_key: anthropic-secret-1}}
  - name: embed-mock
    base_url: {mock}/v1
    pricing: {{input_per_mtok: 0.1}}
  - name: failover-mock
    retry: {{max_attempts: 3, backoff_ms: 1, cooldown_after_failures: 2, cooldown_secs: 60}}
    deployments:
      - {{base_url: "{mock}/v1", upstream_model: mock-status-500, priority: 0}}
      - {{base_url: "{mock}/v1", upstream_model: healthy-upstream, priority: 1}}
  - name: ratelimited-mock
    retry: {{max_attempts: 1}}
    deployments:
      - {{base_url: "{mock}/v1", upstream_model: mock-status-429}}
  - name: slow-mock
    timeouts: {{first_byte_ms: 300}}
    retry: {{max_attempts: 1}}
    base_url: {slow}/v1
  - name: dead-mock
    retry: {{max_attempts: 2, backoff_ms: 1}}
    base_url: http://127.0.0.1:9/v1
  - name: h2c-mock
    pricing: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
    deployments:
      - {{base_url: "{mock}/v1", upstream_model: h2c-upstream, http2_prior_knowledge: true}}
{extra}
api_keys:
  - {{id: key_all, secret: {KEY}, account_id: acct_p, team_id: team_p}}
  - {{id: key_limited, secret: {LIMITED_KEY}, account_id: acct_p, allowed_models: [gpt-mock]}}
  - {{id: key_off, secret: sk-proxy-test-disabled, account_id: acct_p, enabled: false}}
kafka:
  idempotence: false
  brokers: "{brokers}"
  topic: {topic}
  spool: {{dir: "{spool}"}}
"#,
        brokers = brokers(),
        spool = std::env::temp_dir().join(unique("spool")).display(),
    );
    let cfg = ProxyConfig::from_yaml(&yaml, "test").unwrap();
    cfg.validate().unwrap();
    cfg
}

impl Env {
    pub async fn start() -> Self {
        Self::start_with(MockConfig {
            chunk_delay_ms: 1,
            ..Default::default()
        })
        .await
    }

    pub async fn start_with(mock_cfg: MockConfig) -> Self {
        Self::start_full(mock_cfg, "").await
    }

    /// Started with more models (`extra`: entries of the `models:` list, indented by two;
    /// `{mock}` stands for the mock's base URL).
    pub async fn start_with_models(extra: &str) -> Self {
        Self::start_full(
            MockConfig {
                chunk_delay_ms: 1,
                ..Default::default()
            },
            extra,
        )
        .await
    }

    async fn start_full(mock_cfg: MockConfig, extra: &str) -> Self {
        let mock = MockServer::start("127.0.0.1:0".parse().unwrap(), mock_cfg)
            .await
            .unwrap();
        let slow_mock = MockServer::start(
            "127.0.0.1:0".parse().unwrap(),
            MockConfig {
                latency_ms: 2_000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let topic = unique("proxy_t");
        create_topic(&topic).await;
        let extra = extra.replace("{mock}", &mock.base_url());
        let proxy = tollgate_proxy::start(config(
            &mock.base_url(),
            &slow_mock.base_url(),
            &topic,
            &extra,
        ))
        .await
        .unwrap();
        Self {
            mock,
            slow_mock,
            proxy,
            topic,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy.base_url())
    }

    pub async fn post(&self, path: &str, key: &str, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Read exactly `n` usage events from the topic (fails on timeout or if more arrive).
    pub async fn events(&self, n: usize) -> Vec<UsageEvent> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", unique("reader"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        consumer.subscribe(&[&self.topic]).unwrap();
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while out.len() < n {
            let msg = tokio::time::timeout_at(deadline, consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} events arrived", out.len()))
                .unwrap();
            out.push(tollgate_schemas::decode(msg.payload().unwrap()).unwrap());
        }
        if let Ok(Ok(extra)) =
            tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
        {
            panic!(
                "more events than expected: {:?}",
                tollgate_schemas::decode(extra.payload().unwrap())
            );
        }
        out.sort_by_key(|e| e.proxy_seq);
        out
    }
}

/// Parse an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .filter_map(|l| l.strip_prefix("data:").map(|d| d.trim().to_string()))
                .next()
        })
        .collect()
}
