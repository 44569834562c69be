//! How each entity type is stored: its kind, id, stored form and decoding of a snapshot.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{noun, ConfigKind, RawSnapshot, StoreError};
use crate::entities::{Account, ApiKey, FieldError, Model};
use crate::routing::Catalog;

/// A storable entity (implemented by [`Model`], [`ApiKey`] and [`Account`]).
pub trait Entity: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The collection it lives in.
    const KIND: ConfigKind;

    /// Id: model name, key id or account id.
    fn id(&self) -> &str;

    /// Bring into the stored form: fold model shorthands, hash a plaintext key secret.
    fn prepare(&mut self);

    /// Validate every field.
    fn check(&self) -> Result<(), FieldError>;

    /// JSON for the store.
    fn encode(&self) -> Result<String, StoreError> {
        serde_json::to_string(self).map_err(|source| StoreError::Encode {
            kind: noun(Self::KIND),
            id: self.id().to_string(),
            source,
        })
    }

    /// Parse stored JSON; unreadable or invalid entries are logged (by id) and skipped.
    fn decode(id: &str, json: &str) -> Option<Self> {
        let kind = noun(Self::KIND);
        let mut e: Self = match serde_json::from_str(json) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(kind, id, error = %e, "skipping unreadable stored entity");
                return None;
            }
        };
        e.prepare();
        if let Err(err) = e.check() {
            tracing::warn!(kind, id, field = %err.field, message = %err.message, "skipping invalid stored entity");
            return None;
        }
        if e.id() != id {
            tracing::warn!(
                kind,
                id,
                "skipping stored entity whose id does not match its field"
            );
            return None;
        }
        Some(e)
    }
}

impl Entity for Model {
    const KIND: ConfigKind = ConfigKind::Models;

    fn id(&self) -> &str {
        &self.name
    }

    fn prepare(&mut self) {
        self.normalize();
    }

    fn check(&self) -> Result<(), FieldError> {
        self.validate()
    }
}

impl Entity for ApiKey {
    const KIND: ConfigKind = ConfigKind::Keys;

    fn id(&self) -> &str {
        &self.id
    }

    fn prepare(&mut self) {
        self.hash_secret();
    }

    fn check(&self) -> Result<(), FieldError> {
        self.validate()
    }
}

impl Entity for Account {
    const KIND: ConfigKind = ConfigKind::Accounts;

    fn id(&self) -> &str {
        &self.id
    }

    fn prepare(&mut self) {}

    fn check(&self) -> Result<(), FieldError> {
        self.validate()
    }
}

/// All entities at one config version.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Config version.
    pub version: u64,
    /// Models, by name.
    pub models: Vec<Model>,
    /// API keys, by id.
    pub keys: Vec<ApiKey>,
    /// Accounts, by id.
    pub accounts: Vec<Account>,
}

fn decode_all<E: Entity>(raw: &std::collections::BTreeMap<String, String>) -> Vec<E> {
    raw.iter()
        .filter_map(|(id, json)| E::decode(id, json))
        .collect()
}

impl Snapshot {
    /// Decode a raw snapshot, skipping (and logging) entries that do not parse or validate.
    pub fn decode(raw: &RawSnapshot) -> Self {
        Self {
            version: raw.version,
            models: decode_all(&raw.models),
            keys: decode_all(&raw.keys),
            accounts: decode_all(&raw.accounts),
        }
    }

    /// The hot-path catalog; provider keys named by `api_key_env` come from the environment.
    pub fn catalog(&self) -> Catalog {
        Catalog::build(
            &self.models,
            &self.keys,
            &self.accounts,
            self.version,
            |k| std::env::var(k).ok(),
        )
    }
}
