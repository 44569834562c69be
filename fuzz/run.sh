#!/usr/bin/env bash
# Coverage-guided fuzzing of Tollgate's parsers with cargo-fuzz (libFuzzer + ASan).
#   fuzz/run.sh                 every target for FUZZ_SECS seconds each (default 30)
#   fuzz/run.sh sse_stream      one target
#   FUZZ_SECS=600 fuzz/run.sh   longer (`make fuzz` uses 300)
# Only the stable toolchain is installed here; cargo-fuzz needs nightly flags (-Zsanitizer),
# which RUSTC_BOOTSTRAP=1 unlocks. New inputs go to fuzz/target/corpus-work/<target> (not the
# repo); crashes to fuzz/artifacts/<target>/ — minimise one and copy it into
# fuzz/corpus/<target>/ once fixed, so `fuzz-smoke` (make test) replays it for ever.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
SECS=${FUZZ_SECS:-30}
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=(openai_request sse_stream anthropic_translate avro_decode)
start=$(date +%s)
cargo fuzz build -O
echo "[fuzz] build took $(($(date +%s) - start)) s"
status=0
for t in "${TARGETS[@]}"; do
  work=target/corpus-work/$t
  mkdir -p "$work" "artifacts/$t"
  echo "[fuzz] $t for ${SECS}s"
  # The binary built above, run directly: `cargo fuzz run` would rebuild whenever a source
  # file changed in between (other people edit the proxy while this runs).
  if ! "target/x86_64-unknown-linux-gnu/release/$t" "$work" "corpus/$t" \
    -max_total_time="$SECS" -rss_limit_mb=2048 -max_len=65536 -timeout=10 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 2>"target/$t.log"; then
    status=1
    echo "[fuzz] $t: CRASH (see fuzz/artifacts/$t/ and fuzz/target/$t.log)"
    tail -40 "target/$t.log"
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "target/$t.log" | grep -o '[0-9]*$' || echo '?')
  echo "[fuzz] $t: $execs executions"
done
exit "$status"
