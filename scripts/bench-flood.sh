#!/usr/bin/env bash
# Raise latency with and without an unauthenticated flood, on SQLite and
# PostgreSQL, release build; writes docs/bench-flood.md.
#   scripts/bench-flood.sh            (scripts/bench.sh runs it too)
# Environment: FLOOD_RAISES (raises measured per phase, default 1000),
# FLOOD_CONCURRENCY (flood loops, default 32), FLOOD_SECONDS (each flood,
# default 20), FLOOD_REPEAT (runs of each phase, default 3).
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
# PostgreSQL serves the daemon: it runs beside it, not beside the attacker.
# New backends are forked by the postmaster and inherit its cores.
pg_cores() {
  local data postmaster
  data=$(psql -Atq "$READBACK_TEST_POSTGRES_URL" -c "SHOW data_directory")
  postmaster=$(head -1 "$data/postmaster.pid")
  for p in "$postmaster" $(pgrep -P "$postmaster"); do taskset -a -c -p "$1" "$p" >/dev/null; done
}
if [ "$last" -ge 1 ]; then
  pg_cores "0-$(( last - 1 ))"
  # After whatever pg_start set to run at exit (stopping its server).
  at_exit=$(trap -p EXIT | sed -e "s/^trap -- '//" -e "s/' EXIT\$//")
  trap 'pg_cores "0-$last"; eval "$at_exit"' EXIT
fi
concurrency=${FLOOD_CONCURRENCY:-32}
seconds=${FLOOD_SECONDS:-20}
repeat=${FLOOD_REPEAT:-3}

# Starts the daemon on a fresh database with $1 added to [limits]; sets
# pid, base and the tokens. Each phase has its own: what is measured is the
# flood, not the rows the phases before it left.
fresh_daemon() {
  local url
  if [ "$db" = postgres ]; then
    url="${READBACK_TEST_POSTGRES_URL%/*}/readback_flood"
    psql -q "$READBACK_TEST_POSTGRES_URL" -c "DROP DATABASE IF EXISTS readback_flood" -c "CREATE DATABASE readback_flood"
  else
    rm -f "$work"/flood.db*
    url="sqlite://$work/flood.db"
  fi
  cat > "$work/run.toml" <<TOML
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
$1
[logging]
level = "warn"
TOML
  $ours "$bin" serve --config "$work/run.toml" > "$work/daemon.out" 2>"$work/daemon.err" &
  pid=$!
  for _ in $(seq 100); do grep -q listening "$work/daemon.out" 2>/dev/null && break; sleep 0.1; done
  base=$(sed -n 's/^readbackd listening on //p' "$work/daemon.out")
  service=$("$bin" token --config "$work/run.toml" --user pacs --role service)
  viewer=$("$bin" token --config "$work/run.toml" --user bench-viewer --role radiologist)
  admin=$("$bin" token --config "$work/run.toml" --user bench-admin --role admin)
}

stop_daemon() {
  kill -TERM "$pid"; wait "$pid" || true
}

held_total() {
  curl -s "$base/metrics" | sed -n 's/^readback_requests_held_total //p'
}

# One measured phase on a fresh daemon: $1 its name, $2 the flood's source
# addresses (0: no flood), $3 extra [limits]. Appends to results.jsonl.
phase() {
  local flood_figures='{}' flood measured held_before held_after
  fresh_daemon "$3"
  held_before=$(held_total)
  if [ "$2" -gt 0 ]; then
    # The flood runs past the measurement; its figures come at its end.
    $theirs node benches/flood.mjs "$base" "$seconds" "$concurrency" "$2" > "$work/flood.json" &
    flood=$!
    sleep 3
  fi
  measured=$($ours node benches/latency.mjs "$base" "$service" "$viewer" "$raises")
  echo '{"items":[]}' > "$work/audit.json"
  if [ "$2" -gt 0 ]; then
    wait "$flood"
    flood_figures=$(cat "$work/flood.json")
    # Let the last refusal window be written.
    sleep 6
    curl -s -H "authorization: Bearer $admin" "$base/api/v1/audit?action=auth.refused&limit=1000" > "$work/audit.json"
  fi
  held_after=$(held_total)
  stop_daemon
  echo "$db, $1: $measured; flood $flood_figures; held $held_before → $held_after"
  python3 - "$db" "$1" "$measured" "$flood_figures" "$((held_after - held_before))" "$work/audit.json" >> "$work/results.jsonl" <<'PY'
import json, sys
db, name, measured, flood, held = sys.argv[1], sys.argv[2], *map(json.loads, sys.argv[3:6])
with open(sys.argv[6]) as f:
    entries = json.load(f)["items"]
print(json.dumps({"db": db, "phase": name, "measured": measured, "flood": flood, "held": held,
                  "audit_rows": len(entries),
                  "audit_counted": sum(int((e.get("detail") or {}).get("count", 1)) for e in entries)}))
PY
}

: > "$work/results.jsonl"
holding_off=$'refused_logins_burst = 1000000\nrefused_logins_per_second = 1000000'
for db in sqlite postgres; do
  # Interleaved and repeated: a phase's figure is the median of its runs,
  # and the spread of the quiet runs is the noise a flood must stay inside.
  for _ in $(seq "$repeat"); do
    phase "none (quiet)" 0 ""
    # The defaults: an address refused too often is held.
    phase "one address, held (default)" 1 ""
    phase "32 addresses, held (default)" 32 ""
    # Holding off: what each refusal costs, as from more addresses than
    # their budgets hold back.
    phase "one address, holding off" 1 "$holding_off"
  done
done
rows=$(python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
order = []
for r in runs:
    if (r["db"], r["phase"]) not in order:
        order.append((r["db"], r["phase"]))
for db, phase in order:
    rs = [r for r in runs if (r["db"], r["phase"]) == (db, phase)]
    med = lambda key: f"{statistics.median(r['measured'][key] for r in rs):.2f}"
    span = lambda key: f"{min(r['measured'][key] for r in rs):g}–{max(r['measured'][key] for r in rs):g}"
    flooded = [r for r in rs if r["flood"]]
    if flooded:
        mean = lambda key: f"{round(statistics.mean(r['flood'][key] for r in flooded)):,}"
        refused = f"{mean('http_refused_per_s')} + {mean('socket_refused_per_s')} + {mean('capped_per_s')}"
        held = f"{round(statistics.mean(r['held'] / r['flood']['seconds'] for r in flooded)):,}"
        accepted = str(sum(r["flood"]["accepted"] for r in flooded))
        audit = (f"{round(statistics.mean(r['audit_rows'] for r in flooded))} rows for "
                 f"{round(statistics.mean(r['audit_counted'] for r in flooded)):,} refusals")
    else:
        refused = held = accepted = audit = "—"
    print(f"| {db} | {phase} | {refused} | {held} | {med('http_201_p50_ms')} ({span('http_201_p50_ms')}) | "
          f"{med('http_201_p99_ms')} ({span('http_201_p99_ms')}) | {med('receipt_p99_ms')} | {accepted} | {audit} |")
PY
)
rm -rf "$work"
cat > docs/bench-flood.md <<MD
# Benchmark: raises under an unauthenticated flood

Written by \`scripts/bench-flood.sh\` on $(nproc) cores, $(date -u +%Y-%m-%d), release
build. $raises notifications raised one after another (\`benches/latency.mjs\`, one
viewer on WebSocket), first on a quiet daemon, then while \`benches/flood.mjs\` runs
$concurrency loops on the same machine from other addresses (127.0.0.2 on): half POST raises
with a forged token and an 8 KiB User-Agent, half open Socket.IO connections with a forged
token. Every flood request is refused: by the token check (HTTP \`401\`, Socket.IO
\`connect_error\`), or before it by the per-address cap on sessions waiting to
authenticate (\`429\`; a refused handshake holds its place until \`server.connect_timeout\`).
Token refusals are counted in memory and written as one \`auth.refused\` row per source,
channel and reason per \`audit.refusal_window\` (5 s here, 60 s by default).

With the default \`[limits]\`, an address refused more than 50 times, then more than once a
second, is *held*: its next requests wait for its budget to refill before they are
served (see [security.md](security.md)). The floods run from one address and from 32
(one loop each). The last phase runs with holding off (\`refused_logins_*\` at a
million): what each refusal costs when a flood comes from more addresses than
their budgets hold back.

Each phase runs on its own daemon and a fresh database, $repeat times, interleaved
(quiet, one address, 32 addresses, holding off, then again). The figures are
medians with the range of the runs in brackets; the flood's rates and audit rows are
the mean per run. The range of the quiet runs is this machine's run-to-run noise.
The attacker's process is pinned to the last core ($([ "$last" -ge 1 ] && echo "core $last" || echo "not pinned: one core")) and the
daemon and the measuring clients to the others, and so is PostgreSQL, so the slow-down measured is the
daemon's own cost of refusing the flood, not CPU taken by the attacker's process.

| database | flood | refused per s (HTTP 401 + Socket.IO + capped 429) | held per s | 201 p50 (ms) | 201 p99 (ms) | receipt p99 (ms) | flood requests accepted | audit rows written by the flood |
|---|---|---|---|---|---|---|---|---|
$rows
MD
cat docs/bench-flood.md
