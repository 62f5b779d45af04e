# taskfleet — developer entry points.
#
#   make run  [ARGS="--flag ..."]  ensure nats-server, build (release), `taskfleet up`
#   make test [ARGS="filter ..."]  ensure nats-server, run all tests (nextest if present)
#   make check                     rustfmt --check + clippy -D warnings
#   make nats                      just ensure nats-server and print its path
#   make bench [ARGS="--quick"]    taskfleet vs BullMQ vs raw JetStream, side by side (~1.5 min + build)
#   make bench-workers [ARGS=…]    the taskfleet side of `make bench` alone (JSON on stdout)
#   make bench-relay               relay delivery rate, 1 and 100 destinations
#   make bench-scale [ARGS=…]      read routes with 10k/100k/1M tasks stored (1M: long; see docs)
#
# nats-server >= 2.12 comes from $NATS_SERVER_BIN, PATH, or is installed into
# .tools/nats by scripts/ensure-nats.sh; its path is exported as NATS_SERVER_BIN.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO       ?= cargo
ARGS        ?=
ENSURE_NATS := scripts/ensure-nats.sh

# Shell snippet: ensure nats-server and export its path (last stdout line).
define with_nats
echo "==> ensuring nats-server >= 2.12" >&2; \
NATS_SERVER_BIN="$$($(ENSURE_NATS) | tail -n1)"; \
[ -x "$$NATS_SERVER_BIN" ] || { echo "error: no nats-server found/installed" >&2; exit 1; }; \
export NATS_SERVER_BIN; \
echo "==> using NATS_SERVER_BIN=$$NATS_SERVER_BIN ($$("$$NATS_SERVER_BIN" --version 2>&1))" >&2
endef

.PHONY: help run test check nats bench bench-workers bench-relay bench-scale

help:
	@sed -n '3,10p' Makefile | sed 's/^# \{0,1\}//'

nats:
	@$(ENSURE_NATS)

run:
	@$(with_nats); \
	echo "==> building taskfleet (first build takes several minutes on 2 cores)…" >&2; \
	$(CARGO) build --release; \
	echo "==> starting: taskfleet up $(ARGS)" >&2; \
	exec $(CARGO) run --release --quiet -- up $(ARGS)

test:
	@$(with_nats); \
	echo "==> building taskfleet tests (first build takes several minutes on 2 cores)…" >&2; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "==> test runner: cargo nextest (doctests via cargo test --doc first)" >&2; \
		$(CARGO) test --doc; \
		$(CARGO) nextest run --no-fail-fast $(ARGS); \
	else \
		echo "==> test runner: cargo test (cargo-nextest not installed)" >&2; \
		$(CARGO) test $(ARGS); \
	fi

check:
	@echo "==> cargo fmt --all -- --check" >&2; \
	$(CARGO) fmt --all -- --check; \
	echo "==> cargo clippy --all-targets -- -D warnings (first build takes several minutes on 2 cores)…" >&2; \
	$(CARGO) clippy --all-targets -- -D warnings

# Everything (builds, nats-server, redis-server, npm ci, the three programs, the report):
# see scripts/bench.sh.
bench:
	@scripts/bench.sh $(ARGS)

bench-workers:
	@$(with_nats); \
	echo "==> building release binaries (several minutes on 2 cores the first time)…" >&2; \
	$(CARGO) build --release --bin taskfleet --example bench; \
	target/release/examples/bench $(ARGS)

bench-relay:
	@$(with_nats); \
	echo "==> building the relay benchmark (release)…" >&2; \
	$(CARGO) run --release --quiet --example bench_relay -- $(ARGS)

# ARGS="--stages 10000,100000" for a quick run; --help lists the flags. Table on stdout, JSON in
# docs/benchmarks-scale.json (--out FILE).
bench-scale:
	@$(with_nats); \
	echo "==> building release binaries (several minutes on 2 cores the first time)…" >&2; \
	$(CARGO) build --release --bin taskfleet --example bench_scale; \
	target/release/examples/bench_scale $(ARGS)
