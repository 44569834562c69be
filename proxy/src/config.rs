//! Proxy configuration: YAML file + environment overrides, validated with key paths.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

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
    /// Public models this proxy serves.
    pub models: Vec<ModelConfig>,
    /// Virtual API keys.
    pub api_keys: Vec<ApiKeyConfig>,
    /// Usage event publishing.
    pub kafka: KafkaConfig,
    /// Graceful shutdown: how long in-flight streams may run after SIGTERM.
    #[serde(default = "defaults::shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
}

/// A public model name and the upstream deployment serving it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Public name clients send in `model`.
    pub name: String,
    /// Provider kind; `openai` (any OpenAI-compatible base URL).
    #[serde(default = "defaults::provider")]
    pub provider: String,
    /// Base URL including the version prefix, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// Model name sent upstream; defaults to `name`.
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// Name of the environment variable holding the provider key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Prices in USD per million tokens.
    #[serde(default)]
    pub pricing: Pricing,
    /// Whole-request timeout towards the upstream, seconds.
    #[serde(default = "defaults::upstream_timeout_secs")]
    pub timeout_secs: u64,
}

/// Prices in USD per million tokens.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    /// Uncached input tokens.
    #[serde(default)]
    pub input_per_mtok: f64,
    /// Output tokens.
    #[serde(default)]
    pub output_per_mtok: f64,
    /// Cached input tokens; defaults to the input price.
    #[serde(default)]
    pub cached_input_per_mtok: Option<f64>,
}

/// A virtual API key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Stable key id recorded in usage events.
    pub id: String,
    /// Hex SHA-256 of the secret a client presents (preferred: no secret at rest).
    #[serde(default)]
    pub secret_sha256: Option<String>,
    /// The plaintext secret (development only); hashed on load and never printed.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Owning account.
    pub account_id: String,
    /// Owning team.
    #[serde(default)]
    pub team_id: String,
    /// Models this key may use; empty means all.
    #[serde(default)]
    pub allowed_models: Vec<String>,
}

/// A secret string that never prints.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret value, for hashing or sending upstream only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Kafka producer settings for usage events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
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
    /// Disk spool used while the broker is slow or down.
    #[serde(default)]
    pub spool: crate::usage::spool::SpoolConfig,
}

mod defaults {
    use std::net::{Ipv4Addr, SocketAddr};

    pub fn listen() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 8080))
    }
    pub fn max_body_bytes() -> usize {
        4 * 1024 * 1024
    }
    pub fn provider() -> String {
        "openai".into()
    }
    pub fn upstream_timeout_secs() -> u64 {
        600
    }
    pub fn topic() -> String {
        tollgate_schemas::topics::USAGE_TOPIC.into()
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

    /// Parse YAML text (no env overrides, no validation).
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })
    }

    /// The one seam for environment overrides:
    /// `TOLLGATE_PROXY_LISTEN`, `TOLLGATE_PROXY_ID`, `TOLLGATE_KAFKA_BROKERS`, `TOLLGATE_KAFKA_TOPIC`.
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
        Ok(())
    }

    /// Check values and cross-references; errors name the key path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.models.is_empty() {
            return Err(invalid("models", "at least one model is required"));
        }
        let mut names = HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            let key = |f: &str| format!("models[{i}].{f}");
            if m.name.trim().is_empty() {
                return Err(invalid(key("name"), "must not be empty"));
            }
            if !names.insert(m.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("duplicate model name `{}`", m.name),
                ));
            }
            if m.provider != "openai" {
                return Err(invalid(
                    key("provider"),
                    format!("unknown provider `{}`; supported: openai", m.provider),
                ));
            }
            if !(m.base_url.starts_with("http://") || m.base_url.starts_with("https://")) {
                return Err(invalid(
                    key("base_url"),
                    "must start with http:// or https://",
                ));
            }
            let p = &m.pricing;
            for (field, v) in [
                ("input_per_mtok", Some(p.input_per_mtok)),
                ("output_per_mtok", Some(p.output_per_mtok)),
                ("cached_input_per_mtok", p.cached_input_per_mtok),
            ] {
                if let Some(v) = v {
                    if !v.is_finite() || v < 0.0 {
                        return Err(invalid(
                            key(&format!("pricing.{field}")),
                            "must be a non-negative number (USD per 1M tokens)",
                        ));
                    }
                }
            }
            if m.timeout_secs == 0 {
                return Err(invalid(key("timeout_secs"), "must be at least 1"));
            }
        }
        let mut ids = HashSet::new();
        for (i, k) in self.api_keys.iter().enumerate() {
            let key = |f: &str| format!("api_keys[{i}].{f}");
            if k.id.trim().is_empty() {
                return Err(invalid(key("id"), "must not be empty"));
            }
            if !ids.insert(k.id.as_str()) {
                return Err(invalid(key("id"), format!("duplicate key id `{}`", k.id)));
            }
            match (&k.secret_sha256, &k.secret) {
                (None, None) => {
                    return Err(invalid(
                        key("secret_sha256"),
                        "set secret_sha256 (hex SHA-256 of the key) or secret",
                    ))
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        key("secret"),
                        "set only one of secret_sha256 and secret",
                    ))
                }
                (Some(h), None) if h.len() != 64 || hex::decode(h).is_err() => {
                    return Err(invalid(
                        key("secret_sha256"),
                        "must be 64 hex characters (sha256sum of the key)",
                    ));
                }
                (None, Some(s)) if s.expose().len() < 8 => {
                    return Err(invalid(key("secret"), "must be at least 8 characters"));
                }
                _ => {}
            }
            if k.account_id.trim().is_empty() {
                return Err(invalid(key("account_id"), "must not be empty"));
            }
            for (j, name) in k.allowed_models.iter().enumerate() {
                if !names.contains(name.as_str()) {
                    return Err(invalid(
                        key(&format!("allowed_models[{j}]")),
                        format!("unknown model `{name}`"),
                    ));
                }
            }
        }
        if self.kafka.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "must list at least one host:port"));
        }
        if self.kafka.topic.trim().is_empty() {
            return Err(invalid("kafka.topic", "must not be empty"));
        }
        if self.kafka.queue_capacity == 0 {
            return Err(invalid("kafka.queue_capacity", "must be at least 1"));
        }
        if self.max_body_bytes < 1024 {
            return Err(invalid("max_body_bytes", "must be at least 1024"));
        }
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

    #[test]
    fn parses_and_validates_with_defaults() {
        let cfg = ProxyConfig::from_yaml(BASE, "t").unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.kafka.topic, "tollgate.usage.v1");
        assert_eq!(cfg.listen.port(), 8080);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let text = BASE.replace("account_id: a1", "account_id: a1\n    acount: x");
        let err = ProxyConfig::from_yaml(&text, "t").unwrap_err().to_string();
        assert!(err.contains("acount"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key_path() {
        let text = BASE.replace("0.15", "-1");
        let err = ProxyConfig::from_yaml(&text, "t")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("models[0].pricing.input_per_mtok"), "{err}");
        let text = BASE.replace(
            "account_id: a1",
            "account_id: a1\n    allowed_models: [nope]",
        );
        let err = ProxyConfig::from_yaml(&text, "t")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
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
    fn secrets_never_print() {
        let cfg = ProxyConfig::from_yaml(BASE, "t").unwrap();
        assert!(!format!("{cfg:?}").contains("sk-test-123456"));
    }
}
