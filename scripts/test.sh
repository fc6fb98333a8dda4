#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit tests and the
# integration tests against SQLite and a real PostgreSQL.
# Installs what is missing (Debian packages, npm packages), starts
# PostgreSQL as the `postgres` user on loopback in a temporary directory,
# and stops it again on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

log "prerequisites"
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
  apt_install postgresql
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
# Debian's package starts a cluster on port 5432; the tests use their own.
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

log "test clients (socket.io-client)"
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)

log "PostgreSQL on loopback"
pg_dir=$(mktemp -d /tmp/readback-pg.XXXXXX)
chmod 755 "$pg_dir"
pg_user=$(id -un)
run_pg() { "$@"; }
if [ "$(id -u)" = 0 ]; then
  chown postgres:postgres "$pg_dir"
  pg_user=postgres
  run_pg() { runuser -u postgres -- "$@"; }
fi
pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run_pg "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -A trust >/dev/null
stop_pg() { run_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$pg_dir"; }
trap stop_pg EXIT
# fsync off: the tests crash readbackd, never the machine.
run_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/postgres.log" -w \
  -o "-h 127.0.0.1 -p $pg_port -k $pg_dir -c fsync=off -c max_connections=300" start >/dev/null
export READBACK_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
echo "PostgreSQL running as $pg_user on 127.0.0.1:$pg_port"

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

log "tests"
cargo nextest run --locked --no-fail-fast "$@"
