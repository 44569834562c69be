//! Quota slices: a busy entity's quota reserved in Redis ahead of demand and handed out by
//! this proxy without a round trip.
//!
//! When an API key or model sends this proxy at least [`HOT_RPS`] requests a second, its next
//! acquire call also asks Redis for a slice: about half a second of that demand in requests and
//! tokens, and free concurrency slots for its peak in flight plus headroom. Redis grants at
//! most `1 / share` of what is left of each limit and counts the slice as used at once, in the
//! current buckets, so **Redis never hands out more than the limit** across all proxies.
//! Requests are then admitted from the slice locally.
//!
//! - A slice running low (an eighth of a second of demand left, or half the slot headroom) is
//!   refilled in the background by a refill-only call: the request that took from it does not
//!   wait, and the requests after it still find room. Only a slice's first grant in each
//!   bucket comes from a request that missed.
//! - Why a request could not be admitted from slices is counted in
//!   `tollgate_ratelimit_slice_misses_total{reason}` ([`Miss`]).
//!
//! - A slice is valid only until the bucket it was counted in ends (at most a second, judged
//!   from when the call was sent, so conservatively): requests it admits are counted in the
//!   bucket they fall in and the sliding window stays exact.
//! - What a slice did not hand out is given back when it expires (a sweep every
//!   [`SWEEP_EVERY`]) and when the proxy shuts down.
//! - Concurrency slots are lease-set members like any request's lease, renewed with them; a
//!   finished request frees its slot in this proxy, and free slots beyond the recent peak go
//!   back at the next sweep. A crashed proxy's slots expire with the lease time.
//! - Near a limit the share rounds down to nothing, so the last `share` units of any limit
//!   always go one request per round trip.
//!
//! The price: quota a proxy holds for up to a second is not available to the others (at most
//! `1 / share` of what was left per grant), and `x-ratelimit-remaining-*` of a request
//! admitted from a slice is this proxy's view at its last grant.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tollgate_schemas::redis_keys::LimitEntity;

use super::decision::{Checked, Target};
use super::headers::Usage;
use super::local::Adjust;

/// Requests a second on this proxy from which an entity gets slices.
pub const HOT_RPS: i64 = 16;
/// Most requests asked for in one slice.
const MAX_REQUESTS: i64 = 4_096;
/// Most concurrency slots asked for at once.
const MAX_SLOTS: i64 = 4_096;
/// A slice is refilled when fewer than `1 / LOW` of a second of demand (at most a quarter of
/// the largest slice) is left in it.
const LOW: i64 = 8;
/// Shortest part of a second the current second's rate is extrapolated from, ms.
const MIN_SPAN_MS: i64 = 50;
/// Fewest free concurrency slots kept beyond the recent peak in flight.
const MIN_HEADROOM: i64 = 4;
/// Longest life of a slice.
const MAX_LIFE: Duration = Duration::from_secs(1);
/// How long a refill request blocks the next one for the same entity (requests queued behind
/// it in the same batch would otherwise each ask for a whole slice).
const REFILL_WAIT: Duration = Duration::from_millis(250);
/// How often expired slices and idle slots are given back.
pub const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// The process's clock origin for demand seconds.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Why a request could not be admitted from its entities' slices (the first target without
/// room decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// The entity holds no slice (not hot on this proxy, or nothing granted yet).
    NoSlice,
    /// The slice's bucket ended.
    Expired,
    /// The slice's requests are used up.
    Requests,
    /// The slice's tokens do not cover the request's reservation.
    Tokens,
    /// No free concurrency slot.
    Slots,
}

impl Miss {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoSlice => "no_slice",
            Self::Expired => "expired",
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::Slots => "slots",
        }
    }

    fn count(self) {
        metrics::counter!(tollgate_schemas::telemetry::RATELIMIT_SLICE_MISSES, "reason" => self.as_str())
            .increment(1);
    }
}

/// What an acquire call asks Redis to reserve for an entity beyond its request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Want {
    /// Extra requests.
    pub requests: i64,
    /// Extra tokens.
    pub tokens: i64,
    /// Extra concurrency slots.
    pub slots: i64,
}

/// A request admitted from slices, and the slices it left running low: refill them with a
/// refill-only acquire call (see [`Slices::admitted`] with `request: false`).
#[derive(Debug)]
pub struct Taken {
    /// One per target, as Redis would have answered.
    pub checked: Vec<Checked>,
    /// Targets whose slice runs low, with what to ask for.
    pub refill: Vec<(Target, Want)>,
}

/// What Redis granted an admitted entity beyond its request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grant {
    /// Requests reserved.
    pub requests: i64,
    /// Tokens reserved.
    pub tokens: i64,
    /// Concurrency slots added (members `<lease id>.<1..=slots>`).
    pub slots: i64,
    /// Time left in the bucket the reservation was counted in, ms.
    pub valid_ms: i64,
}

/// What a sweep gives back.
#[derive(Debug, Default)]
pub struct Returns {
    /// Unused slice quota, as refunds in the buckets where it was counted.
    pub refunds: Vec<Adjust>,
    /// Free concurrency slots: the entity and the member to remove.
    pub slots: Vec<(Target, Arc<str>)>,
}

#[derive(Debug)]
struct Slice {
    requests: i64,
    tokens: i64,
    minute_bucket: i64,
    day_bucket: i64,
    until: Instant,
}

#[derive(Debug)]
struct Entity {
    target: Target,
    slice: Option<Slice>,
    /// Slot members held in Redis.
    slots: Vec<Arc<str>>,
    /// Requests of this entity in flight on this proxy (any path).
    in_flight: i64,
    /// Requests in flight admitted on a slot.
    on_slots: i64,
    /// Most in flight since the last demand second began, and in the second before.
    peak: i64,
    last_peak: i64,
    /// Demand: the current second and what it admitted, and the second before.
    second: u64,
    requests: i64,
    tokens: i64,
    last_requests: i64,
    last_tokens: i64,
    /// Redis's counts at the last grant (slice included).
    usage: Usage,
    /// When the refill now in flight was asked for.
    refill: Option<Instant>,
}

impl Entity {
    fn new(target: &Target) -> Self {
        Self {
            target: target.clone(),
            slice: None,
            slots: Vec::new(),
            in_flight: 0,
            on_slots: 0,
            peak: 0,
            last_peak: 0,
            second: 0,
            requests: 0,
            tokens: 0,
            last_requests: 0,
            last_tokens: 0,
            usage: Usage::default(),
            refill: None,
        }
    }

    /// Start a new demand second if one began.
    fn roll(&mut self, now: Instant) {
        let second = now.saturating_duration_since(*EPOCH).as_secs();
        if second == self.second {
            return;
        }
        let consecutive = second == self.second + 1;
        self.last_requests = if consecutive { self.requests } else { 0 };
        self.last_tokens = if consecutive { self.tokens } else { 0 };
        self.last_peak = if consecutive { self.peak } else { 0 };
        self.second = second;
        self.requests = 0;
        self.tokens = 0;
        self.peak = self.in_flight;
    }

    fn record(&mut self, t: &Target, now: Instant) {
        self.roll(now);
        self.requests += 1;
        self.tokens += t.reserve;
        self.in_flight += 1;
        self.peak = self.peak.max(self.in_flight);
    }

    /// Slot members held in Redis.
    fn held_slots(&self) -> i64 {
        i64::try_from(self.slots.len()).unwrap_or(i64::MAX)
    }

    fn free_slots(&self) -> i64 {
        self.held_slots() - self.on_slots
    }

    /// Requests a second: the last second's, or the current one's so far extrapolated to a
    /// whole second (from at least [`MIN_SPAN_MS`] of it), whichever is higher. Extrapolating
    /// lets traffic that starts (or returns after an idle spell) get a slice sized for its
    /// rate within milliseconds instead of growing it round trip by round trip.
    fn rate(&self, now: Instant) -> i64 {
        let into = now.saturating_duration_since(*EPOCH).as_millis() % 1_000;
        let span = i64::try_from(into).unwrap_or(1_000).max(MIN_SPAN_MS);
        self.last_requests
            .max(self.requests.saturating_mul(1_000) / span)
    }

    /// Reserved tokens per request recently.
    fn tokens_per_request(&self, t: &Target) -> i64 {
        let per = if self.last_requests > 0 {
            self.last_tokens / self.last_requests
        } else {
            self.tokens / self.requests.max(1)
        };
        per.max(t.reserve).max(1)
    }

    /// Slots to hold: the recent peak in flight plus headroom (half of it, at least
    /// [`MIN_HEADROOM`]), so that arrivals above the peak do not all go to Redis.
    fn slot_target(&self) -> i64 {
        let peak = self.peak.max(self.last_peak);
        (peak + (peak / 2).max(MIN_HEADROOM)).min(MAX_SLOTS)
    }

    /// Whether a live slice is running low for `t` (a refill should be asked for).
    fn low(&self, t: &Target, now: Instant) -> bool {
        let Some(s) = self.slice.as_ref().filter(|s| s.until > now) else {
            return false;
        };
        let soon = (self.rate(now) / 2).min(MAX_REQUESTS) * 2 / LOW + 1;
        s.requests < soon
            || (t.counts_tokens() && s.tokens < soon.saturating_mul(self.tokens_per_request(t)))
            || (t.leases()
                && self.free_slots() * 2 < self.slot_target() - self.peak.max(self.last_peak))
    }

    /// What to ask Redis for beyond `t`'s request: half a second of demand less what a live
    /// slice still holds (a slice is refilled about twice per bucket), and slots up to
    /// [`Entity::slot_target`]. Nothing while the entity is not hot or a refill is in flight;
    /// a non-empty want marks a refill in flight.
    fn want(&mut self, t: &Target, now: Instant) -> Want {
        self.roll(now);
        let hot = self.last_requests.max(self.requests) >= HOT_RPS;
        let rate = self.rate(now);
        let refilling = self
            .refill
            .is_some_and(|at| now.saturating_duration_since(at) < REFILL_WAIT);
        if !hot || refilling {
            return Want::default();
        }
        let live = self.slice.as_ref().filter(|s| s.until > now);
        let (left_requests, left_tokens) =
            live.map_or((0, 0), |s| (s.requests.max(0), s.tokens.max(0)));
        let half = (rate / 2).min(MAX_REQUESTS);
        let requests = (half - left_requests).clamp(0, MAX_REQUESTS);
        let tokens = if t.counts_tokens() {
            half.saturating_mul(self.tokens_per_request(t))
                .saturating_sub(left_tokens)
                .max(0)
        } else {
            0
        };
        let slots = if t.leases() {
            (self.slot_target() - self.held_slots()).clamp(0, MAX_SLOTS)
        } else {
            0
        };
        let want = Want {
            requests,
            tokens,
            slots,
        };
        if want != Want::default() {
            self.refill = Some(now);
        }
        want
    }

    /// Whether the slice can admit `t` now, and if not, why.
    fn can_take(&self, t: &Target, now: Instant) -> Result<(), Miss> {
        let Some(s) = &self.slice else {
            return Err(Miss::NoSlice);
        };
        if s.until <= now {
            Err(Miss::Expired)
        } else if s.requests < 1 {
            Err(Miss::Requests)
        } else if t.counts_tokens() && s.tokens < t.reserve {
            Err(Miss::Tokens)
        } else if t.leases() && self.free_slots() < 1 {
            Err(Miss::Slots)
        } else {
            Ok(())
        }
    }

    /// The counts a request admitted now sees: Redis's at the grant, minus what the slice and
    /// the free slots still hold.
    fn view(&self) -> Usage {
        let mut u = self.usage;
        if let Some(s) = &self.slice {
            u.minute_requests -= s.requests;
            u.day_requests -= s.requests;
            u.minute_tokens -= s.tokens;
            u.day_tokens -= s.tokens;
        }
        u.in_flight = (u.in_flight - self.free_slots()).max(0);
        u
    }

    /// Unused quota of an expired (or any, with `all`) slice, as a refund.
    fn expire(&mut self, now: Instant, all: bool, out: &mut Returns) {
        let expired = self.slice.as_ref().is_some_and(|s| all || s.until <= now);
        if !expired {
            return;
        }
        if let Some(s) = self.slice.take() {
            if s.requests != 0 || s.tokens != 0 {
                out.refunds.push(Adjust {
                    target: self.target.clone(),
                    minute_bucket: s.minute_bucket,
                    day_bucket: s.day_bucket,
                    requests: -s.requests,
                    tokens: -s.tokens,
                    release: false,
                });
            }
        }
    }

    /// Give back free slots beyond the recent peak and its headroom (all free ones with `all`).
    fn trim(&mut self, all: bool, out: &mut Returns) {
        let idle = self.peak.max(self.last_peak) == 0;
        let keep = if all || idle {
            self.on_slots
        } else {
            self.on_slots.max(self.slot_target())
        };
        while self.held_slots() > keep.max(0) {
            let Some(id) = self.slots.pop() else { break };
            out.slots.push((self.target.clone(), id));
        }
    }
}

type Key = (LimitEntity, Arc<str>);

/// The slices and slots of this proxy, by entity.
#[derive(Debug)]
pub struct Slices {
    enabled: bool,
    /// Set at shutdown: no more slices are taken from or asked for.
    closed: AtomicBool,
    share: i64,
    entities: Mutex<foldhash::HashMap<Key, Entity>>,
}

impl Slices {
    /// Slices granting at most `1 / share` of what is left per grant; `enabled: false` asks for
    /// none (every request goes to Redis).
    pub fn new(enabled: bool, share: u32) -> Self {
        Self {
            enabled,
            closed: AtomicBool::new(false),
            share: i64::from(share.max(1)),
            entities: Mutex::default(),
        }
    }

    /// Stop handing out and asking for slices (at shutdown, before everything is given back).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// The share divisor passed to the acquire script.
    pub fn share(&self) -> i64 {
        self.share
    }

    fn lock(&self) -> MutexGuard<'_, foldhash::HashMap<Key, Entity>> {
        self.entities.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admit a request from its entities' slices, if every target has room; `None` sends it to
    /// Redis. Targets with a concurrency limit take a free slot (see [`Slices::release`]).
    /// Slices left running low come back in [`Taken::refill`].
    pub fn take(&self, targets: &[Target], now: Instant) -> Option<Taken> {
        if !self.enabled || self.closed.load(Ordering::Relaxed) {
            return None;
        }
        let mut map = self.lock();
        for t in targets {
            let room = map
                .get(&(t.entity, t.id.clone()))
                .map_or(Err(Miss::NoSlice), |e| e.can_take(t, now));
            if let Err(miss) = room {
                drop(map);
                miss.count();
                return None;
            }
        }
        let mut out = Vec::with_capacity(targets.len());
        let mut refill = Vec::new();
        for t in targets {
            let e = map.get_mut(&(t.entity, t.id.clone()))?;
            e.record(t, now);
            let s = e.slice.as_mut()?;
            s.requests -= 1;
            if t.counts_tokens() {
                s.tokens -= t.reserve;
            }
            let (minute_bucket, day_bucket) = (s.minute_bucket, s.day_bucket);
            if t.leases() {
                e.on_slots += 1;
            }
            out.push(Checked {
                denied: None,
                retry_ms: 0,
                usage: e.view(),
                minute_bucket,
                day_bucket,
                pooled: t.leases(),
            });
            if e.low(t, now) {
                let want = e.want(t, now);
                if want != Want::default() {
                    refill.push((t.clone(), want));
                }
            }
        }
        Some(Taken {
            checked: out,
            refill,
        })
    }

    /// What the next acquire call should reserve for `t` beyond the request (see
    /// [`Entity::want`]).
    pub fn want(&self, t: &Target, now: Instant) -> Want {
        if !self.enabled || self.closed.load(Ordering::Relaxed) {
            return Want::default();
        }
        let mut map = self.lock();
        map.get_mut(&(t.entity, t.id.clone()))
            .map_or_else(Want::default, |e| e.want(t, now))
    }

    /// Record what Redis answered an acquire call for `t` (sent at `sent`): a request it
    /// admitted (`request`; false for a refill-only call) and what it granted beyond it;
    /// `lease` names the new slots. Returns what an expired slice gives back and the new slot
    /// members to renew.
    pub fn admitted(
        &self,
        t: &Target,
        checked: &Checked,
        grant: Grant,
        lease: Option<&Arc<str>>,
        sent: Instant,
        request: bool,
    ) -> (Returns, Vec<Arc<str>>) {
        let mut out = Returns::default();
        let mut new_slots = Vec::new();
        let mut map = self.lock();
        let e = map
            .entry((t.entity, t.id.clone()))
            .or_insert_with(|| Entity::new(t));
        e.target = t.clone();
        if request {
            e.record(t, sent);
        }
        e.usage = checked.usage;
        if grant != Grant::default() {
            e.refill = None;
        }
        if grant.requests > 0 || grant.tokens > 0 {
            let life = Duration::from_millis(u64::try_from(grant.valid_ms).unwrap_or(0));
            let until = sent + life.min(MAX_LIFE);
            match &mut e.slice {
                Some(s)
                    if s.until > sent
                        && (s.minute_bucket, s.day_bucket)
                            == (checked.minute_bucket, checked.day_bucket) =>
                {
                    s.requests += grant.requests;
                    s.tokens += grant.tokens;
                    s.until = s.until.min(until);
                }
                _ => {
                    e.expire(sent, true, &mut out);
                    e.slice = Some(Slice {
                        requests: grant.requests,
                        tokens: grant.tokens,
                        minute_bucket: checked.minute_bucket,
                        day_bucket: checked.day_bucket,
                        until,
                    });
                }
            }
        }
        if let (true, Some(id)) = (grant.slots > 0, lease) {
            for j in 1..=grant.slots {
                let slot: Arc<str> = format!("{id}.{j}").into();
                e.slots.push(slot.clone());
                new_slots.push(slot);
            }
        }
        (out, new_slots)
    }

    /// Fold a correction into the entity's slice when it belongs to the slice's buckets
    /// (a settlement's token delta, a refund): returned reservation becomes slice quota again,
    /// extra usage is taken from it, and the slice's return settles the rest with Redis. The
    /// folded part of `a` is zeroed; returns whether anything was folded.
    pub fn fold(&self, a: &mut Adjust) -> bool {
        if (a.requests == 0 && a.tokens == 0) || !self.enabled {
            return false;
        }
        let mut map = self.lock();
        let Some(s) = map
            .get_mut(&(a.target.entity, a.target.id.clone()))
            .and_then(|e| e.slice.as_mut())
        else {
            return false;
        };
        if (s.minute_bucket, s.day_bucket) != (a.minute_bucket, a.day_bucket) {
            return false;
        }
        s.requests -= a.requests;
        s.tokens -= a.tokens;
        a.requests = 0;
        a.tokens = 0;
        true
    }

    /// A request of `t` finished: one fewer in flight, and its slot is free again if it took
    /// one.
    pub fn release(&self, t: &Target, slot: bool) {
        let mut map = self.lock();
        if let Some(e) = map.get_mut(&(t.entity, t.id.clone())) {
            e.in_flight = (e.in_flight - 1).max(0);
            if slot {
                e.on_slots = (e.on_slots - 1).max(0);
            }
        }
    }

    /// Give back expired slices and free slots beyond recent demand (`all`: everything not in
    /// use, at shutdown); forget idle entities.
    pub fn sweep(&self, now: Instant, all: bool) -> Returns {
        let mut out = Returns::default();
        let mut map = self.lock();
        map.retain(|_, e| {
            e.roll(now);
            e.expire(now, all, &mut out);
            e.trim(all, &mut out);
            e.slice.is_some()
                || !e.slots.is_empty()
                || e.in_flight > 0
                || e.requests > 0
                || e.last_requests > 0
        });
        out
    }

    /// Quota held now: requests in slices and slot members, over all entities.
    pub fn held(&self) -> (i64, usize) {
        let map = self.lock();
        let requests = map
            .values()
            .filter_map(|e| e.slice.as_ref().map(|s| s.requests))
            .sum();
        (requests, map.values().map(|e| e.slots.len()).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entities::RateLimit;

    fn target(concurrency: Option<u64>, reserve: i64) -> Target {
        Target {
            entity: LimitEntity::Key,
            id: "k".into(),
            limit: RateLimit {
                rpm: Some(1_000_000),
                tpm: Some(1_000_000_000),
                concurrency,
                ..RateLimit::default()
            },
            reserve,
        }
    }

    fn grant(requests: i64, tokens: i64, slots: i64, valid_ms: i64) -> Grant {
        Grant {
            requests,
            tokens,
            slots,
            valid_ms,
        }
    }

    fn checked(minute: i64) -> Checked {
        Checked {
            denied: None,
            retry_ms: 0,
            usage: Usage {
                minute_requests: 500,
                minute_tokens: 50_000,
                in_flight: 10,
                ..Usage::default()
            },
            minute_bucket: minute,
            day_bucket: 0,
            pooled: false,
        }
    }

    /// `n` requests admitted by Redis, spread over the demand second of `at`.
    fn warm(s: &Slices, t: &Target, n: i64, at: Instant) {
        for _ in 0..n {
            s.admitted(t, &checked(1), Grant::default(), None, at, true);
            s.release(t, false);
        }
    }

    #[test]
    fn only_hot_entities_ask_for_slices() {
        let s = Slices::new(true, 16);
        let t = target(None, 100);
        let now = Instant::now();
        assert_eq!(s.want(&t, now), Want::default(), "unknown entity");
        warm(&s, &t, HOT_RPS - 1, now);
        assert_eq!(s.want(&t, now), Want::default(), "below the threshold");
        warm(&s, &t, 1, now);
        let w = s.want(&t, now);
        // Half a second of the rate, extrapolated from the part of the second gone by.
        assert!(w.requests >= HOT_RPS / 2, "{w:?}");
        assert!(w.requests <= HOT_RPS * 1_000 / MIN_SPAN_MS / 2, "{w:?}");
        assert_eq!(w.tokens, w.requests * 100);
        assert_eq!(w.slots, 0, "no concurrency limit, no slots");
        assert_eq!(s.want(&t, now), Want::default(), "one refill in flight");
        let answered = grant(1, 100, 0, 10);
        s.admitted(&t, &checked(1), answered, None, now, true);
        assert!(s.want(&t, now).requests > 0, "answered: the next may ask");
        let off = Slices::new(false, 16);
        warm(&off, &t, 100, now);
        assert_eq!(off.want(&t, now), Want::default());
        assert!(off.take(std::slice::from_ref(&t), now).is_none());
    }

    #[test]
    fn a_slice_admits_until_empty_then_refunds_nothing() {
        let s = Slices::new(true, 16);
        let t = target(None, 10);
        let now = Instant::now();
        let given = grant(3, 25, 0, 500);
        let (ret, slots) = s.admitted(&t, &checked(7), given, None, now, true);
        assert!(ret.refunds.is_empty() && slots.is_empty());
        let ts = std::slice::from_ref(&t);
        let first = s.take(ts, now).expect("from the slice").checked;
        assert_eq!((first[0].minute_bucket, first[0].pooled), (7, false));
        // Redis counted 500 requests including the slice; 2 are still held.
        assert_eq!(first[0].usage.minute_requests, 498);
        assert_eq!(first[0].usage.minute_tokens, 50_000 - 15);
        assert!(s.take(ts, now).is_some());
        assert!(s.take(ts, now).is_none(), "5 tokens left, 10 needed");
        let ret = s.sweep(now + Duration::from_millis(600), false);
        assert_eq!(ret.refunds.len(), 1);
        assert_eq!((ret.refunds[0].requests, ret.refunds[0].tokens), (-1, -5));
        assert_eq!(ret.refunds[0].minute_bucket, 7);
        assert_eq!(s.held(), (0, 0));
    }

    #[test]
    fn slices_expire_with_their_bucket_and_merge_within_it() {
        let s = Slices::new(true, 16);
        let t = target(None, 1);
        let now = Instant::now();
        let g = |requests| grant(requests, requests, 0, 300);
        s.admitted(&t, &checked(1), g(4), None, now, true);
        s.admitted(&t, &checked(1), g(4), None, now, true);
        assert_eq!(s.held().0, 8, "same bucket: merged");
        let later = now + Duration::from_millis(301);
        assert!(s.take(std::slice::from_ref(&t), later).is_none(), "expired");
        let (ret, _) = s.admitted(&t, &checked(2), g(2), None, later, true);
        assert_eq!(ret.refunds.len(), 1, "the old bucket's slice is given back");
        assert_eq!(
            (ret.refunds[0].requests, ret.refunds[0].minute_bucket),
            (-8, 1)
        );
        assert_eq!(s.held().0, 2);
        let ret = s.sweep(later, true);
        assert_eq!(ret.refunds[0].requests, -2);
    }

    #[test]
    fn slots_are_taken_freed_and_trimmed_to_recent_demand() {
        let s = Slices::new(true, 16);
        let t = target(Some(1_000), 0);
        let now = Instant::now();
        let lease: Arc<str> = "abc".into();
        let given = grant(10, 0, 3, 900);
        let (_, slots) = s.admitted(&t, &checked(1), given, Some(&lease), now, true);
        assert_eq!(slots.len(), 3);
        assert_eq!(&*slots[0], "abc.1");
        let ts = std::slice::from_ref(&t);
        for _ in 0..3 {
            assert!(s.take(ts, now).unwrap().checked[0].pooled);
        }
        assert!(s.take(ts, now).is_none(), "no free slot");
        s.release(&t, true);
        assert!(s.take(ts, now).is_some(), "a freed slot is reused");
        // Everything finishes; after two idle seconds the slots go back.
        for _ in 0..3 {
            s.release(&t, true);
        }
        s.release(&t, false);
        assert!(s.sweep(now, false).slots.is_empty(), "recent peak kept");
        let ret = s.sweep(now + Duration::from_secs(3), false);
        assert_eq!(ret.slots.len(), 3);
        assert_eq!(ret.refunds.len(), 1, "the slice expired too");
        assert_eq!(s.held(), (0, 0));
    }

    #[test]
    fn corrections_of_the_slice_bucket_fold_into_it() {
        let s = Slices::new(true, 16);
        let t = target(None, 30);
        let now = Instant::now();
        let given = grant(2, 60, 0, 900);
        s.admitted(&t, &checked(4), given, None, now, true);
        let adjust = |bucket, requests, tokens| Adjust {
            target: t.clone(),
            minute_bucket: bucket,
            day_bucket: 0,
            requests,
            tokens,
            release: false,
        };
        // Used 10 of 30 reserved: 20 tokens back into the slice.
        let mut a = adjust(4, 0, -20);
        assert!(s.fold(&mut a));
        assert_eq!((a.requests, a.tokens), (0, 0));
        // A refund of a whole request.
        let mut a = adjust(4, -1, -30);
        assert!(s.fold(&mut a));
        // Another bucket's correction goes to Redis untouched.
        let mut a = adjust(3, 0, 50);
        assert!(!s.fold(&mut a));
        assert_eq!(a.tokens, 50);
        // Used 100 more than reserved: the slice goes negative, the return counts it.
        let mut a = adjust(4, 0, 210);
        assert!(s.fold(&mut a));
        let ret = s.sweep(now, true);
        assert_eq!((ret.refunds[0].requests, ret.refunds[0].tokens), (-3, 100));
    }

    #[test]
    fn a_request_needs_every_target_to_have_room() {
        let s = Slices::new(true, 16);
        let key = target(None, 0);
        let mut model = target(None, 0);
        model.entity = LimitEntity::Model;
        let now = Instant::now();
        let given = grant(5, 0, 0, 900);
        s.admitted(&key, &checked(1), given, None, now, true);
        let both = [key.clone(), model.clone()];
        assert!(s.take(&both, now).is_none(), "the model has no slice");
        assert_eq!(s.held().0, 5, "nothing taken from the key's");
        s.admitted(&model, &checked(1), given, None, now, true);
        assert_eq!(s.take(&both, now).unwrap().checked.len(), 2);
        assert_eq!(s.held().0, 8);
    }

    #[test]
    fn a_slice_running_low_asks_for_a_refill_once_and_the_refill_counts_no_request() {
        let s = Slices::new(true, 16);
        let t = target(Some(1_000), 10);
        let now = Instant::now();
        let lease: Arc<str> = "r".into();
        warm(&s, &t, 80, now);
        // 12 requests and their tokens, and the slots for the peak plus headroom.
        let (_, slots) = s.admitted(
            &t,
            &checked(1),
            grant(12, 120, 5, 900),
            Some(&lease),
            now,
            true,
        );
        assert_eq!(slots.len(), 5);
        let ts = std::slice::from_ref(&t);
        let mut asked = Vec::new();
        for _ in 0..12 {
            let taken = s.take(ts, now).expect("room in the slice");
            asked.extend(taken.refill);
            s.release(&t, true);
        }
        assert_eq!(
            asked.len(),
            1,
            "one refill while it is in flight: {asked:?}"
        );
        let (target, want) = &asked[0];
        assert_eq!(target.id, t.id);
        assert!(
            want.requests > 0 && want.tokens >= want.requests * 10,
            "{want:?}"
        );
        // The refill's grant tops the slice up without counting a request of its own.
        let before = s.lock()[&(t.entity, t.id.clone())].requests;
        let more = grant(want.requests, want.tokens, 0, 800);
        s.admitted(&t, &checked(1), more, Some(&lease), now, false);
        assert_eq!(s.lock()[&(t.entity, t.id.clone())].requests, before);
        assert!(s.take(ts, now).is_some(), "refilled");
        // A token-only top-up is kept too.
        let tokens = |s: &Slices| {
            s.lock()[&(t.entity, t.id.clone())]
                .slice
                .as_ref()
                .unwrap()
                .tokens
        };
        let (held, before) = (s.held().0, tokens(&s));
        s.admitted(&t, &checked(1), grant(0, 500, 0, 800), None, now, false);
        assert_eq!((s.held().0, tokens(&s)), (held, before + 500));
    }

    #[test]
    fn misses_name_what_was_missing() {
        let s = Slices::new(true, 16);
        let t = target(Some(1_000), 10);
        let now = Instant::now();
        let e = |s: &Slices| s.lock()[&(t.entity, t.id.clone())].can_take(&t, now);
        s.admitted(&t, &checked(1), Grant::default(), None, now, true);
        assert_eq!(e(&s), Err(Miss::NoSlice));
        let lease: Arc<str> = "m".into();
        s.admitted(
            &t,
            &checked(1),
            grant(1, 5, 1, 900),
            Some(&lease),
            now,
            true,
        );
        assert_eq!(e(&s), Err(Miss::Tokens));
        s.admitted(&t, &checked(1), grant(0, 5, 0, 900), None, now, false);
        assert_eq!(e(&s), Ok(()));
        assert!(s.take(std::slice::from_ref(&t), now).is_some());
        assert_eq!(e(&s), Err(Miss::Requests));
        s.admitted(&t, &checked(1), grant(1, 10, 0, 900), None, now, false);
        assert_eq!(e(&s), Err(Miss::Slots));
        let later = now + Duration::from_secs(1);
        assert_eq!(
            s.lock()[&(t.entity, t.id.clone())].can_take(&t, later),
            Err(Miss::Expired)
        );
    }
}
