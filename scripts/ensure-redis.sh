#!/usr/bin/env bash
# Make sure a redis-server binary is available (for the BullMQ side of
# `make bench`) and print its absolute path as the LAST line of stdout.
# All progress messages go to stderr.
#
# Order of preference:
#   1. $REDIS_SERVER, if it is an executable that runs `--version`
#   2. `redis-server` on PATH (also /usr/bin, /usr/sbin, /usr/local/bin)
#   3. install Debian's `redis-server` package with apt-get
#
# The benchmark starts its own redis-server on a random loopback port, so the
# distro's service is neither needed nor wanted: the install runs with a
# policy-rc.d that forbids starting services, and any distro instance that is
# running anyway (e.g. started by systemd) is stopped and disabled.
#
# Usage:  REDIS_SERVER="$(scripts/ensure-redis.sh | tail -n1)"
set -euo pipefail

log() { printf 'ensure-redis: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Absolute path WITHOUT resolving the last symlink: Debian's redis-server is a
# symlink to redis-check-rdb, which picks its role from argv[0].
abspath() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *)  printf '%s/%s\n' "$(cd -- "$(dirname -- "$1")" && pwd -P)" "$(basename -- "$1")" ;;
    esac
}

# usable BIN -> exit 0 if BIN is an executable redis-server that reports a version
usable() {
    local bin="$1"
    [[ -n "$bin" && -f "$bin" && -x "$bin" ]] || return 1
    timeout 10 "$bin" --version </dev/null 2>&1 | grep -q 'v=[0-9]'
}

found() {
    log "using $(timeout 10 "$1" --version 2>&1 </dev/null | head -n1)"
    abspath "$1"
    exit 0
}

# 1. explicit override
if [[ -n "${REDIS_SERVER:-}" ]]; then
    if usable "$REDIS_SERVER"; then
        found "$REDIS_SERVER"
    fi
    log "REDIS_SERVER=$REDIS_SERVER is not a usable redis-server; looking elsewhere"
fi

# 2. on PATH or in the usual places (Debian puts it in /usr/bin)
find_existing() {
    local cand
    for cand in "$(command -v redis-server 2>/dev/null || true)" \
                /usr/bin/redis-server /usr/sbin/redis-server /usr/local/bin/redis-server; do
        if usable "$cand"; then
            printf '%s\n' "$cand"
            return 0
        fi
    done
    return 1
}
if bin="$(find_existing)"; then
    found "$bin"
fi

# 3. install Debian's package
SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo: install redis-server yourself"
    SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive

# Keep the package's postinst from starting the distro service: a
# policy-rc.d that exits 101 tells invoke-rc.d / deb-systemd-invoke "not now".
# Only add one if the machine has none (Docker images usually ship one already).
POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=0
if [[ ! -e "$POLICY" ]]; then
    printf '#!/bin/sh\n# temporary, from taskfleet scripts/ensure-redis.sh\nexit 101\n' \
        | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    ADDED_POLICY=1
fi
cleanup() { if (( ADDED_POLICY )); then "${SUDO[@]}" rm -f "$POLICY"; fi; }
trap cleanup EXIT

apt_install() {
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends redis-server >&2
}

log "no redis-server found; installing Debian's redis-server with apt-get …"
if ! apt_install; then
    log "apt-get install failed; running apt-get update and trying again …"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update >&2 \
        || die "apt-get update failed"
    apt_install || die "apt-get install redis-server failed"
fi

# Make sure the distro's instance is not running and will not start at boot.
# (`systemctl disable` also works on the unit files when systemd is not running.)
if command -v systemctl >/dev/null 2>&1; then
    if [[ -d /run/systemd/system ]]; then
        "${SUDO[@]}" systemctl stop redis-server >/dev/null 2>&1 || true
    fi
    "${SUDO[@]}" systemctl disable redis-server >/dev/null 2>&1 || true
fi
"${SUDO[@]}" update-rc.d redis-server disable >/dev/null 2>&1 || true
if [[ -s /run/redis/redis-server.pid ]]; then
    pid="$(cat /run/redis/redis-server.pid)"
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping the distro's redis-server service (pid $pid); the benchmark runs its own"
        "${SUDO[@]}" kill "$pid" || true
    fi
fi

bin="$(find_existing)" || die "redis-server still not found after installing it"
log "installed"
found "$bin"
