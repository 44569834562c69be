//! Disk spool for usage events the broker cannot take right now (to be completed).

use std::path::PathBuf;

use serde::Deserialize;

/// `kafka.spool` settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Spool when Kafka is slow or down (disable only if losing events is acceptable).
    pub enabled: bool,
    /// Directory of the spool segments (one directory per proxy process).
    pub dir: PathBuf,
    /// Largest spool size; events beyond it are dropped and counted.
    pub max_bytes: u64,
    /// How often written records are fsynced, ms.
    pub fsync_interval_ms: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::from("tollgate-spool"),
            max_bytes: 1024 * 1024 * 1024,
            fsync_interval_ms: 200,
        }
    }
}
