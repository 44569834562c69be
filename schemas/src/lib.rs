//! Contracts between Tollgate components.
//!
//! - [`event`]: the Avro usage event (`tollgate.UsageEvent`) and its single-object encoding.
//! - [`migrate`]: numbered ClickHouse migrations and the runner that applies them.
//! - [`topics`]: Kafka topic names shared by producers and consumers.

pub mod event;
pub mod migrate;
pub mod telemetry;
pub mod topics;

pub use event::{decode, encode, DecodeError, EncodeError, UsageEvent};
