//! Spreading upstream requests over connections.
//!
//! Over HTTP/2 hyper's pool multiplexes every request to an origin on one connection and never
//! opens a second one (RFC 9113 §9.1), while providers allow only so many concurrent streams
//! per connection (`SETTINGS_MAX_CONCURRENT_STREAMS`, typically 100-256): past that, requests
//! wait on the connection, and LLM streams last minutes. So each origin gets *shards*,
//! independent pools, and a shard is given at most `max_streams` requests at a time: a request
//! takes the first shard with room (packing streams onto as few connections as possible), and
//! a new shard (so a new connection) is opened only when every shard is full. Over HTTP/1 a
//! shard is an ordinary pool of connections, so sharding changes nothing there.
//!
//! A request's place is held by a [`Slot`] until its response body is dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Shards of one origin at most; past this the least busy shard takes the request (a provider
/// connection then queues it until a stream ends).
pub const MAX_SHARDS_PER_ORIGIN: usize = 256;

/// The HTTP versions a deployment's connections speak (`http2`, `http2_prior_knowledge`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 keep-alive connections, one request at a time each (the default: the least
    /// latency per request; over TLS only `http/1.1` is offered by ALPN).
    #[default]
    Http1,
    /// HTTP/2 when an `https://` upstream accepts it by ALPN, else HTTP/1.1 (`http2: true`).
    Http2,
    /// HTTP/2 with prior knowledge, without negotiation (`http2_prior_knowledge: true`; h2c
    /// over `http://`).
    Http2PriorKnowledge,
}

impl Protocol {
    /// The protocol of a deployment's two settings (prior knowledge wins).
    pub fn of(http2: bool, prior_knowledge: bool) -> Self {
        match (http2, prior_knowledge) {
            (_, true) => Self::Http2PriorKnowledge,
            (true, false) => Self::Http2,
            (false, false) => Self::Http1,
        }
    }
}

/// Default of `upstream_http2_max_streams`: the minimum RFC 9113 advises servers to allow.
pub const DEFAULT_MAX_STREAMS: usize = 100;

/// Which pool family a request belongs to: an origin (`scheme://host:port`, lower case) and
/// the protocol spoken to it. Made once per deployment ([`crate::providers::Target`]); cheap
/// to hash (one string) and to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The HTTP versions spoken to it.
    pub protocol: Protocol,
    /// `scheme://authority`, lower case.
    pub authority: Arc<str>,
}

impl Origin {
    /// The origin of `uri`.
    pub fn of(uri: &http::Uri, protocol: Protocol) -> Self {
        let scheme = uri.scheme_str().unwrap_or("http");
        let host = uri.authority().map_or("", |a| a.as_str());
        Self {
            protocol,
            authority: format!("{scheme}://{host}").to_ascii_lowercase().into(),
        }
    }
}

#[derive(Debug)]
struct Shard<C> {
    client: C,
    in_flight: Arc<AtomicUsize>,
}

/// Shards by origin (`C` is the pooled client of one shard).
#[derive(Debug)]
pub struct Shards<C> {
    max_streams: usize,
    by_origin: Mutex<foldhash::HashMap<Origin, Vec<Shard<C>>>>,
}

/// One request's place on a shard; frees it when dropped.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<C: Clone> Shards<C> {
    /// Shards that take at most `max_streams` requests each (at least 1).
    pub fn new(max_streams: usize) -> Self {
        Self {
            max_streams: max_streams.max(1),
            by_origin: Mutex::new(foldhash::HashMap::default()),
        }
    }

    /// The client to send a request for `origin` on, and its place; `make` builds the client
    /// of a new shard.
    pub fn checkout(&self, origin: &Origin, make: impl FnOnce() -> C) -> (C, Slot) {
        let mut map = self.by_origin.lock().unwrap_or_else(|p| p.into_inner());
        let shards = match map.get_mut(origin) {
            Some(s) => s,
            None => map.entry(origin.clone()).or_default(),
        };
        let load = |s: &Shard<C>| s.in_flight.load(Ordering::Acquire);
        let idx = match shards.iter().position(|s| load(s) < self.max_streams) {
            Some(i) => i,
            None if shards.len() < MAX_SHARDS_PER_ORIGIN => {
                shards.push(Shard {
                    client: make(),
                    in_flight: Arc::new(AtomicUsize::new(0)),
                });
                shards.len() - 1
            }
            None => (0..shards.len())
                .min_by_key(|&i| load(&shards[i]))
                .unwrap_or(0),
        };
        let shard = &shards[idx];
        shard.in_flight.fetch_add(1, Ordering::AcqRel);
        (shard.client.clone(), Slot(Arc::clone(&shard.in_flight)))
    }

    /// Shards open for `origin` (for tests and diagnostics).
    pub fn shard_count(&self, origin: &Origin) -> usize {
        let map = self.by_origin.lock().unwrap_or_else(|p| p.into_inner());
        map.get(origin).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(url: &str) -> Origin {
        Origin::of(&url.parse().unwrap(), Protocol::Http1)
    }

    #[test]
    fn fills_a_shard_before_opening_the_next_and_reuses_freed_places() {
        let shards: Shards<usize> = Shards::new(2);
        let o = origin("https://api.example.com/v1/chat/completions");
        let mut made = 0;
        let mut make = || {
            made += 1;
            made
        };
        let (a, sa) = shards.checkout(&o, &mut make);
        let (b, _sb) = shards.checkout(&o, &mut make);
        let (c, _sc) = shards.checkout(&o, &mut make);
        assert_eq!((a, b, c), (1, 1, 2), "third request opens a second shard");
        drop(sa);
        let (d, _sd) = shards.checkout(&o, &mut make);
        assert_eq!(d, 1, "a freed place on the first shard is taken first");
        assert_eq!(shards.shard_count(&o), 2);
    }

    #[test]
    fn a_deployment_speaks_http1_unless_it_asks_for_http2() {
        assert_eq!(Protocol::of(false, false), Protocol::Http1);
        assert_eq!(Protocol::default(), Protocol::Http1);
        assert_eq!(Protocol::of(true, false), Protocol::Http2);
        assert_eq!(Protocol::of(false, true), Protocol::Http2PriorKnowledge);
        assert_eq!(Protocol::of(true, true), Protocol::Http2PriorKnowledge);
    }

    #[test]
    fn origins_and_protocols_have_their_own_shards() {
        let shards: Shards<&str> = Shards::new(1);
        let a = origin("http://a:80/v1");
        let b = origin("http://b:80/v1");
        let a_h2c = Origin::of(
            &"http://a:80/v1".parse().unwrap(),
            Protocol::Http2PriorKnowledge,
        );
        let _s1 = shards.checkout(&a, || "a");
        let _s2 = shards.checkout(&b, || "b");
        let _s3 = shards.checkout(&a_h2c, || "a-h2c");
        assert_eq!(shards.shard_count(&a), 1);
        assert_eq!(shards.shard_count(&b), 1);
        assert_eq!(shards.shard_count(&a_h2c), 1);
    }

    #[test]
    fn past_the_shard_cap_the_least_busy_shard_is_used() {
        let shards: Shards<usize> = Shards::new(1);
        let o = origin("http://a/v1");
        let mut next = 0;
        let mut held: Vec<Slot> = (0..MAX_SHARDS_PER_ORIGIN)
            .map(|_| {
                shards
                    .checkout(&o, || {
                        next += 1;
                        next
                    })
                    .1
            })
            .collect();
        assert_eq!(shards.shard_count(&o), MAX_SHARDS_PER_ORIGIN);
        // A freed place (shard 5) is taken without opening a shard.
        held.remove(4);
        let (five, _extra) = shards.checkout(&o, || unreachable!());
        assert_eq!(five, 5);
        // All full, shard 1 doubly so: the next least busy (first on ties) is shard 2.
        let (one, _s1) = shards.checkout(&o, || unreachable!());
        assert_eq!(one, 1);
        let (two, _s2) = shards.checkout(&o, || unreachable!());
        assert_eq!(two, 2, "all full: least busy (first on ties)");
        assert_eq!(shards.shard_count(&o), MAX_SHARDS_PER_ORIGIN);
    }
}
