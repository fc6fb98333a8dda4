#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit tests and the
# integration tests against SQLite and a real PostgreSQL.
# Installs what is missing (Debian packages, npm packages), starts
# PostgreSQL as the `postgres` user on loopback in a temporary directory,
# and stops it again on exit. Arguments go to `cargo nextest run`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/postgres.sh

log() { printf '\n== %s\n' "$*"; }

log "prerequisites"
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
# systemd-analyze checks the unit's hardening score.
command -v systemd-analyze >/dev/null || apt_install systemd
# Redis for the scale-out tests (the tests start their own servers).
command -v redis-server >/dev/null || apt_install redis-server
# Headless Chromium (with a font to render text) for the console's browser test.
command -v chromium >/dev/null || apt_install chromium fonts-liberation
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
# promtool checks /metrics and the alert rules. Debian ships it with the
# Prometheus server, which is not wanted running here.
if ! command -v promtool >/dev/null; then
  apt_install prometheus
  if [ -d /run/systemd/system ]; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
fi
# The SMTP server the escalation tests send to.
python3 -c 'import aiosmtpd' 2>/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore aiosmtpd==1.4.6

log "test clients (socket.io-client, playwright-core)"
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)

log "PostgreSQL on loopback"
pg_start

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

log "alert rules and dashboard"
promtool check rules docs/alerts.yml
promtool test rules docs/alerts.test.yml
python3 -m json.tool docs/grafana-dashboard.json >/dev/null && echo "docs/grafana-dashboard.json: JSON ok"

if [ $# -eq 0 ]; then
  log "Debian package"
  command -v cargo-deb >/dev/null || cargo install --locked cargo-deb@3.8.0
  # The dev profile is enough to check what the package holds and does.
  scripts/package.sh --profile dev --output target/debian/readback-test.deb >/dev/null
  contents=$(dpkg-deb -c target/debian/readback-test.deb)
  for path in ./usr/bin/readbackd ./etc/readback/readback.toml ./usr/lib/systemd/system/readbackd.service \
              ./usr/share/doc/readback/operations.md ./usr/share/doc/readback/alerts.yml \
              ./usr/share/doc/readback/grafana-dashboard.json ./usr/share/man/man1/readbackd.1.gz; do
    grep -q " $path\$" <<<"$contents" || { echo "missing from the package: $path"; exit 1; }
  done
  dpkg-deb -I target/debian/readback-test.deb postinst | grep -q 'adduser --system' ||
    { echo "postinst does not create the readback user"; exit 1; }
  echo "package contents ok"
  # lintian, then install, upgrade and purge it on this machine.
  scripts/test-package.sh target/debian/readback-test.deb
fi

log "tests"
cargo nextest run --locked --no-fail-fast "$@"
