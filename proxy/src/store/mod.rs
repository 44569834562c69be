//! The config store: models, API keys and accounts as JSON, one collection per kind.
//!
//! Two backends behind one cheap-to-clone handle, [`ConfigStore`]:
//!
//! - [`RedisStore`]: the shared store (layout in `tollgate_schemas::redis_keys`). Every write
//!   changes the entity, bumps the version and publishes a notice in one Lua script.
//! - [`MemoryStore`]: standalone mode (no `redis:` in the config). It starts from the file's
//!   entities; admin writes live only in this process's memory and are lost on restart.
//!
//! [`ControlPlane`] keeps the proxy's [`crate::routing::Catalog`] in sync with the store.

mod entity;
pub mod memory;
pub mod redis_store;
pub mod sync;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

pub use entity::{Entity, Snapshot};
pub use memory::MemoryStore;
pub use redis_store::RedisStore;
pub use sync::ControlPlane;
pub use tollgate_schemas::redis_keys::ConfigKind;

use crate::entities::{Account, ApiKey, Model};

/// Failure of a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Create of an id that exists.
    #[error("{kind} `{id}` already exists")]
    AlreadyExists {
        /// `model`, `key` or `account`.
        kind: &'static str,
        /// The id.
        id: String,
    },
    /// Replace or delete of an id that does not exist.
    #[error("{kind} `{id}` does not exist")]
    NotFound {
        /// `model`, `key` or `account`.
        kind: &'static str,
        /// The id.
        id: String,
    },
    /// Redis refused or failed (connection lost, server error).
    #[error("the config store is unavailable: {0}")]
    Unavailable(String),
    /// Redis did not answer in time.
    #[error("the config store did not answer within {0:?}")]
    Timeout(Duration),
    /// The Redis settings are unusable (e.g. a malformed URL).
    #[error("invalid redis settings: {0}")]
    Config(String),
    /// An entity could not be encoded as JSON.
    #[error("cannot encode {kind} `{id}`: {source}")]
    Encode {
        /// `model`, `key` or `account`.
        kind: &'static str,
        /// The id.
        id: String,
        /// Serializer error.
        source: serde_json::Error,
    },
}

/// Singular noun of a kind, for messages.
pub fn noun(kind: ConfigKind) -> &'static str {
    match kind {
        ConfigKind::Models => "model",
        ConfigKind::Keys => "key",
        ConfigKind::Accounts => "account",
        ConfigKind::Budgets => "budget",
        ConfigKind::CreditAccounts => "credit account",
    }
}

/// One page of a sorted listing.
#[derive(Debug, Clone)]
pub struct Page<E> {
    /// Entities in id order.
    pub data: Vec<E>,
    /// Whether entities after the last one exist.
    pub has_more: bool,
    /// Id of the last entity of this page when `has_more` (the next page starts after it).
    pub next_after: Option<String>,
}

/// The raw JSON of every entity plus the version, read atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RawSnapshot {
    /// Config version.
    pub version: u64,
    /// id → JSON, per kind.
    pub models: BTreeMap<String, String>,
    /// id → JSON.
    pub keys: BTreeMap<String, String>,
    /// id → JSON.
    pub accounts: BTreeMap<String, String>,
}

/// A conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteOp {
    /// Insert; fails if the id exists.
    Create,
    /// Overwrite; fails if the id is missing.
    Replace,
    /// Remove; fails if the id is missing.
    Delete,
}

impl WriteOp {
    fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Replace => "replace",
            Self::Delete => "delete",
        }
    }
}

/// Result of a conditional write at the backend level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteOutcome {
    /// Written; the new config version.
    Done(u64),
    /// Create refused: the id exists.
    Exists,
    /// Replace/delete refused: the id is missing.
    Missing,
}

/// Handle to the config store (cheap to clone).
#[derive(Debug, Clone)]
pub enum ConfigStore {
    /// Shared Redis store.
    Redis(RedisStore),
    /// In-process store of standalone mode.
    Memory(MemoryStore),
}

impl ConfigStore {
    /// `redis` or `memory`.
    pub fn mode(&self) -> &'static str {
        match self {
            Self::Redis(_) => "redis",
            Self::Memory(_) => "memory",
        }
    }

    /// Read one entity; `None` if absent. Unreadable stored JSON counts as absent (logged).
    pub async fn get<E: Entity>(&self, id: &str) -> Result<Option<E>, StoreError> {
        let raw = match self {
            Self::Redis(s) => s.get_raw(E::KIND, id).await?,
            Self::Memory(s) => s.get_raw(E::KIND, id),
        };
        Ok(raw.and_then(|json| E::decode(id, &json)))
    }

    /// Whether an entity exists.
    pub async fn exists<E: Entity>(&self, id: &str) -> Result<bool, StoreError> {
        match self {
            Self::Redis(s) => s.exists(E::KIND, id).await,
            Self::Memory(s) => Ok(s.get_raw(E::KIND, id).is_some()),
        }
    }

    /// All entities of a kind (unordered). For checks across entities; prefer [`Self::list`].
    pub async fn all<E: Entity>(&self) -> Result<Vec<E>, StoreError> {
        let raw = match self {
            Self::Redis(s) => s.all_raw(E::KIND).await?,
            Self::Memory(s) => s.all_raw(E::KIND),
        };
        Ok(raw
            .iter()
            .filter_map(|(id, json)| E::decode(id, json))
            .collect())
    }

    /// Up to `limit` entities with ids sorted after `after` (bytewise order).
    pub async fn list<E: Entity>(
        &self,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Page<E>, StoreError> {
        let mut ids = match self {
            Self::Redis(s) => s.ids(E::KIND).await?,
            Self::Memory(s) => s.ids(E::KIND),
        };
        ids.sort_unstable();
        let start = after.map_or(0, |a| ids.partition_point(|id| id.as_str() <= a));
        let mut page: Vec<String> = ids.into_iter().skip(start).take(limit + 1).collect();
        let has_more = page.len() > limit;
        page.truncate(limit);
        let raw = match self {
            Self::Redis(s) => s.get_many(E::KIND, &page).await?,
            Self::Memory(s) => s.get_many(E::KIND, &page),
        };
        let data = page
            .iter()
            .zip(raw)
            .filter_map(|(id, json)| json.and_then(|j| E::decode(id, &j)))
            .collect();
        Ok(Page {
            data,
            has_more,
            next_after: if has_more { page.last().cloned() } else { None },
        })
    }

    /// Insert a new entity (stored as given: call [`Entity::prepare`] first). Returns the new
    /// config version.
    pub async fn create<E: Entity>(&self, e: &E) -> Result<u64, StoreError> {
        self.write(WriteOp::Create, e.id(), Some(e)).await
    }

    /// Overwrite an existing entity. Returns the new config version.
    pub async fn replace<E: Entity>(&self, e: &E) -> Result<u64, StoreError> {
        self.write(WriteOp::Replace, e.id(), Some(e)).await
    }

    /// Remove an entity. Returns the new config version.
    pub async fn delete<E: Entity>(&self, id: &str) -> Result<u64, StoreError> {
        self.write::<E>(WriteOp::Delete, id, None).await
    }

    async fn write<E: Entity>(
        &self,
        op: WriteOp,
        id: &str,
        e: Option<&E>,
    ) -> Result<u64, StoreError> {
        let json = e.map(|e| e.encode()).transpose()?;
        let outcome = match self {
            Self::Redis(s) => s.write(E::KIND, op, id, json.as_deref()).await?,
            Self::Memory(s) => s.write(E::KIND, op, id, json.as_deref()),
        };
        let kind = noun(E::KIND);
        match outcome {
            WriteOutcome::Done(v) => Ok(v),
            WriteOutcome::Exists => Err(StoreError::AlreadyExists {
                kind,
                id: id.to_string(),
            }),
            WriteOutcome::Missing => Err(StoreError::NotFound {
                kind,
                id: id.to_string(),
            }),
        }
    }

    /// Current config version (0 when nothing was ever written).
    pub async fn version(&self) -> Result<u64, StoreError> {
        match self {
            Self::Redis(s) => s.version().await,
            Self::Memory(s) => Ok(s.version()),
        }
    }

    /// Everything, read atomically.
    pub async fn raw_snapshot(&self) -> Result<RawSnapshot, StoreError> {
        match self {
            Self::Redis(s) => s.raw_snapshot().await,
            Self::Memory(s) => Ok(s.raw_snapshot()),
        }
    }

    /// Everything, decoded and validated (invalid stored entities are skipped and logged).
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot::decode(&self.raw_snapshot().await?))
    }

    /// Write the file's entities that were never seeded before (see the module docs of
    /// `tollgate_schemas::redis_keys`). Returns how many were written.
    pub async fn seed(
        &self,
        models: &[Model],
        keys: &[ApiKey],
        accounts: &[Account],
    ) -> Result<usize, StoreError> {
        let mut written = 0;
        written += self.seed_kind(models).await?;
        written += self.seed_kind(keys).await?;
        written += self.seed_kind(accounts).await?;
        Ok(written)
    }

    async fn seed_kind<E: Entity>(&self, items: &[E]) -> Result<usize, StoreError> {
        let mut written = 0;
        for item in items {
            let mut e = item.clone();
            e.prepare();
            let json = e.encode()?;
            let done = match self {
                Self::Redis(s) => s.seed_one(E::KIND, e.id(), &json).await?,
                Self::Memory(s) => s.seed_one(E::KIND, e.id(), &json),
            };
            if done {
                written += 1;
            }
        }
        Ok(written)
    }

    /// Round trip to the backend.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Redis(s) => s.ping().await,
            Self::Memory(_) => Ok(()),
        }
    }
}
