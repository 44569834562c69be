//! Aggregator configuration: YAML file (every key optional) + environment overrides.

use std::path::Path;

use serde::Deserialize;

/// Error in the configuration, naming the key path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// File unreadable.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Path.
        path: String,
        /// IO error.
        source: std::io::Error,
    },
    /// YAML invalid or unknown keys.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// Path.
        path: String,
        /// Parser message.
        message: String,
    },
    /// A value out of range.
    #[error("invalid config at `{key}`: {message}")]
    Invalid {
        /// Key path.
        key: String,
        /// What to fix.
        message: String,
    },
}

/// Top-level aggregator configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// Address of the HTTP listener serving `/metrics`, `/healthz` and `/readyz`
    /// (port 0 picks a free port).
    pub listen: String,
    /// TLS on that listener; absent: plain HTTP.
    pub tls: Option<tollgate_schemas::tls::TlsConfig>,
    /// Kafka consumer settings.
    pub kafka: KafkaConfig,
    /// ClickHouse connection.
    pub clickhouse: ClickHouseConfig,
    /// Batching.
    pub batch: BatchConfig,
    /// Backoff of ClickHouse calls that failed transiently.
    pub retry: RetryConfig,
    /// Gap and duplicate accounting of `proxy_seq`.
    pub sequence: SequenceConfig,
    /// Budgets, prepaid credits and the payment webhook (off without `budgets.redis_url`).
    pub budgets: crate::budget_config::BudgetsConfig,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8082".into(),
            tls: None,
            kafka: KafkaConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            batch: BatchConfig::default(),
            retry: RetryConfig::default(),
            sequence: SequenceConfig::default(),
            budgets: crate::budget_config::BudgetsConfig::default(),
        }
    }
}

/// Kafka consumer settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// Usage topic.
    pub topic: String,
    /// Consumer group; every instance of one deployment shares it.
    pub group_id: String,
    /// Group session timeout (ms): how long a crashed member keeps its partitions.
    pub session_timeout_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: tollgate_schemas::topics::USAGE_TOPIC.into(),
            group_id: "tollgate-aggregator".into(),
            session_timeout_ms: 10_000,
        }
    }
}

/// ClickHouse connection.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP endpoint.
    pub url: String,
    /// Database (created by the migrations).
    pub database: String,
    /// User.
    pub user: String,
    /// Password (never printed).
    pub password: String,
    /// Apply migrations at startup.
    pub migrate: bool,
    /// Limit (ms) of one ClickHouse call (insert or query); a call that takes longer counts as
    /// a transient failure.
    pub timeout_ms: u64,
    /// ClickHouse cluster name (`remote_servers`): migrations then run `ON CLUSTER` with
    /// replicated tables and a Distributed `usage_events` (see `docs/operations.md`).
    pub cluster: Option<String>,
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &"***")
            .field("migrate", &self.migrate)
            .field("timeout_ms", &self.timeout_ms)
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "tollgate".into(),
            user: "default".into(),
            password: String::new(),
            migrate: true,
            timeout_ms: 30_000,
            cluster: None,
        }
    }
}

/// Batching of inserts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Insert when this many rows are buffered.
    pub max_rows: usize,
    /// Insert at least this often (ms) when rows are buffered.
    pub max_wait_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_rows: 5_000,
            max_wait_ms: 500,
        }
    }
}

/// Exponential backoff of a partition whose write failed transiently.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// First delay (ms).
    pub initial_backoff_ms: u64,
    /// Largest delay (ms).
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff_ms: 100,
            max_backoff_ms: 5_000,
        }
    }
}

/// Bounded per-proxy state of the `proxy_seq` gap and duplicate counters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SequenceConfig {
    /// Sequence numbers remembered per proxy (rounded up to a multiple of 64). A number still
    /// missing when the newest one is this far ahead counts as a gap.
    pub window: u64,
    /// Proxies tracked at once; the least recently seen is forgotten beyond this.
    pub max_proxies: usize,
}

impl Default for SequenceConfig {
    fn default() -> Self {
        Self {
            window: 65_536,
            max_proxies: 1_024,
        }
    }
}

impl AggregatorConfig {
    /// Load the file when given (else defaults), apply env overrides, validate.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                serde_yaml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?
            }
            None => Self::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok());
        cfg.validate()?;
        Ok(cfg)
    }

    /// The one seam for environment overrides: `TOLLGATE_AGGREGATOR_LISTEN`,
    /// `TOLLGATE_KAFKA_BROKERS`, `TOLLGATE_KAFKA_TOPIC`, `TOLLGATE_AGGREGATOR_GROUP`,
    /// `TOLLGATE_CLICKHOUSE_URL`, `TOLLGATE_CLICKHOUSE_DATABASE`, `TOLLGATE_CLICKHOUSE_USER`,
    /// `TOLLGATE_CLICKHOUSE_PASSWORD`, `TOLLGATE_BUDGETS_REDIS_URL` (sets `budgets.redis_url`).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        let fields: [(&str, &mut String); 8] = [
            ("TOLLGATE_AGGREGATOR_LISTEN", &mut self.listen),
            ("TOLLGATE_KAFKA_BROKERS", &mut self.kafka.brokers),
            ("TOLLGATE_KAFKA_TOPIC", &mut self.kafka.topic),
            ("TOLLGATE_AGGREGATOR_GROUP", &mut self.kafka.group_id),
            ("TOLLGATE_CLICKHOUSE_URL", &mut self.clickhouse.url),
            (
                "TOLLGATE_CLICKHOUSE_DATABASE",
                &mut self.clickhouse.database,
            ),
            ("TOLLGATE_CLICKHOUSE_USER", &mut self.clickhouse.user),
            (
                "TOLLGATE_CLICKHOUSE_PASSWORD",
                &mut self.clickhouse.password,
            ),
        ];
        for (var, field) in fields {
            if let Some(v) = get(var) {
                *field = v;
            }
        }
        if let Some(v) = get("TOLLGATE_BUDGETS_REDIS_URL") {
            self.budgets.redis_url = Some(v);
        }
    }

    /// Check values; errors name the key path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        };
        if self.kafka.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "must list at least one host:port"));
        }
        if self.kafka.topic.trim().is_empty() {
            return Err(invalid("kafka.topic", "must name the usage topic"));
        }
        if self.kafka.group_id.trim().is_empty() {
            return Err(invalid("kafka.group_id", "must not be empty"));
        }
        if !self.clickhouse.url.starts_with("http") {
            return Err(invalid(
                "clickhouse.url",
                "must be an http(s):// URL of the ClickHouse HTTP port",
            ));
        }
        let db = &self.clickhouse.database;
        if db.is_empty() || !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(
                "clickhouse.database",
                "must be non-empty letters, digits and _",
            ));
        }
        if self.batch.max_rows == 0 {
            return Err(invalid("batch.max_rows", "must be at least 1"));
        }
        if self.batch.max_wait_ms == 0 {
            return Err(invalid("batch.max_wait_ms", "must be at least 1"));
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "listen",
                "must be an IP:port address, e.g. 127.0.0.1:8082",
            ));
        }
        if let Some(t) = &self.tls {
            // The files are read now, so a bad path fails at load naming its key.
            tollgate_schemas::tls::acceptor_at("tls", t).map_err(|e| ConfigError::Invalid {
                key: e.key().into(),
                message: e.detail(),
            })?;
        }
        if self.kafka.session_timeout_ms < 1_000 {
            return Err(invalid("kafka.session_timeout_ms", "must be at least 1000"));
        }
        if let Some(c) = &self.clickhouse.cluster {
            if c.is_empty() || !c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
                return Err(invalid(
                    "clickhouse.cluster",
                    "must be a name of [A-Za-z0-9_]",
                ));
            }
        }
        if !(100..=60_000).contains(&self.clickhouse.timeout_ms) {
            return Err(invalid(
                "clickhouse.timeout_ms",
                "must be between 100 and 60000 (a stalled call must not outlast the consumer's poll interval)",
            ));
        }
        if self.retry.initial_backoff_ms == 0 {
            return Err(invalid("retry.initial_backoff_ms", "must be at least 1"));
        }
        if self.retry.max_backoff_ms < self.retry.initial_backoff_ms {
            return Err(invalid(
                "retry.max_backoff_ms",
                "must be at least retry.initial_backoff_ms",
            ));
        }
        if self.retry.max_backoff_ms > 600_000 {
            return Err(invalid(
                "retry.max_backoff_ms",
                "must be at most 600000 (10 minutes)",
            ));
        }
        if self.sequence.window == 0 || self.sequence.window > 1 << 24 {
            return Err(invalid("sequence.window", "must be between 1 and 16777216"));
        }
        if self.sequence.max_proxies == 0 {
            return Err(invalid("sequence.max_proxies", "must be at least 1"));
        }
        self.budgets
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_defaults_and_unknown_keys_fail() {
        let cfg: AggregatorConfig = serde_yaml::from_str("{}").unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.kafka.group_id, "tollgate-aggregator");
        let err = serde_yaml::from_str::<AggregatorConfig>("batch: {max_row: 1}").unwrap_err();
        assert!(err.to_string().contains("max_row"));
    }

    #[test]
    fn validation_names_the_key() {
        let mut cfg = AggregatorConfig::default();
        cfg.clickhouse.database = "bad-name".into();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("clickhouse.database"));
        let err = |edit: fn(&mut AggregatorConfig)| {
            let mut cfg = AggregatorConfig::default();
            edit(&mut cfg);
            cfg.validate().unwrap_err().to_string()
        };
        assert!(err(|c| c.kafka.topic = " ".into()).contains("kafka.topic"));
        assert!(err(|c| c.retry.initial_backoff_ms = 0).contains("retry.initial_backoff_ms"));
        let e = err(|c| c.retry.max_backoff_ms = 50);
        assert!(
            e.contains("retry.max_backoff_ms") && e.contains("initial_backoff_ms"),
            "{e}"
        );
        assert!(err(|c| c.retry.max_backoff_ms = 3_600_000).contains("retry.max_backoff_ms"));
    }

    #[test]
    fn env_overrides_and_password_hidden() {
        let mut cfg = AggregatorConfig::default();
        cfg.apply_env(|k| (k == "TOLLGATE_CLICKHOUSE_PASSWORD").then(|| "hunter2".to_string()));
        assert_eq!(cfg.clickhouse.password, "hunter2");
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn clickhouse_cluster_name_is_checked() {
        let mut cfg = AggregatorConfig::default();
        assert!(cfg.clickhouse.cluster.is_none());
        cfg.clickhouse.cluster = Some("tollgate_cluster".into());
        assert!(cfg.validate().is_ok());
        cfg.clickhouse.cluster = Some("bad name;".into());
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("clickhouse.cluster"));
    }

    #[test]
    fn unreadable_tls_files_name_their_key() {
        let mut cfg: AggregatorConfig = serde_yaml::from_str(
            "tls: {cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem}",
        )
        .unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("`tls.cert_file`"), "{err}");
        assert!(err.contains("/nonexistent/c.pem"), "{err}");
        let err = serde_yaml::from_str::<AggregatorConfig>("tls: {cert_file: a, key: b}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("key"), "{err}");
        cfg.tls = None;
        cfg.validate().unwrap();
    }

    #[test]
    fn listen_defaults_and_env_override() {
        let mut cfg = AggregatorConfig::default();
        assert_eq!(cfg.listen, "127.0.0.1:8082");
        cfg.apply_env(|k| (k == "TOLLGATE_AGGREGATOR_LISTEN").then(|| "127.0.0.1:0".to_string()));
        assert_eq!(cfg.listen, "127.0.0.1:0");
        cfg.validate().unwrap();
        cfg.listen = "nowhere".into();
        assert!(cfg.validate().unwrap_err().to_string().contains("`listen`"));
    }
}
