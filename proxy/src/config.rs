//! Proxy configuration: YAML file + environment overrides, validated with key paths.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::entities::{Account, ApiKey, FieldError, Model};

/// Error in the configuration, naming the key path and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// IO error.
        source: std::io::Error,
    },
    /// The YAML did not parse or has unknown/mistyped keys.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// File path.
        path: String,
        /// Parser message including the key path.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config at `{key}`: {message}")]
    Invalid {
        /// Dotted key path, e.g. `models[0].pricing.input_per_mtok`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Top-level proxy configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address of the OpenAI-compatible API (port 0 picks a free port).
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// Identity of this process in usage events; generated when empty.
    #[serde(default)]
    pub proxy_id: String,
    /// Largest accepted request body, bytes.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// Public models (the whole catalog in standalone mode; a seed for Redis otherwise).
    #[serde(default)]
    pub models: Vec<Model>,
    /// Virtual API keys (same: catalog or seed).
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
    /// Accounts (same: catalog or seed).
    #[serde(default)]
    pub accounts: Vec<Account>,
    /// Admin API; absent: no admin listener.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Shared config store; absent: standalone from this file.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// Usage event publishing.
    pub kafka: KafkaConfig,
    /// Graceful shutdown: how long in-flight streams may run after SIGTERM.
    #[serde(default = "defaults::shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    /// Where rate-limit counters live and what happens when that store is down.
    #[serde(default)]
    pub limits: crate::limits::LimitsConfig,
    /// Budget and credit enforcement (needs `redis`).
    #[serde(default)]
    pub budgets: crate::budget::BudgetConfig,
    /// TLS on the public listener; absent: plain HTTP.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Allowed upstream base URLs (patterns, see [`crate::allowlist`]); empty: any.
    #[serde(default)]
    pub upstream_allowlist: Vec<String>,
    /// A client must send its request headers within this time or is disconnected (slowloris).
    #[serde(default = "crate::listener::default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Streams the proxy opens on one HTTP/2 upstream connection before it opens another; keep
    /// it at or below the providers' `SETTINGS_MAX_CONCURRENT_STREAMS`.
    #[serde(default = "defaults::upstream_http2_max_streams")]
    pub upstream_http2_max_streams: usize,
}

/// A secret string that never prints (serialized only into the config store).
#[derive(Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret value, for hashing or sending upstream only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Admin API listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address (its own listener; keep it private).
    #[serde(default = "defaults::admin_listen")]
    pub listen: SocketAddr,
    /// Hex SHA-256 of the admin key.
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// Environment variable holding the admin key.
    #[serde(default)]
    pub key_env: Option<String>,
    /// TLS on the admin listener; absent: plain HTTP.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// The proxy's parsed `upstream_allowlist` (set by [`ProxyConfig::from_yaml`]).
    #[serde(skip)]
    pub allowlist: crate::allowlist::Allowlist,
}

/// Redis config store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]` (may carry a password: never printed).
    pub url: Secret,
    /// Key prefix (a `{hash tag}` is added so all config keys share one cluster slot).
    #[serde(default = "defaults::redis_prefix")]
    pub prefix: String,
    /// Full resync interval, ms (changes also arrive by pub/sub notice).
    #[serde(default = "defaults::resync_ms")]
    pub resync_ms: u64,
    /// Redis Cluster mode (also implied by a comma-separated node list in `url`).
    #[serde(default)]
    pub cluster: bool,
}

/// Kafka producer settings for usage events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Publish usage events (metering). `false` turns metering off: no events, no spool,
    /// `brokers` may be empty (a pure routing gateway; budgets then see no spend).
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Bootstrap servers, `host:port[,host:port]`.
    #[serde(default)]
    pub brokers: String,
    /// Usage topic.
    #[serde(default = "defaults::topic")]
    pub topic: String,
    /// Capacity of the in-memory event queue between requests and the publisher.
    #[serde(default = "defaults::queue_capacity")]
    pub queue_capacity: usize,
    /// Enable the idempotent producer (acks=all).
    #[serde(default = "defaults::yes")]
    pub idempotence: bool,
    /// How long the producer waits to fill a batch, ms (`linger.ms`). Larger batches cost the
    /// proxy and the brokers less CPU per event; the delay only postpones metering (and budget
    /// spend) by this much, never a request.
    #[serde(default = "defaults::linger_ms")]
    pub linger_ms: u64,
    /// Compression of produced batches (`compression.type`).
    #[serde(default)]
    pub compression: Compression,
    /// Disk spool used while the broker is slow or down.
    #[serde(default)]
    pub spool: crate::usage::spool::SpoolConfig,
}

/// Kafka batch compression codec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression: least CPU on the proxy and the brokers, most bytes on the wire.
    None,
    /// gzip.
    Gzip,
    /// snappy.
    Snappy,
    /// lz4 (default: cheap, and usage events compress well).
    #[default]
    Lz4,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The librdkafka `compression.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

mod defaults {
    use std::net::{Ipv4Addr, SocketAddr};

    pub fn listen() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 8080))
    }
    pub fn max_body_bytes() -> usize {
        4 * 1024 * 1024
    }
    pub fn admin_listen() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 8081))
    }
    pub fn redis_prefix() -> String {
        "tollgate".into()
    }
    pub fn resync_ms() -> u64 {
        5_000
    }
    pub fn topic() -> String {
        tollgate_schemas::topics::USAGE_TOPIC.into()
    }
    pub fn linger_ms() -> u64 {
        20
    }
    pub fn upstream_http2_max_streams() -> usize {
        crate::providers::pool::DEFAULT_MAX_STREAMS
    }
    pub fn queue_capacity() -> usize {
        100_000
    }
    pub fn shutdown_grace_secs() -> u64 {
        30
    }
    pub fn yes() -> bool {
        true
    }
}

impl ProxyConfig {
    /// Read, parse, apply environment overrides and validate.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut cfg = Self::from_yaml(&text, &path.display().to_string())?;
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parse YAML text and normalize model shorthands (no env overrides, no validation).
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut cfg: Self = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        cfg.normalize();
        let allow = crate::allowlist::Allowlist::parse(&cfg.upstream_allowlist)
            .map_err(|e| invalid("upstream_allowlist", e.to_string()))?;
        if let Some(a) = cfg.admin.as_mut() {
            a.allowlist = allow;
        }
        Ok(cfg)
    }

    /// The one seam for environment overrides: `TOLLGATE_PROXY_LISTEN`, `TOLLGATE_PROXY_ID`,
    /// `TOLLGATE_KAFKA_BROKERS`, `TOLLGATE_KAFKA_TOPIC`, `TOLLGATE_REDIS_URL` (sets `redis.url`),
    /// `TOLLGATE_LIMITS_BACKEND`, `TOLLGATE_LIMITS_REDIS_URL`, `TOLLGATE_LIMITS_FAILURE_MODE`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("TOLLGATE_PROXY_LISTEN") {
            self.listen = v.parse().map_err(|_| {
                invalid(
                    "listen (TOLLGATE_PROXY_LISTEN)",
                    "expected host:port, e.g. 127.0.0.1:8080",
                )
            })?;
        }
        if let Some(v) = get("TOLLGATE_PROXY_ID") {
            self.proxy_id = v;
        }
        if let Some(v) = get("TOLLGATE_KAFKA_BROKERS") {
            self.kafka.brokers = v;
        }
        if let Some(v) = get("TOLLGATE_KAFKA_TOPIC") {
            self.kafka.topic = v;
        }
        if let Some(url) = get("TOLLGATE_REDIS_URL") {
            match &mut self.redis {
                Some(r) => r.url = Secret(url),
                None => {
                    self.redis = Some(RedisConfig {
                        url: Secret(url),
                        prefix: defaults::redis_prefix(),
                        resync_ms: defaults::resync_ms(),
                        cluster: false,
                    })
                }
            }
        }
        self.apply_limits_env(get)
    }

    fn apply_limits_env(
        &mut self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        use crate::limits::{Backend, FailureMode};
        let l = &mut self.limits;
        if let Some(v) = get("TOLLGATE_LIMITS_BACKEND") {
            l.backend = Some(match v.as_str() {
                "local" => Backend::Local,
                "redis" => Backend::Redis,
                _ => {
                    return Err(invalid(
                        "limits.backend (TOLLGATE_LIMITS_BACKEND)",
                        "expected local or redis",
                    ))
                }
            });
        }
        if let Some(v) = get("TOLLGATE_LIMITS_REDIS_URL") {
            l.redis_url = Some(Secret(v));
        }
        if let Some(v) = get("TOLLGATE_LIMITS_FAILURE_MODE") {
            l.failure_mode = match v.as_str() {
                "open" => FailureMode::Open,
                "closed" => FailureMode::Closed,
                _ => {
                    return Err(invalid(
                        "limits.failure_mode (TOLLGATE_LIMITS_FAILURE_MODE)",
                        "expected open or closed",
                    ))
                }
            };
        }
        Ok(())
    }

    /// Normalize model shorthands and hash plaintext key secrets (call after parsing).
    pub fn normalize(&mut self) {
        for m in &mut self.models {
            m.normalize();
        }
    }

    /// Check values and cross-references; errors name the key path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let field = |prefix: String| {
            move |e: FieldError| {
                let e = e.within(&prefix);
                invalid(e.field, e.message)
            }
        };
        if self.models.is_empty() && self.redis.is_none() {
            return Err(invalid(
                "models",
                "at least one model is required without a redis store",
            ));
        }
        if self.upstream_http2_max_streams == 0 {
            return Err(invalid(
                "upstream_http2_max_streams",
                format!(
                    "must be at least 1 (default {})",
                    defaults::upstream_http2_max_streams()
                ),
            ));
        }
        let allow = crate::allowlist::Allowlist::parse(&self.upstream_allowlist)
            .map_err(|e| invalid("upstream_allowlist", e.to_string()))?;
        let mut names = HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            m.validate().map_err(field(format!("models[{i}]")))?;
            allow
                .check_model(m)
                .map_err(field(format!("models[{i}]")))?;
            if !names.insert(m.name.as_str()) {
                return Err(invalid(
                    format!("models[{i}].name"),
                    format!("duplicate model name `{}`", m.name),
                ));
            }
        }
        let mut ids = HashSet::new();
        for (i, k) in self.api_keys.iter().enumerate() {
            k.validate().map_err(field(format!("api_keys[{i}]")))?;
            if !ids.insert(k.id.as_str()) {
                return Err(invalid(
                    format!("api_keys[{i}].id"),
                    format!("duplicate key id `{}`", k.id),
                ));
            }
            for (j, name) in k.allowed_models.iter().enumerate() {
                if self.redis.is_none() && !names.contains(name.as_str()) {
                    return Err(invalid(
                        format!("api_keys[{i}].allowed_models[{j}]"),
                        format!("unknown model `{name}`"),
                    ));
                }
            }
        }
        let mut accounts = HashSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            a.validate().map_err(field(format!("accounts[{i}]")))?;
            if !accounts.insert(a.id.as_str()) {
                return Err(invalid(
                    format!("accounts[{i}].id"),
                    format!("duplicate account id `{}`", a.id),
                ));
            }
        }
        if let Some(admin) = &self.admin {
            match (&admin.key_sha256, &admin.key_env) {
                (None, None) => {
                    return Err(invalid(
                        "admin.key_sha256",
                        "set key_sha256 or key_env so the admin API is protected",
                    ))
                }
                (Some(h), _) if h.len() != 64 || hex::decode(h).is_err() => {
                    return Err(invalid(
                        "admin.key_sha256",
                        "must be 64 hex characters (sha256sum of the admin key)",
                    ))
                }
                _ => {}
            }
        }
        // TLS files are read now, so a bad path fails `--check` naming its key.
        let admin_tls = self.admin.as_ref().and_then(|a| a.tls.as_ref());
        for (key, tls) in [("tls", self.tls.as_ref()), ("admin.tls", admin_tls)] {
            if let Some(t) = tls {
                crate::tls::acceptor_at(key, t).map_err(|e| invalid(e.key(), e.detail()))?;
            }
        }
        if let Some(r) = &self.redis {
            if !(r.url.expose().starts_with("redis://") || r.url.expose().starts_with("rediss://"))
            {
                return Err(invalid(
                    "redis.url",
                    "must start with redis:// or rediss://",
                ));
            }
            if r.prefix.is_empty() || r.prefix.contains(['{', '}', ' ']) {
                return Err(invalid(
                    "redis.prefix",
                    "must be non-empty without braces or spaces",
                ));
            }
            if r.resync_ms < 100 {
                return Err(invalid("redis.resync_ms", "must be at least 100"));
            }
        }
        if self.kafka.enabled && self.kafka.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "must list at least one host:port"));
        }
        if self.kafka.topic.trim().is_empty() {
            return Err(invalid("kafka.topic", "must not be empty"));
        }
        if self.kafka.linger_ms > 1_000 {
            return Err(invalid("kafka.linger_ms", "must be at most 1000"));
        }
        if !(1..=10_000_000).contains(&self.kafka.queue_capacity) {
            return Err(invalid(
                "kafka.queue_capacity",
                "must be between 1 and 10000000 events",
            ));
        }
        if !(100..=600_000).contains(&self.header_read_timeout_ms) {
            return Err(invalid(
                "header_read_timeout_ms",
                "must be between 100 and 600000 ms",
            ));
        }
        if self.shutdown_grace_secs > 3_600 {
            return Err(invalid(
                "shutdown_grace_secs",
                "must be at most 3600 (0: streams end at once)",
            ));
        }
        let spool = &self.kafka.spool;
        if spool.enabled && spool.dir.as_os_str().is_empty() {
            return Err(invalid(
                "kafka.spool.dir",
                "must name a directory (one per proxy process) when the spool is enabled",
            ));
        }
        if spool.enabled && spool.max_bytes < 1024 * 1024 {
            return Err(invalid(
                "kafka.spool.max_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if spool.fsync_interval_ms > 60_000 {
            return Err(invalid(
                "kafka.spool.fsync_interval_ms",
                "must be at most 60000 (0 = fsync after every event)",
            ));
        }
        if self.max_body_bytes < 1024 {
            return Err(invalid("max_body_bytes", "must be at least 1024"));
        }
        self.limits
            .validate(self.redis.as_ref().map(|r| r.url.expose()))
            .map_err(field("limits".to_string()))?;
        self.budgets
            .validate()
            .map_err(field("budgets".to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
models:
  - name: m1
    base_url: http://127.0.0.1:8090/v1
    pricing: { input_per_mtok: 0.15, output_per_mtok: 0.6 }
api_keys:
  - id: k1
    secret: sk-test-123456
    account_id: a1
kafka:
  brokers: 127.0.0.1:9092
"#;

    /// The validation error of a config that parses.
    fn validation_error(text: &str) -> String {
        ProxyConfig::from_yaml(text, "t")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn out_of_range_numbers_name_their_key() {
        for (extra, key) in [
            ("header_read_timeout_ms: 0\n", "header_read_timeout_ms"),
            ("shutdown_grace_secs: 86400\n", "shutdown_grace_secs"),
        ] {
            assert!(
                validation_error(&format!("{BASE}{extra}")).contains(key),
                "{key}"
            );
        }
        let huge_queue = BASE.replace(
            "  brokers: 127.0.0.1:9092",
            "  brokers: 127.0.0.1:9092\n  queue_capacity: 18446744073709551615",
        );
        assert!(validation_error(&huge_queue).contains("kafka.queue_capacity"));
        let forever = BASE.replace(
            "    pricing:",
            "    retry: {cooldown_secs: 18446744073709551615}\n    pricing:",
        );
        let err = validation_error(&forever);
        assert!(err.contains("retry.cooldown_secs"), "{err}");
    }

    #[test]
    fn parses_and_validates_with_defaults() {
        let cfg = ProxyConfig::from_yaml(BASE, "t").unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.kafka.topic, "tollgate.usage.v1");
        assert_eq!(cfg.listen.port(), 8080);
    }

    #[test]
    fn metering_off_needs_no_brokers_but_on_does() {
        let off = BASE.replace("  brokers: 127.0.0.1:9092", "  enabled: false");
        ProxyConfig::from_yaml(&off, "t")
            .unwrap()
            .validate()
            .unwrap();
        let on = BASE.replace("  brokers: 127.0.0.1:9092", "  enabled: true");
        let err = validation_error(&on);
        assert!(err.contains("kafka.brokers"), "{err}");
    }

    #[test]
    fn kafka_compression_defaults_to_lz4_and_names_bad_codecs() {
        let cfg = ProxyConfig::from_yaml(BASE, "t").unwrap();
        assert_eq!(cfg.kafka.compression.as_str(), "lz4");
        let none = BASE.replace(
            "brokers: 127.0.0.1:9092",
            "brokers: b:9092\n  compression: none",
        );
        let cfg = ProxyConfig::from_yaml(&none, "t").unwrap();
        assert_eq!(cfg.kafka.compression, Compression::None);
        let bad = BASE.replace(
            "brokers: 127.0.0.1:9092",
            "brokers: b:9092\n  compression: brotli",
        );
        let err = ProxyConfig::from_yaml(&bad, "t").unwrap_err().to_string();
        assert!(err.contains("kafka.compression"), "{err}");
    }

    #[test]
    fn upstream_http2_settings_default_and_validate() {
        let cfg = ProxyConfig::from_yaml(BASE, "t").unwrap();
        assert_eq!(cfg.upstream_http2_max_streams, 100);
        let err = validation_error(&format!("{BASE}upstream_http2_max_streams: 0\n"));
        assert!(err.contains("upstream_http2_max_streams"), "{err}");
        let h2c = BASE.replace(
            "    base_url: http://127.0.0.1:8090/v1\n",
            "    deployments: [{base_url: \"http://127.0.0.1:8090/v1\", http2_prior_knowledge: true}]\n",
        );
        let mut cfg = ProxyConfig::from_yaml(&h2c, "t").unwrap();
        cfg.validate().unwrap();
        cfg.models[0].normalize();
        assert!(cfg.models[0].deployments[0].http2_prior_knowledge);
        assert!(!cfg.models[0].deployments[0].http2, "HTTP/1.1 unless asked");
        let alpn = h2c.replace("http2_prior_knowledge: true", "http2: true");
        let mut cfg = ProxyConfig::from_yaml(&alpn, "t").unwrap();
        cfg.models[0].normalize();
        let d = &cfg.models[0].deployments[0];
        assert!(d.http2 && !d.http2_prior_knowledge);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let text = BASE.replace("account_id: a1", "account_id: a1\n    acount: x");
        let err = ProxyConfig::from_yaml(&text, "t").unwrap_err().to_string();
        assert!(err.contains("acount"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key_path() {
        let err = validation_error(&BASE.replace("0.15", "-1"));
        assert!(err.contains("models[0].pricing.input_per_mtok"), "{err}");
        let text = BASE.replace(
            "account_id: a1",
            "account_id: a1\n    allowed_models: [nope]",
        );
        let err = validation_error(&text);
        assert!(err.contains("api_keys[0].allowed_models[0]"), "{err}");
    }

    #[test]
    fn env_overrides_go_through_one_seam() {
        let mut cfg = ProxyConfig::from_yaml(BASE, "t").unwrap();
        cfg.apply_env(|k| (k == "TOLLGATE_KAFKA_BROKERS").then(|| "h:1".to_string()))
            .unwrap();
        assert_eq!(cfg.kafka.brokers, "h:1");
        let err = cfg.apply_env(|k| (k == "TOLLGATE_PROXY_LISTEN").then(|| "nope".to_string()));
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("TOLLGATE_PROXY_LISTEN"));
    }

    #[test]
    fn limits_section_validates_and_takes_env_overrides() {
        let mut cfg = ProxyConfig::from_yaml(
            &format!("{BASE}limits: {{backend: redis, lease_secs: 5}}\n"),
            "t",
        )
        .unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("limits.backend"), "{err}");
        cfg.apply_env(|k| match k {
            "TOLLGATE_LIMITS_REDIS_URL" => Some("redis://127.0.0.1:1".into()),
            "TOLLGATE_LIMITS_FAILURE_MODE" => Some("closed".into()),
            _ => None,
        })
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.limits.failure_mode, crate::limits::FailureMode::Closed);
        assert!(!format!("{cfg:?}").contains("127.0.0.1:1"));
        let err = cfg.apply_env(|k| (k == "TOLLGATE_LIMITS_BACKEND").then(|| "x".to_string()));
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("TOLLGATE_LIMITS_BACKEND"));
    }

    #[test]
    fn secrets_never_print() {
        let cfg = ProxyConfig::from_yaml(BASE, "t").unwrap();
        assert!(!format!("{cfg:?}").contains("sk-test-123456"));
        let with_redis = format!("{BASE}redis: {{url: \"redis://:hunter2-pw@r:6379\"}}\n");
        let cfg = ProxyConfig::from_yaml(&with_redis, "t").unwrap();
        assert_eq!(
            cfg.redis.as_ref().unwrap().url.expose(),
            "redis://:hunter2-pw@r:6379"
        );
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }
}
