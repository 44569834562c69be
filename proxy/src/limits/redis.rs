//! Redis backend: one `EVALSHA` of `acquire.lua` checks all of a request's entities in one round
//! trip. On a single Redis the checks go through the acquire batcher: a request that arrives
//! while the previous call is in flight waits for it and then goes with every other request
//! that waited, in one call that checks them one after the other (each window and lease set
//! read and written once per call). An idle proxy sends each request at once; a busy one
//! spends a fraction of a script call per request, without giving up exact shared counts.
//! Settlements and refunds go to a background batcher: what finishes within a few
//! milliseconds (and while the previous batch was in flight) is merged per entity and bucket
//! and corrected by one `settle.lua` call.
//! A busy entity's acquire calls also reserve a quota slice, and its requests are then admitted
//! from the slice in this process ([`super::slices`]).
//! Scripts take the time from Redis (`TIME`), so proxies' clocks do not matter.
//!
//! On a Redis Cluster each entity's keys share a hash tag (one slot), but a request's entities
//! live in different slots, so there each entity (and each correction) is its own concurrent
//! single-slot call (missing scripts are then loaded on every primary by `SCRIPT LOAD`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use redis::{ErrorKind, Script, ScriptInvocation, ServerErrorKind};
use tollgate_schemas::redis_keys::{self, LimitEntity, LimitKeys};

use crate::redis_conn::{ConnSettings, RedisConn, RedisTarget};

use super::decision::{Checked, Metric, Target};
use super::headers::Usage;
use super::lease::Leases;
use super::local::{now_ms, Adjust};
use super::settle::{coalesce, Correction, Settle};
use super::slices::{Grant, Returns, Slices};
use super::window::{DAY, MINUTE};

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/window.lua"),
        include_str!("lua/acquire.lua")
    ))
});
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/window.lua"),
        include_str!("lua/settle.lua")
    ))
});
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/window.lua"),
        include_str!("lua/renew.lua")
    ))
});

/// How long the request path skips Redis after a failure before probing it again, ms.
const BREAKER_MS: i64 = 1_000;
/// Most lease ids per renew call.
const RENEW_CHUNK: usize = 500;
/// Most finished requests corrected by one settle call.
const SETTLE_BATCH: usize = 128;
/// How long the batcher keeps collecting after the first correction of a batch: corrections
/// of one entity and bucket merge into one, so a busy proxy sends few, larger settle calls.
/// Tokens and leases are corrected at most this much later.
const SETTLE_LINGER: Duration = Duration::from_millis(5);
/// Corrections waiting for the batcher; beyond this they are dropped and counted as failed
/// settlements (`op="settle"`), like a settle call that failed.
const SETTLE_QUEUE: usize = 16_384;
/// Values per entity in an acquire reply.
const ROW: usize = 16;
/// Most requests checked by one acquire call (at most two entities each).
const ACQUIRE_BATCH: usize = 64;
/// Requests waiting for the acquire batcher; beyond this, callers wait for room (bounded by
/// the store timeout like the call itself).
const ACQUIRE_QUEUE: usize = 4_096;
/// Most entities whose Redis keys are kept formatted.
const KEY_CACHE: usize = 65_536;

/// A failed call to Redis.
#[derive(Debug, thiserror::Error)]
pub enum StoreFailure {
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The answer had an unexpected shape.
    #[error("unexpected reply from the rate-limit script")]
    Reply,
    /// The batched call that carried this request failed.
    #[error("{0}")]
    Batch(Arc<StoreFailure>),
    /// The acquire batcher is gone (the limiter is shutting down).
    #[error("rate-limit batcher stopped")]
    Stopped,
}

/// One entity's part of an acquire call.
#[derive(Debug)]
struct Entry {
    keys: Arc<LimitKeys>,
    lease: Option<Arc<str>>,
    /// rpm, rpd, tpm, tpd, concurrency (0 = no limit), reserved tokens, wanted slice
    /// requests, tokens and slots.
    args: [i64; 9],
}

/// Formatted Redis keys by entity.
type KeyCache = HashMap<(LimitEntity, Arc<str>), Arc<LimitKeys>>;

/// A request's entities with their reply rows (ROW values each).
type Rows = (Vec<Entry>, Vec<i64>);

/// A request waiting for the acquire batcher: its entities come back with their rows.
struct AcquireJob {
    entries: Vec<Entry>,
    reply: oneshot::Sender<Result<Rows, StoreFailure>>,
}

/// The shared-counter backend.
pub struct RedisLimiter {
    conn: RedisConn,
    prefix: Arc<str>,
    lease_ms: i64,
    timeout: Duration,
    down_until: AtomicI64,
    down: AtomicBool,
    leases: Leases,
    settle_tx: OnceLock<mpsc::Sender<Settle>>,
    acquire_tx: OnceLock<mpsc::Sender<AcquireJob>>,
    acquire_calls: AtomicU64,
    key_cache: RwLock<KeyCache>,
    slices: Slices,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .field("lease_ms", &self.lease_ms)
            .field("cluster", &self.conn.is_cluster())
            .finish_non_exhaustive()
    }
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

impl RedisLimiter {
    /// A limiter on `url` (connects lazily and reconnects by itself). `cluster` (or a
    /// comma-separated node list) selects Redis Cluster mode; `slices` hands out busy
    /// entities' quota locally.
    pub fn new(
        url: &str,
        prefix: &str,
        lease_ms: i64,
        timeout: Duration,
        cluster: bool,
        slices: Slices,
    ) -> Result<Self, redis::RedisError> {
        let target = RedisTarget::parse(url, cluster)
            .map_err(|e| redis::RedisError::from((ErrorKind::InvalidClientConfig, "url", e.0)))?;
        let conn = target.connect(ConnSettings {
            connect_timeout: timeout.max(Duration::from_millis(200)),
            response_timeout: timeout,
        })?;
        Ok(Self {
            conn,
            prefix: prefix.into(),
            lease_ms,
            timeout,
            down_until: AtomicI64::new(0),
            down: AtomicBool::new(false),
            leases: Leases::default(),
            settle_tx: OnceLock::new(),
            acquire_tx: OnceLock::new(),
            acquire_calls: AtomicU64::new(0),
            key_cache: RwLock::default(),
            slices,
        })
    }

    /// Quota slices of this proxy.
    pub fn slices(&self) -> &Slices {
        &self.slices
    }

    /// Admit a request from its entities' quota slices, without a round trip, if they all
    /// have room.
    pub fn from_slices(&self, targets: &[Target]) -> Option<Vec<Checked>> {
        self.slices.take(targets, Instant::now())
    }

    /// Give back expired slices and idle slots (`all`: everything not in use; awaited, at
    /// shutdown).
    pub async fn sweep(self: &Arc<Self>, all: bool) {
        let returns = self.slices.sweep(Instant::now(), all);
        if all {
            let batch = self.returned(returns);
            if let Err(e) = self.bounded(self.apply_now(&batch)).await {
                metrics::counter!(tollgate_schemas::telemetry::RATELIMIT_BACKEND_ERRORS, "op" => "settle")
                    .increment(1);
                tracing::warn!(error = %e, "returning quota slices at shutdown failed");
            }
        } else {
            for s in self.returned(returns) {
                self.apply(s.adjustments, s.lease);
            }
        }
    }

    /// What slices give back, as settlements (slots also forgotten for renewal).
    fn returned(&self, returns: Returns) -> Vec<Settle> {
        let mut out: Vec<Settle> = returns
            .refunds
            .into_iter()
            .map(|a| Settle {
                adjustments: vec![a],
                lease: None,
            })
            .collect();
        for (target, id) in returns.slots {
            self.leases.release(&self.keys(&target).leases, &id);
            out.push(Settle {
                adjustments: vec![Adjust {
                    target,
                    minute_bucket: 0,
                    day_bucket: 0,
                    requests: 0,
                    tokens: 0,
                    release: true,
                }],
                lease: Some(id),
            });
        }
        out
    }

    /// Lease lifetime, ms.
    pub fn lease_ms(&self) -> i64 {
        self.lease_ms
    }

    /// Leases this process holds.
    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// Acquire calls sent to Redis so far (fewer than requests when they were batched).
    pub fn acquire_calls(&self) -> u64 {
        self.acquire_calls.load(Ordering::Relaxed)
    }

    /// Whether the request path should try Redis (no failure in the last second).
    pub fn available(&self) -> bool {
        now_ms() >= self.down_until.load(Ordering::Relaxed)
    }

    /// Record a failure: skip Redis for a moment. Returns true if Redis was considered up.
    pub fn trip(&self) -> bool {
        self.down_until
            .store(now_ms() + BREAKER_MS, Ordering::Relaxed);
        !self.down.swap(true, Ordering::Relaxed)
    }

    /// Record a success. Returns true if Redis was considered down.
    pub fn recovered(&self) -> bool {
        self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed)
    }

    /// The Redis keys of a target, formatted once per entity and kept (the catalogue of keys
    /// and models is small; the cache starts over if it ever grows past [`KEY_CACHE`]).
    fn keys(&self, t: &Target) -> Arc<LimitKeys> {
        let read = self.key_cache.read().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = read.get(&(t.entity, t.id.clone())) {
            return k.clone();
        }
        drop(read);
        let keys = Arc::new(redis_keys::limit_keys(&self.prefix, t.entity, &t.id));
        let mut cache = self.key_cache.write().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= KEY_CACHE {
            cache.clear();
        }
        cache.insert((t.entity, t.id.clone()), keys.clone());
        keys
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, StoreFailure>>,
    ) -> Result<T, StoreFailure> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .unwrap_or(Err(StoreFailure::Timeout(self.timeout)))
    }

    /// Script calls for `items`: one call carrying all of them on a single server, one per item
    /// on a cluster (an item's keys share a slot; different items usually do not). `call`
    /// starts a call with its shared arguments, `add` appends one item's keys and arguments.
    fn calls<T>(
        &self,
        items: &[T],
        call: impl Fn() -> ScriptInvocation<'static>,
        add: impl Fn(&mut ScriptInvocation<'static>, &T),
    ) -> Vec<ScriptInvocation<'static>> {
        if self.conn.is_cluster() {
            items
                .iter()
                .map(|item| {
                    let mut inv = call();
                    add(&mut inv, item);
                    inv
                })
                .collect()
        } else {
            let mut inv = call();
            for item in items {
                add(&mut inv, item);
            }
            vec![inv]
        }
    }

    /// Run script calls: one pipeline on a single server (loading the scripts once if Redis
    /// lost them), concurrent single-slot calls on a cluster. One reply per invocation.
    async fn run(
        &self,
        invocations: &[ScriptInvocation<'_>],
    ) -> Result<Vec<redis::Value>, StoreFailure> {
        let mut conn = self.conn.clone();
        if conn.is_cluster() {
            let calls = invocations.iter().map(|inv| {
                let mut c = conn.clone();
                async move { inv.invoke_async::<redis::Value>(&mut c).await }
            });
            let replies = futures::future::join_all(calls).await;
            return replies
                .into_iter()
                .map(|r| r.map_err(StoreFailure::from))
                .collect();
        }
        let mut pipe = redis::pipe();
        for inv in invocations {
            pipe.invoke_script(inv);
        }
        match pipe.query_async(&mut conn).await {
            Err(e) if is_noscript(&e) => {
                let mut load = redis::pipe();
                for s in [&*ACQUIRE, &*SETTLE, &*RENEW] {
                    load.load_script(s).ignore();
                }
                load.query_async::<()>(&mut conn).await?;
                Ok(pipe.query_async(&mut conn).await?)
            }
            r => Ok(r?),
        }
    }

    /// Check and count every target in one round trip (batched with other requests' checks
    /// on a single Redis). Each admitted target's lease is remembered for renewal.
    pub async fn acquire(
        self: &Arc<Self>,
        targets: &[Target],
        lease: Option<&Arc<str>>,
    ) -> Result<Vec<Checked>, StoreFailure> {
        let sent = Instant::now();
        let entries: Vec<Entry> = targets
            .iter()
            .map(|t| {
                let l = &t.limit;
                let v = |x: Option<u64>| i64::try_from(x.unwrap_or(0)).unwrap_or(i64::MAX);
                let want = self.slices.want(t, sent);
                Entry {
                    keys: self.keys(t),
                    lease: lease.cloned(),
                    args: [
                        v(l.rpm),
                        v(l.rpd),
                        v(l.tpm),
                        v(l.tpd),
                        v(l.concurrency),
                        t.reserve,
                        want.requests,
                        want.tokens,
                        want.slots,
                    ],
                }
            })
            .collect();
        let (entries, values) = if self.conn.is_cluster() {
            let invocations: Vec<_> = entries
                .iter()
                .map(|e| self.acquire_call(std::iter::once(e)))
                .collect();
            self.acquire_calls
                .fetch_add(invocations.len() as u64, Ordering::Relaxed);
            let replies = self.bounded(self.run(&invocations)).await?;
            (entries, reply_values(&replies)?)
        } else {
            self.bounded(self.batched(entries)).await?
        };
        if values.len() != targets.len() * ROW {
            return Err(StoreFailure::Reply);
        }
        let mut out = Vec::with_capacity(targets.len());
        for ((row, t), e) in values.chunks(ROW).zip(targets).zip(&entries) {
            let (checked, grant) = parse(row)?;
            if checked.denied.is_none() {
                if let (Some(id), true) = (lease, t.leases()) {
                    self.leases.hold(&e.keys.leases, id);
                }
                let (returns, slots) = self.slices.admitted(t, &checked, grant, lease, sent);
                for slot in &slots {
                    self.leases.hold(&e.keys.leases, slot);
                }
                for s in self.returned(returns) {
                    self.apply(s.adjustments, s.lease);
                }
            }
            out.push(checked);
        }
        Ok(out)
    }

    /// An acquire call carrying `entries`, in order.
    fn acquire_call<'a>(
        &self,
        entries: impl Iterator<Item = &'a Entry>,
    ) -> ScriptInvocation<'static> {
        let mut inv = ACQUIRE.prepare_invoke();
        inv.arg(self.lease_ms)
            .arg(MINUTE.bucket_ms)
            .arg(MINUTE.buckets)
            .arg(DAY.bucket_ms)
            .arg(DAY.buckets)
            .arg(self.slices.share());
        for e in entries {
            inv.key(&e.keys.minute)
                .key(&e.keys.day)
                .key(&e.keys.leases)
                .arg(e.lease.as_deref().unwrap_or(""));
            for v in e.args {
                inv.arg(v);
            }
        }
        inv
    }

    /// Hand a request's entities to the acquire batcher (started on first use) and wait for
    /// their rows.
    async fn batched(self: &Arc<Self>, entries: Vec<Entry>) -> Result<Rows, StoreFailure> {
        let tx = self
            .acquire_tx
            .get_or_init(|| {
                let (tx, rx) = mpsc::channel(ACQUIRE_QUEUE);
                tokio::spawn(acquire_loop(Arc::downgrade(self), rx));
                tx
            })
            .clone();
        let (reply, answer) = oneshot::channel();
        tx.send(AcquireJob { entries, reply })
            .await
            .map_err(|_| StoreFailure::Stopped)?;
        answer.await.map_err(|_| StoreFailure::Stopped)?
    }

    /// Send corrections in the background (never awaited by a client): queued for the
    /// settle batcher, started on first use.
    pub fn apply(self: &Arc<Self>, adjustments: Vec<Adjust>, lease: Option<Arc<str>>) {
        if let Some(id) = &lease {
            for a in adjustments
                .iter()
                .filter(|a| a.release && a.target.leases())
            {
                self.leases.release(&self.keys(&a.target).leases, id);
            }
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tx = self.settle_tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(SETTLE_QUEUE);
            rt.spawn(settle_loop(Arc::downgrade(self), rx));
            tx
        });
        if tx.try_send(Settle { adjustments, lease }).is_err() {
            metrics::counter!(tollgate_schemas::telemetry::RATELIMIT_BACKEND_ERRORS, "op" => "settle")
                .increment(1);
            tracing::debug!("rate-limit settlement dropped: settle queue full");
        }
    }

    /// Correct every request of `batch`, merged per entity and bucket ([`coalesce`]): one
    /// call on a single server, one per correction on a cluster.
    async fn apply_now(&self, batch: &[Settle]) -> Result<(), StoreFailure> {
        let rows: Vec<(Correction<'_>, Arc<LimitKeys>)> = coalesce(batch)
            .into_iter()
            .map(|c| {
                let keys = self.keys(c.target);
                (c, keys)
            })
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        let call = || {
            let mut inv = SETTLE.prepare_invoke();
            inv.arg(MINUTE.bucket_ms)
                .arg(MINUTE.buckets)
                .arg(DAY.bucket_ms)
                .arg(DAY.buckets);
            inv
        };
        let add = |inv: &mut ScriptInvocation<'static>,
                   (c, k): &(Correction<'_>, Arc<LimitKeys>)| {
            inv.key(&k.minute)
                .key(&k.day)
                .key(&k.leases)
                .arg(&c.minute)
                .arg(&c.day)
                .arg(c.requests)
                .arg(c.tokens)
                .arg(&c.leases);
        };
        self.run(&self.calls(&rows, call, add)).await.map(drop)
    }

    /// Extend every lease this process holds (one round trip).
    pub async fn renew(&self) -> Result<(), StoreFailure> {
        let held = self.leases.snapshot();
        if held.is_empty() {
            return Ok(());
        }
        let mut invocations = Vec::new();
        for (key, ids) in &held {
            for chunk in ids.chunks(RENEW_CHUNK) {
                let mut inv = RENEW.prepare_invoke();
                inv.key(key).arg(self.lease_ms);
                for id in chunk {
                    inv.arg(&**id);
                }
                invocations.push(inv);
            }
        }
        self.bounded(self.run(&invocations)).await.map(drop)
    }
}

/// The acquire batcher: takes every request waiting (up to [`ACQUIRE_BATCH`]), checks them in
/// one call, answers each, and repeats; ends when the limiter is dropped. Requests never wait
/// for a batch to fill: only for the call in flight.
async fn acquire_loop(limiter: Weak<RedisLimiter>, mut rx: mpsc::Receiver<AcquireJob>) {
    let mut jobs = Vec::with_capacity(ACQUIRE_BATCH);
    while rx.recv_many(&mut jobs, ACQUIRE_BATCH).await > 0 {
        let Some(me) = limiter.upgrade() else { return };
        let call = me.acquire_call(jobs.iter().flat_map(|j| &j.entries));
        me.acquire_calls.fetch_add(1, Ordering::Relaxed);
        let result = me
            .bounded(me.run(std::slice::from_ref(&call)))
            .await
            .and_then(|replies| reply_values(&replies));
        drop(me);
        let rows: usize = jobs.iter().map(|j| j.entries.len() * ROW).sum();
        match result {
            Ok(values) if values.len() == rows => {
                let mut rest = values.as_slice();
                for job in jobs.drain(..) {
                    let (mine, tail) = rest.split_at(job.entries.len() * ROW);
                    rest = tail;
                    let _ = job.reply.send(Ok((job.entries, mine.to_vec())));
                }
            }
            other => {
                let failure = Arc::new(other.err().unwrap_or(StoreFailure::Reply));
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(StoreFailure::Batch(failure.clone())));
                }
            }
        }
    }
}

/// The values of acquire replies (comma-separated integers), in order.
fn reply_values(replies: &[redis::Value]) -> Result<Vec<i64>, StoreFailure> {
    let mut values = Vec::new();
    for r in replies {
        let redis::Value::BulkString(text) = r else {
            return Err(StoreFailure::Reply);
        };
        for v in text.split(|&b| b == b',') {
            let v = std::str::from_utf8(v).map_err(|_| StoreFailure::Reply)?;
            values.push(v.parse().map_err(|_| StoreFailure::Reply)?);
        }
    }
    Ok(values)
}

/// The settle batcher: waits for a correction, keeps collecting for [`SETTLE_LINGER`] (up to
/// [`SETTLE_BATCH`] requests), sends them in one call, and repeats; ends when the limiter is
/// dropped.
async fn settle_loop(limiter: Weak<RedisLimiter>, mut rx: mpsc::Receiver<Settle>) {
    let mut batch = Vec::with_capacity(SETTLE_BATCH);
    while rx.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
        let until = tokio::time::Instant::now() + SETTLE_LINGER;
        while batch.len() < SETTLE_BATCH {
            let room = SETTLE_BATCH - batch.len();
            match tokio::time::timeout_at(until, rx.recv_many(&mut batch, room)).await {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        let Some(me) = limiter.upgrade() else { return };
        if let Err(e) = me.bounded(me.apply_now(&batch)).await {
            metrics::counter!(tollgate_schemas::telemetry::RATELIMIT_BACKEND_ERRORS, "op" => "settle")
                .increment(1);
            tracing::debug!(error = %e, requests = batch.len(), "rate-limit settlement failed");
        }
        batch.clear();
    }
}

fn parse(row: &[i64]) -> Result<(Checked, Grant), StoreFailure> {
    let [admitted, metric, retry_ms, minute_bucket, day_bucket, mr, dr, mt, dt, mreset, dreset, in_flight, gr, gt, gc, valid_ms] =
        <[i64; ROW]>::try_from(row).map_err(|_| StoreFailure::Reply)?;
    let denied = if admitted == 1 {
        None
    } else {
        Some(Metric::from_code(metric).ok_or(StoreFailure::Reply)?)
    };
    let grant = Grant {
        requests: gr,
        tokens: gt,
        slots: gc,
        valid_ms,
    };
    let checked = Checked {
        denied,
        retry_ms,
        usage: Usage {
            minute_requests: mr,
            day_requests: dr,
            minute_tokens: mt,
            day_tokens: dt,
            minute_reset_ms: mreset,
            day_reset_ms: dreset,
            in_flight,
        },
        minute_bucket,
        day_bucket,
        pooled: false,
    };
    Ok((checked, grant))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_replies_parse() {
        let (c, g) = parse(&[0, 5, 1000, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0, 0]).unwrap();
        assert_eq!(c.denied, Some(Metric::Concurrency));
        assert_eq!(c.usage.in_flight, 9);
        assert_eq!(c.day_bucket, 2);
        assert_eq!(g, Grant::default());
        let (c, g) = parse(&[1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]).unwrap();
        assert_eq!(c.denied, None);
        assert_eq!(
            (g.requests, g.tokens, g.slots, g.valid_ms),
            (10, 11, 12, 13)
        );
        assert!(parse(&[1, 0, 0]).is_err());
        assert!(parse(&[0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn acquire_replies_are_comma_separated_integers() {
        let reply = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(
            reply_values(&[reply("1,0,-3"), reply("42")]).unwrap(),
            vec![1, 0, -3, 42]
        );
        assert!(reply_values(&[reply("1,,2")]).is_err());
        assert!(reply_values(&[reply("1,x")]).is_err());
        assert!(reply_values(&[redis::Value::Int(1)]).is_err());
    }
}
