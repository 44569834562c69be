//! Per-partition buffers: what was read from Kafka and is not stored yet, when each buffer is
//! due (by size or age), and the backoff of a partition whose write failed.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::sink::{DeadLetterRow, UsageRow, MAX_PAYLOAD_BYTES};

/// Why a message became a dead letter (bounded: these are label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// The message had no payload.
    EmptyPayload,
    /// Not an Avro single-object message.
    NotAvro,
    /// Avro single-object message of a schema this build does not know.
    UnknownSchema,
    /// Known schema, but the datum does not decode.
    MalformedDatum,
    /// A usage event ClickHouse refused for its content.
    ClickHouseRejected,
}

impl DeadReason {
    /// Every reason, for pre-registering metric series.
    pub const ALL: [DeadReason; 5] = [
        Self::EmptyPayload,
        Self::NotAvro,
        Self::UnknownSchema,
        Self::MalformedDatum,
        Self::ClickHouseRejected,
    ];

    /// The stored `reason` and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EmptyPayload => "empty_payload",
            Self::NotAvro => "not_avro",
            Self::UnknownSchema => "unknown_schema",
            Self::MalformedDatum => "malformed_datum",
            Self::ClickHouseRejected => "clickhouse_rejected",
        }
    }

    /// Reason for a decoding failure.
    pub fn of(error: &tollgate_schemas::DecodeError) -> Self {
        use tollgate_schemas::DecodeError as D;
        match error {
            D::NotSingleObject => Self::NotAvro,
            D::UnknownSchema(_) => Self::UnknownSchema,
            D::Datum(_) => Self::MalformedDatum,
        }
    }
}

/// What a message turned into.
#[derive(Debug, Clone)]
pub enum Body {
    /// A usage event, as its row.
    Event(Box<UsageRow>),
    /// Not a usage event: dead-letter it.
    Poison {
        /// Why.
        reason: DeadReason,
        /// The decoder's message.
        error: String,
    },
}

/// One message read from Kafka.
#[derive(Debug, Clone)]
pub struct Msg {
    /// Its offset.
    pub offset: i64,
    /// Kafka timestamp (ms), 0 when absent.
    pub kafka_ts_ms: i64,
    /// Raw bytes (kept for the dead-letter table).
    pub payload: Vec<u8>,
    /// Decoded content.
    pub body: Body,
}

impl Msg {
    /// Decode a Kafka message.
    pub fn decode(
        topic: &str,
        partition: i32,
        offset: i64,
        kafka_ts_ms: i64,
        payload: Option<&[u8]>,
    ) -> Self {
        let body = match payload {
            None | Some([]) => Body::Poison {
                reason: DeadReason::EmptyPayload,
                error: "message has no payload".into(),
            },
            Some(bytes) => match tollgate_schemas::decode(bytes) {
                Ok(ev) => Body::Event(Box::new(UsageRow::new(ev, topic, partition, offset))),
                Err(e) => Body::Poison {
                    reason: DeadReason::of(&e),
                    error: e.to_string(),
                },
            },
        };
        Self {
            offset,
            kafka_ts_ms,
            payload: payload.map(<[u8]>::to_vec).unwrap_or_default(),
            body,
        }
    }

    /// The dead-letter row of this message.
    pub fn dead_letter(
        &self,
        topic: &str,
        partition: i32,
        reason: DeadReason,
        error: &str,
    ) -> DeadLetterRow {
        let kept = &self.payload[..self.payload.len().min(MAX_PAYLOAD_BYTES)];
        let (event_id, proxy_id, proxy_seq) = match &self.body {
            Body::Event(row) => (
                row.event_id().to_string(),
                row.proxy_id().to_string(),
                row.proxy_seq(),
            ),
            Body::Poison { .. } => (String::new(), String::new(), 0),
        };
        DeadLetterRow {
            kafka_topic: topic.to_string(),
            kafka_partition: partition,
            kafka_offset: self.offset,
            kafka_ts_ms: self.kafka_ts_ms,
            reason: reason.as_str().to_string(),
            error: error.to_string(),
            payload_hex: hex::encode(kept),
            payload_bytes: u32::try_from(self.payload.len()).unwrap_or(u32::MAX),
            event_id,
            proxy_id,
            proxy_seq,
        }
    }
}

/// The unstored messages of one partition, in offset order.
#[derive(Debug, Default)]
pub struct PartitionBuffer {
    /// Messages not stored yet.
    pub msgs: Vec<Msg>,
    oldest: Option<Instant>,
    last_seen: Option<i64>,
    /// Every offset at or above this one is known not to be stored; offsets below it may be
    /// (they are checked one by one before writing). `None` until ClickHouse was asked in this
    /// assignment, and again after any failed write.
    pub next_unstored: Option<i64>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Fetching of the partition is paused (its writes are failing).
    pub paused: bool,
}

impl PartitionBuffer {
    /// Add a message; returns false (and ignores it) when its offset was seen already, as
    /// happens when the consumer re-fetches from the committed offset after a rebalance.
    pub fn push(&mut self, msg: Msg, now: Instant) -> bool {
        if self.last_seen.is_some_and(|last| msg.offset <= last) {
            return false;
        }
        self.last_seen = Some(msg.offset);
        self.oldest.get_or_insert(now);
        self.msgs.push(msg);
        true
    }

    /// Due for a write: full or old enough, and not backing off.
    pub fn is_due(&self, now: Instant, max_rows: usize, max_wait: Duration) -> bool {
        if self.msgs.is_empty() || self.retry_at.is_some_and(|t| now < t) {
            return false;
        }
        self.msgs.len() >= max_rows || self.oldest.is_some_and(|t| now >= t + max_wait)
    }

    /// Holds messages, is not backing off and is fetched (not paused).
    pub fn ready(&self, now: Instant) -> bool {
        !self.msgs.is_empty() && !self.paused && self.retry_at.is_none_or(|t| now >= t)
    }

    /// How many of the first (at most `max_rows`) messages can be written without any check:
    /// ClickHouse is known to hold none of them (`next_unstored`), all are usage events (no
    /// dead letters), and all were written after `fresh_after_ms` (none can be a re-send, see
    /// [`crate::write::RESEND_MIN_AGE_MS`]). None when the first message fails that.
    pub fn unchecked_prefix(&self, max_rows: usize, fresh_after_ms: i64) -> Option<usize> {
        let floor = self.next_unstored?;
        let first = self.msgs.first()?;
        if first.offset < floor {
            return None;
        }
        let n = self
            .msgs
            .iter()
            .take(max_rows)
            .take_while(|m| matches!(&m.body, Body::Event(r) if r.ts_ms() >= fresh_after_ms))
            .count();
        (n > 0).then_some(n)
    }

    /// When this buffer becomes due by time (None when empty).
    pub fn deadline(&self, max_wait: Duration) -> Option<Instant> {
        let age = self.oldest.map(|t| t + max_wait)?;
        Some(self.retry_at.map_or(age, |r| r.max(age)))
    }

    /// The first `n` messages were stored (or skipped as stored): drop them.
    pub fn stored(&mut self, n: usize) {
        self.msgs.drain(..n.min(self.msgs.len()));
        if self.msgs.is_empty() {
            self.oldest = None;
        }
    }

    /// A write succeeded: no more backoff.
    pub fn succeeded(&mut self) {
        self.retry_at = None;
        self.backoff = Duration::ZERO;
    }

    /// A write failed: back off exponentially and re-check stored offsets before the next try.
    /// Returns the delay.
    pub fn failed(&mut self, now: Instant, initial: Duration, max: Duration) -> Duration {
        self.backoff = if self.backoff.is_zero() {
            initial
        } else {
            (self.backoff * 2).min(max)
        };
        self.retry_at = Some(now + self.backoff);
        self.next_unstored = None;
        self.backoff
    }
}

/// Buffers of every assigned partition.
#[derive(Debug, Default)]
pub struct Buffers {
    /// By partition.
    pub parts: HashMap<i32, PartitionBuffer>,
}

impl Buffers {
    /// Keep only `assigned` partitions; the rest belongs to other members now (they re-read it
    /// from the committed offset). Retained buffers forget what they knew about stored offsets
    /// (another member may have stored some meanwhile). Returns the number of messages dropped.
    pub fn retain_assigned(&mut self, assigned: &[i32]) -> usize {
        let mut dropped = 0;
        self.parts.retain(|p, b| {
            let keep = assigned.contains(p);
            if !keep {
                dropped += b.msgs.len();
            }
            b.next_unstored = None;
            b.paused = false;
            keep
        });
        dropped
    }

    /// Partitions due for a write.
    pub fn due(&self, now: Instant, max_rows: usize, max_wait: Duration) -> Vec<i32> {
        let mut due: Vec<i32> = self
            .parts
            .iter()
            .filter(|(_, b)| b.is_due(now, max_rows, max_wait))
            .map(|(p, _)| *p)
            .collect();
        due.sort_unstable();
        due
    }

    /// Partitions whose next messages can share one INSERT (see
    /// [`crate::write::write_together`]), with how many messages each: those of `due` first,
    /// then every other [`ready`](PartitionBuffer::ready) buffer, as long as the total stays
    /// within `max_rows`. Empty unless at least two partitions, one of them due, qualify.
    pub fn joinable(
        &self,
        now: Instant,
        due: &[i32],
        max_rows: usize,
        fresh_after_ms: i64,
    ) -> Vec<(i32, usize)> {
        let mut others: Vec<i32> = self
            .parts
            .keys()
            .filter(|p| !due.contains(p))
            .copied()
            .collect();
        others.sort_unstable();
        let mut group = Vec::new();
        let mut total = 0;
        let mut has_due = false;
        for p in due.iter().chain(others.iter()) {
            let Some(buf) = self.parts.get(p).filter(|b| b.ready(now)) else {
                continue;
            };
            let Some(n) = buf.unchecked_prefix(max_rows, fresh_after_ms) else {
                continue;
            };
            // Take what fits: a partial chunk is fine (the rest waits for the next write).
            let n = n.min(max_rows - total);
            if n == 0 {
                break;
            }
            has_due |= due.contains(p);
            total += n;
            group.push((*p, n));
        }
        if group.len() < 2 || !has_due {
            group.clear();
        }
        group
    }

    /// The earliest time any buffer becomes due.
    pub fn next_deadline(&self, max_wait: Duration) -> Option<Instant> {
        self.parts
            .values()
            .filter_map(|b| b.deadline(max_wait))
            .min()
    }

    /// Messages buffered over all partitions.
    pub fn len(&self) -> usize {
        self.parts.values().map(|b| b.msgs.len()).sum()
    }

    /// Nothing buffered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poison(offset: i64) -> Msg {
        Msg::decode("t", 0, offset, 0, Some(b"garbage"))
    }

    #[test]
    fn decodes_and_classifies_poison() {
        let m = poison(3);
        assert!(matches!(
            m.body,
            Body::Poison {
                reason: DeadReason::NotAvro,
                ..
            }
        ));
        let dl = m.dead_letter("t", 0, DeadReason::NotAvro, "x");
        assert_eq!(dl.payload_hex, "67617262616765");
        assert_eq!((dl.kafka_offset, dl.payload_bytes), (3, 7));
        let empty = Msg::decode("t", 0, 4, 0, None);
        assert!(matches!(
            empty.body,
            Body::Poison {
                reason: DeadReason::EmptyPayload,
                ..
            }
        ));
        let unknown = Msg::decode(
            "t",
            0,
            5,
            0,
            Some(b"\xC3\x01\x01\x02\x03\x04\x05\x06\x07\x08\x00"),
        );
        assert!(matches!(
            unknown.body,
            Body::Poison {
                reason: DeadReason::UnknownSchema,
                ..
            }
        ));
    }

    #[test]
    fn refetched_offsets_are_ignored() {
        let now = Instant::now();
        let mut b = PartitionBuffer::default();
        assert!(b.push(poison(1), now));
        assert!(b.push(poison(2), now));
        assert!(!b.push(poison(1), now));
        assert!(!b.push(poison(2), now));
        assert!(b.push(poison(3), now));
        assert_eq!(b.msgs.len(), 3);
    }

    #[test]
    fn due_by_size_or_age_and_backoff_delays() {
        let now = Instant::now();
        let wait = Duration::from_millis(100);
        let mut b = PartitionBuffer::default();
        assert!(!b.is_due(now, 2, wait));
        b.push(poison(1), now);
        assert!(!b.is_due(now, 2, wait));
        assert!(b.is_due(now + wait, 2, wait));
        b.push(poison(2), now);
        assert!(b.is_due(now, 2, wait));
        let delay = b.failed(now, Duration::from_millis(50), Duration::from_millis(120));
        assert_eq!(delay, Duration::from_millis(50));
        assert!(!b.is_due(now, 2, wait));
        assert!(b.is_due(now + Duration::from_millis(50), 2, wait));
        assert_eq!(
            b.failed(now, Duration::from_millis(50), Duration::from_millis(120)),
            Duration::from_millis(100)
        );
        assert_eq!(
            b.failed(now, Duration::from_millis(50), Duration::from_millis(120)),
            Duration::from_millis(120)
        );
        assert_eq!(b.next_unstored, None);
        b.stored(1);
        assert!(!b.is_due(now, 1, wait), "still backing off");
        b.succeeded();
        assert_eq!(b.msgs.len(), 1);
        assert!(b.is_due(now, 1, wait));
    }

    #[test]
    fn revoked_partitions_are_dropped_and_retained_reverified() {
        let now = Instant::now();
        let mut bufs = Buffers::default();
        for p in 0..3 {
            let b = bufs.parts.entry(p).or_default();
            b.push(poison(1), now);
            b.next_unstored = Some(2);
        }
        assert_eq!(bufs.retain_assigned(&[0, 2]), 1);
        assert_eq!(bufs.len(), 2);
        assert!(bufs.parts.values().all(|b| b.next_unstored.is_none()));
        assert_eq!(
            bufs.next_deadline(Duration::from_millis(10)),
            Some(now + Duration::from_millis(10))
        );
        assert_eq!(
            bufs.due(
                now + Duration::from_millis(10),
                5,
                Duration::from_millis(10)
            ),
            vec![0, 2]
        );
    }

    fn event(offset: i64, ts_ms: i64) -> Msg {
        let ev = tollgate_schemas::UsageEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            ts_ms,
            ..Default::default()
        };
        let bytes = tollgate_schemas::encode(&ev).unwrap();
        Msg::decode("t", 0, offset, 0, Some(&bytes))
    }

    /// Partition `p` with `n` events from offset 10 (written at `ts_ms`), stored up to 10.
    fn fill(bufs: &mut Buffers, p: i32, n: i64, ts_ms: i64, now: Instant) {
        let b = bufs.parts.entry(p).or_default();
        for o in 10..10 + n {
            b.push(event(o, ts_ms), now);
        }
        b.next_unstored = Some(10);
    }

    #[test]
    fn unchecked_prefix_needs_known_floor_events_and_fresh_times() {
        let now = Instant::now();
        let mut b = PartitionBuffer::default();
        for o in 5..9 {
            b.push(event(o, 1_000), now);
        }
        b.push(poison(9), now);
        b.push(event(10, 1_000), now);
        assert_eq!(b.unchecked_prefix(100, 0), None, "floor unknown");
        b.next_unstored = Some(6);
        assert_eq!(b.unchecked_prefix(100, 0), None, "offset 5 may be stored");
        b.next_unstored = Some(5);
        assert_eq!(
            b.unchecked_prefix(100, 0),
            Some(4),
            "stops at the poison message"
        );
        assert_eq!(b.unchecked_prefix(3, 0), Some(3), "at most max_rows");
        assert_eq!(
            b.unchecked_prefix(100, 1_001),
            None,
            "old events may be re-sends"
        );
        b.stored(4);
        assert_eq!(b.unchecked_prefix(100, 0), None, "poison first");
    }

    #[test]
    fn joinable_groups_due_partitions_first_within_max_rows() {
        let now = Instant::now();
        let mut bufs = Buffers::default();
        for p in 0..4 {
            fill(&mut bufs, p, 30, 5_000, now);
        }
        // Due partition 2 first, then the others in order, until 100 rows.
        assert_eq!(
            bufs.joinable(now, &[2], 100, 0),
            vec![(2, 30), (0, 30), (1, 30), (3, 10)]
        );
        // None of them due: nothing to share.
        assert!(bufs.joinable(now, &[], 100, 0).is_empty());
        // A partition alone is written by itself.
        assert!(bufs.joinable(now, &[2], 30, 0).is_empty());
        // Stale events (possible re-sends) keep every partition out.
        assert!(bufs.joinable(now, &[2], 100, 5_001).is_empty());

        // Paused, backing off, floor unknown or possibly stored partitions stay out.
        bufs.parts.get_mut(&0).unwrap().paused = true;
        bufs.parts
            .get_mut(&1)
            .unwrap()
            .failed(now, Duration::from_secs(1), Duration::from_secs(1));
        bufs.parts.get_mut(&3).unwrap().next_unstored = Some(11);
        assert!(bufs.joinable(now, &[2], 1_000, 0).is_empty());
        fill(&mut bufs, 7, 5, 5_000, now);
        assert_eq!(bufs.joinable(now, &[2], 1_000, 0), vec![(2, 30), (7, 5)]);
        // The backoff ends: partition 1 joins again once its floor is known.
        let later = now + Duration::from_secs(1);
        assert_eq!(bufs.joinable(later, &[2], 1_000, 0), vec![(2, 30), (7, 5)]);
        bufs.parts.get_mut(&1).unwrap().next_unstored = Some(10);
        assert_eq!(
            bufs.joinable(later, &[2], 1_000, 0),
            vec![(2, 30), (1, 30), (7, 5)]
        );
    }
}
