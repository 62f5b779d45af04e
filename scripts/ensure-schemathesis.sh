#!/usr/bin/env bash
# Make sure schemathesis (the pinned version) is installed in the project-local
# venv .tools/schemathesis and print the absolute path of its `st` command as
# the LAST line of stdout. All progress messages go to stderr.
#
# Idempotent and fast once installed (one `st --version`); concurrent runs
# serialise on a flock. Needs python3 (>= 3.9) with the venv module.
#
# Usage:  ST="$(scripts/ensure-schemathesis.sh | tail -n1)"
set -euo pipefail

ST_VERSION="4.32.5"

log() { printf 'ensure-schemathesis: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
TOOLS_DIR="$ROOT/.tools"
VENV="$TOOLS_DIR/schemathesis"
ST="$VENV/bin/st"
LOCK_FILE="$TOOLS_DIR/schemathesis.lock"

# installed -> exit 0 when $ST runs and reports the pinned version
# (`st --version` prints e.g. "st, version 4.32.5").
installed() {
    [[ -x "$ST" ]] || return 1
    timeout 60 "$ST" --version 2>/dev/null </dev/null | grep -qE "version ${ST_VERSION//./\\.}\$"
}

if installed; then
    printf '%s\n' "$ST"
    exit 0
fi

mkdir -p "$TOOLS_DIR"
exec 9>"$LOCK_FILE"
if ! flock -n 9; then
    log "another ensure-schemathesis run is installing; waiting for its lock…"
    flock 9
fi
if installed; then
    printf '%s\n' "$ST"
    exit 0
fi

PY=""
for py in "${PYTHON:-}" python3 /usr/bin/python3; do
    [[ -n "$py" ]] && command -v "$py" >/dev/null 2>&1 || continue
    if "$py" -c 'import sys, venv; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
        PY="$py"
        break
    fi
done
[[ -n "$PY" ]] || die "need python3 >= 3.9 with the venv module"

log "installing schemathesis $ST_VERSION from PyPI into .tools/schemathesis (~20 s) …"
# A venv is not relocatable, so it is built in place; a half-done one fails `installed` above
# and is rebuilt from scratch by the next run.
rm -rf -- "$VENV"
if "$PY" -m venv "$VENV" >&2; then
    PIP=("$VENV/bin/python" -m pip)
else
    # Debian's python3 without python3-venv has no ensurepip: a venv without pip, filled by the
    # system pip (>= 22.3 for --python).
    log "python3 -m venv failed; trying a venv without pip, filled by $PY -m pip --python"
    rm -rf -- "$VENV"
    "$PY" -m venv --without-pip "$VENV" >&2 || die "python3 -m venv --without-pip failed"
    PIP=("$PY" -m pip --python "$VENV/bin/python")
fi
if ! PIP_USER=0 PIP_REQUIRE_VIRTUALENV=0 PIP_ROOT_USER_ACTION=ignore "${PIP[@]}" install \
        --quiet --disable-pip-version-check --no-input "schemathesis==$ST_VERSION" >&2; then
    rm -rf -- "$VENV"
    die "pip install schemathesis==$ST_VERSION failed"
fi
installed || die "schemathesis $ST_VERSION does not run from $ST after the install"
log "installed $("$ST" --version 2>&1) at $ST"
printf '%s\n' "$ST"
