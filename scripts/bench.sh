#!/usr/bin/env bash
# scripts/bench.sh — `make bench` (issue 7): the same work on taskfleet, BullMQ (Node + Redis)
# and raw JetStream, one after another, then a side-by-side table.
#
# Usage: scripts/bench.sh [--quick] [--tasks N] [--only taskfleet,bullmq,raw]
#   --quick and --tasks N go to all three programs (see docs/benchmarks.md for the scenarios:
#   throughput with 1, 2, 4 worker processes × 8 and 1 × 64, idle latency, P0 behind P2, relay
#   to 1 webhook and to 100, idle RSS, writes stored per task; the report judges the storage-v2
#   targets against them).
#   --only runs a subset (the others show "—").
# Writes target/bench/{taskfleet,bullmq,raw}.json (+ .log), target/bench/report.md and
# target/bench/benchmarks.json. A full run (no --quick, no --only, every system succeeded) also
# updates the section between the bench markers of docs/benchmarks.md and docs/benchmarks.json.
# Needs: a Rust toolchain, python3 -m pip (nats-server), node >= 20 + npm, apt-get (redis-server)
# unless redis-server is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/bench
CARGO=${CARGO:-cargo}
pass=()
only="taskfleet,bullmq,raw"
full=1
shown_args=()
while (($#)); do
    case "$1" in
        --quick) pass+=(--quick); full=0; shown_args+=("$1") ;;
        --tasks) [[ $# -ge 2 ]] || { echo "bench.sh: --tasks needs a number" >&2; exit 2; }
                 pass+=(--tasks "$2"); shown_args+=("$1" "$2"); shift ;;
        --tasks=*) pass+=(--tasks "${1#*=}"); shown_args+=("$1") ;;
        --only) [[ $# -ge 2 ]] || { echo "bench.sh: --only needs a list" >&2; exit 2; }
                only="$2"; full=0; shown_args+=("$1" "$2"); shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
wants() { [[ ",$only," == *",$1,"* ]]; }

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
T_ALL=$(now)
timings=()
failed=()
step=0
STEP_T=
begin() { step=$((step + 1)); STEP_T=$(now); echo "==> [$step] $*" >&2; }
end() {
    local t; t=$(since "$STEP_T")
    echo "    [$step] $1 in $t s" >&2
    timings+=("$(printf '%-34s %7s s  %s' "$2" "$t" "$1")")
}

mkdir -p "$OUT"

begin "ensure nats-server >= 2.11 (scripts/ensure-nats.sh)"
NATS_SERVER_BIN="$(scripts/ensure-nats.sh | tail -n1)"
[[ -x "$NATS_SERVER_BIN" ]] || { echo "error: no nats-server found/installed" >&2; exit 1; }
export NATS_SERVER_BIN
echo "    using $NATS_SERVER_BIN ($("$NATS_SERVER_BIN" --version 2>&1))" >&2
end done "ensure nats-server"

bullmq_ok=0
if wants bullmq; then
    if [[ ! -f bench/bullmq/bench.mjs ]]; then
        echo "==> BullMQ: bench/bullmq/bench.mjs does not exist; skipping BullMQ" >&2
        failed+=("bullmq (no bench/bullmq/bench.mjs)")
    elif ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        echo "==> BullMQ: node/npm not on PATH; skipping BullMQ" >&2
        failed+=("bullmq (no node/npm)")
    else
        begin "ensure redis-server (scripts/ensure-redis.sh)"
        REDIS_SERVER="$(scripts/ensure-redis.sh | tail -n1)"
        export REDIS_SERVER
        echo "    using $REDIS_SERVER" >&2
        end done "ensure redis-server"

        begin "npm ci in bench/bullmq (skipped when node_modules matches package-lock.json)"
        stamp=bench/bullmq/node_modules/.bench-lock.sha256
        lock_sum=$(sha256sum bench/bullmq/package-lock.json bench/bullmq/package.json | sha256sum | cut -d' ' -f1)
        if [[ -f "$stamp" && "$(cat "$stamp")" == "$lock_sum" ]]; then
            end "up to date, skipped" "npm ci"
        else
            (cd bench/bullmq && npm ci --no-audit --no-fund >&2)
            echo "$lock_sum" >"$stamp"
            end done "npm ci"
        fi
        bullmq_ok=1
    fi
fi

raw_ok=0
examples=(--example bench --example bench_report)
if wants raw; then
    if [[ -f examples/bench_raw.rs || -f examples/bench_raw/main.rs ]]; then
        examples+=(--example bench_raw)
        raw_ok=1
    else
        echo "==> raw JetStream: examples/bench_raw.rs does not exist; skipping it" >&2
        failed+=("raw (no examples/bench_raw.rs)")
    fi
fi

begin "cargo build --release --bin taskfleet, then ${examples[*]} (minutes on 2 cores when sources changed)"
# Two invocations: examples unify the dev-dependencies' features into the library, so a binary
# built beside them is not the one `make run` and the Docker image build (other code, and other
# symbol names than link/hot-functions.txt lists).
"$CARGO" build --release --bin taskfleet
"$CARGO" build --release "${examples[@]}"
scripts/symbol-order.sh --check target/release/taskfleet
end done "cargo build"

# run NAME FILE CMD...: runs one system's program; its stderr goes to the terminal and NAME.log,
# its stdout to NAME.stdout; FILE is its JSON (taken from the last stdout line if not written).
run() {
    local name=$1 file=$2; shift 2
    rm -f "$file" "$OUT/$name.stdout"
    begin "$name: $*"
    local rc=0
    "$@" >"$OUT/$name.stdout" 2> >(tee "$OUT/$name.log" >&2) || rc=$?
    if [[ ! -s "$file" ]]; then
        tail -n1 "$OUT/$name.stdout" | grep '^{' >"$file" || rm -f "$file"
    fi
    if ((rc != 0)); then
        failed+=("$name (exit $rc; see $OUT/$name.log)")
        end "FAILED (exit $rc)" "$name"
    else
        end done "$name"
    fi
}

if wants taskfleet; then
    run taskfleet "$OUT/taskfleet.json" \
        target/release/examples/bench "${pass[@]}" --out "$OUT/taskfleet.json"
else
    rm -f "$OUT/taskfleet.json"
fi
if ((bullmq_ok)); then
    run bullmq "$OUT/bullmq.json" \
        node bench/bullmq/bench.mjs --redis-server "$REDIS_SERVER" "${pass[@]}" --out "$OUT/bullmq.json"
else
    rm -f "$OUT/bullmq.json"
fi
if ((raw_ok)); then
    # The raw program does taskfleet's writes for a task published to NATS: the queue message,
    # then compare-and-set appends to the ledger (claim, one per step, finish): 3 + steps.
    run raw "$OUT/raw.json" \
        target/release/examples/bench_raw "${pass[@]}" --out "$OUT/raw.json"
else
    rm -f "$OUT/raw.json"
fi

command="make bench"
if ((${#shown_args[@]})); then command+=" ARGS=\"${shown_args[*]}\""; fi
report=(target/release/examples/bench_report --command "$command")
if ((full)) && ((${#failed[@]} == 0)); then
    report+=(--doc docs/benchmarks.md --json docs/benchmarks.json)
    where="docs/benchmarks.md, docs/benchmarks.json and $OUT/report.md"
else
    report+=(--json "$OUT/benchmarks.json")
    where="$OUT/report.md and $OUT/benchmarks.json only (docs/ is updated by a full, successful run)"
fi
begin "report → $where"
"${report[@]}" "$OUT/taskfleet.json" "$OUT/bullmq.json" "$OUT/raw.json" >"$OUT/report.md"
cat "$OUT/report.md"
end done "report"

echo >&2
echo "==> timings" >&2
printf '    %s\n' "${timings[@]}" >&2
echo "    total: $(since "$T_ALL") s" >&2
if ((${#failed[@]})); then
    echo "==> incomplete:" >&2
    printf '    %s\n' "${failed[@]}" >&2
    exit 1
fi
