//! The `limits:` section of the proxy config.

use serde::Deserialize;

use crate::config::Secret;
use crate::entities::FieldError;

/// Where counters live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// In this process only (one proxy, or limits per proxy).
    Local,
    /// In Redis, shared by every proxy using the same Redis and prefix.
    Redis,
}

/// What to do when the shared store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Keep serving, enforcing the same limits per proxy in memory.
    #[default]
    Open,
    /// Refuse requests that have limits with 503 `rate_limiter_unavailable`.
    Closed,
}

/// Rate-limit settings (the limits themselves are on models and API keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// `local` or `redis`; default: `redis` when a Redis URL is known (`limits.redis_url` or
    /// `redis.url`), else `local`.
    #[serde(default)]
    pub backend: Option<Backend>,
    /// Redis for counters; default: the config store's `redis.url`.
    #[serde(default)]
    pub redis_url: Option<Secret>,
    /// Behaviour while Redis is unreachable.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// Lifetime of a concurrency lease, seconds; running requests renew theirs, a crashed
    /// proxy's leases expire after this long.
    #[serde(default = "defaults::lease_secs")]
    pub lease_secs: u64,
    /// Key prefix of the counters.
    #[serde(default = "defaults::prefix")]
    pub prefix: String,
    /// Longest wait for Redis on the request path, ms; slower answers count as failures.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Redis Cluster mode for the counters (also implied by a comma-separated node list).
    #[serde(default)]
    pub cluster: bool,
    /// Quota slices: a key or model sending this proxy at least 16 requests a second reserves
    /// part of its quota in Redis ahead of demand and is admitted locally
    /// (`docs/rate-limits.md`); `false`: one Redis round trip per request.
    #[serde(default = "defaults::slices")]
    pub slices: bool,
    /// A slice takes at most `1 / slice_share` of what is left of a limit.
    #[serde(default = "defaults::slice_share")]
    pub slice_share: u32,
}

mod defaults {
    pub fn lease_secs() -> u64 {
        30
    }
    pub fn prefix() -> String {
        "tollgate".into()
    }
    pub fn timeout_ms() -> u64 {
        250
    }
    pub fn slices() -> bool {
        true
    }
    pub fn slice_share() -> u32 {
        16
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            backend: None,
            redis_url: None,
            failure_mode: FailureMode::default(),
            lease_secs: defaults::lease_secs(),
            prefix: defaults::prefix(),
            timeout_ms: defaults::timeout_ms(),
            cluster: false,
            slices: defaults::slices(),
            slice_share: defaults::slice_share(),
        }
    }
}

impl LimitsConfig {
    /// The backend in effect and, for Redis, its URL. `store_url` is the config store's.
    pub fn resolve<'a>(&'a self, store_url: Option<&'a str>) -> (Backend, Option<&'a str>) {
        let url = self.redis_url.as_ref().map(Secret::expose).or(store_url);
        match (self.backend, url) {
            (Some(Backend::Local), _) | (None, None) => (Backend::Local, None),
            (_, url) => (Backend::Redis, url),
        }
    }

    /// Check values; field paths are relative to `limits`.
    pub fn validate(&self, store_url: Option<&str>) -> Result<(), FieldError> {
        if let Some(url) = &self.redis_url {
            let url = url.expose();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(FieldError::new(
                    "redis_url",
                    "must start with redis:// or rediss://",
                ));
            }
        }
        if let (Backend::Redis, None) = self.resolve(store_url) {
            return Err(FieldError::new(
                "backend",
                "redis needs limits.redis_url or redis.url",
            ));
        }
        if !(1..=3_600).contains(&self.lease_secs) {
            return Err(FieldError::new("lease_secs", "must be between 1 and 3600"));
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}', ' ']) {
            return Err(FieldError::new(
                "prefix",
                "must be non-empty without braces or spaces",
            ));
        }
        if !(1..=10_000).contains(&self.timeout_ms) {
            return Err(FieldError::new("timeout_ms", "must be between 1 and 10000"));
        }
        if !(2..=1_000).contains(&self.slice_share) {
            return Err(FieldError::new(
                "slice_share",
                "must be between 2 and 1000 (a slice takes 1/slice_share of what is left)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> LimitsConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn backend_defaults_to_redis_when_a_url_is_known() {
        let c = LimitsConfig::default();
        assert_eq!(c.resolve(None), (Backend::Local, None));
        assert_eq!(
            c.resolve(Some("redis://s")),
            (Backend::Redis, Some("redis://s"))
        );
        let c = parse("{redis_url: 'redis://own'}");
        assert_eq!(
            c.resolve(Some("redis://s")),
            (Backend::Redis, Some("redis://own"))
        );
        let c = parse("{backend: local}");
        assert_eq!(c.resolve(Some("redis://s")).0, Backend::Local);
    }

    #[test]
    fn validation_names_the_field() {
        let c = parse("{backend: redis}");
        assert_eq!(c.validate(None).unwrap_err().field, "backend");
        c.validate(Some("redis://x")).unwrap();
        let c = parse("{redis_url: 'http://x'}");
        assert_eq!(c.validate(None).unwrap_err().field, "redis_url");
        let c = parse("{lease_secs: 0}");
        assert_eq!(c.validate(None).unwrap_err().field, "lease_secs");
        let c = parse("{slice_share: 1}");
        assert_eq!(c.validate(None).unwrap_err().field, "slice_share");
        let c = parse("{prefix: 'a{b}'}");
        assert_eq!(c.validate(None).unwrap_err().field, "prefix");
        assert!(serde_yaml::from_str::<LimitsConfig>("{failure_mode: maybe}").is_err());
    }
}
