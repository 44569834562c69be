//! Kafka topic names.

/// The usage-event topic (v1 schema family). Keyed by account id.
pub const USAGE_TOPIC: &str = "tollgate.usage.v1";
