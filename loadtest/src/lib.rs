//! Load-testing tools for Tollgate.
//!
//! * [`mock`]: a deterministic mock LLM upstream speaking the OpenAI
//!   chat-completions wire format (plain JSON and SSE streaming), with
//!   per-request fault injection through headers and served-token counters.
//! * [`loadgen`]: a small load generator that fires chat-completion requests
//!   (a configurable share of them streaming) at a Tollgate proxy or directly
//!   at the mock, and summarises status codes, token usage and latencies;
//!   scenario runs (open or closed loop) with HDR histograms.
//! * [`scenario`]: scenario files (`loadtest/scenarios/*.yaml`).
//! * [`compare`]: direct-to-mock versus through-the-proxy comparisons,
//!   saturation ramps and the `make bench` benchmark.
//! * [`forward`]: a bare HTTP/1.1 forwarder, the reference hop of the benchmark.
//! * [`chart`], [`verify`], [`procstat`]: SVG charts, the ClickHouse
//!   one-row-per-request check, and `/proc` CPU/RSS readings.

pub mod chart;
pub mod compare;
pub mod forward;
pub mod loadgen;
pub mod mock;
pub mod procstat;
pub mod scenario;
pub mod shutdown;
pub mod verify;

pub use loadgen::{run, LatencySummary, LoadConfig, LoadReport};
pub use mock::{MockConfig, MockServer, MockStats};
