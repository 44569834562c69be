# Tollgate developer entry points. `make demo` and `make test` are all a newcomer needs.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
STACK := infra/dev/stack.sh
STATE := .tollgate

.PHONY: help deps up stop down status build lint test test-rust test-python test-demo demo

help:
	@echo "make demo    start the local stack, proxy, aggregator and mock; send traffic; print usage"
	@echo "make test    install what is missing, start the stack, run lints and every test"
	@echo "make stop    stop the demo processes and the local stack (data kept; 'make down' purges)"
	@echo "make status  show the local stack"

deps:
	@$(STACK) install
	@command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

up: deps
	@$(STACK) up

status:
	@$(STACK) status

stop:
	@infra/dev/demo.sh stop
	@$(STACK) down

down:
	@infra/dev/demo.sh stop
	@$(STACK) down --purge

build:
	cargo build --workspace --all-targets

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

demo:
	@infra/dev/demo.sh

test-rust:
	cargo build --workspace --bins
	cargo nextest run --workspace --no-fail-fast

test-python:
	python3 -m pytest -q schemas/tests dashboards/tests

test-demo:
	@mkdir -p $(STATE)
	infra/dev/demo.sh | tee $(STATE)/demo.out
	python3 infra/dev/check_demo.py $(STATE)/demo.out
	@infra/dev/demo.sh stop

test: up lint test-rust test-python test-demo
	@echo "make test: all suites passed"

.PHONY: bench-aggregator
# Aggregator ingest benchmark (release build): pre-produce events, print stored events/s.
# Needs the local stack (make up). BENCH_EVENTS=N to change the event count.
bench-aggregator:
	cargo run --release -p tollgate-aggregator --bin tollgate-ingest-bench -- --events $${BENCH_EVENTS:-200000}

# Benchmarks (loadtest/scenarios/bench*.yaml; docs/benchmarks.md). Release binaries, the
# local stack (ClickHouse, Redis), a fresh private Kafka broker (Tansu on port 19092, state in
# .tollgate/bench-kafka, wiped per run), then mock, aggregator and both proxies (features on and
# off) started by tollgate-loadtest itself; the dated report lands in bench/results/ (Markdown +
# JSON + SVG). The throwaway broker keeps its log in memory by default: Tansu's SQLite engine
# parses and plans SQL for every record, a cost that a Kafka broker (appending whole batches)
# does not have and that would be charged to the gateway on these 2 cores. It names the engine
# in the report; BENCH_KAFKA_STORAGE=sqlite runs on the durable engine instead.
.PHONY: bench bench-quick bench-build bench-deps
BENCH_BIN := $(or $(CARGO_TARGET_DIR),target)/release
BENCH_TOPIC := tollgate.bench.v1
BENCH_KAFKA_STORAGE ?= memory
BENCH_KAFKA := TOLLGATE_STATE_DIR=$(CURDIR)/$(STATE)/bench-kafka TOLLGATE_KAFKA_PORT=19092 \
  TOLLGATE_KAFKA_STORAGE=$(BENCH_KAFKA_STORAGE) $(STACK)
define bench_run
	@$(STACK) up
	@$(BENCH_KAFKA) stop kafka >/dev/null 2>&1 || true
	@rm -rf $(STATE)/bench-kafka
	@$(BENCH_KAFKA) start kafka
	@$(BENCH_KAFKA) topic $(BENCH_TOPIC) 4
	@# Fresh Redis state: the proxy seeds its YAML entities only once per prefix, so a changed
	@# bench-proxy.yaml would otherwise run with the entities of an earlier run.
	@redis-cli --scan --pattern 'tollgate-bench:*' | xargs -r -n 500 redis-cli del >/dev/null
	@status=0; $(BENCH_BIN)/tollgate-loadtest bench --plan $(1) --bin-dir $(BENCH_BIN) \
	  --kafka-storage $(BENCH_KAFKA_STORAGE) --out bench/results || status=$$?; $(BENCH_KAFKA) stop kafka >/dev/null; exit $$status
endef

bench-build:
	cargo build --release -p tollgate-proxy -p tollgate-aggregator -p tollgate-loadtest --bins

bench-deps: deps
	@$(STACK) install-bench

bench: bench-deps bench-build
	$(call bench_run,loadtest/scenarios/bench.yaml)

bench-quick: bench-deps bench-build
	$(call bench_run,loadtest/scenarios/bench-quick.yaml)

# Rate-limit overhead (Redis backend, release build): added latency at p50/p99.
# Needs the local stack. BENCH_REQUESTS=N to change the sample size.
.PHONY: bench-ratelimit
bench-ratelimit: up
	cargo run -p tollgate-proxy --release --example ratelimit_bench

# Hardening (docs/security.md). `fuzz-smoke` replays fuzz/corpus/ and deterministic mutations
# through the fuzz harnesses as plain tests (proxy/tests/fuzz_corpus.rs; `make test` runs it
# as part of the workspace tests). `fuzz`: real cargo-fuzz runs (libFuzzer + ASan via
# RUSTC_BOOTSTRAP=1 on stable), FUZZ_SECS per target (a cold build alone takes ~9 min here,
# too long for `make test`). `soak`: DURATION seconds (default 3600) of mixed traffic with
# broker/aggregator/Redis restarts on private instances; prints requests, rows, lost,
# duplicated and max RSS per process.
.PHONY: fuzz-smoke fuzz fuzz-ci soak
fuzz-smoke:
	cargo nextest run -p tollgate-proxy --test fuzz_corpus

fuzz:
	FUZZ_SECS=$${FUZZ_SECS:-300} fuzz/run.sh

# What CI runs after `make test` (.ci/run): each target for FUZZ_CI_SECS (default 60) seconds,
# starting from the committed corpus; about 13 minutes with a cold build.
fuzz-ci:
	FUZZ_SECS=$${FUZZ_CI_SECS:-60} fuzz/run.sh

soak: up
	DURATION=$${DURATION:-3600} infra/dev/soak.sh

# Budget enforcement (release build): spend→429 latency p50/p99 and overshoot in USD, without
# and with reservations. Needs the local stack. BENCH_TRIALS, BENCH_LIMIT_USD, BENCH_WORKERS,
# BENCH_BATCH_WAIT_MS tune it (docs/budgets.md).
.PHONY: bench-budget
bench-budget: up
	cargo run -p tollgate-e2e --release --example budget_bench
