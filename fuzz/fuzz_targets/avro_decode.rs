//! cargo-fuzz target `avro_decode` (body in `src/harness.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate_fuzz::harness::avro_decode(data);
});
