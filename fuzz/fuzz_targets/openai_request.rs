//! cargo-fuzz target `openai_request` (body in `src/harness.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate_fuzz::harness::openai_request(data);
});
