#!/usr/bin/env bash
# What a connected dashboard costs the server: 10,000 agents heartbeating (2,000
# heartbeats/s, i.e. each agent every 5 s) on one shard, in three back-to-back phases of
# the same run: without a dashboard, with one dashboard event stream connected, without
# again. Server CPU = utime+stime from /proc/PID/stat over each phase; memory = VmRSS
# after each phase; bytes/s = what the event stream delivered during its phase.
# Usage: scripts/bench-dashboard.sh [SECONDS_PER_PHASE] [AGENTS] [RATE]
#        scripts/bench-dashboard.sh paging [AGENTS] [CORES]  # page latency at AGENTS agents
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=phases
# Paging: the registry holds at most 16,384 agents per shard (AgentStoreConfig), so the
# server runs CORES shards (default 2: 30,000 agents).
CORES=1
if [ "${1:-}" = paging ]; then MODE=paging; CORES=${3:-2}; shift; set -- 6 "${1:-30000}" 20000; fi
SECS=${1:-15}
AGENTS=${2:-10000}
RATE=${3:-2000}
cargo build --release --bin chatixia-core -q
BIN=target/release/chatixia-core
TMP=$(mktemp -d)
trap 'kill -TERM ${pid:-0} 2>/dev/null || true; rm -rf "$TMP"' EXIT
"$BIN" bench keys --count "$([ "$MODE" = paging ] && echo 1 || echo "$AGENTS")" --out "$TMP/peers.json"
python3 - "$TMP/peers.json" "$TMP/keys.json" <<'PY'
import json, sys
keys = json.load(open(sys.argv[1]))
keys["keys"]["ak_bench_admin"] = {"peer_id": "bench-admin", "role": "admin"}
json.dump(keys, open(sys.argv[2], "w"))
PY
PIN=0; [ "$CORES" -gt 1 ] && PIN="0-$((CORES - 1))"
API_KEYS_FILE="$TMP/keys.json" RUST_LOG=warn taskset -c "$PIN" "$BIN" --cores "$CORES" \
  --listen 127.0.0.1:0 --port-file "$TMP/addr" --stun-url none &
pid=$!
for _ in $(seq 100); do [ -s "$TMP/addr" ] && break; sleep 0.05; done
URL="http://$(cat "$TMP/addr")"
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
hz=$(getconf CLK_TCK)
load() {
  taskset -c 1 "$BIN" bench http --url "$URL" --keys "$TMP/peers.json" --no-pin --json \
    --mix heartbeat=1 --agents "$AGENTS" --rate "$RATE" --concurrency 64 \
    --warmup 0 --duration "$1" > "$TMP/load.json"
}
if [ "$MODE" = paging ]; then
  echo "== registering $AGENTS agents (one keep-alive connection)"
  python3 - "$URL" "$AGENTS" <<'PY'
import http.client, json, sys
from urllib.parse import urlparse
u = urlparse(sys.argv[1]); c = http.client.HTTPConnection(u.hostname, u.port)
for i in range(int(sys.argv[2])):
    body = json.dumps({"agent_id": f"bench-{i:07d}", "hostname": f"host-{i % 500}",
                       "capabilities": {"skills": [f"s{i % 10}"]}})
    c.request("POST", "/api/registry/agents", body, {"Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
  token=$(curl -sf -X POST -H 'X-API-Key: ak_bench_admin' "$URL/api/token" |
    python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])')
  total=$(curl -sf -H "Authorization: Bearer $token" "$URL/api/dashboard/agents?limit=1" |
    python3 -c 'import json,sys;print(json.load(sys.stdin)["total"])')
  echo "== $total agents; median of 21 sequential requests each (curl time_total)"
  time_of() {
    for _ in $(seq 21); do
      curl -s -o /dev/null -w '%{time_total} %{size_download}\n' -H "Authorization: Bearer $token" "$URL$1"
    done | sort -n | awk '{a[NR]=$1; b[NR]=$2} END {printf "%8.2f ms  %9d B  ", a[11]*1000, b[11]}'
    echo "$1"
  }
  time_of "/api/dashboard/agents?limit=50"
  time_of "/api/dashboard/agents?limit=50&cursor=bench-0015000"
  time_of "/api/dashboard/agents?limit=50&sort=heartbeat&order=desc"
  time_of "/api/dashboard/agents?limit=50&q=0029999"
  time_of "/api/dashboard/agents?limit=50&sort=host&health=active"
  time_of "/api/dashboard/summary"
  time_of "/api/registry/agents"
  exit 0
fi
echo "== priming: registering $AGENTS agents by heartbeat"
load 6
phase() {
  local name=$1 c0 c1 bytes=""
  c0=$(cpu)
  if [ "$name" = "dashboard" ]; then
    token=$(curl -sf -X POST -H 'X-API-Key: ak_bench_admin' "$URL/api/token" |
      python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])')
    timeout "$SECS" curl -sN "$URL/api/dashboard/events?token=$token" > "$TMP/sse.txt" &
    sse=$!
  fi
  load "$SECS"
  if [ "$name" = "dashboard" ]; then
    wait "$sse" 2>/dev/null || true
    bytes=$(wc -c < "$TMP/sse.txt")
  fi
  c1=$(cpu)
  local done_ops
  done_ops=$(python3 -c 'import json,sys;r=json.load(open(sys.argv[1]))["requests"];print(r["ok"], "ok,", r["failed"], "failed")' "$TMP/load.json" 2>/dev/null || true)
  printf '%-12s cpu %6.2f s (%5.1f%% of a core)  rss %7d KiB  heartbeats %s%s\n' "$name" \
    "$(echo "($c1 - $c0) / $hz" | bc -l)" "$(echo "100 * ($c1 - $c0) / $hz / $SECS" | bc -l)" \
    "$(rss)" "$done_ops" "${bytes:+  sse ${bytes} B ($(echo "$bytes / $SECS" | bc) B/s)}"
}
echo "== $SECS s per phase, $RATE heartbeats/s over $AGENTS agents, server on one shard"
phase "no-dash"
phase "dashboard"
phase "no-dash"
