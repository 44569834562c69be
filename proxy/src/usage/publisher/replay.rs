//! Drains the spool to Kafka in order once the broker takes events again.
//!
//! While the broker is down the replayer probes with the oldest spooled event alone and backs
//! off between failed probes. When a probe is acknowledged it sends batches of up to
//! [`REPLAY_BATCH_EVENTS`], waits for every delivery report, and only then consumes the batch
//! from the spool. A batch nothing of which was delivered stays in the spool (probe again later);
//! from a partly delivered batch the failed events are re-appended at the spool's tail. Before
//! probing, a producer whose deliveries failed is replaced (see `slot`).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::BaseRecord;
use tokio::sync::watch;

use super::shared::{count_drop, reason, Origin, ReplayBatch, Shared};
use super::slot::ProducerSlot;
use crate::usage::spool::{SpoolError, REPLAY_BATCH_EVENTS};

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Sleep `d` unless asked to stop first; `false` when stopping.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => !*stop.borrow(),
        r = stop.changed() => r.is_ok() && !*stop.borrow(),
    }
}

/// Run until `stop` turns true (or its sender is gone).
pub(super) async fn run(
    shared: Arc<Shared>,
    slot: Arc<ProducerSlot>,
    topic: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut probe = true;
    let mut backoff = MIN_BACKOFF;
    while !*stop.borrow() {
        if let Some(old) = slot.replace_if_failed() {
            // Dropping purges (its events come back and are spooled) and joins its thread.
            let _ = tokio::task::spawn_blocking(move || drop(old)).await;
            continue;
        }
        let size = if probe { 1 } else { REPLAY_BATCH_EVENTS };
        let read = shared.with_spool(|s| {
            if s.pending_events() == 0 {
                Ok(None)
            } else {
                s.read_batch(size).map(Some)
            }
        });
        let batch = match read {
            None => return,
            Some(Ok(Some(b))) if !b.events.is_empty() => b,
            Some(Ok(_)) => {
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_CHECK) => {}
                    r = stop.changed() => if r.is_err() { return },
                }
                continue;
            }
            Some(Err(e @ SpoolError::Corrupt { .. })) => {
                tracing::error!(error = %e, "usage spool: skipping the rest of a corrupt segment");
                match shared.with_spool(|s| s.skip_corrupt_segment()) {
                    Some(Ok(lost)) => count_drop(&shared.stats, reason::SPOOL_IO, lost),
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "usage spool: cannot skip corrupt segment");
                        if !pause(MAX_BACKOFF, &mut stop).await {
                            return;
                        }
                    }
                    None => return,
                }
                continue;
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "usage spool: cannot read back events");
                if !pause(MAX_BACKOFF, &mut stop).await {
                    return;
                }
                continue;
            }
        };

        let n = batch.events.len();
        let tracker = Arc::new(ReplayBatch::new(n));
        for (index, ev) in batch.events.iter().enumerate() {
            let origin = Box::new(Origin::Replay {
                batch: tracker.clone(),
                index,
            });
            let record = BaseRecord::with_opaque_to(&topic, origin)
                .key(&ev.key[..])
                .payload(&ev.value[..]);
            if let Err((e, _)) = slot.send(record) {
                tracing::debug!(error = %e, "spooled event not accepted by the producer");
                tracker.complete(index, false);
            }
        }
        // Every report arrives within message.timeout.ms (or at the shutdown purge).
        tracker.wait().await;
        let failed = tracker.failed();
        if failed.is_empty() {
            if let Some(Err(e)) = shared.with_spool(|s| s.ack(&batch)) {
                tracing::error!(error = %e, "usage spool: consumed segment not removed");
            }
            shared.replayed(n as u64);
            probe = false;
            backoff = MIN_BACKOFF;
            if !shared.has_backlog() {
                shared.note_recovered();
            }
        } else if failed.len() == n {
            shared.note_outage(&"replay probe not acknowledged");
            probe = true;
            if !pause(backoff, &mut stop).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        } else {
            shared.respool_and_ack(&batch, &failed);
            shared.replayed((n - failed.len()) as u64);
            probe = true;
        }
    }
}
