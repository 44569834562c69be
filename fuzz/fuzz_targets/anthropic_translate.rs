//! cargo-fuzz target `anthropic_translate` (body in `src/harness.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate_fuzz::harness::anthropic_translate(data);
});
