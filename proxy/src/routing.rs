//! The immutable snapshot the hot path reads (models, keys, accounts) and deployment choice.
//!
//! A [`Catalog`] is built from entities (file or Redis) and swapped atomically when the config
//! changes; requests clone an `Arc` of the current one and never wait on the store. Deployment
//! health (consecutive failures, cooldown) lives in [`Health`], outside the snapshot, so a config
//! change does not forget it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tollgate_schemas::budgets::entities::scope_ref;
use tollgate_schemas::budgets::Scope;

use crate::entities::{self, Pricing, Provider, RateLimit, RetryPolicy, Timeouts};

/// A deployment as the hot path sees it.
#[derive(Debug)]
pub struct Deployment {
    /// Health key: `model|base_url|upstream_model`.
    pub key: String,
    /// Wire format.
    pub provider: Provider,
    /// Base URL without trailing slash.
    pub base_url: String,
    /// Name sent upstream.
    pub upstream_model: String,
    /// Azure api-version.
    pub api_version: String,
    /// Share within its tier.
    pub weight: u32,
    /// Tier (lower first).
    pub priority: u32,
    /// HTTP versions spoken to it.
    pub protocol: crate::providers::pool::Protocol,
    /// Its upstream URIs, key header and pool origin, made once.
    pub target: crate::providers::Target,
    /// Renames the upstream model to the public name in stream events (none when they are the
    /// same).
    pub stream_rename: Option<Arc<crate::http::sse::ModelRename>>,
}

/// A servable model.
#[derive(Debug)]
pub struct Model {
    /// Public name.
    pub name: String,
    /// Deployments sorted by priority.
    pub deployments: Vec<Arc<Deployment>>,
    /// Prices.
    pub pricing: Pricing,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Aggregate limits of the model (all keys together).
    pub rate_limit: Option<RateLimit>,
    /// Handles of the model's request metrics.
    pub metrics: crate::usage::metrics::ModelMetrics,
    /// Its budget scope ref (`m:<name>`).
    pub budget_scope: Arc<str>,
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
    /// Enabled flag (key and account).
    pub enabled: bool,
    /// Expiry, Unix seconds.
    pub expires_at: Option<i64>,
    /// Limits of this key.
    pub rate_limit: Option<RateLimit>,
    /// Its budget scope refs (`k:<id>`, `t:<team>` when it has one, `a:<account>`), made
    /// once per catalog rather than per request.
    pub budget_scopes: Box<[Arc<str>]>,
}

impl ApiKey {
    /// Whether this key may call `model`.
    pub fn allows(&self, model: &str) -> bool {
        self.allowed_models.is_empty() || self.allowed_models.iter().any(|m| m == model)
    }

    /// Whether the key is usable now (enabled, account enabled, not expired).
    pub fn usable(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.enabled && self.expires_at.is_none_or(|t| t > now)
    }
}

/// Models and keys, built once per config version.
#[derive(Debug, Default)]
pub struct Catalog {
    models: foldhash::HashMap<String, Arc<Model>>,
    keys: foldhash::HashMap<[u8; 32], Arc<ApiKey>>,
    /// Config version this snapshot was built from (0 for a file).
    pub version: u64,
}

/// SHA-256 of a presented secret: the only form in which keys are held.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";

impl Catalog {
    /// Build from validated, normalized entities. Provider keys named by `api_key_env` are read
    /// through `env`.
    pub fn build(
        models: &[entities::Model],
        keys: &[entities::ApiKey],
        accounts: &[entities::Account],
        version: u64,
        env: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let models = models
            .iter()
            .map(|m| {
                let mut deployments: Vec<Arc<Deployment>> = m
                    .deployments
                    .iter()
                    .map(|d| {
                        let upstream_model =
                            d.upstream_model.clone().unwrap_or_else(|| m.name.clone());
                        let base_url = d.base_url.trim_end_matches('/').to_string();
                        let api_key = d
                            .api_key
                            .as_ref()
                            .map(|s| s.expose().to_string())
                            .or_else(|| d.api_key_env.as_deref().and_then(&env));
                        let api_version = d
                            .api_version
                            .clone()
                            .unwrap_or_else(|| AZURE_DEFAULT_API_VERSION.into());
                        let protocol =
                            crate::providers::pool::Protocol::of(d.http2, d.http2_prior_knowledge);
                        let target = crate::providers::Target::new(
                            d.provider,
                            &base_url,
                            &upstream_model,
                            &api_version,
                            api_key.as_deref(),
                            protocol,
                        );
                        let stream_rename = (upstream_model != m.name).then(|| {
                            Arc::new(crate::http::sse::ModelRename::new(&upstream_model, &m.name))
                        });
                        Arc::new(Deployment {
                            stream_rename,
                            key: format!("{}|{}|{}", m.name, base_url, upstream_model),
                            provider: d.provider,
                            base_url,
                            upstream_model,
                            api_version,
                            weight: d.weight,
                            priority: d.priority,
                            protocol,
                            target,
                        })
                    })
                    .collect();
                deployments.sort_by_key(|d| d.priority);
                let model = Model {
                    name: m.name.clone(),
                    deployments,
                    pricing: m.pricing,
                    timeouts: m.timeouts,
                    retry: m.retry,
                    rate_limit: m.rate_limit,
                    metrics: Default::default(),
                    budget_scope: scope_ref(Scope::Model, &m.name).into(),
                };
                (m.name.clone(), Arc::new(model))
            })
            .collect();
        let disabled_accounts: Vec<&str> = accounts
            .iter()
            .filter(|a| !a.enabled)
            .map(|a| a.id.as_str())
            .collect();
        let keys = keys
            .iter()
            .filter_map(|k| {
                let hash = match (&k.secret_sha256, &k.secret) {
                    (Some(h), _) => <[u8; 32]>::try_from(hex::decode(h).ok()?.as_slice()).ok()?,
                    (None, Some(s)) => hash_secret(s.expose()),
                    (None, None) => return None,
                };
                let key = ApiKey {
                    budget_scopes: crate::budget::key_scopes(&k.id, &k.team_id, &k.account_id),
                    id: k.id.clone(),
                    account_id: k.account_id.clone(),
                    team_id: k.team_id.clone(),
                    allowed_models: k.allowed_models.clone(),
                    enabled: k.enabled && !disabled_accounts.contains(&k.account_id.as_str()),
                    expires_at: k.expires_at,
                    rate_limit: k.rate_limit,
                };
                Some((hash, Arc::new(key)))
            })
            .collect();
        Self {
            models,
            keys,
            version,
        }
    }

    /// Look a key up by its presented secret.
    pub fn key_for_secret(&self, secret: &str) -> Option<Arc<ApiKey>> {
        self.keys.get(&hash_secret(secret)).cloned()
    }

    /// Look a model up by public name.
    pub fn model(&self, name: &str) -> Option<Arc<Model>> {
        self.models.get(name).cloned()
    }

    /// Public model names, sorted.
    pub fn model_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.models.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct HealthState {
    failures: u32,
    cooldown_until: Option<Instant>,
}

/// Per-deployment failure counts and cooldowns, shared by all requests.
#[derive(Debug, Default)]
pub struct Health {
    states: Mutex<HashMap<String, HealthState>>,
    /// Entries in `states`: while none, requests read and clear nothing under the lock.
    tracked: AtomicUsize,
}

impl Health {
    /// Whether a deployment is cooling down now.
    pub fn cooling(&self, d: &Deployment) -> bool {
        if self.tracked.load(Ordering::Acquire) == 0 {
            return false;
        }
        let now = Instant::now();
        self.states
            .lock()
            .map(|s| {
                s.get(&d.key)
                    .and_then(|h| h.cooldown_until)
                    .is_some_and(|t| t > now)
            })
            .unwrap_or(false)
    }

    /// Record a success: the failure streak ends.
    pub fn success(&self, d: &Deployment) {
        if self.tracked.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Ok(mut s) = self.states.lock() {
            s.remove(&d.key);
            self.tracked.store(s.len(), Ordering::Release);
        }
    }

    /// Record a failure; after `policy.cooldown_after_failures` in a row the deployment cools
    /// down for `policy.cooldown_secs`. Returns true when this failure started a cooldown.
    pub fn failure(&self, d: &Deployment, policy: &RetryPolicy) -> bool {
        let Ok(mut s) = self.states.lock() else {
            return false;
        };
        let h = s.entry(d.key.clone()).or_default();
        h.failures += 1;
        let cooled = h.failures >= policy.cooldown_after_failures;
        if cooled {
            h.failures = 0;
            h.cooldown_until =
                Instant::now().checked_add(Duration::from_secs(policy.cooldown_secs));
        }
        self.tracked.store(s.len(), Ordering::Release);
        cooled
    }
}

/// Order in which to try deployments: by priority tier; within a tier a weighted random
/// shuffle; deployments cooling down go last (used only when nothing else is left).
pub fn attempt_order(
    model: &Model,
    health: &Health,
    mut rand: impl FnMut() -> f64,
) -> Vec<Arc<Deployment>> {
    if let [only] = model.deployments.as_slice() {
        return vec![only.clone()];
    }
    let (ready, cooling): (Vec<_>, Vec<_>) = model
        .deployments
        .iter()
        .cloned()
        .partition(|d| !health.cooling(d));
    let mut out = Vec::with_capacity(model.deployments.len());
    for group in [ready, cooling] {
        let mut tiers: Vec<u32> = group.iter().map(|d| d.priority).collect();
        tiers.dedup();
        for tier in tiers {
            let mut pool: Vec<Arc<Deployment>> = group
                .iter()
                .filter(|d| d.priority == tier)
                .cloned()
                .collect();
            while !pool.is_empty() {
                let idx = weighted_pick(&pool, &mut rand);
                out.push(pool.remove(idx));
            }
        }
    }
    out
}

/// Index of a deployment of `pool` drawn by weight. Weight-0 deployments are the tier's
/// standbys: drawn only once no weighted one is left, in their listed order.
fn weighted_pick(pool: &[Arc<Deployment>], rand: &mut impl FnMut() -> f64) -> usize {
    let total: f64 = pool.iter().map(|d| f64::from(d.weight)).sum();
    if total <= 0.0 {
        return 0;
    }
    let mut pick = rand() * total;
    for (i, d) in pool.iter().enumerate() {
        let w = f64::from(d.weight);
        if w > 0.0 && pick < w {
            return i;
        }
        pick -= w;
    }
    // Rounding at the top end: the last weighted deployment.
    pool.iter().rposition(|d| d.weight > 0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyConfig;

    fn catalog(yaml: &str) -> Catalog {
        let cfg = ProxyConfig::from_yaml(yaml, "t").unwrap();
        cfg.validate().unwrap();
        Catalog::build(&cfg.models, &cfg.api_keys, &cfg.accounts, 0, |_| None)
    }

    const YAML: &str = r#"
models:
  - name: m
    pricing: {input_per_mtok: 2.5, output_per_mtok: 10.0, cached_input_per_mtok: 1.25}
    deployments:
      - {base_url: "http://a/v1", weight: 3}
      - {base_url: "http://b/v1", weight: 1}
      - {base_url: "http://c/v1", priority: 1}
api_keys:
  - {id: k1, secret: "sk-abcdefgh", account_id: a}
  - {id: k2, secret_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", account_id: b}
  - {id: k3, secret: "sk-disabled", account_id: c, enabled: false}
  - {id: k4, secret: "sk-expired1", account_id: a, expires_at: 1000}
  - {id: k5, secret: "sk-acctoff1", account_id: off}
accounts:
  - {id: off, enabled: false}
kafka: {brokers: "h:1"}
"#;

    #[test]
    fn provider_keys_never_print() {
        let yaml = r#"
models:
  - name: m
    deployments:
      - {base_url: "http://a/v1", api_key: "sk-provider-inline"}
      - {base_url: "http://b/v1", api_key_env: PROVIDER_KEY}
kafka: {brokers: "h:1"}
"#;
        let cfg = ProxyConfig::from_yaml(yaml, "t").unwrap();
        cfg.validate().unwrap();
        let cat = Catalog::build(&cfg.models, &cfg.api_keys, &cfg.accounts, 0, |name| {
            (name == "PROVIDER_KEY").then(|| "sk-provider-from-env".to_string())
        });
        let printed = format!("{cat:?}");
        assert!(
            printed.contains("http://b/v1"),
            "the catalog prints: {printed}"
        );
        assert!(!printed.contains("sk-provider"), "{printed}");
        let m = cat.model("m").unwrap();
        let sends = |key: &str| m.deployments.iter().any(|d| d.target.sends_key(key));
        assert!(sends("sk-provider-inline") && sends("sk-provider-from-env"));
        assert!(!sends("sk-provider"));
    }

    #[test]
    fn weight_zero_deployments_are_standbys_of_their_tier() {
        let cat = catalog(
            r#"
models:
  - name: m
    deployments:
      - {base_url: "http://standby/v1", weight: 0}
      - {base_url: "http://a/v1", weight: 1}
      - {base_url: "http://b/v1", weight: 3}
      - {base_url: "http://next-tier/v1", priority: 1}
kafka: {brokers: "h:1"}
"#,
        );
        let m = cat.model("m").unwrap();
        let health = Health::default();
        for r in [0.0, 0.3, 0.999_999, 1.0] {
            let order: Vec<String> = attempt_order(&m, &health, || r)
                .iter()
                .map(|d| d.base_url.clone())
                .collect();
            assert_eq!(
                &order[2..],
                ["http://standby/v1", "http://next-tier/v1"],
                "{r}"
            );
            assert!(order[..2].contains(&"http://a/v1".to_string()), "{order:?}");
        }
    }

    #[test]
    fn cost_uses_per_million_prices_and_cached_rate() {
        let m = catalog(YAML).model("m").unwrap();
        // 800*2.5e3 + 200*1.25e3 + 500*10e3 nano-USD
        assert_eq!(m.cost_nanos(1000, 500, 200), 7_250_000);
        assert_eq!(m.cost_nanos(0, 0, 0), 0);
    }

    #[test]
    fn keys_are_found_by_hash_and_checked() {
        let cat = catalog(YAML);
        assert_eq!(cat.key_for_secret("sk-abcdefgh").unwrap().id, "k1");
        assert_eq!(cat.key_for_secret("test").unwrap().id, "k2");
        assert!(cat.key_for_secret("nope").is_none());
        assert!(!cat.key_for_secret("sk-disabled").unwrap().usable());
        assert!(!cat.key_for_secret("sk-expired1").unwrap().usable());
        assert!(!cat.key_for_secret("sk-acctoff1").unwrap().usable());
        assert!(cat.key_for_secret("sk-abcdefgh").unwrap().usable());
    }

    #[test]
    fn weighted_choice_within_tier_then_next_tier() {
        let cat = catalog(YAML);
        let m = cat.model("m").unwrap();
        let health = Health::default();
        let mut first_a = 0;
        let mut seed = 0.0;
        for _ in 0..400 {
            let order = attempt_order(&m, &health, || {
                seed = (seed + 0.618_033_988_7) % 1.0;
                seed
            });
            assert_eq!(order.len(), 3);
            assert!(order[2].base_url.ends_with("c/v1"), "priority 1 comes last");
            if order[0].base_url.ends_with("a/v1") {
                first_a += 1;
            }
        }
        assert!(
            (250..350).contains(&first_a),
            "weight 3:1 → ~300 of 400, got {first_a}"
        );
    }

    #[test]
    fn cooldown_moves_a_deployment_last() {
        let cat = catalog(YAML);
        let m = cat.model("m").unwrap();
        let health = Health::default();
        let a = m
            .deployments
            .iter()
            .find(|d| d.base_url.ends_with("a/v1"))
            .unwrap()
            .clone();
        assert!(!health.failure(&a, &m.retry));
        assert!(!health.failure(&a, &m.retry));
        assert!(
            health.failure(&a, &m.retry),
            "third failure starts the cooldown"
        );
        assert!(health.cooling(&a));
        let order = attempt_order(&m, &health, || 0.0);
        assert!(order.last().unwrap().base_url.ends_with("a/v1"));
        health.success(&a);
        assert!(!health.cooling(&a));
    }
}
