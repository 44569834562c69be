//! Configuration of the mock upstream.

/// Behaviour of a [`MockServer`](super::MockServer).
///
/// Latencies can be overridden per request with the `x-mock-latency-ms` and
/// `x-mock-chunk-delay-ms` headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MockConfig {
    /// Delay before the response (status line and headers, hence also the
    /// first byte) of every chat-completion request, in milliseconds.
    pub latency_ms: u64,
    /// Delay between consecutive stream chunks, in milliseconds: slept
    /// before each token chunk and before the final `finish_reason` chunk.
    pub chunk_delay_ms: u64,
    /// Completion tokens produced when the request has neither `max_tokens`
    /// nor `max_completion_tokens` (default 16).
    pub default_completion_tokens: u32,
    /// Upper bound on completion tokens, whatever the request asks
    /// (default 4096).
    pub max_completion_tokens: u32,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            chunk_delay_ms: 0,
            default_completion_tokens: 16,
            max_completion_tokens: 4096,
        }
    }
}
