//! The `budgets:` section of the proxy config.

use serde::Deserialize;

use crate::config::Secret;
use crate::entities::FieldError;

/// Budget enforcement settings (the budgets themselves are entities of the admin API).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// Enforce budget and credit decisions (needs `redis:`; without it budgets are off).
    pub enabled: bool,
    /// How long a scope's decisions are cached, ms. A decision change also drops the cached
    /// copy at once (pub/sub notice); this bounds the delay when a notice is lost.
    pub cache_ttl_ms: u64,
    /// Longest wait for Redis on the request path, ms. Slower answers count as failures: the
    /// last known decisions keep serving (fail open).
    pub timeout_ms: u64,
    /// Completion tokens assumed for the worst case of a request without `max_tokens`
    /// (reservation mode).
    pub default_max_tokens: u64,
    /// Lifetime of an in-flight reservation, ms (a request running longer loses it).
    pub reservation_ttl_ms: u64,
    /// How long a settled request's actual amount stays reserved until the aggregator has
    /// counted its usage event, ms.
    pub pending_ttl_ms: u64,
    /// ClickHouse for credit statements and admin top-ups (absent: those routes answer 503).
    pub clickhouse: Option<ClickHouseSettings>,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cache_ttl_ms: 1_000,
            timeout_ms: 500,
            default_max_tokens: 4_096,
            reservation_ttl_ms: 600_000,
            pending_ttl_ms: 120_000,
            clickhouse: None,
        }
    }
}

/// ClickHouse connection of the admin API (the aggregator's database).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseSettings {
    /// HTTP endpoint, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database the aggregator writes.
    #[serde(default = "default_database")]
    pub database: String,
    /// User.
    #[serde(default = "default_user")]
    pub user: String,
    /// Password (never printed).
    #[serde(default)]
    pub password: Option<Secret>,
}

fn default_database() -> String {
    "tollgate".into()
}

fn default_user() -> String {
    "default".into()
}

impl BudgetConfig {
    /// Check the values.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !(10..=60_000).contains(&self.cache_ttl_ms) {
            return Err(FieldError::new(
                "cache_ttl_ms",
                "must be between 10 and 60000",
            ));
        }
        if !(10..=10_000).contains(&self.timeout_ms) {
            return Err(FieldError::new(
                "timeout_ms",
                "must be between 10 and 10000",
            ));
        }
        if !(1..=1_000_000).contains(&self.default_max_tokens) {
            return Err(FieldError::new(
                "default_max_tokens",
                "must be between 1 and 1000000",
            ));
        }
        if self.reservation_ttl_ms < 1_000 || self.pending_ttl_ms < 1_000 {
            return Err(FieldError::new(
                "reservation_ttl_ms",
                "reservation_ttl_ms and pending_ttl_ms must be at least 1000",
            ));
        }
        if let Some(ch) = &self.clickhouse {
            if !(ch.url.starts_with("http://") || ch.url.starts_with("https://")) {
                return Err(FieldError::new(
                    "clickhouse.url",
                    "must be the http(s):// URL of the ClickHouse HTTP port",
                ));
            }
            let db = &ch.database;
            if db.is_empty() || !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(FieldError::new(
                    "clickhouse.database",
                    "must be non-empty letters, digits and _",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_password_hidden() {
        let cfg: BudgetConfig = serde_yaml::from_str("{}").unwrap();
        cfg.validate().unwrap();
        assert!(cfg.enabled);
        let cfg: BudgetConfig = serde_yaml::from_str(
            "{clickhouse: {url: 'http://h:8123', password: hunter2}, cache_ttl_ms: 5}",
        )
        .unwrap();
        assert_eq!(cfg.validate().unwrap_err().field, "cache_ttl_ms");
        assert!(!format!("{cfg:?}").contains("hunter2"));
        assert!(serde_yaml::from_str::<BudgetConfig>("{cache_ttl: 5}").is_err());
    }
}
