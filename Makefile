# taskfleet — developer entry points.
#
#   make run  [ARGS="--flag ..."]  ensure nats-server, build (release), `taskfleet up`
#   make test [ARGS="filter ..."]  ensure nats-server + chromium, run all tests (nextest if present)
#   make check                     rustfmt --check + clippy -D warnings
#   make fuzz-api [ARGS=…]         schemathesis vs a live API and its OpenAPI document (~1-2 min + build)
#   make deny                      cargo deny check: licences, bans, sources, advisories (RustSec snapshot)
#   make alerts-check              promtool: deploy/prometheus alert rules and their unit tests
#   make nats                      just ensure nats-server and print its path
#   make bench [ARGS="--quick"]    taskfleet vs BullMQ vs raw JetStream, side by side (~1.5 min + build)
#   make bench-workers [ARGS=…]    the taskfleet side of `make bench` alone (JSON on stdout)
#   make bench-relay               relay delivery rate, 1 and 100 destinations
#   make bench-delayed [ARGS=…]    fire lag of 1,000 delayed tasks due in the same second
#   make bench-scale [ARGS=…]      read routes with 10k/100k/1M tasks stored (1M: long; see docs)
#   make chaos [ARGS=…]            fault suite: kill -9 worker/nats/relay/leader, SIGTERM, junk (~3.5 min + build)
#   make symbol-order              rewrite link/hot-functions.txt (after a dependency or toolchain update; ~3 min + build)
#
# nats-server >= 2.12 comes from $NATS_SERVER_BIN, PATH, or is installed into
# .tools/nats by scripts/ensure-nats.sh; its path is exported as NATS_SERVER_BIN.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO       ?= cargo
ARGS        ?=
ENSURE_NATS := scripts/ensure-nats.sh
ENSURE_DENY := scripts/ensure-cargo-deny.sh
ENSURE_CHROMIUM := scripts/ensure-chromium.sh

# Shell snippet: ensure nats-server and export its path (last stdout line).
define with_nats
echo "==> ensuring nats-server >= 2.12" >&2; \
NATS_SERVER_BIN="$$($(ENSURE_NATS) | tail -n1)"; \
[ -x "$$NATS_SERVER_BIN" ] || { echo "error: no nats-server found/installed" >&2; exit 1; }; \
export NATS_SERVER_BIN; \
echo "==> using NATS_SERVER_BIN=$$NATS_SERVER_BIN ($$("$$NATS_SERVER_BIN" --version 2>&1))" >&2
endef

# Shell snippet: ensure headless Chromium + chromedriver (Debian packages, for the browser tests in
# tests/it/browser.rs) and export chromedriver's path as CHROMEDRIVER.
define with_chromium
echo "==> ensuring chromium + chromedriver (browser tests)" >&2; \
CHROMEDRIVER="$$($(ENSURE_CHROMIUM) | tail -n1)"; \
[ -x "$$CHROMEDRIVER" ] || { echo "error: no chromedriver found/installed" >&2; exit 1; }; \
export CHROMEDRIVER; \
echo "==> using CHROMEDRIVER=$$CHROMEDRIVER" >&2
endef

# Shell snippet: the release binary, then example $(1), in two cargo invocations. Examples
# unify the dev-dependencies' features into the library, so a binary built beside them is not the
# one `make run` and the Docker image build (other code, and other symbol names than
# link/hot-functions.txt lists).
define build_release
echo "==> building release binaries (several minutes on 2 cores the first time)…" >&2; \
$(CARGO) build --release --bin taskfleet; \
$(CARGO) build --release --example $(1)
endef

.PHONY: help run test check deny alerts-check nats bench bench-workers bench-relay bench-delayed bench-scale chaos fuzz-api symbol-order

help:
	@sed -n '3,16p' Makefile | sed 's/^# \{0,1\}//'

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
	$(with_chromium); \
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

# cargo-deny against deny.toml, offline (--offline --locked) after `cargo fetch --locked`: cargo
# metadata reads the manifests of every platform's crates, which a build does not download. The
# RustSec advisory database lives on GitHub, which our machines and CI cannot reach, and no
# registry ships it: advisories are checked against a clone at deny.toml's db-path when one is
# there (`cargo-deny fetch db` puts it there), else against the repository's dated snapshot
# (vendor/rustsec-advisory-db.tar.gz, unpacked by scripts/ensure-advisory-db.sh; the check warns
# when the database is over 90 days old).
deny:
	@echo "==> ensuring cargo-deny" >&2; \
	CARGO_DENY="$$($(ENSURE_DENY) | tail -n1)"; \
	[ -x "$$CARGO_DENY" ] || { echo "error: no cargo-deny found/installed" >&2; exit 1; }; \
	echo "==> using $$CARGO_DENY ($$("$$CARGO_DENY" --version 2>&1))" >&2; \
	echo "==> cargo fetch --locked (every platform's crates, for cargo metadata)" >&2; \
	$(CARGO) fetch --locked --quiet; \
	echo "==> cargo deny check licenses bans sources" >&2; \
	"$$CARGO_DENY" --offline --locked check --hide-inclusion-graph --show-stats licenses bans sources; \
	db="$$(scripts/ensure-advisory-db.sh | tail -n1)"; \
	if [ -n "$$db" ]; then \
		at="$$(git -C "$$db" log -1 --format=%cs)"; \
		age=$$(( ($$(date +%s) - $$(git -C "$$db" log -1 --format=%ct)) / 86400 )); \
		echo "==> cargo deny check advisories (RustSec database $$db, newest advisory commit $$at, $$age days old)" >&2; \
		if [ "$$age" -gt 90 ]; then echo "warning: the advisory database is $$age days old: newer advisories are not checked" >&2; fi; \
		"$$CARGO_DENY" --offline --locked check --hide-inclusion-graph --show-stats advisories; \
	else \
		echo "error: no RustSec advisory database (scripts/ensure-advisory-db.sh failed)" >&2; exit 1; \
	fi

# The Prometheus alert rules (deploy/prometheus/alerts.yaml) and their unit tests
# (alerts_test.yaml), with promtool from scripts/ensure-promtool.sh (Debian's prometheus package,
# promtool only, cached outside the clone). Where promtool cannot be had, the check is skipped
# with a notice (the tests in tests/it/deploy/monitoring.rs still check the metric names).
alerts-check:
	@echo "==> ensuring promtool" >&2; \
	if PROMTOOL="$$(scripts/ensure-promtool.sh | tail -n1)" && [ -x "$$PROMTOOL" ]; then \
		"$$PROMTOOL" check rules deploy/prometheus/alerts.yaml; \
		"$$PROMTOOL" test rules deploy/prometheus/alerts_test.yaml; \
	else \
		echo "==> alerts-check: SKIPPED: promtool could not be had (see the ensure-promtool lines above)" >&2; \
	fi

# Everything (builds, nats-server, redis-server, npm ci, the three programs, the report):
# see scripts/bench.sh.
bench:
	@scripts/bench.sh $(ARGS)

bench-workers:
	@$(with_nats); \
	$(call build_release,bench); \
	target/release/examples/bench $(ARGS)

bench-relay:
	@$(with_nats); \
	echo "==> building the relay benchmark (release)…" >&2; \
	$(CARGO) run --release --quiet --example bench_relay -- $(ARGS)

bench-delayed:
	@$(with_nats); \
	echo "==> building the delayed-task benchmark (release)…" >&2; \
	$(CARGO) run --release --quiet --example bench_delayed -- $(ARGS)

# ARGS="--stages 10000,100000" for a quick run; --help lists the flags. Table on stdout, JSON in
# docs/benchmarks-scale.json (--out FILE).
bench-scale:
	@$(with_nats); \
	$(call build_release,bench_scale); \
	target/release/examples/bench_scale $(ARGS)

# The fault suite (docs/reliability.md): every scenario on its own nats-server(s) and release
# binaries; ARGS="--only 1,5 --scale 0.25 --keep" (--help lists the flags). Exits 1 when a
# scenario finds a fault; failed scenarios keep their logs and stores (the paths are printed).
chaos:
	@$(with_nats); \
	$(call build_release,chaos); \
	target/release/examples/chaos $(ARGS)

# The functions a worker and the API run, placed together by the linker (build.rs): an idle
# worker is ~6 MB smaller. Needs valgrind. See scripts/symbol-order.sh.
symbol-order:
	@scripts/symbol-order.sh

# Schema fuzzing (scripts/schemathesis.sh): nats-server and `taskfleet api` on random ports, then
# schemathesis (pinned, installed into .tools/schemathesis) checks every answer against
# GET /api/openapi.json, and the store against the 2xx answers (bad input writes nothing).
# FUZZ_SEED=N repeats a run, FUZZ_MAX_EXAMPLES=N (default 25 per operation); ARGS go to `st run`.
fuzz-api:
	@scripts/schemathesis.sh $(ARGS)
