//! Concurrency leases this proxy holds in Redis, and the task that renews them.
//!
//! A lease is a member of the entity's lease set scored with its expiry (Redis time). Running
//! requests — long streams included — keep theirs alive because one task renews every held
//! lease each third of the lease time, in one pipelined round trip. A proxy that dies stops
//! renewing, and its leases expire within the lease time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Leases held by this process: lease-set key → lease ids.
#[derive(Debug, Default)]
pub struct Leases {
    held: Mutex<HashMap<String, HashSet<Arc<str>>>>,
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<Arc<str>>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remember a lease.
    pub fn hold(&self, key: &str, id: &Arc<str>) {
        let mut held = self.lock();
        if let Some(ids) = held.get_mut(key) {
            ids.insert(id.clone());
        } else {
            held.insert(key.to_owned(), HashSet::from([id.clone()]));
        }
    }

    /// Forget a lease.
    pub fn release(&self, key: &str, id: &str) {
        let mut held = self.lock();
        if let Some(ids) = held.get_mut(key) {
            ids.remove(id);
            if ids.is_empty() {
                held.remove(key);
            }
        }
    }

    /// Everything held, grouped by lease set.
    pub fn snapshot(&self) -> Vec<(String, Vec<Arc<str>>)> {
        self.lock()
            .iter()
            .map(|(k, ids)| (k.clone(), ids.iter().cloned().collect()))
            .collect()
    }

    /// Number of leases held.
    pub fn len(&self) -> usize {
        self.lock().values().map(HashSet::len).sum()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How often leases of `lease_ms` are renewed.
pub fn renew_every(lease_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(lease_ms / 3).unwrap_or(1).max(100))
}

/// Renew all held leases every `every` until aborted.
pub fn spawn_renewer(
    redis: Arc<super::redis::RedisLimiter>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = redis.renew().await {
                metrics::counter!(tollgate_schemas::telemetry::RATELIMIT_BACKEND_ERRORS, "op" => "renew")
                    .increment(1);
                tracing::debug!(error = %e, "renewing concurrency leases failed");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_grouped_by_set_and_forgotten() {
        let l = Leases::default();
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        l.hold("k1", &a);
        l.hold("k2", &a);
        l.hold("k1", &b);
        assert_eq!(l.len(), 3);
        l.release("k1", "a");
        l.release("k2", "a");
        assert_eq!(l.snapshot(), vec![("k1".to_string(), vec![b])]);
        assert_eq!(renew_every(30_000), Duration::from_secs(10));
    }
}
