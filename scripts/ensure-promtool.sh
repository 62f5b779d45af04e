#!/usr/bin/env bash
# Make sure Prometheus's `promtool` is available and print its absolute path as the LAST line
# of stdout. All progress messages go to stderr. Exits 1 (with the reason) when it cannot be
# had; `make alerts-check` then skips the check and says so.
#
# Order of preference:
#   1. $PROMTOOL_BIN, if it runs
#   2. `promtool` on PATH
#   3. the cached copy $CACHE/promtool/bin/promtool (CACHE: $TASKFLEET_CACHE, else
#      ${XDG_CACHE_HOME:-~/.cache}/taskfleet; outside the clone, so CI's fresh clones reuse it)
#   4. Debian's `prometheus` package: `apt-get download` (no install: no service, no
#      dependencies; about 19 MB once), `dpkg-deb -x`, and only usr/bin/promtool is kept
#
# Idempotent and fast once cached; concurrent runs serialise on a flock.
#
# Usage:  PROMTOOL="$(scripts/ensure-promtool.sh | tail -n1)"
set -euo pipefail

log() { printf 'ensure-promtool: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

CACHE="${TASKFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/taskfleet}"
INSTALL_DIR="$CACHE/promtool"
LOCAL_BIN="$INSTALL_DIR/bin/promtool"
LOCK_FILE="$CACHE/promtool.lock"

# usable BIN -> exit 0 if BIN is an executable promtool that answers --version
usable() {
    local bin="$1"
    [[ -n "$bin" && -f "$bin" && -x "$bin" ]] || return 1
    timeout 10 "$bin" --version >/dev/null 2>&1 </dev/null
}

found() {
    log "using $1 ($(timeout 10 "$1" --version 2>&1 </dev/null | head -n1))"
    readlink -f -- "$1"
    exit 0
}

if [[ -n "${PROMTOOL_BIN:-}" ]]; then
    usable "$PROMTOOL_BIN" && found "$PROMTOOL_BIN"
    log "PROMTOOL_BIN=$PROMTOOL_BIN does not run; looking elsewhere"
fi
if path_bin="$(command -v promtool 2>/dev/null)" && usable "$path_bin"; then
    found "$path_bin"
fi
if usable "$LOCAL_BIN"; then
    found "$LOCAL_BIN"
fi

command -v apt-get >/dev/null 2>&1 || die "no apt-get here: install Prometheus's promtool and put it on PATH"
command -v dpkg-deb >/dev/null 2>&1 || die "no dpkg-deb here to unpack Debian's prometheus package"

mkdir -p "$CACHE"
exec 9>"$LOCK_FILE"
if ! flock -n 9; then
    log "another ensure-promtool run is installing; waiting for its lock…"
    flock 9
fi
if usable "$LOCAL_BIN"; then
    found "$LOCAL_BIN"
fi

STAGE="$(mktemp -d "$CACHE/promtool.staging.XXXXXX")"
trap 'rm -rf -- "$STAGE"' EXIT
chmod 755 "$STAGE" # apt-get download writes as the _apt user when it can

download() { (cd "$STAGE" && timeout 300 apt-get download -q prometheus >&2); }
log "downloading Debian's prometheus package (for promtool only) …"
if ! download; then
    # No package lists yet (a fresh machine): read them once, as root only.
    if [[ "$(id -u)" == 0 ]]; then
        log "apt-get download failed; running apt-get update once and trying again"
        timeout 300 apt-get update -q >&2 || die "apt-get update failed"
        download || die "apt-get download prometheus failed"
    else
        die "apt-get download prometheus failed (and apt-get update needs root)"
    fi
fi
deb="$(ls "$STAGE"/prometheus_*.deb 2>/dev/null | head -n1)"
[[ -n "$deb" ]] || die "apt-get download left no prometheus_*.deb"
dpkg-deb -x "$deb" "$STAGE/root"
[[ -x "$STAGE/root/usr/bin/promtool" ]] || die "$(basename "$deb") holds no usr/bin/promtool"
mkdir -p "$STAGE/install/bin"
mv -- "$STAGE/root/usr/bin/promtool" "$STAGE/install/bin/promtool"
usable "$STAGE/install/bin/promtool" || die "the unpacked promtool does not run"

rm -rf -- "$INSTALL_DIR"
mv -- "$STAGE/install" "$INSTALL_DIR"
log "installed promtool from $(basename "$deb") at $LOCAL_BIN"
found "$LOCAL_BIN"
