#!/usr/bin/env bash
# Schema fuzzing (`make fuzz-api`): schemathesis against a live API, checked against the API's own
# OpenAPI document (GET /api/openapi.json, src/api/openapi.json).
#
# Starts a nats-server from nats.conf on a random port with a temporary store, and
# `taskfleet api` on a random port with a random admin key, then runs two phases:
#
#   1. negative: schema-violating requests (schemathesis's negative mode, which mixes in a few
#      valid ones where it cannot break a request), each task operation aimed at a real task
#      in the state its action needs (one pending, one running, one failed, created first);
#   2. all: valid and invalid requests, every phase (examples, coverage, fuzzing, and stateful
#      runs that follow the document's links from a created or started task).
#
# After each phase, the store must hold exactly what that phase's 2xx answers said they did,
# so no request answered otherwise (4xx, 5xx, none) wrote anything (see writes.py below).
#
# Checks: not_a_server_error, status_code_conformance, content_type_conformance,
# response_schema_conformance, response_headers_conformance, negative_data_rejection (an
# invalid request answered 2xx), missing_required_header, unsupported_method, ignored_auth,
# use_after_free, ensure_resource_availability.
#
# Both processes are ours: they are ended by pid on exit. Reports (JUnit, HAR) and the
# logs go to $FUZZ_REPORT_DIR (default target/schemathesis). Exits non-zero on any failure.
#
# Environment: FUZZ_MAX_EXAMPLES (default 25 per operation), FUZZ_SEED (default random; printed),
# FUZZ_REPORT_DIR. Extra arguments are passed to both `st run`s.
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-25}"
SEED="${FUZZ_SEED:-$((RANDOM * 32768 + RANDOM))}"
REPORT_DIR="${FUZZ_REPORT_DIR:-$ROOT/target/schemathesis}"
CHECKS="not_a_server_error,status_code_conformance,content_type_conformance"
CHECKS+=",response_schema_conformance,response_headers_conformance,negative_data_rejection"
CHECKS+=",missing_required_header,unsupported_method,ignored_auth,use_after_free"
CHECKS+=",ensure_resource_availability"

STARTED=$(date +%s)
log() { printf 'fuzz-api [+%ds]: %s\n' "$(($(date +%s) - STARTED))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v curl >/dev/null || die "curl is needed"

NATS_SERVER_BIN="$(scripts/ensure-nats.sh | tail -n1)"
ST="$(scripts/ensure-schemathesis.sh | tail -n1)"
PY="$(dirname -- "$ST")/python"
log "using $("$ST" --version) and $("$NATS_SERVER_BIN" --version 2>&1)"

log "building taskfleet (debug) …"
cargo build --quiet --bin taskfleet
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/taskfleet"
[[ -x "$BIN" ]] || die "no binary at $BIN"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/taskfleet-fuzz.XXXXXX")"
NATS_PID=""
API_PID=""

# Ends one of our processes by pid: SIGTERM, then SIGKILL after 10 s.
stop() {
    local pid="$1" name="$2" i
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    log "$name (pid $pid) did not stop on SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    stop "$API_PID" "taskfleet api"
    stop "$NATS_PID" "nats-server"
    mkdir -p "$REPORT_DIR"
    cp -f "$WORK"/*.log "$REPORT_DIR"/ 2>/dev/null || true
    rm -rf -- "$WORK"
    if ((rc == 0)); then
        log "passed (reports in $REPORT_DIR)"
    else
        log "FAILED (exit $rc); reports and logs in $REPORT_DIR; rerun with FUZZ_SEED=$SEED"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rm -rf -- "$REPORT_DIR/negative" "$REPORT_DIR/all"
mkdir -p "$REPORT_DIR" "$WORK/ports"

# --- nats-server: nats.conf, random client and monitoring ports, temporary store --------------
"$NATS_SERVER_BIN" -c nats.conf --store_dir "$WORK/store" -p -1 -m -1 \
    --ports_file_dir "$WORK/ports" -l "$WORK/nats-server.log" </dev/null &
NATS_PID=$!
for ((i = 0; i < 100; i++)); do
    ports=("$WORK"/ports/*.ports)
    [[ -s "${ports[0]}" ]] && break
    kill -0 "$NATS_PID" 2>/dev/null || die "nats-server exited: $(tail -n5 "$WORK/nats-server.log")"
    sleep 0.1
done
[[ -s "${ports[0]}" ]] || die "nats-server wrote no ports file"
read -r NATS_URL MONITOR < <("$PY" -c '
import json, sys
ports = json.load(open(sys.argv[1]))
print(ports["nats"][0], ports["monitoring"][0])' "${ports[0]}")
log "nats-server pid $NATS_PID at $NATS_URL (monitoring $MONITOR)"

# --- taskfleet api: random port, random admin key, no retention sweeps during the run ---------
KEY="fuzz-$("$PY" -c 'import secrets; print(secrets.token_hex(16))')"
TASKFLEET_API_KEY="$KEY" NATS_URL="$NATS_URL" TASKFLEET_EVENTS__SWEEP_INTERVAL_S=86400 \
    RUST_LOG=info "$BIN" api --api-addr 127.0.0.1:0 </dev/null 2>"$WORK/api.log" &
API_PID=$!
ADDR=""
for ((i = 0; i < 300; i++)); do
    # "API listening addr=127.0.0.1:PORT", in colours or JSON.
    ADDR="$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/api.log" | grep -m1 'API listening' |
        grep -oE '127\.0\.0\.1:[0-9]+' || true)"
    [[ -n "$ADDR" ]] && break
    kill -0 "$API_PID" 2>/dev/null || die "taskfleet api exited: $(tail -n5 "$WORK/api.log")"
    sleep 0.1
done
[[ -n "$ADDR" ]] || die "taskfleet api did not say where it listens: $(tail -n5 "$WORK/api.log")"
API="http://$ADDR"
for ((i = 0; i < 100; i++)); do
    curl -fsS -o /dev/null "$API/healthz" 2>/dev/null && break
    sleep 0.1
done
curl -fsS -o /dev/null "$API/healthz" || die "$API/healthz does not answer 200"
log "taskfleet api pid $API_PID at $API"

# api METHOD PATH [BODY]: the JSON answer of an admin request (fails on a non-2xx).
api() {
    curl -fsS -X "$1" -H "X-Bot-Key: $KEY" -H 'Content-Type: application/json' \
        ${3:+--data "$3"} "$API$2"
}
json_field() { "$PY" -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# The writes check, run after each phase: whatever the store holds must be what the 2xx answers
# of that phase said they did, so no request answered otherwise (4xx, 5xx, no answer) wrote:
#   - tasks: those stored are those before, plus the 201s of POST /api/tasks, less what the
#     cleanups answered as removed;
#   - each task's log (GET /api/tasks/{id}/logs) grew by exactly one row per 201 create and per
#     200 action on it (start, complete, fail, cancel, retry, step/next, heartbeat, progress)
#     that was not an idempotent replay;
#   - the DELIVERIES stream grew by exactly the pushes and replays answered 202.
cat >"$WORK/writes.py" <<'PY'
import json, sys, urllib.request
from collections import Counter

api, key, monitor, command = sys.argv[1:5]

def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r), r.headers

def snapshot():
    tasks, before = {}, None
    while True:
        q = "limit=1000" + (f"&before={before}" if before else "")
        page, headers = get(f"{api}/api/tasks?{q}", {"X-Bot-Key": key})
        for t in page:
            logs, _ = get(f"{api}/api/tasks/{t['id']}/logs", {"X-Bot-Key": key})
            tasks[t["id"]] = Counter(row["action"] for row in logs)
        before = headers.get("X-Next-Cursor")
        if not before:
            break
    jsz, _ = get(f"{monitor}/jsz?streams=true")
    seqs = {s["name"]: s["state"]["last_seq"]
            for a in jsz.get("account_details", []) for s in a.get("stream_detail", [])}
    return {"tasks": tasks, "deliveries": seqs.get("DELIVERIES", 0)}

if command == "snapshot":
    json.dump(snapshot(), sys.stdout)
    sys.exit(0)

before_file, har = sys.argv[5:7]
before = json.load(open(before_file))
before_tasks = {t: Counter(c) for t, c in before["tasks"].items()}
after = snapshot()
VERBS = {"start": "start", "complete": "complete", "fail": "fail", "cancel": "cancel",
         "retry": "retry", "step": "step", "next": "step", "heartbeat": "heartbeat",
         "progress": "progress", "reschedule": "scheduled"}
explained, created, removed, queued = {}, set(), 0, 0
for e in json.load(open(har))["log"]["entries"]:
    method, path = e["request"]["method"], e["request"]["url"].split("?")[0][len(api):]
    status = e["response"]["status"]
    if not 200 <= status < 300:
        continue
    body = e["response"]["content"].get("text") or ""
    headers = {h["name"].lower(): h["value"] for h in e["response"]["headers"]}
    parts = path.strip("/").split("/")
    if method == "POST" and path == "/api/tasks" and status == 201:
        task = json.loads(body)
        created.add(task["id"])
        # A delayed task's first record is `scheduled`; `create` follows when it fires.
        first = "scheduled" if task["status"] == "scheduled" else "create"
        explained.setdefault(task["id"], Counter())[first] += 1
    elif method == "POST" and path == "/api/tasks" and "taskfleet-folded-into" in headers:
        explained.setdefault(headers["taskfleet-folded-into"], Counter())["scheduled"] += 1
    elif (method == "POST" and len(parts) == 4 and parts[:2] == ["api", "schedules"]
            and parts[3] == "trigger" and status == 201):
        task = json.loads(body)["id"]
        created.add(task)
        explained.setdefault(task, Counter())["create"] += 1
    elif method == "POST" and path == "/api/tasks/cleanup":
        removed += json.loads(body)["removed"]
    elif method == "POST" and path == "/api/push":
        queued += 1
    elif method == "POST" and path.endswith("/replay"):
        queued += len(json.loads(body)["replayed"])
    elif (method in ("PUT", "POST") and len(parts) == 4 and parts[:2] == ["api", "tasks"]
            and parts[3] in VERBS and headers.get("idempotent-replayed") != "true"):
        explained.setdefault(parts[2], Counter())[VERBS[parts[3]]] += 1

# A delayed task that came due during the run was queued (`create`) by the pending list.
for task, rows in after["tasks"].items():
    want = explained.get(task, Counter())
    if want["scheduled"] and rows["create"] > before_tasks.get(task, Counter())["create"]:
        want["create"] += 1

failures = []
known = set(before_tasks) | created
unexplained = sorted(set(after["tasks"]) - known)
if unexplained:
    failures.append(f"tasks stored without a 201 that created them: {unexplained[:10]}")
if len(after["tasks"]) != len(known) - removed:
    failures.append(f"{len(after['tasks'])} tasks stored; the answers account for "
                    f"{len(known) - removed} ({len(before_tasks)} before, {len(created)} "
                    f"created, {removed} removed by cleanup)")
for task, rows in sorted(after["tasks"].items()):
    grew = Counter(rows)
    grew.subtract(before_tasks.get(task, Counter()))
    grew = +grew
    want = explained.get(task, Counter())
    if grew != want:
        failures.append(f"task {task}: its log grew by {dict(grew)}; the 2xx answers say "
                        f"{dict(want)}")
delivered = after["deliveries"] - before["deliveries"]
if delivered != queued:
    failures.append(f"{delivered} delivery jobs were queued; the 202 answers account for {queued}")
for f in failures[:20]:
    print(f"fuzz-api: writes check FAILED: {f}", file=sys.stderr)
changes = sum(sum(c.values()) for c in explained.values())
print(f"fuzz-api: writes check: {len(after['tasks'])} tasks ({len(created)} created, {removed} "
      f"removed), {changes} logged changes and {queued} queued deliveries, each matching a 2xx "
      f"answer" + ("" if not failures else f"; {len(failures)} mismatches"), file=sys.stderr)
sys.exit(1 if failures else 0)
PY
writes() { "$PY" "$WORK/writes.py" "$API" "$KEY" "$MONITOR" "$@"; }

COMMON=(--checks "$CHECKS" --max-examples "$MAX_EXAMPLES" --seed "$SEED" --no-color
    --request-timeout 10 --generation-with-security-parameters false
    -H "X-Bot-Key: $KEY")

# --- phase 1: invalid requests, against real tasks in every state ----------------------------
# task NAME [MORE_FIELDS]: creates a manual task for `fuzz` and prints its id.
task() {
    api POST /api/tasks "{\"task_name\": \"fuzz $1\", \"assigned_to\": \"fuzz\"${2:-}}" |
        json_field id
}
pending="$(task pending)"
running="$(task running ', "steps": ["a", "b"]')"
api PUT "/api/tasks/$running/start" >/dev/null
failed="$(task failed)"
api PUT "/api/tasks/$failed/start" >/dev/null
api PUT "/api/tasks/$failed/fail" '{"error": "for the fuzzer"}' >/dev/null
# The event feed never ends: its first event is enough to check (else it is read until the
# request timeout). No cache: a run is repeated by its seed, not by crashes an earlier run kept
# (in ./.schemathesis).
cat >"$WORK/all.toml" <<EOF
max-stream-events = 1

[cache]
enabled = false
EOF
cat >"$WORK/negative.toml" <<EOF
max-stream-events = 1
# Every task operation aims at a real task in the state where its action applies.
parameters = { "path.id" = "$running" }

[cache]
enabled = false

[[operations]]
include-operation-id-regex = "^(start|cancel)Task(Post)?\$"
parameters = { "path.id" = "$pending" }

[[operations]]
include-operation-id-regex = "^retryTask(Post)?\$"
parameters = { "path.id" = "$failed" }
EOF
writes snapshot >"$WORK/before-negative.json"
log "phase 1/2: invalid requests (seed $SEED), aimed at tasks $pending (pending), $running" \
    "(running) and $failed (failed) …"
rc=0
"$ST" --config-file "$WORK/negative.toml" run "$API/api/openapi.json" "${COMMON[@]}" \
    --mode negative --phases coverage,fuzzing \
    --report junit,har --report-dir "$REPORT_DIR/negative" "$@" || rc=$?
har=("$REPORT_DIR"/negative/har-*.json)
writes verify "$WORK/before-negative.json" "${har[0]}" || rc=1
((rc == 0)) || exit "$rc"

# --- phase 2: valid and invalid requests, and stateful runs -----------------------------------
writes snapshot >"$WORK/before-all.json"
log "phase 2/2: valid and invalid requests, stateful runs through the document's links …"
"$ST" --config-file "$WORK/all.toml" run "$API/api/openapi.json" "${COMMON[@]}" --mode all \
    --report junit,har --report-dir "$REPORT_DIR/all" "$@" || rc=$?
har=("$REPORT_DIR"/all/har-*.json)
writes verify "$WORK/before-all.json" "${har[0]}" || rc=1
exit "$rc"
