#!/usr/bin/env bash
# Make sure headless Chromium and its WebDriver are available for the browser tests
# (tests/it/browser.rs) and print chromedriver's absolute path as the LAST line of stdout.
# All progress messages go to stderr.
#
# Debian's `chromium` and `chromium-driver` packages (/usr/bin/chromium, /usr/bin/chromedriver):
# a test framework that downloads its own browser build cannot work without internet access.
# When both are present their versions are printed; otherwise they are installed with
# `apt-get` (through sudo when not root).
#
# Usage:  CHROMEDRIVER="$(scripts/ensure-chromium.sh | tail -n1)"
set -euo pipefail

CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver

log() { printf 'ensure-chromium: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ ! -x $CHROMIUM || ! -x $CHROMEDRIVER ]]; then
    command -v apt-get >/dev/null 2>&1 || die "no apt-get: install chromium and chromedriver by hand"
    sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo: run 'apt-get install chromium chromium-driver' as root"
        sudo=(sudo)
    fi
    log "installing chromium and chromium-driver with apt-get (a few minutes)…"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >&2
fi
[[ -x $CHROMIUM ]] || die "$CHROMIUM is missing after the install"
[[ -x $CHROMEDRIVER ]] || die "$CHROMEDRIVER is missing after the install"
log "$("$CHROMIUM" --version 2>/dev/null || echo "chromium (version unknown)")"
log "$("$CHROMEDRIVER" --version 2>/dev/null || echo "chromedriver (version unknown)")"
echo "$CHROMEDRIVER"
