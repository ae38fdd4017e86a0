#!/usr/bin/env bash
# Measures create and list throughput of a release `cadre serve` with wrk
# (an external C load generator, so the figures are the server's).
# Usage: benches/wrk/run.sh   (needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked -q
port=18555
pid=
dir=
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT

# Starts a fresh server on an empty data dir and exports TOKEN.
fresh_server() {
  [ -n "$pid" ] && { kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$dir"; }
  dir=$(mktemp -d)
  # No rate limits: one client drives thousands of requests per second here.
  CADRE_HTTP__RATE_LIMIT_PER_CLIENT__PER_SECOND=0 CADRE_HTTP__RATE_LIMIT_PER_PRINCIPAL__PER_SECOND=0 \
  CADRE_DATA_DIR=$dir CADRE_LISTEN=127.0.0.1:$port CADRE_BOOTSTRAP_PASSWORD=bench-password \
    ./target/release/cadre serve 2>/dev/null &
  pid=$!
  until curl -sf "127.0.0.1:$port/readyz" >/dev/null; do sleep 0.05; done
  TOKEN=$(curl -s "127.0.0.1:$port/api/v1/auth/login" -H 'content-type: application/json' \
    -d '{"email":"admin@localhost","password":"bench-password"}' | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
  export TOKEN
}

fresh_server
echo "== create (concurrency 8)"
for i in 1 2 3; do wrk -t2 -c8 -d5s -s benches/wrk/create.lua "http://127.0.0.1:$port" | grep -E "Requests/sec|non-201"; done

fresh_server
for i in $(seq 1 1000); do
  curl -s -o /dev/null "127.0.0.1:$port/api/v1/agents" -H "authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d "{\"name\":\"l-$i\"}"
done
echo "== list page of 50 at 1,000 agents (concurrency 8)"
for i in 1 2 3; do wrk -t2 -c8 -d5s -s benches/wrk/list.lua "http://127.0.0.1:$port" | grep -E "Requests/sec"; done

fresh_server
AGENT=$(curl -s "127.0.0.1:$port/api/v1/agents" -H "authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' -d '{"name":"ingest"}' | sed 's/.*"id":"\([^"]*\)".*/\1/')
export AGENT
echo "== single-event POST /api/v1/activity (concurrency 64)"
for i in 1 2 3; do wrk -t2 -c64 -d5s -s benches/wrk/activity.lua "http://127.0.0.1:$port" | grep -E "Requests/sec|non-200|Latency"; done
