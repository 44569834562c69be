//! Tollgate proxy: the OpenAI-compatible data plane.
//!
//! Data path: [`http`] (authenticate, parse) → [`routing`] (key and model snapshot) →
//! [`providers`] (forward) → [`http::stream`] (relay and meter) → [`usage`] (publish).

pub mod config;
pub mod http;
pub mod providers;
pub mod routing;
pub mod server;
pub mod usage;

pub use config::ProxyConfig;
pub use server::{start, ProxyHandle};
