//! Contracts between Tollgate components.
//!
//! - [`budgets`]: budget and credit entities, UTC windows, decisions and Redis scripts.
//! - [`event`]: the Avro usage event (`tollgate.UsageEvent`) and its single-object encoding.
//! - [`migrate`]: numbered ClickHouse migrations and the runner that applies them.
//! - [`redis_conn`]: one Redis connection type for a single server or a Redis Cluster.
//! - [`redis_keys`]: the Redis key layout of the config store, rate limits and budgets.
//! - `listener` and `tls` (feature `server`): the HTTP listeners' accept loop and optional TLS.
//! - [`topics`]: Kafka topic names shared by producers and consumers.

pub mod budgets;
pub mod event;
pub mod evolution;
#[cfg(feature = "server")]
pub mod listener;
pub mod migrate;
pub mod redis_conn;
pub mod redis_keys;
pub mod telemetry;
#[cfg(feature = "server")]
pub mod tls;
pub mod topics;

pub use event::{decode, encode, DecodeError, EncodeError, UsageEvent};
