//! The background loops of the Redis backend on a single Redis.
//!
//! - [`acquire_loop`]: checks every request that waited while the previous call was in flight in
//!   one `acquire.lua` call, and carries refill-only calls for quota slices running low. It runs
//!   on a thread of its own (a current-thread runtime) with its own connection: on a busy proxy
//!   every request task and connection task is queued on the main runtime, and a pre-check
//!   that had to wait behind them at each of its four hand-overs (batcher, connection, reply,
//!   batcher) took milliseconds, tens under overload, which kept requests in flight longer and
//!   sent more of them to Redis. Only the caller's own wake-up is left on the main runtime.
//! - [`settle_loop`]: merges corrections arriving within a few milliseconds into one
//!   `settle.lua` call.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::decision::Target;
use super::redis::{Entry, RedisLimiter, StoreFailure, ROW};
use super::settle::Settle;

/// Most requests checked by one acquire call (at most two entities each).
const ACQUIRE_BATCH: usize = 64;
/// Requests waiting for the acquire batcher; beyond this, callers wait for room (bounded by
/// the store timeout like the call itself), and refills are skipped.
pub(super) const ACQUIRE_QUEUE: usize = 4_096;
/// Most finished requests corrected by one settle call.
const SETTLE_BATCH: usize = 128;
/// How long the batcher keeps collecting after the first correction of a batch: corrections
/// of one entity and bucket merge into one, so a busy proxy sends few, larger settle calls.
/// Tokens and leases are corrected at most this much later.
const SETTLE_LINGER: Duration = Duration::from_millis(5);

/// A request's entities with their reply rows (ROW values each).
pub(super) type Rows = (Vec<Entry>, Vec<i64>);

/// What to do with a job's rows.
pub(super) enum Reply {
    /// A request waits for them.
    Request(oneshot::Sender<Result<Rows, StoreFailure>>),
    /// A refill-only call: the batcher records the grants itself.
    Refill {
        /// One per entry.
        targets: Vec<Target>,
        /// Names the granted concurrency slots.
        lease: Option<Arc<str>>,
        /// When the refill was asked for (slices are valid from then).
        sent: Instant,
    },
}

/// Entities waiting for the acquire batcher.
pub(super) struct AcquireJob {
    pub(super) entries: Vec<Entry>,
    pub(super) reply: Reply,
}

/// Start the acquire batcher on a thread of its own. The loop (and the thread) ends when the
/// limiter is dropped. If it cannot start, pre-checks fail as when Redis is unreachable (the
/// limiter's `failure_mode` decides).
pub(super) fn spawn_acquire_loop(
    limiter: Weak<RedisLimiter>,
    rx: mpsc::Receiver<AcquireJob>,
) -> Result<(), std::io::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("tollgate-limits".into())
        .spawn(move || rt.block_on(acquire_loop(limiter, rx)))
        .map(drop)
}

/// The acquire batcher: takes every job waiting (up to [`ACQUIRE_BATCH`]), checks them in one
/// call, answers each, and repeats; ends when the limiter is dropped. Requests never wait for a
/// batch to fill: only for the call in flight.
pub(super) async fn acquire_loop(limiter: Weak<RedisLimiter>, mut rx: mpsc::Receiver<AcquireJob>) {
    let mut jobs = Vec::with_capacity(ACQUIRE_BATCH);
    while rx.recv_many(&mut jobs, ACQUIRE_BATCH).await > 0 {
        let Some(me) = limiter.upgrade() else { return };
        let result = me.call_batch(jobs.iter().flat_map(|j| &j.entries)).await;
        let rows: usize = jobs.iter().map(|j| j.entries.len() * ROW).sum();
        match result {
            Ok(values) if values.len() == rows => {
                let mut rest = values.as_slice();
                for job in jobs.drain(..) {
                    let (mine, tail) = rest.split_at(job.entries.len() * ROW);
                    rest = tail;
                    match job.reply {
                        Reply::Request(tx) => {
                            let _ = tx.send(Ok((job.entries, mine.to_vec())));
                        }
                        Reply::Refill {
                            targets,
                            lease,
                            sent,
                        } => {
                            me.refilled(&targets, &job.entries, mine, lease.as_ref(), sent);
                            me.refill_done();
                        }
                    }
                }
            }
            other => {
                let failure = Arc::new(other.err().unwrap_or(StoreFailure::Reply));
                for job in jobs.drain(..) {
                    match job.reply {
                        Reply::Request(tx) => {
                            let _ = tx.send(Err(StoreFailure::Batch(failure.clone())));
                        }
                        Reply::Refill { .. } => {
                            me.refill_failed(&failure);
                            me.refill_done();
                        }
                    }
                }
            }
        }
    }
}

/// The settle batcher: waits for a correction, keeps collecting for [`SETTLE_LINGER`] (up to
/// [`SETTLE_BATCH`] requests), sends them in one call, and repeats; ends when the limiter is
/// dropped.
pub(super) async fn settle_loop(limiter: Weak<RedisLimiter>, mut rx: mpsc::Receiver<Settle>) {
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
        me.settle_batch(&batch).await;
        batch.clear();
    }
}
