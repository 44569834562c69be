//! Counters of what the mock served.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::openai::Usage;

/// Snapshot of the mock's counters, as returned by
/// [`MockServer::stats`](super::MockServer::stats) and `GET /__mock/stats`.
///
/// * `requests` counts every `POST /v1/chat/completions` received, including
///   injected errors (`x-mock-status`) and invalid bodies, so retries made by
///   a proxy are visible.
/// * `http2_requests` counts requests of any endpoint that arrived over HTTP/2 (h2c: the
///   mock speaks HTTP/2 to clients that open with its preface).
/// * `stream_requests`, `prompt_tokens` and `completion_tokens` count only
///   successful (200) completions, when their response starts (after the
///   latency). For streams the *planned* completion tokens are counted, even
///   if the client disconnects before the last chunk.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MockStats {
    /// Chat-completion requests received (any outcome).
    pub requests: u64,
    /// Successful streaming chat completions.
    pub stream_requests: u64,
    /// Prompt tokens of successful completions.
    pub prompt_tokens: u64,
    /// Completion tokens of successful completions (planned, for streams).
    pub completion_tokens: u64,
    /// Requests of any endpoint received over HTTP/2.
    #[serde(default)]
    pub http2_requests: u64,
}

/// Live atomic counters behind [`MockStats`].
#[derive(Debug, Default)]
pub(crate) struct StatsCounters {
    requests: AtomicU64,
    stream_requests: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    http2_requests: AtomicU64,
}

impl StatsCounters {
    /// Counts one received chat-completion request.
    pub(crate) fn add_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one request received over HTTP/2.
    pub(crate) fn add_http2(&self) {
        self.http2_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one successful completion and its tokens.
    pub(crate) fn add_served(&self, stream: bool, usage: Usage) {
        if stream {
            self.stream_requests.fetch_add(1, Ordering::Relaxed);
        }
        self.prompt_tokens
            .fetch_add(usage.prompt_tokens, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(usage.completion_tokens, Ordering::Relaxed);
    }

    /// Current values.
    pub(crate) fn snapshot(&self) -> MockStats {
        MockStats {
            requests: self.requests.load(Ordering::Relaxed),
            stream_requests: self.stream_requests.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
            http2_requests: self.http2_requests.load(Ordering::Relaxed),
        }
    }

    /// Sets every counter back to zero.
    pub(crate) fn reset(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.stream_requests.store(0, Ordering::Relaxed);
        self.prompt_tokens.store(0, Ordering::Relaxed);
        self.completion_tokens.store(0, Ordering::Relaxed);
        self.http2_requests.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_resets() {
        let c = StatsCounters::default();
        c.add_request();
        c.add_request();
        c.add_http2();
        c.add_served(
            true,
            Usage {
                prompt_tokens: 5,
                completion_tokens: 7,
            },
        );
        c.add_served(
            false,
            Usage {
                prompt_tokens: 1,
                completion_tokens: 2,
            },
        );
        assert_eq!(
            c.snapshot(),
            MockStats {
                requests: 2,
                stream_requests: 1,
                prompt_tokens: 6,
                completion_tokens: 9,
                http2_requests: 1,
            }
        );
        c.reset();
        assert_eq!(c.snapshot(), MockStats::default());
    }
}
