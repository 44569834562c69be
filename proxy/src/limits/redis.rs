//! Redis backend: one `EVALSHA` of `acquire.lua` checks all of a request's entities in one round
//! trip. On a single Redis the checks go through the acquire batcher ([`super::batcher`], on a
//! thread and connection of its own): a request that arrives while the previous call is in
//! flight waits for it and then goes with every other request that waited, in one call that
//! checks them one after the other (each window and lease set read and written once per call).
//! An idle proxy sends each request at once; a busy one spends a fraction of a script call per
//! request, without giving up exact shared counts.
//! Settlements and refunds go to a background batcher: what finishes within a few
//! milliseconds (and while the previous batch was in flight) is merged per entity and bucket
//! and corrected by one `settle.lua` call.
//! A busy entity's acquire calls also reserve a quota slice, and its requests are then admitted
//! from the slice in this process ([`super::slices`]); a slice running low is refilled by a
//! refill-only call that no request waits for.
//! Scripts take the time from Redis (`TIME`), so proxies' clocks do not matter.
//!
//! On a Redis Cluster each entity's keys share a hash tag (one slot), but a request's entities
//! live in different slots, so there each entity (and each correction) is its own concurrent
//! single-slot call (missing scripts are then loaded on every primary by `SCRIPT LOAD`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use redis::{ErrorKind, Script, ScriptInvocation, ServerErrorKind};
use tollgate_schemas::redis_keys::{self, LimitEntity, LimitKeys};

use crate::redis_conn::{ConnSettings, RedisConn, RedisTarget};

use super::batcher::{self, AcquireJob, Reply, Rows, ACQUIRE_QUEUE};
use super::decision::{Checked, Metric, Target};
use super::headers::Usage;
use super::lease::Leases;
use super::local::{now_ms, Adjust};
use super::settle::{coalesce, Correction, Settle};
use super::slices::{Grant, Returns, Slices, Want};
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
/// Corrections waiting for the batcher; beyond this they are dropped and counted as failed
/// settlements (`op="settle"`), like a settle call that failed.
const SETTLE_QUEUE: usize = 16_384;
/// Values per entity in an acquire reply.
pub(super) const ROW: usize = 16;
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
pub(super) struct Entry {
    keys: Arc<LimitKeys>,
    lease: Option<Arc<str>>,
    /// rpm, rpd, tpm, tpd, concurrency (0 = no limit), reserved tokens, wanted slice
    /// requests, tokens and slots, and 1 to check and count a request (0: refill only).
    args: [i64; 10],
}

/// Formatted Redis keys by entity.
type KeyCache = HashMap<(LimitEntity, Arc<str>), Arc<LimitKeys>>;

/// The shared-counter backend.
pub struct RedisLimiter {
    conn: RedisConn,
    /// The acquire batcher's own connection (used only on its thread).
    acquire_conn: RedisConn,
    prefix: Arc<str>,
    lease_ms: i64,
    timeout: Duration,
    down_until: AtomicI64,
    down: AtomicBool,
    leases: Leases,
    settle_tx: OnceLock<mpsc::Sender<Settle>>,
    acquire_tx: OnceLock<mpsc::Sender<AcquireJob>>,
    acquire_calls: AtomicU64,
    checked_requests: AtomicU64,
    /// Refill-only calls sent and not yet answered.
    refills: AtomicUsize,
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
        let settings = ConnSettings {
            connect_timeout: timeout.max(Duration::from_millis(200)),
            response_timeout: timeout,
        };
        let conn = target.connect(settings)?;
        let acquire_conn = target.connect(settings)?;
        Ok(Self {
            conn,
            acquire_conn,
            prefix: prefix.into(),
            lease_ms,
            timeout,
            down_until: AtomicI64::new(0),
            down: AtomicBool::new(false),
            leases: Leases::default(),
            settle_tx: OnceLock::new(),
            acquire_tx: OnceLock::new(),
            acquire_calls: AtomicU64::new(0),
            checked_requests: AtomicU64::new(0),
            refills: AtomicUsize::new(0),
            key_cache: RwLock::default(),
            slices,
        })
    }

    /// Quota slices of this proxy.
    pub fn slices(&self) -> &Slices {
        &self.slices
    }

    /// Admit a request from its entities' quota slices, without a round trip, if they all
    /// have room; slices left running low are refilled in the background.
    pub fn from_slices(self: &Arc<Self>, targets: &[Target]) -> Option<Vec<Checked>> {
        let taken = self.slices.take(targets, Instant::now())?;
        if !taken.refill.is_empty() {
            self.refill(taken.refill);
        }
        Some(taken.checked)
    }

    /// Ask for slices without a request (no caller waits): through the acquire batcher on a
    /// single Redis (skipped if its queue is full: the entity asks again within
    /// [`super::slices`]' refill wait), one call per entity on a cluster.
    fn refill(self: &Arc<Self>, wants: Vec<(Target, Want)>) {
        let sent = Instant::now();
        let lease: Option<Arc<str>> = wants
            .iter()
            .any(|(_, w)| w.slots > 0)
            .then(|| uuid::Uuid::now_v7().simple().to_string().into());
        let entries: Vec<Entry> = wants
            .iter()
            .map(|(t, w)| self.entry(t, lease.as_ref(), *w, false))
            .collect();
        let targets: Vec<Target> = wants.into_iter().map(|(t, _)| t).collect();
        if self.conn.is_cluster() {
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                return;
            };
            self.refills.fetch_add(1, Ordering::AcqRel);
            let me = self.clone();
            rt.spawn(async move {
                match me.call_each(&entries).await {
                    Ok(v) => me.refilled(&targets, &entries, &v, lease.as_ref(), sent),
                    Err(e) => me.refill_failed(&e),
                }
                me.refill_done();
            });
            return;
        }
        let job = AcquireJob {
            entries,
            reply: Reply::Refill {
                targets,
                lease,
                sent,
            },
        };
        self.refills.fetch_add(1, Ordering::AcqRel);
        if self.acquire_tx().try_send(job).is_err() {
            self.refill_done();
            tracing::debug!("quota slice refill skipped: acquire queue full");
        }
    }

    /// A refill-only call was answered (or failed, or was never sent).
    pub(super) fn refill_done(&self) {
        self.refills.fetch_sub(1, Ordering::AcqRel);
    }

    /// Record what a refill-only call granted (`values`: ROW per entry).
    pub(super) fn refilled(
        self: &Arc<Self>,
        targets: &[Target],
        entries: &[Entry],
        values: &[i64],
        lease: Option<&Arc<str>>,
        sent: Instant,
    ) {
        if values.len() != entries.len() * ROW {
            self.refill_failed(&StoreFailure::Reply);
            return;
        }
        for ((row, t), e) in values.chunks(ROW).zip(targets).zip(entries) {
            match parse(row) {
                Ok((checked, grant)) => {
                    self.granted(t, e, &checked, grant, lease, sent, false);
                }
                Err(err) => self.refill_failed(&err),
            }
        }
    }

    /// A refill-only call failed: counted; the entity asks again after the refill wait.
    pub(super) fn refill_failed(&self, e: &StoreFailure) {
        metrics::counter!(tollgate_schemas::telemetry::RATELIMIT_BACKEND_ERRORS, "op" => "acquire")
            .increment(1);
        tracing::debug!(error = %e, "quota slice refill failed");
    }

    /// Record an admitted entity's answer (`request`: a request was counted with it) and
    /// what was granted beyond it: leases to renew, the slice, and what an expired slice
    /// gives back.
    #[allow(clippy::too_many_arguments)]
    fn granted(
        self: &Arc<Self>,
        t: &Target,
        e: &Entry,
        checked: &Checked,
        grant: Grant,
        lease: Option<&Arc<str>>,
        sent: Instant,
        request: bool,
    ) {
        if let (Some(id), true, true) = (lease, request, t.leases()) {
            self.leases.hold(&e.keys.leases, id);
        }
        let (returns, slots) = self
            .slices
            .admitted(t, checked, grant, lease, sent, request);
        for slot in &slots {
            self.leases.hold(&e.keys.leases, slot);
        }
        for s in self.returned(returns) {
            self.apply(s.adjustments, s.lease);
        }
    }

    /// Give back expired slices and idle slots (`all`: everything not in use; awaited, at
    /// shutdown, after no more slices are handed out and the refills in flight were answered,
    /// for at most the store timeout).
    pub async fn sweep(self: &Arc<Self>, all: bool) {
        if all {
            self.slices.close();
            let until = Instant::now() + self.timeout;
            while self.refills.load(Ordering::Acquire) > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
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

    /// Requests checked in Redis so far (the others were admitted from slices).
    pub fn checked_requests(&self) -> u64 {
        self.checked_requests.load(Ordering::Relaxed)
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

    /// Run script calls on `conn`: one pipeline on a single server (loading the scripts once
    /// if Redis lost them), concurrent single-slot calls on a cluster. One reply per
    /// invocation.
    async fn run(
        &self,
        conn: &RedisConn,
        invocations: &[ScriptInvocation<'_>],
    ) -> Result<Vec<redis::Value>, StoreFailure> {
        let mut conn = conn.clone();
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
        self.checked_requests.fetch_add(1, Ordering::Relaxed);
        let entries: Vec<Entry> = targets
            .iter()
            .map(|t| self.entry(t, lease, self.slices.want(t, sent), true))
            .collect();
        let (entries, values) = if self.conn.is_cluster() {
            let values = self.call_each(&entries).await?;
            (entries, values)
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
                self.granted(t, e, &checked, grant, lease, sent, true);
            }
            out.push(checked);
        }
        Ok(out)
    }

    /// `t`'s part of an acquire call: its limits, `want` beyond the request, and whether a
    /// request is checked and counted (`false`: refill only).
    fn entry(&self, t: &Target, lease: Option<&Arc<str>>, want: Want, request: bool) -> Entry {
        let l = &t.limit;
        let v = |x: Option<u64>| i64::try_from(x.unwrap_or(0)).unwrap_or(i64::MAX);
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
                i64::from(request),
            ],
        }
    }

    /// One acquire call per entry, concurrently (a cluster: each entity's keys share a slot,
    /// different entities usually do not): the reply values, in order.
    async fn call_each(&self, entries: &[Entry]) -> Result<Vec<i64>, StoreFailure> {
        let invocations: Vec<_> = entries
            .iter()
            .map(|e| self.acquire_call(std::iter::once(e)))
            .collect();
        self.acquire_calls
            .fetch_add(invocations.len() as u64, Ordering::Relaxed);
        self.bounded(self.run(&self.conn, &invocations))
            .await
            .and_then(|replies| reply_values(&replies))
    }

    /// One acquire call carrying `entries` on the batcher's connection: the reply values.
    pub(super) async fn call_batch<'a>(
        &self,
        entries: impl Iterator<Item = &'a Entry>,
    ) -> Result<Vec<i64>, StoreFailure> {
        let call = self.acquire_call(entries);
        self.acquire_calls.fetch_add(1, Ordering::Relaxed);
        self.bounded(self.run(&self.acquire_conn, std::slice::from_ref(&call)))
            .await
            .and_then(|replies| reply_values(&replies))
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

    /// The acquire batcher's queue; the batcher is started on first use, on a thread of its
    /// own ([`batcher::spawn_acquire_loop`]).
    fn acquire_tx(self: &Arc<Self>) -> &mpsc::Sender<AcquireJob> {
        self.acquire_tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(ACQUIRE_QUEUE);
            if let Err(e) = batcher::spawn_acquire_loop(Arc::downgrade(self), rx) {
                tracing::error!(error = %e, "rate-limit batcher thread could not start");
            }
            tx
        })
    }

    /// Hand a request's entities to the acquire batcher and wait for their rows.
    async fn batched(self: &Arc<Self>, entries: Vec<Entry>) -> Result<Rows, StoreFailure> {
        let tx = self.acquire_tx().clone();
        let (reply, answer) = oneshot::channel();
        tx.send(AcquireJob {
            entries,
            reply: Reply::Request(reply),
        })
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
        let Some(tx) = self.settle_tx() else {
            return;
        };
        if tx.try_send(Settle { adjustments, lease }).is_err() {
            metrics::counter!(tollgate_schemas::telemetry::RATELIMIT_BACKEND_ERRORS, "op" => "settle")
                .increment(1);
            tracing::debug!("rate-limit settlement dropped: settle queue full");
        }
    }

    /// The settle batcher's queue, started on first use on the current runtime (`None`
    /// outside one). [`super::Limiter::start`] starts it on the proxy's runtime.
    pub(super) fn settle_tx(self: &Arc<Self>) -> Option<&mpsc::Sender<Settle>> {
        if let Some(tx) = self.settle_tx.get() {
            return Some(tx);
        }
        let rt = tokio::runtime::Handle::try_current().ok()?;
        Some(self.settle_tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(SETTLE_QUEUE);
            rt.spawn(batcher::settle_loop(Arc::downgrade(self), rx));
            tx
        }))
    }

    /// Send one settle batch; a failure is counted (`op="settle"`).
    pub(super) async fn settle_batch(&self, batch: &[Settle]) {
        if let Err(e) = self.bounded(self.apply_now(batch)).await {
            metrics::counter!(tollgate_schemas::telemetry::RATELIMIT_BACKEND_ERRORS, "op" => "settle")
                .increment(1);
            tracing::debug!(error = %e, requests = batch.len(), "rate-limit settlement failed");
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
        self.run(&self.conn, &self.calls(&rows, call, add))
            .await
            .map(drop)
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
        self.bounded(self.run(&self.conn, &invocations))
            .await
            .map(drop)
    }
}

/// The values of acquire replies (comma-separated integers), in order.
pub(super) fn reply_values(replies: &[redis::Value]) -> Result<Vec<i64>, StoreFailure> {
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
