# mcp-guard — `make run` starts the demo, `make test` runs every test. Both install what they
# need first (idempotent, fast when everything is there).

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      := .venv
PY        := $(VENV)/bin/python
WASM      := target/mcp_guard.wasm
WASM_DIR  := target/wasm/wasm32-wasip1/release
PORT      ?= 10000
STAMPS    := target/stamps

# The wasm32 build uses Debian's rustc-web toolchain with its own std sources (-Zbuild-std):
# no rustup target for wasm32 can be fetched here. Native builds and tests use the default cargo.
DEB_CARGO := /usr/bin/cargo
WASI_LIB   = $(shell dirname "$$(dpkg -L wasi-libc 2>/dev/null | grep '/libc\.a$$' | head -n1)")
# simd128: Wasm SIMD (on in V8 since 9.1, so in every Envoy with V8) lets memchr and memmem scan
# 16 bytes at a time: SSE line ends, the service-key search, JSON strings.
WASM_RUSTFLAGS = -Clink-self-contained=no -Lnative=$(WASI_LIB) -Ctarget-feature=+simd128
APT_PKGS  := rustc-web cargo-web rust-web-src lld wasi-libc binaryen wrk redis-server

.PHONY: help run test unit policy-tests e2e wasm wasm-faults setup lint fmt schema bench clean rls-peer

help:
	@echo "make run    start the demo: Envoy + mcp-guard + a demo MCP server on :$(PORT)"
	@echo "make test   unit tests, then end-to-end tests through real Envoy"
	@echo "make wasm   build $(WASM)"
	@echo "make lint   cargo fmt --check and clippy -D warnings"
	@echo "make schema write policies/config.schema.json from the configuration's types"

# ---- set-up -----------------------------------------------------------------------------------

setup: $(STAMPS)/apt $(STAMPS)/venv $(STAMPS)/idp $(STAMPS)/ts-client

$(STAMPS)/apt:
	@mkdir -p $(STAMPS)
	@missing=$$(for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

$(STAMPS)/venv: tests/requirements.txt
	@mkdir -p $(STAMPS)
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -r tests/requirements.txt
	@touch $@

# The real OpenID Provider (npm oidc-provider) the identity tests run against.
$(STAMPS)/idp: tests/peers/idp/package-lock.json
	@mkdir -p $(STAMPS)
	@cd tests/peers/idp && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The official MCP TypeScript SDK client (pinned in its package.json) the 2026-07-28 tests run.
$(STAMPS)/ts-client: tests/peers/ts-client/package-lock.json
	@mkdir -p $(STAMPS)
	@cd tests/peers/ts-client && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The rate limit service the global-limit tests run against (tests/peers/rls: Envoy's RLS API on
# Kuadrant's limitador with Redis storage). Its own cargo project and Cargo.lock, not part of
# the filter's workspace; built once into target/rls (about 20 minutes on a busy 2-core machine).
RLS_PEER := target/rls/release/mcp-guard-test-rls

rls-peer: $(RLS_PEER) $(STAMPS)/redis

# redis-server is in APT_PKGS; this also installs it where the apt stamp predates it.
$(STAMPS)/redis:
	@mkdir -p $(STAMPS)
	@command -v redis-server >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }
	@touch $@

$(RLS_PEER): tests/peers/rls/Cargo.toml tests/peers/rls/Cargo.lock tests/peers/rls/src/main.rs
	@echo "building the test rate limit service ($@)"
	@cd tests/peers/rls && cargo build -q --release --locked --target-dir ../../../target/rls

# ---- build ------------------------------------------------------------------------------------

WASM_SOURCES := $(shell find filter/src filter/wasm/src -name '*.rs') filter/Cargo.toml filter/wasm/Cargo.toml \
  Cargo.toml $(wildcard Cargo.lock)

wasm: $(WASM)

$(WASM): $(STAMPS)/apt $(WASM_SOURCES)
	@echo "building $(WASM) (wasm32-wasip1, release)"
	@PATH=/usr/bin:$$PATH RUSTC_BOOTSTRAP=1 \
	  CARGO_TARGET_WASM32_WASIP1_LINKER=wasm-ld \
	  CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="$(WASM_RUSTFLAGS)" \
	  $(DEB_CARGO) build --release --lib -p mcp-guard-wasm --target wasm32-wasip1 \
	    -Zbuild-std=std,panic_abort --target-dir target/wasm
	@wasm-opt -O3 --enable-simd --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
	  --enable-mutable-globals $(WASM_DIR)/mcp_guard_wasm.wasm -o $@.tmp && mv $@.tmp $@
	@ls -l $@ | awk '{print "built " $$NF ": " $$5 " bytes"}'

# A test-only build with the fault hook (`x-mcp-guard-fault: trap`), to prove fail-closed.
WASM_FAULTS := target/mcp_guard_faults.wasm
wasm-faults: $(WASM_FAULTS)

$(WASM_FAULTS): $(STAMPS)/apt $(WASM_SOURCES)
	@PATH=/usr/bin:$$PATH RUSTC_BOOTSTRAP=1 \
	  CARGO_TARGET_WASM32_WASIP1_LINKER=wasm-ld \
	  CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="$(WASM_RUSTFLAGS)" \
	  $(DEB_CARGO) build --release --lib -p mcp-guard-wasm --target wasm32-wasip1 --features fault-injection \
	    -Zbuild-std=std,panic_abort --target-dir target/wasm-faults
	@cp target/wasm-faults/wasm32-wasip1/release/mcp_guard_wasm.wasm $@

# make bench's floor (setup w): a Wasm filter that does nothing, built exactly as the filter is.
WASM_EMPTY := target/empty_filter.wasm

$(WASM_EMPTY): $(STAMPS)/apt bench/empty-filter/src/lib.rs bench/empty-filter/Cargo.toml Cargo.toml $(wildcard Cargo.lock)
	@PATH=/usr/bin:$$PATH RUSTC_BOOTSTRAP=1 \
	  CARGO_TARGET_WASM32_WASIP1_LINKER=wasm-ld \
	  CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="$(WASM_RUSTFLAGS)" \
	  $(DEB_CARGO) build --release --lib -p mcp-guard-bench-empty --target wasm32-wasip1 \
	    -Zbuild-std=std,panic_abort --target-dir target/wasm
	@wasm-opt -O3 --enable-simd --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
	  --enable-mutable-globals $(WASM_DIR)/empty_filter.wasm -o $@.tmp && mv $@.tmp $@

# ---- run and test -----------------------------------------------------------------------------

run: setup $(WASM)
	@$(PY) tests/run_demo.py --port $(PORT)

test: setup $(WASM) $(WASM_FAULTS) rls-peer unit policy-tests fuzz-smoke e2e

unit:
	cargo test --workspace

# Every example policy's test cases, through the policy CLI (what a team runs in its own CI).
policy-tests:
	cargo run -q -p mcp-guard-cli --bin mcp-guard -- test policies/*.yaml

e2e: setup $(WASM) $(WASM_FAULTS) rls-peer
	$(PY) -m pytest -q tests

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

# The plugin configuration's JSON Schema is generated from the types that parse it; `make unit`
# fails when the checked-in file differs (filter/tests/config_schema.rs).
schema:
	MCP_GUARD_WRITE_SCHEMA=1 cargo test -q -p mcp-guard --test config_schema

clean:
	rm -rf target

# ---- fuzzing ------------------------------------------------------------------------------------
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer + AddressSanitizer) of the parsers that take
# hostile input: JSON-RPC bodies, SSE streams, bearer tokens (fuzz/fuzz_targets/ says what each
# target checks). cargo fuzz needs nightly flags: RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them. New corpus entries go to fuzz/target/corpus/<target>; the seeds in
# fuzz/corpus/<target> are only read. A failure leaves its input in fuzz/artifacts/<target>/
# (replay: RUSTC_BOOTSTRAP=1 cargo fuzz run --target-dir fuzz/target <target> <file>).

CARGO_FUZZ_VERSION := 0.13.2
FUZZ_TARGETS       := jsonrpc sse token
FUZZ_SECONDS       ?= 300
FUZZ_SMOKE_SECONDS ?= 20

.PHONY: fuzz fuzz-smoke fuzz-tool

fuzz-tool:
	@cargo fuzz --version 2>/dev/null | grep -qx 'cargo-fuzz $(CARGO_FUZZ_VERSION)' || \
	  cargo install cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked

# $(call fuzz-each,<seconds per target>,<extra libFuzzer flags>)
define fuzz-each
	@set -e; for t in $(FUZZ_TARGETS); do \
	  echo "fuzzing $$t for $(1) s"; mkdir -p fuzz/target/corpus/$$t; \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run --target-dir fuzz/target $$t \
	    fuzz/target/corpus/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$(1) -timeout=10 -print_final_stats=1 $(2); \
	done
endef

fuzz: fuzz-tool
	$(call fuzz-each,$(FUZZ_SECONDS))

fuzz-smoke: fuzz-tool
	$(call fuzz-each,$(FUZZ_SMOKE_SECONDS),-verbosity=0)

# ---- benchmark ----------------------------------------------------------------------------------
# `make bench`: plain Envoy, Envoy with a Wasm filter that does nothing, Envoy's native filters
# (jwt_authn + mcp + rbac) and mcp-guard side by side in one run (interleaved rounds, same
# upstream, same wrk load, every answer checked), then further mcp-guard cases, each feature on
# vs off, where each setup's CPU goes (perf), memory (per worker, versus callers and versus
# sessions), limits (local, global, DPoP replays across the fleet), .wasm size and the native
# micro-benchmarks (cargo bench).
# Results: bench/RESULTS.md and stdout; about 25 minutes on 2 cores, plus a few the first time
# (the native benchmarks compile). Options: BENCH_ARGS="--quick" (a smoke run), "--rounds 5",
# "--skip micro", … (see bench/run.py --help).
bench: setup $(WASM) $(WASM_EMPTY)
	$(PY) bench/run.py $(BENCH_ARGS)
