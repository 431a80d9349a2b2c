#!/usr/bin/env bash
# Throughput side by side, alternating, ROUNDS times: glibc malloc without trimming
# (--malloc-trim-interval 0), with the default trim (10 s) and trimming every second.
# GET /healthz (wrk -c64) and heartbeats (bench http --mix heartbeat=1), 5 s each, req/s.
# Needs target/alloc/chatixia-core-system and keys from scripts/bench-memory.sh.
#   scripts/bench-trim-throughput.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
BIN=target/alloc/chatixia-core-system
OUT=target/bench-memory
echo round,variant,healthz_rps,heartbeat_rps
for round in $(seq 1 "$ROUNDS"); do
  for v in 0 10 1; do
    PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
    URL="http://127.0.0.1:$PORT"
    API_KEYS_FILE="$OUT/keys.json" RUST_LOG=warn "$BIN" --cores 2 --stun-url none --listen "127.0.0.1:$PORT" --malloc-trim-interval $v 2>>"$OUT/server.log" &
    pid=$!
    for _ in $(seq 100); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.05; done
    hz=$(wrk -t1 -c64 -d5s "$URL/healthz" | awk '/Requests\/sec/{print $2}')
    hb=$("$BIN" bench http --url "$URL" --keys "$OUT/keys.json" --cores 1 --no-pin --duration 5 --warmup 1 --concurrency 64 --mix heartbeat=1 --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["throughput_rps"])')
    kill -TERM $pid; wait $pid 2>/dev/null || true
    echo "$round,trim=$v,$hz,$hb"
  done
done
