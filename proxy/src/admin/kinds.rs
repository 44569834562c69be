//! What differs between models, keys and accounts in the admin API: the id field, the
//! rendered view (secrets hidden), filling from the stored entity and cross-entity checks.

use std::future::Future;

use rand::RngCore;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::errors::AdminError;
use crate::entities::{Account, ApiKey, Model};
use crate::store::{ConfigStore, Entity};

/// Shown instead of a stored provider key; sent back on PUT it keeps the stored key.
pub const MASK: &str = "***";
/// Prefix of generated virtual-key secrets.
pub const SECRET_PREFIX: &str = "sk-tg-";

/// An entity managed through the admin API.
pub trait AdminEntity: Entity {
    /// JSON field holding the id (`name` for models).
    const ID_FIELD: &'static str;

    /// The response form (no secrets).
    fn view(&self) -> Value;

    /// Complete a decoded request body (from the stored entity on PUT); returns a generated
    /// secret to show once.
    fn fill(&mut self, existing: Option<&Self>) -> Result<Option<String>, AdminError>;

    /// Checks against other entities, after field validation.
    fn verify(&self, store: &ConfigStore) -> impl Future<Output = Result<(), AdminError>> + Send;

    /// Upstream base URLs against the proxy's allow-list (models only).
    fn check_upstreams(&self, _allow: &crate::allowlist::Allowlist) -> Result<(), AdminError> {
        Ok(())
    }
}

fn to_value<T: serde::Serialize>(e: &T) -> Value {
    serde_json::to_value(e).unwrap_or(Value::Null)
}

impl AdminEntity for Model {
    const ID_FIELD: &'static str = "name";

    fn check_upstreams(&self, allow: &crate::allowlist::Allowlist) -> Result<(), AdminError> {
        allow.check_model(self).map_err(AdminError::field)
    }

    fn view(&self) -> Value {
        let mut v = to_value(self);
        if let Some(deps) = v.get_mut("deployments").and_then(Value::as_array_mut) {
            for d in deps {
                if let Some(key) = d.get_mut("api_key") {
                    *key = Value::String(MASK.into());
                }
            }
        }
        v
    }

    fn fill(&mut self, existing: Option<&Self>) -> Result<Option<String>, AdminError> {
        self.normalize();
        for (i, d) in self.deployments.iter_mut().enumerate() {
            if d.api_key.as_ref().is_none_or(|k| k.expose() != MASK) {
                continue;
            }
            let old = existing.and_then(|m| {
                m.deployments
                    .get(i)
                    .filter(|o| o.base_url == d.base_url && o.api_key.is_some())
                    .or_else(|| {
                        m.deployments
                            .iter()
                            .find(|o| o.base_url == d.base_url && o.api_key.is_some())
                    })
            });
            match old {
                Some(o) => d.api_key = o.api_key.clone(),
                None => {
                    return Err(AdminError::Invalid {
                        param: Some(format!("deployments[{i}].api_key")),
                        message: format!(
                            "`deployments[{i}].api_key` is \"{MASK}\" but no stored deployment with base_url `{}` has a key to keep. Send the provider key itself, or use api_key_env.",
                            d.base_url
                        ),
                        code: "invalid_value",
                    })
                }
            }
        }
        Ok(None)
    }

    async fn verify(&self, _store: &ConfigStore) -> Result<(), AdminError> {
        Ok(())
    }
}

/// A new random virtual-key secret: `sk-tg-` + 64 hex characters (32 random bytes).
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", hex::encode(bytes))
}

impl AdminEntity for ApiKey {
    const ID_FIELD: &'static str = "id";

    fn view(&self) -> Value {
        to_value(self)
    }

    fn fill(&mut self, existing: Option<&Self>) -> Result<Option<String>, AdminError> {
        if self.secret.is_some() || self.secret_sha256.is_some() {
            return Ok(None);
        }
        if let Some(old) = existing {
            self.secret_sha256.clone_from(&old.secret_sha256);
            return Ok(None);
        }
        let secret = generate_secret();
        self.secret_sha256 = Some(hex::encode(Sha256::digest(secret.as_bytes())));
        Ok(Some(secret))
    }

    async fn verify(&self, store: &ConfigStore) -> Result<(), AdminError> {
        for (i, name) in self.allowed_models.iter().enumerate() {
            if !store.exists::<Model>(name).await? {
                return Err(AdminError::UnknownReference {
                    param: format!("allowed_models[{i}]"),
                    message: format!(
                        "`allowed_models[{i}]`: model `{name}` does not exist. Create it first (POST /admin/v1/models) or remove it from the list."
                    ),
                });
            }
        }
        let taken = store
            .all::<ApiKey>()
            .await?
            .into_iter()
            .any(|k| k.id != self.id && k.secret_sha256 == self.secret_sha256);
        if taken {
            return Err(AdminError::Conflict {
                param: "secret",
                message: "Another key already uses this secret. Choose a different secret, or omit it on create to have one generated.".into(),
            });
        }
        Ok(())
    }
}

impl AdminEntity for Account {
    const ID_FIELD: &'static str = "id";

    fn view(&self) -> Value {
        to_value(self)
    }

    fn fill(&mut self, _existing: Option<&Self>) -> Result<Option<String>, AdminError> {
        Ok(None)
    }

    async fn verify(&self, _store: &ConfigStore) -> Result<(), AdminError> {
        Ok(())
    }
}
