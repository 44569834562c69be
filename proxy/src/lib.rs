//! Tollgate proxy: the OpenAI-compatible data plane.
//!
//! Data path: [`http`] (authenticate, parse) → [`routing`] (key and model snapshot) →
//! [`limits`] (rate limits) → [`providers`] (forward) → [`http::stream`] (relay and meter) →
//! [`usage`] (publish).

pub mod admin;
pub mod allowlist;
pub mod budget;
pub mod config;
pub mod entities;
pub mod http;
pub mod limits;
pub mod listener;
pub mod providers;
pub use tollgate_schemas::redis_conn;
pub mod routing;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod usage;

pub use config::ProxyConfig;
pub use server::{start, ProxyHandle};
