#!/usr/bin/env bash
# Make sure cargo-deny has a RustSec advisory database to check against, offline.
#
# cargo-deny reads the database from a git clone at
#   $CARGO_HOME/advisory-dbs/advisory-db-3157b0e258782691
# (deny.toml's db-path; the suffix is cargo-deny's name for https://github.com/rustsec/advisory-db).
# GitHub is out of reach on our machines and in CI, and no package registry ships the database,
# so the repository keeps a dated snapshot of it (vendor/rustsec-advisory-db.tar.gz: its crates/
# and rust/ advisories, CC0; the commit and date are in vendor/rustsec-advisory-db.commit).
#
#   - a clone already there (say, from `cargo deny fetch db` where GitHub is reachable) is kept;
#   - otherwise the snapshot is unpacked there as a one-commit git repository dated as the
#     snapshot, so cargo-deny's age check reports its true age.
#
# Prints the database's directory as the LAST line of stdout; progress goes to stderr.
# Refresh the snapshot (where GitHub is reachable): scripts/ensure-advisory-db.sh --refresh
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
SNAPSHOT="$ROOT/vendor/rustsec-advisory-db.tar.gz"
COMMIT_FILE="$ROOT/vendor/rustsec-advisory-db.commit"
DB="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs/advisory-db-3157b0e258782691"

log() { printf 'ensure-advisory-db: %s\n' "$*" >&2; }

if [ "${1:-}" = "--refresh" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    log "cloning https://github.com/rustsec/advisory-db …"
    git clone -q --depth 1 https://github.com/rustsec/advisory-db "$tmp/db"
    git -C "$tmp/db" archive --format=tar --prefix=advisory-db/ HEAD crates rust LICENSE.txt README.md \
        | gzip -9n > "$SNAPSHOT"
    git -C "$tmp/db" log -1 --format='%H %cI' > "$COMMIT_FILE"
    log "snapshot refreshed: $(cat "$COMMIT_FILE")"
    exit 0
fi

if git -C "$DB" rev-parse --verify -q HEAD >/dev/null 2>&1; then
    log "using the advisory database at $DB ($(git -C "$DB" log -1 --format=%cs))"
    echo "$DB"
    exit 0
fi

read -r commit date < "$COMMIT_FILE"
log "no advisory database at $DB: unpacking the repository's snapshot ($commit, $date)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$SNAPSHOT" -C "$tmp"
rm -rf "$DB"
mkdir -p "$(dirname "$DB")"
mv "$tmp/advisory-db" "$DB"
(
    cd "$DB"
    git init -q
    git add -A
    GIT_AUTHOR_DATE="$date" GIT_COMMITTER_DATE="$date" \
        git -c user.name=taskfleet -c user.email=taskfleet@localhost \
        commit -q -m "RustSec advisory-db snapshot $commit"
)
echo "$DB"
