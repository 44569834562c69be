//! cargo-fuzz target `sse_stream` (body in `src/harness.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate_fuzz::harness::sse_stream(data);
});
