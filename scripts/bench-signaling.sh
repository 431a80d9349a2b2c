#!/usr/bin/env bash
# Issue 4's signaling measurements, side by side in one run (server on core 0 at
# --cores 1, load generator on core 1):
#  1. relay throughput and latency with 100 and with 10,000 configured API keys
#     (alternating, RUNS times each): relays must not depend on the key count;
#  2. time to connect and register 10,000 peers that all see each other (one mesh:
#     every register returns every connected peer).
# Usage: scripts/bench-signaling.sh [RUNS] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; RATE=${2:-50000}
BIN=target/release/chatixia-core
cargo build --release --bin chatixia-core -q
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
"$BIN" bench keys --count 100 --out "$OUT/keys100.json" >/dev/null
"$BIN" bench keys --count 10000 --out "$OUT/keys10k.json" >/dev/null
pid=
stop() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; pid=; }
trap stop EXIT
start() { # $1 = keys file
  PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  API_KEYS_FILE=$1 RUST_LOG=warn taskset -c 0 "$BIN" --cores 1 --stun-url none --listen "127.0.0.1:$PORT" 2>>"$OUT/server.log" & pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.05; done
}
for run in $(seq 1 "$RUNS"); do
  for k in 100 10k; do
    start "$OUT/keys$k.json"
    taskset -c 1 "$BIN" bench ws-relay --url "http://127.0.0.1:$PORT" --keys "$OUT/keys$k.json" \
      --peers 100 --rate "$RATE" --duration 5 --warmup 1 --json > "$OUT/relay-$k-$run.json"
    stop
    python3 - "$OUT/relay-$k-$run.json" "$k" "$run" <<'PY'
import json,sys
r=json.load(open(sys.argv[1]))
def find(d, *names):
    for n in names:
        if n in d: return d[n]
    return None
print(f"relay keys={sys.argv[2]} run={sys.argv[3]} ", json.dumps({k: r[k] for k in r if k not in ('scenario',)})[:600])
PY
  done
done
start "$OUT/keys10k.json"
taskset -c 1 "$BIN" bench ws-idle --url "http://127.0.0.1:$PORT" --keys "$OUT/keys10k.json" \
  --connections 10000 --hold 1 --server-pid "$pid" --json > "$OUT/register10k.json"
stop
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('register10k', json.dumps(r)[:800])" "$OUT/register10k.json"
echo "reports in $OUT"
