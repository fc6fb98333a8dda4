#!/usr/bin/env bash
# Runs the benchmarks against SQLite and a throwaway PostgreSQL and writes
# their figures into docs/:
#   docs/bench-scheduler.md  one scheduler tick with 100,000 idle sessions
#   docs/bench-latency.md    raise -> viewer receipt latency, release build
#   docs/bench-audit.md      audit verify on 1M rows, the report on 100k notifications
#   docs/benchmarks.md       10,000 sockets: memory, latency, raises/s, replay
#   docs/bench-flood.md      raise latency quiet and under a flood of forged tokens
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/postgres.sh
pg_start
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
# The comparison peer of the load benchmark (Node.js socket.io 4).
(cd benches/peer && npm ci --no-audit --no-fund --loglevel=error)

cargo bench --locked --bench scheduler_tick
cargo bench --locked --bench audit
# 10,000 sockets need 10,000 descriptors in each process.
ulimit -n 20000 2>/dev/null || true
cargo bench --locked --bench load

cargo build --release --locked
bin=target/release/readbackd
work=$(mktemp -d)
count=${LATENCY_COUNT:-500}
rows=""
for db in sqlite postgres; do
  if [ "$db" = sqlite ]; then
    url="sqlite://$work/latency.db"
  else
    psql -q "$READBACK_TEST_POSTGRES_URL" -c "DROP DATABASE IF EXISTS readback_latency" -c "CREATE DATABASE readback_latency"
    url="${READBACK_TEST_POSTGRES_URL%/*}/readback_latency"
  fi
  cat > "$work/$db.toml" <<TOML
[server]
listen = "127.0.0.1:0"
[auth]
jwt_secret = "benchmark-secret-0123456789"
[database]
url = "$url"
[logging]
level = "warn"
# Capacity, not a hospital's traffic: one PACS and one viewer far past
# their per-identity limits.
[limits]
raises_burst = 1000000
raises_per_second = 1000000
client_events_burst = 1000000
client_events_per_second = 1000000
TOML
  "$bin" serve --config "$work/$db.toml" > "$work/$db.out" 2>"$work/$db.err" &
  pid=$!
  for _ in $(seq 100); do grep -q listening "$work/$db.out" 2>/dev/null && break; sleep 0.1; done
  base=$(sed -n 's/^readbackd listening on //p' "$work/$db.out")
  service=$("$bin" token --config "$work/$db.toml" --user pacs --role service)
  viewer=$("$bin" token --config "$work/$db.toml" --user bench-viewer --role radiologist)
  figures=$(node benches/latency.mjs "$base" "$service" "$viewer" "$count")
  echo "$db: $figures"
  kill -TERM "$pid"; wait "$pid" || true
  rows="$rows$(python3 - "$db" "$figures" <<'PY'
import json, sys
f = json.loads(sys.argv[2])
print(f"| {sys.argv[1]} | {f['count']} | {f['http_201_p50_ms']} | {f['http_201_p99_ms']} | {f['receipt_p50_ms']} | {f['receipt_p99_ms']} |")
PY
)
"
done
rm -rf "$work"
cat > docs/bench-latency.md <<MD
# Benchmark: raise → viewer receipt

Written by \`scripts/bench.sh\` (\`benches/latency.mjs\`) on $(nproc) cores, $(date -u +%Y-%m-%d).
Release build, one viewer connected over WebSocket (socket.io-client), notifications
raised one after another through \`POST /api/v1/notifications\`; each is committed
(SQLite \`synchronous=FULL\`; PostgreSQL as the test cluster runs it, \`fsync=off\`)
before the \`201\`. Receipt = from sending the HTTP request to the
\`critical_notification\` arriving on the socket.

| database | raises | 201 p50 (ms) | 201 p99 (ms) | receipt p50 (ms) | receipt p99 (ms) |
|---|---|---|---|---|---|
$rows
MD
cat docs/bench-latency.md

scripts/bench-flood.sh
