//! Standalone-mode store: the file's entities in process memory.
//!
//! Admin writes change only this process and are lost on restart (put entities in the config
//! file, or configure `redis:`, to keep them). Every write bumps the version and wakes
//! [`MemoryStore::subscribe`] receivers, which rebuild the catalog.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::{ConfigKind, RawSnapshot, WriteOp, WriteOutcome};

#[derive(Debug, Default)]
struct State {
    version: u64,
    entities: HashMap<ConfigKind, BTreeMap<String, String>>,
    seeded: HashMap<ConfigKind, BTreeSet<String>>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

/// In-memory config store (cheap to clone; clones share the data).
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store at version 0.
    pub fn new() -> Self {
        let (changed, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                changed,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Receives the version after every write.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    pub(crate) fn get_raw(&self, kind: ConfigKind, id: &str) -> Option<String> {
        self.state().entities.get(&kind)?.get(id).cloned()
    }

    pub(crate) fn ids(&self, kind: ConfigKind) -> Vec<String> {
        self.state()
            .entities
            .get(&kind)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn all_raw(&self, kind: ConfigKind) -> Vec<(String, String)> {
        self.state()
            .entities
            .get(&kind)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    pub(crate) fn get_many(&self, kind: ConfigKind, ids: &[String]) -> Vec<Option<String>> {
        let state = self.state();
        let map = state.entities.get(&kind);
        ids.iter()
            .map(|id| map.and_then(|m| m.get(id)).cloned())
            .collect()
    }

    pub(crate) fn write(
        &self,
        kind: ConfigKind,
        op: WriteOp,
        id: &str,
        json: Option<&str>,
    ) -> WriteOutcome {
        let mut state = self.state();
        let map = state.entities.entry(kind).or_default();
        let exists = map.contains_key(id);
        match (op, exists) {
            (WriteOp::Create, true) => return WriteOutcome::Exists,
            (WriteOp::Replace | WriteOp::Delete, false) => return WriteOutcome::Missing,
            (WriteOp::Delete, true) => {
                map.remove(id);
            }
            (WriteOp::Create | WriteOp::Replace, _) => {
                map.insert(id.to_string(), json.unwrap_or("{}").to_string());
            }
        }
        state.version += 1;
        let v = state.version;
        drop(state);
        self.inner.changed.send_replace(v);
        WriteOutcome::Done(v)
    }

    pub(crate) fn seed_one(&self, kind: ConfigKind, id: &str, json: &str) -> bool {
        let mut state = self.state();
        if !state.seeded.entry(kind).or_default().insert(id.to_string()) {
            return false;
        }
        let map = state.entities.entry(kind).or_default();
        if map.contains_key(id) {
            return false;
        }
        // Seeding is the file's content: version 0, like a file catalog.
        map.insert(id.to_string(), json.to_string());
        true
    }

    pub(crate) fn version(&self) -> u64 {
        self.state().version
    }

    pub(crate) fn raw_snapshot(&self) -> RawSnapshot {
        let state = self.state();
        let get = |k| state.entities.get(&k).cloned().unwrap_or_default();
        RawSnapshot {
            version: state.version,
            models: get(ConfigKind::Models),
            keys: get(ConfigKind::Keys),
            accounts: get(ConfigKind::Accounts),
        }
    }
}
