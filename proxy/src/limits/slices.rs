//! Quota slices: a busy entity's quota reserved in Redis ahead of demand and handed out by
//! this proxy without a round trip.
//!
//! When an API key or model sends this proxy at least [`HOT_RPS`] requests a second, its next
//! acquire call also asks Redis for a slice: about half a second of that demand in requests and
//! tokens, and free concurrency slots for its peak in flight. Redis grants at most
//! `1 / share` of what is left of each limit and counts the slice as used at once, in the
//! current buckets, so **Redis never hands out more than the limit** across all proxies.
//! Requests are then admitted from the slice locally.
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
const MAX_SLOTS: i64 = 256;
/// Longest life of a slice.
const MAX_LIFE: Duration = Duration::from_secs(1);
/// How long a refill request blocks the next one for the same entity (requests queued behind
/// it in the same batch would otherwise each ask for a whole slice).
const REFILL_WAIT: Duration = Duration::from_millis(250);
/// How often expired slices and idle slots are given back.
pub const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// The process's clock origin for demand seconds.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

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

    /// Whether the slice can admit `t` now.
    fn can_take(&self, t: &Target, now: Instant) -> bool {
        let Some(s) = &self.slice else { return false };
        s.until > now
            && s.requests >= 1
            && (!t.counts_tokens() || s.tokens >= t.reserve)
            && (!t.leases() || self.free_slots() >= 1)
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

    /// Give back free slots beyond the recent peak (all free ones with `all`).
    fn trim(&mut self, all: bool, out: &mut Returns) {
        let keep = if all {
            self.on_slots
        } else {
            self.on_slots.max(self.peak.max(self.last_peak))
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
    share: i64,
    entities: Mutex<foldhash::HashMap<Key, Entity>>,
}

impl Slices {
    /// Slices granting at most `1 / share` of what is left per grant; `enabled: false` asks for
    /// none (every request goes to Redis).
    pub fn new(enabled: bool, share: u32) -> Self {
        Self {
            enabled,
            share: i64::from(share.max(1)),
            entities: Mutex::default(),
        }
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
    pub fn take(&self, targets: &[Target], now: Instant) -> Option<Vec<Checked>> {
        if !self.enabled {
            return None;
        }
        let mut map = self.lock();
        let all = targets.iter().all(|t| {
            map.get(&(t.entity, t.id.clone()))
                .is_some_and(|e| e.can_take(t, now))
        });
        if !all {
            return None;
        }
        let mut out = Vec::with_capacity(targets.len());
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
        }
        Some(out)
    }

    /// What the next acquire call should reserve for `t` beyond the request.
    pub fn want(&self, t: &Target, now: Instant) -> Want {
        if !self.enabled {
            return Want::default();
        }
        let mut map = self.lock();
        let Some(e) = map.get_mut(&(t.entity, t.id.clone())) else {
            return Want::default();
        };
        e.roll(now);
        let rate = e.last_requests.max(e.requests);
        let refilling = e
            .refill
            .is_some_and(|at| now.saturating_duration_since(at) < REFILL_WAIT);
        if rate < HOT_RPS || refilling {
            return Want::default();
        }
        // Half a second of demand (a slice is refilled about twice per bucket), less what a
        // live slice still holds.
        let left = e
            .slice
            .as_ref()
            .filter(|s| s.until > now)
            .map_or(0, |s| s.requests.max(0));
        let requests = (rate / 2 - left).clamp(0, MAX_REQUESTS);
        let tokens = if t.counts_tokens() {
            let per = if e.last_requests > 0 {
                e.last_tokens / e.last_requests
            } else {
                e.tokens / e.requests.max(1)
            };
            requests.saturating_mul(per.max(t.reserve).max(1))
        } else {
            0
        };
        let slots = if t.leases() {
            let peak = e.peak.max(e.last_peak) + 1;
            (peak - e.held_slots()).clamp(0, MAX_SLOTS)
        } else {
            0
        };
        if requests > 0 || slots > 0 {
            e.refill = Some(now);
        }
        Want {
            requests,
            tokens,
            slots,
        }
    }

    /// Record a request Redis admitted for `t` (sent at `sent`), with what Redis granted
    /// beyond it; `lease` names the new slots. Returns what an expired slice gives back and
    /// the new slot members to renew.
    pub fn admitted(
        &self,
        t: &Target,
        checked: &Checked,
        grant: Grant,
        lease: Option<&Arc<str>>,
        sent: Instant,
    ) -> (Returns, Vec<Arc<str>>) {
        let mut out = Returns::default();
        let mut new_slots = Vec::new();
        let mut map = self.lock();
        let e = map
            .entry((t.entity, t.id.clone()))
            .or_insert_with(|| Entity::new(t));
        e.target = t.clone();
        e.record(t, sent);
        e.usage = checked.usage;
        if grant != Grant::default() {
            e.refill = None;
        }
        if grant.requests > 0 {
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
            s.admitted(t, &checked(1), Grant::default(), None, at);
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
        assert_eq!(w.requests, HOT_RPS / 2);
        assert_eq!(w.tokens, HOT_RPS / 2 * 100);
        assert_eq!(w.slots, 0, "no concurrency limit, no slots");
        assert_eq!(s.want(&t, now), Want::default(), "one refill in flight");
        let answered = grant(1, 100, 0, 10);
        s.admitted(&t, &checked(1), answered, None, now);
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
        let (ret, slots) = s.admitted(&t, &checked(7), given, None, now);
        assert!(ret.refunds.is_empty() && slots.is_empty());
        let ts = std::slice::from_ref(&t);
        let first = s.take(ts, now).expect("from the slice");
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
        s.admitted(&t, &checked(1), g(4), None, now);
        s.admitted(&t, &checked(1), g(4), None, now);
        assert_eq!(s.held().0, 8, "same bucket: merged");
        let later = now + Duration::from_millis(301);
        assert!(s.take(std::slice::from_ref(&t), later).is_none(), "expired");
        let (ret, _) = s.admitted(&t, &checked(2), g(2), None, later);
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
        let (_, slots) = s.admitted(&t, &checked(1), given, Some(&lease), now);
        assert_eq!(slots.len(), 3);
        assert_eq!(&*slots[0], "abc.1");
        let ts = std::slice::from_ref(&t);
        for _ in 0..3 {
            assert!(s.take(ts, now).unwrap()[0].pooled);
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
        s.admitted(&t, &checked(4), given, None, now);
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
        s.admitted(&key, &checked(1), given, None, now);
        let both = [key.clone(), model.clone()];
        assert!(s.take(&both, now).is_none(), "the model has no slice");
        assert_eq!(s.held().0, 5, "nothing taken from the key's");
        s.admitted(&model, &checked(1), given, None, now);
        assert_eq!(s.take(&both, now).unwrap().len(), 2);
        assert_eq!(s.held().0, 8);
    }
}
