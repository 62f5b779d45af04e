#!/usr/bin/env bash
# scripts/symbol-order.sh — `make symbol-order`: writes link/hot-functions.txt, the functions an
# idle worker and the API run, which build.rs has LLD place together (docs/benchmarks.md, "Idle
# worker memory"). The names carry hashes that change with the toolchain and with any dependency
# update; a stale file costs memory (about 6 MB per idle worker), never the build. Run it after
# `cargo update` or a toolchain change, then rebuild (`cargo build --release`).
#
# How: the release binary of `cargo build --release --bin taskfleet` (the one `make run` and the
# Docker image build) runs the idle-latency benchmark with its `worker` and `api` processes under
# valgrind's callgrind, which lists every function they execute. The worker's come first.
# Needs valgrind (callgrind_control) and nm. Takes about 3 minutes once the binaries are built.
#
# `scripts/symbol-order.sh --check BIN` only says how many of the file's functions BIN has (the
# benchmarks print it, so a stale file shows beside the memory figures).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
OUT=link/hot-functions.txt
WORK=target/symbol-order
log() { printf '==> symbol-order: %s\n' "$*" >&2; }

if [[ "${1:-}" == --check ]]; then
    bin=${2:?usage: symbol-order.sh --check BIN}
    [[ -f "$bin" ]] || { log "no $bin to check"; exit 1; }
    [[ -f "$OUT" ]] || { log "no $OUT: the code of $bin is in the compiler's order"; exit 0; }
    listed=$(grep -vc '^#' "$OUT" || true)
    found=$(nm --defined-only "$bin" 2>/dev/null | awk '{ print $3 }' | grep -cFxf <(grep -v '^#' "$OUT") || true)
    log "$found of $listed functions of $OUT are in $bin"
    if ((found * 2 < listed)); then
        log "stale (a dependency or the toolchain changed since it was written): an idle worker"
        log "takes about 6 MB more until \`make symbol-order\` writes it again"
    fi
    exit 0
fi

command -v valgrind >/dev/null || { log "needs valgrind (apt-get install valgrind)"; exit 1; }
command -v nm >/dev/null || { log "needs nm (binutils)"; exit 1; }
NATS_SERVER_BIN="$(scripts/ensure-nats.sh | tail -n1)"
export NATS_SERVER_BIN

# Two invocations: examples unify the dev-dependencies' features into the library, which would
# give the binary other code and other symbol names than the one users build.
log "building the release binary, then the benchmark (minutes on 2 cores when sources changed)"
"$CARGO" build --release --bin taskfleet
"$CARGO" build --release --example bench
rm -rf "$WORK" && mkdir -p "$WORK/cg"
cp target/release/taskfleet "$WORK/taskfleet"

# The benchmark starts `$TASKFLEET_BIN worker …` and `$TASKFLEET_BIN api …`: run those two under
# callgrind, named by role so the worker's functions can be listed first.
cat >"$WORK/wrap.sh" <<EOF
#!/usr/bin/env bash
case "\$1" in
    worker|api) exec valgrind -q --tool=callgrind --demangle=no \\
        --callgrind-out-file="$PWD/$WORK/cg/\$1.%p" "$PWD/$WORK/taskfleet" "\$@" ;;
esac
exec "$PWD/$WORK/taskfleet" "\$@"
EOF
chmod +x "$WORK/wrap.sh"

# The benchmark ends its processes with a kill, before callgrind writes at exit: have it write
# what it has every second instead (each dump holds the functions run since the one before).
(while sleep 1; do callgrind_control -d >/dev/null 2>&1 || true; done) &
dumper=$!
trap 'kill $dumper 2>/dev/null || true' EXIT
log "idle-latency benchmark with the worker and the API under callgrind (about a minute)"
TASKFLEET_BIN="$PWD/$WORK/wrap.sh" target/release/examples/bench --only latency --samples 100 \
    --out "$WORK/bench.json" >"$WORK/bench.log" 2>&1 \
    || { log "the benchmark failed; see $WORK/bench.log"; exit 1; }
kill $dumper 2>/dev/null || true

# Every function named in the dumps (callgrind names one once per file as "fn=(id) name" or
# "cfn=(id) name"), kept when the binary defines it as code.
names() { cat "$WORK"/cg/"$1".* | sed -nE 's/^c?fn=\([0-9]+\) (.+)$/\1/p' | sort -u; }
nm --defined-only "$WORK/taskfleet" | awk '$2 ~ /^[tTwW]$/ { print $3 }' | sort -u >"$WORK/code"
names worker | comm -12 - "$WORK/code" >"$WORK/worker"
names api | comm -12 - "$WORK/code" | comm -23 - "$WORK/worker" >"$WORK/api"
[[ -s "$WORK/worker" ]] || { log "callgrind listed no function of the worker"; exit 1; }

mkdir -p link
{
    echo "# Written by scripts/symbol-order.sh (make symbol-order) with $(rustc --version | cut -d' ' -f1-2):"
    echo "# the functions an idle worker runs ($(wc -l <"$WORK/worker")), then those only the API runs"
    echo "# ($(wc -l <"$WORK/api")). build.rs has LLD place them first in .text. Regenerate after a"
    echo "# dependency or toolchain update; do not edit by hand."
    cat "$WORK/worker" "$WORK/api"
} >"$OUT"
log "wrote $OUT: $(wc -l <"$WORK/worker") worker functions, $(wc -l <"$WORK/api") more for the API"
log "rebuild to use it: cargo build --release"
