#!/usr/bin/env bash
# The long fuzz campaign: tests/fuzz.rs with many cases per target (every
# HTTP body and every client event, on SQLite and PostgreSQL), then its
# figures written to docs/fuzzing.md.
#   scripts/fuzz.sh [CASES_PER_TARGET]    (default: a million inputs in all)
# Needs what scripts/test.sh installs (run it once first).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/postgres.sh

targets=13            # 6 HTTP bodies + 7 client events, in tests/fuzz.rs
cases=${1:-$(( (1000000 + 2 * targets - 1) / (2 * targets) ))}
report=$(mktemp /tmp/readback-fuzz.XXXXXX.jsonl)

pg_start
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
commit=$(git rev-parse --short HEAD)
READBACK_FUZZ_CASES=$cases READBACK_FUZZ_REPORT=$report \
  cargo nextest run --locked --test fuzz --no-fail-fast
python3 - "$report" "$cases" "$started" "$commit" <<'EOF'
import json, sys
path, cases, started, commit = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = [json.loads(line) for line in open(path)]
total = sum(r["cases"] for r in rows)
seconds = sum(r["seconds"] for r in rows)
out = open("docs/fuzzing.md", "w")
out.write(f"""# Fuzzing

`tests/fuzz.rs` feeds every HTTP request body and every client event
payload generated inputs (proptest): valid bodies with fields removed,
retyped or replaced by arbitrary JSON, huge or control-character text,
unknown fields, arbitrary JSON, truncated JSON and arbitrary bytes. The
real daemon answers each; the test fails on a panic, a 5xx, a refusal that
is not problem+json with a `code` and `detail` (HTTP) or not
`{{ ok: false, code, message }}` (Socket.IO), a socket closed for a payload,
or any row stored beyond what was accepted. The test suite runs 64 cases
per target and database; `scripts/fuzz.sh` runs the long campaign and
rewrites this page.

## Last campaign

{total:,} inputs ({cases:,} per target and database), {seconds/60:.1f} minutes of
target time (the four tests run side by side),
started {started} at commit `{commit}`: **no failure** — every input was
accepted or refused clearly, and nothing was stored that was refused.

| database | transport | target | inputs | accepted | refused (status / code: count) |
|---|---|---|---|---|---|
""")
for r in sorted(rows, key=lambda r: (r["transport"], r["target"], r["db"])):
    refused = ", ".join(f"{k}: {v:,}" for k, v in sorted(r["refused"].items()))
    out.write(f"| {r['db']} | {r['transport']} | `{r['target']}` | {r['cases']:,} | {r['accepted']:,} | {refused} |\n")
out.write("""
*Accepted* inputs are the mutations that are still valid requests (a
changed title, an extra optional field): they were stored or acted on as
such, and counted by the test's check that nothing else was.
""")
print(f"docs/fuzzing.md: {total:,} inputs, no failure")
EOF
