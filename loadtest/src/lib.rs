//! Load-testing tools for Tollgate.
//!
//! * [`mock`]: a deterministic mock LLM upstream speaking the OpenAI
//!   chat-completions wire format (plain JSON and SSE streaming), with
//!   per-request fault injection through headers and served-token counters.
//! * [`loadgen`]: a small load generator that fires chat-completion requests
//!   (a configurable share of them streaming) at a Tollgate proxy or directly
//!   at the mock, and summarises status codes, token usage and latencies.

pub mod loadgen;
pub mod mock;
pub mod shutdown;

pub use loadgen::{run, LatencySummary, LoadConfig, LoadReport};
pub use mock::{MockConfig, MockServer, MockStats};
