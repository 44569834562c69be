//! The `budgets:` section of the aggregator config.

use serde::Deserialize;

/// Budgets, credits and the payment webhook.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetsConfig {
    /// Redis holding the config store (budgets, credit accounts) and the counters, e.g.
    /// `redis://127.0.0.1:6379`; absent: budgets and credits are off.
    pub redis_url: Option<String>,
    /// Redis Cluster mode (also implied by a comma-separated node list in `redis_url`, e.g.
    /// `redis://10.0.0.1:7001,10.0.0.2:7001,10.0.0.3:7001`).
    pub redis_cluster: bool,
    /// Key prefix of the config store (the proxies' `redis.prefix`).
    pub prefix: String,
    /// How often budgets are reloaded and every current window re-evaluated (decisions,
    /// alerts, counters to build), ms.
    pub eval_interval_ms: u64,
    /// Alerts are POSTed here as JSON (besides a budget's own `alert_webhook_url`).
    pub alert_webhook_url: Option<String>,
    /// Secret of the payment webhook's HMAC-SHA256 signature (prefer `webhook_secret_env`).
    pub webhook_secret: Option<String>,
    /// Environment variable holding that secret.
    pub webhook_secret_env: Option<String>,
    /// Largest accepted age (and clock skew) of a webhook's timestamp, seconds.
    pub webhook_tolerance_secs: u64,
}

impl std::fmt::Debug for BudgetsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetsConfig")
            .field("redis_url", &self.redis_url.as_ref().map(|_| "***"))
            .field("redis_cluster", &self.redis_cluster)
            .field("prefix", &self.prefix)
            .field("eval_interval_ms", &self.eval_interval_ms)
            .field("alert_webhook_url", &self.alert_webhook_url)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "***"),
            )
            .field("webhook_secret_env", &self.webhook_secret_env)
            .field("webhook_tolerance_secs", &self.webhook_tolerance_secs)
            .finish()
    }
}

impl Default for BudgetsConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_cluster: false,
            prefix: "tollgate".into(),
            eval_interval_ms: 2_000,
            alert_webhook_url: None,
            webhook_secret: None,
            webhook_secret_env: Some("TOLLGATE_PAYMENT_WEBHOOK_SECRET".into()),
            webhook_tolerance_secs: 300,
        }
    }
}

impl BudgetsConfig {
    /// Check the values; `Err((key, message))`.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if let Some(url) = &self.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(("budgets.redis_url", "must start with redis:// or rediss://"));
            }
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}', ' ']) {
            return Err((
                "budgets.prefix",
                "must be non-empty without braces or spaces",
            ));
        }
        if !(50..=60_000).contains(&self.eval_interval_ms) {
            return Err(("budgets.eval_interval_ms", "must be between 50 and 60000"));
        }
        if let Some(url) = &self.alert_webhook_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(("budgets.alert_webhook_url", "must be an http(s):// URL"));
            }
        }
        if !(1..=86_400).contains(&self.webhook_tolerance_secs) {
            return Err((
                "budgets.webhook_tolerance_secs",
                "must be between 1 and 86400",
            ));
        }
        Ok(())
    }

    /// The webhook secret: `webhook_secret`, else the variable named by `webhook_secret_env`
    /// (read through `env`). None: the webhook answers 404.
    pub fn secret(&self, env: impl Fn(&str) -> Option<String>) -> Option<String> {
        self.webhook_secret
            .clone()
            .or_else(|| self.webhook_secret_env.as_deref().and_then(env))
            .filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_secrets_are_hidden() {
        let cfg: BudgetsConfig =
            serde_yaml::from_str("{redis_url: 'redis://:pw@h:1', webhook_secret: s3cr3t}").unwrap();
        cfg.validate().unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("s3cr3t") && !dbg.contains("pw@"));
        assert_eq!(cfg.secret(|_| None).as_deref(), Some("s3cr3t"));
        let cfg = BudgetsConfig::default();
        assert_eq!(
            cfg.secret(|k| (k == "TOLLGATE_PAYMENT_WEBHOOK_SECRET").then(|| "e".to_string())),
            Some("e".into())
        );
        let bad: BudgetsConfig = serde_yaml::from_str("{eval_interval_ms: 1}").unwrap();
        assert_eq!(bad.validate().unwrap_err().0, "budgets.eval_interval_ms");
    }
}
