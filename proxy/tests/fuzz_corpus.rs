//! `fuzz-smoke`: replays the fuzz corpus (`fuzz/corpus/<target>/`) and deterministic
//! mutations of it through the fuzz harness bodies as ordinary tests (no sanitizer, no
//! nightly). Real coverage-guided fuzzing: `make fuzz` (cargo-fuzz).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../fuzz/src/harness.rs"]
mod harness;

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// xorshift64: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\n\n",
    b"\r\n\r\n",
    b"data: ",
    b"[DONE]",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b"null",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"\xff",
    b"\\u0000",
    b"\\ud800",
    b"\"usage\":",
    b"\"type\":\"message_delta\"",
    b"\"model\":\"gpt-mock\"",
];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(5) {
            0 if !out.is_empty() => {
                let end = (at + rng.below(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            1 if at < out.len() => out[at] ^= 1 << rng.below(8),
            2 => {
                let tok = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(at..at, tok.iter().copied());
            }
            3 if !out.is_empty() => {
                let from = rng.below(out.len());
                let end = (from + rng.below(64)).min(out.len());
                let piece = out[from..end].to_vec();
                out.splice(at..at, piece);
            }
            _ => out.truncate(at),
        }
    }
    out
}

fn replay(target: &str) {
    let seeds = corpus(target);
    assert!(!seeds.is_empty(), "empty corpus for {target}");
    for s in &seeds {
        harness::run(target, s);
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ target.len() as u64);
    for i in 0..2_000 {
        let input = mutate(&mut rng, &seeds[i % seeds.len()]);
        harness::run(target, &input);
    }
}

#[test]
fn openai_request_corpus() {
    replay("openai_request");
}

#[test]
fn sse_stream_corpus() {
    replay("sse_stream");
}

#[test]
fn anthropic_translate_corpus() {
    replay("anthropic_translate");
}

#[test]
fn avro_decode_corpus() {
    replay("avro_decode");
}

#[test]
fn every_target_has_a_corpus() {
    for t in harness::TARGETS {
        assert!(!corpus(t).is_empty(), "{t}");
    }
}
