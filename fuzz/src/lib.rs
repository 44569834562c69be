//! Fuzz targets of Tollgate's parsers (see `fuzz_targets/` and `harness.rs`).

pub mod harness;
