#!/usr/bin/env bash
# Heartbeat and list-agents throughput and latency percentiles on one shard (--cores 1),
# server and load (wrk) pinned to separate cores. 100 agents are registered first so
# list-agents returns a realistic body; heartbeats rotate over those agents.
# Usage: scripts/bench-api.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --bin chatixia-core -q
BIN=target/release/chatixia-core
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
RUST_LOG=warn taskset -c 0 "$BIN" --cores 1 --listen "127.0.0.1:$PORT" --stun-url none & pid=$!
trap 'kill -TERM $pid 2>/dev/null; rm -rf "$TMP"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.05; done
for i in $(seq 0 99); do
  curl -sf -X POST -H 'content-type: application/json' \
    -d "{\"agent_id\":\"bench-$i\",\"hostname\":\"h$i\",\"skill_names\":[\"s$((i % 10))\"]}" \
    "http://127.0.0.1:$PORT/api/hub/heartbeat" >/dev/null
done
cat > "$TMP/hb.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"agent_id":"bench-%d","hostname":"h","skill_names":["s%d"]}', n % 100, n % 10)
  return wrk.format("POST", "/api/hub/heartbeat", {["content-type"] = "application/json"}, body)
end
LUA
echo "== healthz (reference point, same server, same run)"
taskset -c 1 wrk -t1 -c64 -d"${SECS}s" --latency "http://127.0.0.1:$PORT/healthz" | grep -E "Requests/sec|50%|90%|99%|Latency "
echo "== heartbeat"
taskset -c 1 wrk -t1 -c64 -d"${SECS}s" --latency -s "$TMP/hb.lua" "http://127.0.0.1:$PORT" | grep -E "Requests/sec|50%|90%|99%|Latency "
echo "== list agents (100 agents)"
taskset -c 1 wrk -t1 -c64 -d"${SECS}s" --latency "http://127.0.0.1:$PORT/api/registry/agents" | grep -E "Requests/sec|50%|90%|99%|Latency "
