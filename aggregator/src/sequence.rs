//! Gap and duplicate accounting of `proxy_seq` with bounded memory.
//!
//! Every proxy process numbers its events 1, 2, 3, ... Per proxy the tracker keeps a sliding
//! window of `window` sequence numbers as a bitmap (8 KiB for the default 65,536), for at most
//! `max_proxies` proxies (the least recently seen is forgotten). A number seen twice inside the
//! window is a duplicate; a number still missing when the window slides past it (a number
//! `window` higher arrived) is a gap; a number below the window is *late* (it was counted as a
//! gap before, or is an old duplicate). The window starts at the first number seen, so events
//! stored before a restart are not mistaken for gaps.
//!
//! Events of one proxy are spread over partitions, so gaps can only be judged while the
//! aggregator owns every partition and reads them at about the same point (no backlog): the
//! caller passes `count_gaps = false` otherwise (numbers the window passes meanwhile are
//! dropped uncounted, and show as *late* if they come), and resets the tracker at every
//! rebalance. The `usage_sequence_health` view in ClickHouse is the exact, global account.

use std::collections::HashMap;

/// What one observation added.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeqDelta {
    /// Numbers newly known missing.
    pub gaps: u64,
    /// Numbers seen again.
    pub duplicates: u64,
    /// Numbers below the window.
    pub late: u64,
}

#[derive(Debug)]
struct Window {
    base: i64,
    bits: Vec<u64>,
    touched: u64,
}

impl Window {
    fn slot(&self, seq: i64) -> (usize, u64) {
        let width = (self.bits.len() * 64) as i64;
        let idx = seq.rem_euclid(width) as usize;
        (idx / 64, 1u64 << (idx % 64))
    }

    /// Move the window so that it starts at `new_base`; returns the numbers that left it unseen.
    fn slide(&mut self, new_base: i64) -> u64 {
        let width = (self.bits.len() * 64) as i64;
        let span = new_base - self.base;
        let missing = if span >= width {
            let seen: u64 = self.bits.iter().map(|w| u64::from(w.count_ones())).sum();
            self.bits.fill(0);
            (span as u64).saturating_sub(seen)
        } else {
            let mut missing = 0;
            for seq in self.base..new_base {
                let (w, bit) = self.slot(seq);
                if self.bits[w] & bit == 0 {
                    missing += 1;
                }
                self.bits[w] &= !bit;
            }
            missing
        };
        self.base = new_base;
        missing
    }
}

/// Per-proxy sequence windows.
#[derive(Debug)]
pub struct SequenceTracker {
    words: usize,
    max_proxies: usize,
    proxies: HashMap<String, Window>,
    clock: u64,
}

impl SequenceTracker {
    /// A tracker remembering `window` numbers (rounded up to 64) for up to `max_proxies`.
    pub fn new(window: u64, max_proxies: usize) -> Self {
        Self {
            words: usize::try_from(window.div_ceil(64).max(1)).unwrap_or(1),
            max_proxies: max_proxies.max(1),
            proxies: HashMap::new(),
            clock: 0,
        }
    }

    /// Forget everything (after a rebalance: another set of partitions, another stream).
    pub fn reset(&mut self) {
        self.proxies.clear();
    }

    /// Proxies tracked now.
    pub fn proxies(&self) -> usize {
        self.proxies.len()
    }

    /// Record `seq` of `proxy`; gaps are reported only when `count_gaps`.
    pub fn observe(&mut self, proxy: &str, seq: i64, count_gaps: bool) -> SeqDelta {
        self.clock += 1;
        let mut delta = SeqDelta::default();
        if !self.proxies.contains_key(proxy) {
            if self.proxies.len() >= self.max_proxies {
                let oldest = self
                    .proxies
                    .iter()
                    .min_by_key(|(_, w)| w.touched)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.proxies.remove(&k);
                }
            }
            self.proxies.insert(
                proxy.to_string(),
                Window {
                    base: seq,
                    bits: vec![0; self.words],
                    touched: 0,
                },
            );
        }
        let width = (self.words * 64) as i64;
        let Some(w) = self.proxies.get_mut(proxy) else {
            return delta;
        };
        w.touched = self.clock;
        if seq < w.base {
            delta.late = 1;
            return delta;
        }
        if seq >= w.base + width {
            let missing = w.slide(seq - width + 1);
            if count_gaps {
                delta.gaps = missing;
            }
        }
        let (word, bit) = w.slot(seq);
        if w.bits[word] & bit != 0 {
            delta.duplicates = 1;
        } else {
            w.bits[word] |= bit;
        }
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(t: &mut SequenceTracker, proxy: &str, seqs: &[i64]) -> SeqDelta {
        let mut total = SeqDelta::default();
        for &s in seqs {
            let d = t.observe(proxy, s, true);
            total.gaps += d.gaps;
            total.duplicates += d.duplicates;
            total.late += d.late;
        }
        total
    }

    #[test]
    fn in_order_stream_has_no_gaps_or_duplicates() {
        let mut t = SequenceTracker::new(64, 10);
        let seqs: Vec<i64> = (1..=1000).collect();
        assert_eq!(feed(&mut t, "p", &seqs), SeqDelta::default());
    }

    #[test]
    fn gaps_count_once_the_window_passes_and_duplicates_at_once() {
        let mut t = SequenceTracker::new(64, 10);
        let mut seqs: Vec<i64> = (1..=200).filter(|s| *s != 7 && *s != 50).collect();
        seqs.insert(20, 9); // duplicate of 9
        seqs.swap(30, 31); // reordering is fine
        let d = feed(&mut t, "p", &seqs);
        assert_eq!((d.gaps, d.duplicates, d.late), (2, 1, 0));
        // 7 arrives after the window moved on: late, not a duplicate.
        assert_eq!(feed(&mut t, "p", &[7]).late, 1);
    }

    #[test]
    fn big_jumps_count_every_missing_number() {
        let mut t = SequenceTracker::new(64, 10);
        feed(&mut t, "p", &[1, 2, 3]);
        let d = feed(&mut t, "p", &[1003]);
        // 4..=939 left the window unseen (window now 940..=1003).
        assert_eq!(d.gaps, 936);
        let d = feed(&mut t, "p", &(940..1003).collect::<Vec<_>>());
        assert_eq!(d, SeqDelta::default());
    }

    #[test]
    fn gaps_not_counted_when_disabled_and_state_is_bounded() {
        let mut t = SequenceTracker::new(64, 2);
        assert_eq!(t.observe("a", 1, false), SeqDelta::default());
        assert_eq!(t.observe("a", 500, false).gaps, 0);
        t.observe("b", 1, true);
        t.observe("c", 1, true);
        assert_eq!(t.proxies(), 2);
        assert!(
            !t.proxies.contains_key("a"),
            "least recently seen is evicted"
        );
        t.reset();
        assert_eq!(t.proxies(), 0);
    }

    #[test]
    fn first_number_seen_starts_the_window() {
        let mut t = SequenceTracker::new(128, 10);
        // A restart in the middle of a stream: 1..=99 were stored before.
        let seqs: Vec<i64> = (100..400).collect();
        assert_eq!(feed(&mut t, "p", &seqs), SeqDelta::default());
    }
}
