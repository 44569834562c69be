//! The immutable snapshot the hot path reads: models by public name, keys by secret hash.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::{Pricing, ProxyConfig};

/// A servable model (one deployment in this version).
#[derive(Debug)]
pub struct Model {
    /// Public name.
    pub name: String,
    /// Provider kind.
    pub provider: String,
    /// Base URL including the version prefix.
    pub base_url: String,
    /// Name sent upstream.
    pub upstream_model: String,
    /// Provider key, read from the environment at startup.
    pub upstream_key: Option<String>,
    /// Prices.
    pub pricing: Pricing,
    /// Whole-request timeout.
    pub timeout: std::time::Duration,
}

impl Model {
    /// Cost in nano-USD of a request with these token counts. `cached` is part of `prompt`.
    pub fn cost_nanos(&self, prompt: i64, completion: i64, cached: i64) -> i64 {
        let p = &self.pricing;
        let cached = cached.clamp(0, prompt.max(0));
        let uncached = (prompt - cached).max(0);
        let cached_price = p.cached_input_per_mtok.unwrap_or(p.input_per_mtok);
        // USD per 1M tokens == 1e3 nano-USD per token.
        let nanos = (uncached as f64 * p.input_per_mtok
            + cached as f64 * cached_price
            + completion.max(0) as f64 * p.output_per_mtok)
            * 1_000.0;
        nanos.round() as i64
    }
}

/// A virtual API key as the hot path sees it.
#[derive(Debug)]
pub struct ApiKey {
    /// Key id.
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// Owning team.
    pub team_id: String,
    /// Allowed public model names; empty means all.
    pub allowed_models: Vec<String>,
}

impl ApiKey {
    /// Whether this key may call `model`.
    pub fn allows(&self, model: &str) -> bool {
        self.allowed_models.is_empty() || self.allowed_models.iter().any(|m| m == model)
    }
}

/// Models and keys, built once from validated config.
#[derive(Debug, Default)]
pub struct Catalog {
    models: HashMap<String, Arc<Model>>,
    keys: HashMap<[u8; 32], Arc<ApiKey>>,
}

/// SHA-256 of a presented secret: the only form in which keys are held.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Catalog {
    /// Build from a validated config. Provider keys come from the named env variables.
    pub fn from_config(cfg: &ProxyConfig, env: impl Fn(&str) -> Option<String>) -> Self {
        let models = cfg
            .models
            .iter()
            .map(|m| {
                let model = Model {
                    name: m.name.clone(),
                    provider: m.provider.clone(),
                    base_url: m.base_url.trim_end_matches('/').to_string(),
                    upstream_model: m.upstream_model.clone().unwrap_or_else(|| m.name.clone()),
                    upstream_key: m.api_key_env.as_deref().and_then(&env),
                    pricing: m.pricing,
                    timeout: std::time::Duration::from_secs(m.timeout_secs),
                };
                (m.name.clone(), Arc::new(model))
            })
            .collect();
        let keys = cfg
            .api_keys
            .iter()
            .filter_map(|k| {
                let hash = match (&k.secret_sha256, &k.secret) {
                    (Some(h), _) => {
                        let bytes = hex::decode(h).ok()?;
                        <[u8; 32]>::try_from(bytes.as_slice()).ok()?
                    }
                    (None, Some(s)) => hash_secret(s.expose()),
                    (None, None) => return None,
                };
                let key = ApiKey {
                    id: k.id.clone(),
                    account_id: k.account_id.clone(),
                    team_id: k.team_id.clone(),
                    allowed_models: k.allowed_models.clone(),
                };
                Some((hash, Arc::new(key)))
            })
            .collect();
        Self { models, keys }
    }

    /// Look a key up by its presented secret.
    pub fn key_for_secret(&self, secret: &str) -> Option<Arc<ApiKey>> {
        self.keys.get(&hash_secret(secret)).cloned()
    }

    /// Look a model up by public name.
    pub fn model(&self, name: &str) -> Option<Arc<Model>> {
        self.models.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(pricing: Pricing) -> Model {
        Model {
            name: "m".into(),
            provider: "openai".into(),
            base_url: "http://x/v1".into(),
            upstream_model: "m".into(),
            upstream_key: None,
            pricing,
            timeout: std::time::Duration::from_secs(1),
        }
    }

    #[test]
    fn cost_uses_per_million_prices_and_cached_rate() {
        let m = model(Pricing {
            input_per_mtok: 2.5,
            output_per_mtok: 10.0,
            cached_input_per_mtok: Some(1.25),
        });
        // 1000 prompt (200 cached), 500 completion:
        // 800*2.5e3 + 200*1.25e3 + 500*10e3 = 2_000_000 + 250_000 + 5_000_000 nano-USD
        assert_eq!(m.cost_nanos(1000, 500, 200), 7_250_000);
        assert_eq!(m.cost_nanos(0, 0, 0), 0);
    }

    #[test]
    fn keys_are_found_by_hash_only() {
        let yaml = r#"
models: [{name: m, base_url: "http://x/v1"}]
api_keys:
  - {id: k1, secret: "sk-abcdefgh", account_id: a}
  - {id: k2, secret_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", account_id: b}
kafka: {brokers: "h:1"}
"#;
        let cfg = ProxyConfig::from_yaml(yaml, "t").unwrap();
        let cat = Catalog::from_config(&cfg, |_| None);
        assert_eq!(cat.key_for_secret("sk-abcdefgh").unwrap().id, "k1");
        assert_eq!(cat.key_for_secret("test").unwrap().id, "k2");
        assert!(cat.key_for_secret("nope").is_none());
    }
}
