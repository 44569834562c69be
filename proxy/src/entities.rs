//! The entities an operator manages: models (with deployments), API keys and accounts.
//!
//! The same types are read from the YAML file, stored in Redis as JSON and accepted by the admin
//! API. `validate` returns a [`FieldError`] naming the field path and the fix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// A validation failure at a field path (e.g. `deployments[0].base_url`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct FieldError {
    /// Field path relative to the entity (prefixed by callers for nested reports).
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl FieldError {
    /// New error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefix the field path (`models[2]` + `.name`).
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }
}

/// Provider wire format of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// OpenAI or any OpenAI-compatible API (vLLM, Ollama, DeepSeek, Groq, Together, ...).
    #[default]
    Openai,
    /// Azure OpenAI (`/openai/deployments/{upstream_model}/...?api-version=`, `api-key` header).
    Azure,
    /// Anthropic Messages API (translated from and to OpenAI chat).
    Anthropic,
}

impl Provider {
    /// Name in usage events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Azure => "azure",
            Self::Anthropic => "anthropic",
        }
    }
}

/// Prices in USD per million tokens.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    /// Uncached input tokens.
    #[serde(default)]
    pub input_per_mtok: f64,
    /// Output tokens.
    #[serde(default)]
    pub output_per_mtok: f64,
    /// Cached input tokens; defaults to the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<f64>,
}

/// One upstream serving a model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// Wire format.
    #[serde(default)]
    pub provider: Provider,
    /// Base URL: OpenAI-style including the version prefix (`https://api.openai.com/v1`);
    /// Azure: the resource URL (`https://NAME.openai.azure.com`); Anthropic: `https://api.anthropic.com`.
    pub base_url: String,
    /// Model (Azure: deployment) name sent upstream; defaults to the public name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_model: Option<String>,
    /// Environment variable holding the provider key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// The provider key itself (write-only: never returned by the admin API, never logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    /// Azure `api-version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Relative share of traffic within its priority tier.
    #[serde(default = "one")]
    pub weight: u32,
    /// Tier: lower is preferred; higher tiers are used only when lower ones fail or cool down.
    #[serde(default)]
    pub priority: u32,
    /// Offer HTTP/2 to an `https://` upstream by ALPN; it is spoken when the upstream accepts.
    /// Off by default: HTTP/1.1 keep-alive connections add less latency and CPU per request,
    /// while HTTP/2 carries many streams on one connection and so holds less memory per open
    /// stream (docs/proxy.md, "Upstream connections").
    #[serde(default, skip_serializing_if = "is_false")]
    pub http2: bool,
    /// Speak HTTP/2 without negotiation (h2c to an `http://` base URL, as gRPC-style and
    /// in-cluster upstreams expect; implies `http2`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub http2_prior_knowledge: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn one() -> u32 {
    1
}

/// Upstream timeouts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP/TLS connect, ms.
    pub connect_ms: u64,
    /// Until the response headers (first byte), ms.
    pub first_byte_ms: u64,
    /// Whole request including the streamed body, ms.
    pub total_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: 5_000,
            first_byte_ms: 60_000,
            total_ms: 600_000,
        }
    }
}

/// Retry, failover and cooldown policy.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in total (first try included), across deployments.
    pub max_attempts: u32,
    /// Backoff before the second attempt, ms; doubles per attempt.
    pub backoff_ms: u64,
    /// Consecutive failures after which a deployment cools down.
    pub cooldown_after_failures: u32,
    /// Cooldown length, seconds.
    pub cooldown_secs: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff_ms: 50,
            cooldown_after_failures: 3,
            cooldown_secs: 30,
        }
    }
}

/// Which tokens a token limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Prompt + completion.
    #[default]
    Total,
    /// Prompt (input) tokens only.
    Prompt,
    /// Completion (output) tokens only.
    Completion,
}

/// Rate limits of a key or a model (each optional; absent means unlimited).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Requests per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpd: Option<u64>,
    /// Tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Tokens per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpd: Option<u64>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u64>,
    /// Which tokens `tpm`/`tpd` count.
    #[serde(default)]
    pub tokens: TokenKind,
}

impl RateLimit {
    /// Check the values (all must be at least 1 when set).
    pub fn validate(&self) -> Result<(), FieldError> {
        for (f, v) in [
            ("rate_limit.rpm", self.rpm),
            ("rate_limit.rpd", self.rpd),
            ("rate_limit.tpm", self.tpm),
            ("rate_limit.tpd", self.tpd),
            ("rate_limit.concurrency", self.concurrency),
        ] {
            if v.is_some_and(|v| v == 0 || v > 1_000_000_000_000) {
                return Err(FieldError::new(
                    f,
                    "must be between 1 and 10^12 (omit it for no limit)",
                ));
            }
        }
        Ok(())
    }
}

/// A public model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Public name clients send in `model`.
    pub name: String,
    /// Upstreams (at least one). The single-deployment shorthand fields below fill this list.
    #[serde(default)]
    pub deployments: Vec<Deployment>,
    /// Shorthand: provider of the single deployment.
    #[serde(default, skip_serializing)]
    pub provider: Option<Provider>,
    /// Shorthand: base URL of the single deployment.
    #[serde(default, skip_serializing)]
    pub base_url: Option<String>,
    /// Shorthand: upstream model of the single deployment.
    #[serde(default, skip_serializing)]
    pub upstream_model: Option<String>,
    /// Shorthand: key env of the single deployment.
    #[serde(default, skip_serializing)]
    pub api_key_env: Option<String>,
    /// Prices.
    #[serde(default)]
    pub pricing: Pricing,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Retry and failover.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Aggregate limits of this model (all keys together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// A virtual API key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Stable id recorded in usage events.
    pub id: String,
    /// Hex SHA-256 of the secret (the only form stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_sha256: Option<String>,
    /// Plaintext secret (file seeding only; hashed on load, never stored or returned).
    #[serde(default, skip_serializing)]
    pub secret: Option<Secret>,
    /// Owning account.
    pub account_id: String,
    /// Owning team (empty: none).
    #[serde(default)]
    pub team_id: String,
    /// Allowed public model names; empty: all.
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// Disabled keys get 401.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Expiry, Unix seconds (none: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Free-form labels (at most 16).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Limits of this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// A customer account owning keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// Id referenced by keys and usage events.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Keys of a disabled account get 401.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Free-form labels (at most 16).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

/// Ids and names: 1-128 chars of letters, digits, `.`, `_`, `-`, `:`, `/`.
pub fn validate_id(field: &str, value: &str) -> Result<(), FieldError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            "must be 1-128 characters of letters, digits, '.', '_', '-', ':' or '/'",
        ))
    }
}

fn validate_metadata(meta: &BTreeMap<String, String>) -> Result<(), FieldError> {
    if meta.len() > 16 {
        return Err(FieldError::new("metadata", "at most 16 entries"));
    }
    for (k, v) in meta {
        if k.is_empty() || k.len() > 64 || v.len() > 512 {
            return Err(FieldError::new(
                format!("metadata.{k}"),
                "keys 1-64 characters, values at most 512",
            ));
        }
    }
    Ok(())
}

fn validate_price(field: &str, v: f64) -> Result<(), FieldError> {
    if v.is_finite() && (0.0..=1_000_000.0).contains(&v) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            "must be a number between 0 and 1000000 (USD per 1M tokens)",
        ))
    }
}

impl Model {
    /// Fold the single-deployment shorthand into `deployments`.
    pub fn normalize(&mut self) {
        if let Some(base_url) = self.base_url.take() {
            self.deployments.insert(
                0,
                Deployment {
                    provider: self.provider.take().unwrap_or_default(),
                    base_url,
                    upstream_model: self.upstream_model.take(),
                    api_key_env: self.api_key_env.take(),
                    api_key: None,
                    api_version: None,
                    weight: 1,
                    priority: 0,
                    http2: false,
                    http2_prior_knowledge: false,
                },
            );
        }
    }

    /// Check every field (call after [`Model::normalize`]).
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_id("name", &self.name)?;
        if self.provider.is_some() || self.upstream_model.is_some() || self.api_key_env.is_some() {
            return Err(FieldError::new(
                "base_url",
                "provider/upstream_model/api_key_env at model level need base_url (or use deployments)",
            ));
        }
        if self.deployments.is_empty() {
            return Err(FieldError::new(
                "deployments",
                "at least one deployment (or the base_url shorthand) is required",
            ));
        }
        if self.deployments.len() > 32 {
            return Err(FieldError::new("deployments", "at most 32 deployments"));
        }
        for (i, d) in self.deployments.iter().enumerate() {
            d.validate()
                .map_err(|e| e.within(&format!("deployments[{i}]")))?;
        }
        if self.deployments.iter().all(|d| d.weight == 0) {
            return Err(FieldError::new(
                "deployments",
                "at least one deployment needs a weight above 0",
            ));
        }
        validate_price("pricing.input_per_mtok", self.pricing.input_per_mtok)?;
        validate_price("pricing.output_per_mtok", self.pricing.output_per_mtok)?;
        if let Some(p) = self.pricing.cached_input_per_mtok {
            validate_price("pricing.cached_input_per_mtok", p)?;
        }
        let t = &self.timeouts;
        for (f, v) in [
            ("timeouts.connect_ms", t.connect_ms),
            ("timeouts.first_byte_ms", t.first_byte_ms),
            ("timeouts.total_ms", t.total_ms),
        ] {
            if !(1..=3_600_000).contains(&v) {
                return Err(FieldError::new(f, "must be between 1 and 3600000 ms"));
            }
        }
        let r = &self.retry;
        if !(1..=10).contains(&r.max_attempts) {
            return Err(FieldError::new(
                "retry.max_attempts",
                "must be between 1 and 10",
            ));
        }
        if r.backoff_ms > 60_000 {
            return Err(FieldError::new("retry.backoff_ms", "must be at most 60000"));
        }
        if r.cooldown_after_failures == 0 {
            return Err(FieldError::new(
                "retry.cooldown_after_failures",
                "must be at least 1",
            ));
        }
        if r.cooldown_secs > 86_400 {
            return Err(FieldError::new(
                "retry.cooldown_secs",
                "must be at most 86400 (a day)",
            ));
        }
        if let Some(rl) = &self.rate_limit {
            rl.validate()?;
        }
        Ok(())
    }
}

impl Deployment {
    fn validate(&self) -> Result<(), FieldError> {
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(FieldError::new(
                "base_url",
                "must start with http:// or https://",
            ));
        }
        if self.base_url.len() > 2048 || self.base_url.contains(char::is_whitespace) {
            return Err(FieldError::new("base_url", "must be a URL without spaces"));
        }
        if let Some(m) = &self.upstream_model {
            if m.is_empty() || m.len() > 256 {
                return Err(FieldError::new(
                    "upstream_model",
                    "must be 1-256 characters",
                ));
            }
        }
        if let Some(env) = &self.api_key_env {
            if env.is_empty() || !env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(FieldError::new(
                    "api_key_env",
                    "must be an environment variable name (letters, digits, _)",
                ));
            }
        }
        if self.weight > 1_000_000 {
            return Err(FieldError::new("weight", "must be at most 1000000"));
        }
        Ok(())
    }
}

impl ApiKey {
    /// Check every field.
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_id("id", &self.id)?;
        validate_id("account_id", &self.account_id)?;
        if !self.team_id.is_empty() {
            validate_id("team_id", &self.team_id)?;
        }
        match (&self.secret_sha256, &self.secret) {
            (None, None) => {
                return Err(FieldError::new(
                    "secret_sha256",
                    "set secret_sha256 (hex SHA-256 of the key) or secret",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "secret",
                    "set only one of secret_sha256 and secret",
                ))
            }
            (Some(h), None) if h.len() != 64 || hex::decode(h).is_err() => {
                return Err(FieldError::new(
                    "secret_sha256",
                    "must be 64 hex characters (sha256sum of the key)",
                ))
            }
            (None, Some(s)) if s.expose().len() < 8 => {
                return Err(FieldError::new("secret", "must be at least 8 characters"))
            }
            _ => {}
        }
        for (i, m) in self.allowed_models.iter().enumerate() {
            validate_id(&format!("allowed_models[{i}]"), m)?;
        }
        if let Some(rl) = &self.rate_limit {
            rl.validate()?;
        }
        validate_metadata(&self.metadata)
    }

    /// Replace a plaintext secret by its hash.
    pub fn hash_secret(&mut self) {
        if let Some(s) = self.secret.take() {
            self.secret_sha256 = Some(hex::encode(crate::routing::hash_secret(s.expose())));
        }
    }
}

impl Account {
    /// Check every field.
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_id("id", &self.id)?;
        if self.name.len() > 256 {
            return Err(FieldError::new("name", "at most 256 characters"));
        }
        validate_metadata(&self.metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(yaml: &str) -> Model {
        let mut m: Model = serde_yaml::from_str(yaml).unwrap();
        m.normalize();
        m
    }

    #[test]
    fn shorthand_becomes_one_deployment() {
        let m = model("{name: m, base_url: 'http://x/v1', upstream_model: up}");
        m.validate().unwrap();
        assert_eq!(m.deployments.len(), 1);
        assert_eq!(m.deployments[0].upstream_model.as_deref(), Some("up"));
    }

    #[test]
    fn errors_name_the_field_path() {
        let m = model("{name: m, deployments: [{base_url: 'http://a/v1'}, {base_url: 'ftp://b'}]}");
        assert_eq!(m.validate().unwrap_err().field, "deployments[1].base_url");
        let m = model("{name: 'bad name', base_url: 'http://a/v1'}");
        assert_eq!(m.validate().unwrap_err().field, "name");
        let m = model("{name: m, base_url: 'http://a/v1', retry: {max_attempts: 0}}");
        assert_eq!(m.validate().unwrap_err().field, "retry.max_attempts");
        let k: ApiKey = serde_yaml::from_str("{id: k, account_id: a, secret_sha256: abc}").unwrap();
        assert_eq!(k.validate().unwrap_err().field, "secret_sha256");
    }

    #[test]
    fn secrets_are_never_serialized() {
        let mut k: ApiKey =
            serde_yaml::from_str("{id: k, account_id: a, secret: sk-123456789}").unwrap();
        k.validate().unwrap();
        k.hash_secret();
        let json = serde_json::to_string(&k).unwrap();
        assert!(!json.contains("sk-123456789"));
        assert!(json.contains("secret_sha256"));
        let d: Deployment =
            serde_yaml::from_str("{base_url: 'http://x', api_key: sk-provider-1}").unwrap();
        // The provider key is write-only: it is kept in memory but shown masked.
        assert!(!format!("{d:?}").contains("sk-provider-1"));
    }
}
