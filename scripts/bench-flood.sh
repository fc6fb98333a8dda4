#!/usr/bin/env bash
# Raise latency with and without an unauthenticated flood, on SQLite and
# PostgreSQL, release build; writes docs/bench-flood.md.
#   scripts/bench-flood.sh            (scripts/bench.sh runs it too)
# Environment: FLOOD_RAISES (raises measured per phase, default 1000),
# FLOOD_CONCURRENCY (flood loops, default 32).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/postgres.sh
[ -n "${READBACK_TEST_POSTGRES_URL:-}" ] || pg_start
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
cargo build --release --locked
bin=target/release/readbackd
work=$(mktemp -d)
raises=${FLOOD_RAISES:-1000}
# The attacker's process is not the daemon's cost: with two cores or more
# the flood runs on the last core and everything measured on the others.
last=$(( $(nproc) - 1 ))
if [ "$last" -ge 1 ]; then
  ours="taskset -c 0-$(( last - 1 ))"; theirs="taskset -c $last"
else
  ours=""; theirs=""
fi
concurrency=${FLOOD_CONCURRENCY:-32}
rows=""
for db in sqlite postgres; do
  if [ "$db" = sqlite ]; then
    url="sqlite://$work/flood.db"
  else
    psql -q "$READBACK_TEST_POSTGRES_URL" -c "DROP DATABASE IF EXISTS readback_flood" -c "CREATE DATABASE readback_flood"
    url="${READBACK_TEST_POSTGRES_URL%/*}/readback_flood"
  fi
  cat > "$work/$db.toml" <<TOML
[server]
listen = "127.0.0.1:0"
[auth]
jwt_secret = "benchmark-secret-0123456789abcdef"
[database]
url = "$url"
[audit]
refusal_window = "5s"
# One PACS identity raising as fast as it can: the default limit (a burst
# of 500, then 50/s) would measure the limiter, not the raise path.
[limits]
raises_burst = 1000000
raises_per_second = 1000000
[logging]
level = "warn"
TOML
  $ours "$bin" serve --config "$work/$db.toml" > "$work/$db.out" 2>"$work/$db.err" &
  pid=$!
  for _ in $(seq 100); do grep -q listening "$work/$db.out" 2>/dev/null && break; sleep 0.1; done
  base=$(sed -n 's/^readbackd listening on //p' "$work/$db.out")
  service=$("$bin" token --config "$work/$db.toml" --user pacs --role service)
  viewer=$("$bin" token --config "$work/$db.toml" --user bench-viewer --role radiologist)
  admin=$("$bin" token --config "$work/$db.toml" --user bench-admin --role admin)

  quiet=$($ours node benches/latency.mjs "$base" "$service" "$viewer" "$raises")
  # The flood runs well past the measurement; its figures come at its end.
  $theirs node benches/flood.mjs "$base" 90 "$concurrency" > "$work/flood.json" &
  flood=$!
  sleep 3
  flooded=$($ours node benches/latency.mjs "$base" "$service" "$viewer" "$raises")
  wait "$flood"
  flood_figures=$(cat "$work/flood.json")
  # Let the last refusal window be written.
  sleep 6
  audit=$(curl -s -H "authorization: Bearer $admin" "$base/api/v1/audit?action=auth.refused&limit=1000")
  kill -TERM "$pid"; wait "$pid" || true
  echo "$db: quiet $quiet; under flood $flooded; flood $flood_figures"
  rows="$rows$(python3 - "$db" "$quiet" "$flooded" "$flood_figures" "$audit" <<'PY'
import json, sys
db, quiet, flooded, flood, audit = sys.argv[1], *map(json.loads, sys.argv[2:])
entries = audit["items"]
counted = sum(int((e.get("detail") or {}).get("count", 1)) for e in entries)
print(f"| {db} | {quiet['http_201_p50_ms']} / {quiet['http_201_p99_ms']} | "
      f"{flooded['http_201_p50_ms']} / {flooded['http_201_p99_ms']} | "
      f"{quiet['receipt_p99_ms']} → {flooded['receipt_p99_ms']} | "
      f"{flood['http_refused_per_s']:,} + {flood['socket_refused_per_s']:,} + {flood['capped_per_s']:,} | {flood['accepted']} | "
      f"{len(entries)} rows for {counted:,} refusals |")
PY
)
"
done
rm -rf "$work"
cat > docs/bench-flood.md <<MD
# Benchmark: raises under an unauthenticated flood

Written by \`scripts/bench-flood.sh\` on $(nproc) cores, $(date -u +%Y-%m-%d), release
build. $raises notifications raised one after another (\`benches/latency.mjs\`, one
viewer on WebSocket), first on a quiet daemon, then while \`benches/flood.mjs\` runs
$concurrency loops on the same machine from another address (127.0.0.2): half POST raises
with a forged token and an 8 KiB User-Agent, half open Socket.IO connections with a forged
token. Every flood request is refused: by the token check (HTTP \`401\`, Socket.IO
\`connect_error\`), or before it by the per-address cap on sessions waiting to
authenticate (\`429\`; a refused handshake holds its place until \`server.connect_timeout\`).
Token refusals are counted in memory and written as one \`auth.refused\` row per source,
channel and reason per \`audit.refusal_window\` (5 s here, 60 s by default).
The attacker's process is pinned to the last core ($([ "$last" -ge 1 ] && echo "core $last" || echo "not pinned: one core")) and the
daemon and the measuring clients to the others, so the slow-down measured is the
daemon's own cost of refusing the flood, not CPU taken by the attacker's process.

| database | 201 p50 / p99 quiet (ms) | 201 p50 / p99 under flood (ms) | receipt p99 quiet → flood (ms) | refused per s (HTTP 401 + Socket.IO + capped 429) | flood requests accepted | audit rows written by the flood |
|---|---|---|---|---|---|---|
$rows
MD
cat docs/bench-flood.md
