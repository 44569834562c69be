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
	cargo nextest run --workspace --no-fail-fast

test-python:
	python3 -m pytest -q schemas/tests

test-demo:
	@mkdir -p $(STATE)
	infra/dev/demo.sh | tee $(STATE)/demo.out
	python3 infra/dev/check_demo.py $(STATE)/demo.out
	@infra/dev/demo.sh stop

test: up lint test-rust test-python test-demo
	@echo "make test: all suites passed"
