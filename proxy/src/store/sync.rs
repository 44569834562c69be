//! Live sync: keep this proxy's [`Catalog`] equal to the config store.
//!
//! With Redis, a background task rebuilds the catalog when
//! - a notice arrives on the changes channel (a separate task keeps that subscription alive),
//! - the version counter (polled every [`POLL`]) differs from the catalog's, or
//! - `redis.resync_ms` passed since the last full read,
//!
//! so a change reaches every proxy within about [`POLL`] even if notices are lost. While Redis is
//! unreachable the last catalog keeps serving; the task retries with backoff (up to
//! [`MAX_BACKOFF`]) and the connection is re-established automatically. If Redis is down at
//! startup the file's entities are served until it answers; seeding then happens on the first
//! successful contact.
//!
//! In standalone mode the catalog comes from the file and every admin write (to the
//! [`MemoryStore`]) rebuilds it in place.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::{ConfigStore, Entity, MemoryStore, RawSnapshot, RedisStore, Snapshot, StoreError};
use crate::config::{ProxyConfig, RedisConfig};
use crate::entities::{Account, ApiKey, Model};
use crate::routing::Catalog;

/// Version poll interval while Redis answers.
pub const POLL: Duration = Duration::from_millis(250);
/// Longest wait between retries while Redis is unreachable.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long startup waits for Redis before serving the file's entities.
const STARTUP_WAIT: Duration = Duration::from_secs(3);

/// Config store + the live catalog built from it.
#[derive(Debug)]
pub struct ControlPlane {
    store: ConfigStore,
    catalog: watch::Receiver<Arc<Catalog>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The entities of the config file, in stored form.
#[derive(Debug, Clone)]
struct FileSeed {
    models: Vec<Model>,
    keys: Vec<ApiKey>,
    accounts: Vec<Account>,
}

fn prepared<E: Entity>(items: &[E]) -> Vec<E> {
    items
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.prepare();
            e
        })
        .collect()
}

impl FileSeed {
    fn from_config(cfg: &ProxyConfig) -> Self {
        Self {
            models: prepared(&cfg.models),
            keys: prepared(&cfg.api_keys),
            accounts: prepared(&cfg.accounts),
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            version: 0,
            models: self.models.clone(),
            keys: self.keys.clone(),
            accounts: self.accounts.clone(),
        }
    }

    async fn write_to(&self, store: &ConfigStore) -> Result<usize, StoreError> {
        store.seed(&self.models, &self.keys, &self.accounts).await
    }
}

impl ControlPlane {
    /// Seed the store from `cfg` (already validated), load the catalog and start syncing.
    /// Fails only on unusable Redis settings; an unreachable Redis is retried in the
    /// background while the file's entities are served.
    pub async fn start(cfg: &ProxyConfig) -> Result<Self, StoreError> {
        let seed = FileSeed::from_config(cfg);
        match &cfg.redis {
            None => Self::start_memory(seed).await,
            Some(redis) => Self::start_redis(seed, redis).await,
        }
    }

    async fn start_memory(seed: FileSeed) -> Result<Self, StoreError> {
        let memory = MemoryStore::new();
        let store = ConfigStore::Memory(memory.clone());
        seed.write_to(&store).await?;
        let (tx, catalog) = watch::channel(Arc::new(store.snapshot().await?.catalog()));
        let (stop, mut stopped) = watch::channel(false);
        let mut changed = memory.subscribe();
        let task_store = store.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop_requested(&mut stopped) => break,
                    r = changed.changed() => {
                        if r.is_err() {
                            break;
                        }
                        if let Ok(snap) = task_store.snapshot().await {
                            tx.send_replace(Arc::new(snap.catalog()));
                            tracing::info!(version = snap.version, "config catalog rebuilt (standalone)");
                        }
                    }
                }
            }
        });
        tracing::info!("config store: standalone (in memory; admin changes are lost on restart)");
        Ok(Self {
            store,
            catalog,
            stop,
            tasks: vec![task],
        })
    }

    async fn start_redis(seed: FileSeed, cfg: &RedisConfig) -> Result<Self, StoreError> {
        let redis = RedisStore::with_mode(cfg.url.expose(), &cfg.prefix, cfg.cluster)?;
        let store = ConfigStore::Redis(redis.clone());
        let first = tokio::time::timeout(STARTUP_WAIT, async {
            seed.write_to(&store).await?;
            store.raw_snapshot().await
        })
        .await
        .unwrap_or(Err(StoreError::Timeout(STARTUP_WAIT)));
        let mut syncer = Syncer {
            store: store.clone(),
            seed: None,
            current: None,
            tx: watch::channel(Arc::new(Catalog::default())).0,
            resync_every: Duration::from_millis(cfg.resync_ms.max(100)),
            last_full: Instant::now(),
        };
        match first {
            Ok(raw) => {
                tracing::info!(prefix = %cfg.prefix, version = raw.version, "config store: redis");
                syncer.install(&raw);
            }
            Err(e) => {
                tracing::warn!(prefix = %cfg.prefix, error = %e,
                    "config store unreachable at startup; serving the config file's entities until it answers");
                syncer.tx.send_replace(Arc::new(seed.snapshot().catalog()));
                syncer.seed = Some(seed);
            }
        }
        let catalog = syncer.tx.subscribe();
        let (stop, stopped) = watch::channel(false);
        let notify = Arc::new(Notify::new());
        let tasks = vec![
            tokio::spawn(syncer.run(Arc::clone(&notify), stopped.clone())),
            tokio::spawn(subscribe_loop(redis, notify, stopped)),
        ];
        Ok(Self {
            store,
            catalog,
            stop,
            tasks,
        })
    }

    /// Receiver of the current catalog (changes whenever the config does).
    pub fn catalog(&self) -> watch::Receiver<Arc<Catalog>> {
        self.catalog.clone()
    }

    /// The catalog now.
    pub fn current(&self) -> Arc<Catalog> {
        Arc::clone(&self.catalog.borrow())
    }

    /// The store (for the admin API).
    pub fn store(&self) -> ConfigStore {
        self.store.clone()
    }

    /// Stop syncing (the last catalog stays readable through existing receivers).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for mut task in self.tasks {
            if tokio::time::timeout(Duration::from_secs(3), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

/// Resolves once stop is requested (or the sender is gone).
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Redis-mode sync state.
struct Syncer {
    store: ConfigStore,
    /// File entities still to be seeded (Redis was down at startup).
    seed: Option<FileSeed>,
    /// Version and content fingerprint of the installed catalog (`None`: file fallback).
    current: Option<(u64, u64)>,
    tx: watch::Sender<Arc<Catalog>>,
    resync_every: Duration,
    last_full: Instant,
}

fn fingerprint(raw: &RawSnapshot) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    raw.hash(&mut h);
    h.finish()
}

impl Syncer {
    /// Build and publish the catalog of `raw` unless it is the installed one.
    fn install(&mut self, raw: &RawSnapshot) {
        self.last_full = Instant::now();
        let id = (raw.version, fingerprint(raw));
        if self.current == Some(id) {
            return;
        }
        let snap = Snapshot::decode(raw);
        self.tx.send_replace(Arc::new(snap.catalog()));
        self.current = Some(id);
        tracing::info!(
            version = raw.version,
            models = snap.models.len(),
            keys = snap.keys.len(),
            accounts = snap.accounts.len(),
            "config catalog updated"
        );
    }

    /// One round: seed if pending, then reload when forced, due, or the version moved.
    async fn tick(&mut self, mut force: bool) -> Result<(), StoreError> {
        if let Some(seed) = &self.seed {
            let written = seed.write_to(&self.store).await?;
            tracing::info!(written, "seeded the config store from the config file");
            self.seed = None;
            force = true;
        }
        let due = force || self.current.is_none() || self.last_full.elapsed() >= self.resync_every;
        if !due {
            let version = self.store.version().await?;
            if self.current.is_some_and(|(v, _)| v == version) {
                return Ok(());
            }
        }
        let raw = self.store.raw_snapshot().await?;
        self.install(&raw);
        Ok(())
    }

    async fn run(mut self, notify: Arc<Notify>, mut stopped: watch::Receiver<bool>) {
        let mut healthy = true;
        let mut delay = POLL;
        loop {
            let notified = tokio::select! {
                _ = stop_requested(&mut stopped) => break,
                _ = notify.notified() => true,
                _ = tokio::time::sleep(delay) => false,
            };
            match self.tick(notified).await {
                Ok(()) => {
                    if !healthy {
                        tracing::info!("config store reachable again");
                    }
                    healthy = true;
                    delay = POLL;
                }
                Err(e) => {
                    if healthy {
                        tracing::warn!(error = %e, "config store unreachable; serving the last catalog");
                    } else {
                        tracing::debug!(error = %e, "config store still unreachable");
                    }
                    healthy = false;
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Keep a subscription to the changes channel; every notice (and every resubscription, which
/// may have missed some) wakes the syncer.
async fn subscribe_loop(
    redis: RedisStore,
    notify: Arc<Notify>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = POLL;
    loop {
        let subscribed = tokio::select! {
            _ = stop_requested(&mut stopped) => return,
            r = redis.subscribe() => r,
        };
        match subscribed {
            Ok(mut pubsub) => {
                backoff = POLL;
                notify.notify_one();
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        _ = stop_requested(&mut stopped) => return,
                        m = messages.next() => match m {
                            Some(_) => notify.notify_one(),
                            None => break,
                        },
                    }
                }
                tracing::debug!("config notice subscription lost; resubscribing");
            }
            Err(e) => tracing::debug!(error = %e, "cannot subscribe to config notices"),
        }
        tokio::select! {
            _ = stop_requested(&mut stopped) => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
