#!/usr/bin/env bash
# Memory returned after load, per allocator, side by side in one run (issue 13, item 6):
# for each variant, a fresh server (--cores 2) on cores 0-1 (shared with the loaders:
# this machine has 2), then
#   1. RSS idle;
#   2. a 2,000-connection flood: `bench ws-relay --peers 2000` (2,000 registered
#      WebSockets relaying at 20,000 msg/s for 5 s), then RSS at its peak and RSS
#      SETTLE_S after every connection closed;
#   3. an fd flood: 15,000 connections from 8 loopback addresses that send half a
#      request line, held 3 s, then dropped; RSS while held and SETTLE_S after;
#   4. throughput: `wrk -c64` on GET /healthz and `bench http --mix heartbeat=1`, 5 s each.
# Variants: glibc malloc without trimming (--malloc-trim-interval 0), glibc malloc with
# the default trim (every 10 s on the control thread), mimalloc, jemalloc (features).
#
#   scripts/bench-memory.sh [ROUNDS]     # default 1; variants alternate within a round
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-1}
SETTLE_S=${SETTLE_S:-12}
OUT=${OUT:-target/bench-memory}
mkdir -p "$OUT" target/alloc
build() { # feature → binary path
  local f=$1 dst=target/alloc/chatixia-core-$1
  if [ "$f" = system ]; then
    cargo build --release --bin chatixia-core -q
  else
    cargo build --release --bin chatixia-core -q --features "$f"
  fi
  cp target/release/chatixia-core "$dst"
}
if [ -z "${NO_BUILD:-}" ]; then
  build mimalloc; build jemalloc; build system
fi
BIN=target/alloc/chatixia-core-system
"$BIN" bench keys --count 2000 --out "$OUT/keys.json" >/dev/null

rss() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
peak() { awk '/^VmHWM:/{print $2}' "/proc/$1/status"; }
fdflood() {
  python3 - "$1" <<'PY'
import socket, sys, time
port = int(sys.argv[1]); conns = []
for i in range(15000):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.bind((f"127.0.0.{2 + i % 8}", 0))
    try:
        s.connect(("127.0.0.1", port)); s.send(b"GET /healthz HT"); conns.append(s)
    except OSError:
        s.close()
time.sleep(3)
for s in conns: s.close()
print(len(conns))
PY
}

printf 'round,variant,idle_kb,ws_peak_kb,ws_after_kb,fd_conns,fd_peak_kb,fd_after_kb,healthz_rps,heartbeat_rps\n' >"$OUT/results.csv"
for round in $(seq 1 "$ROUNDS"); do
  for v in system system+trim mimalloc jemalloc; do
    case $v in
      system) bin=target/alloc/chatixia-core-system; extra=(--malloc-trim-interval 0) ;;
      system+trim) bin=target/alloc/chatixia-core-system; extra=() ;;
      *) bin=target/alloc/chatixia-core-$v; extra=() ;;
    esac
    PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
    URL="http://127.0.0.1:$PORT"
    API_KEYS_FILE="$OUT/keys.json" RUST_LOG=warn "$bin" --cores 2 --stun-url none \
      --listen "127.0.0.1:$PORT" "${extra[@]}" 2>>"$OUT/server.log" &
    pid=$!
    for _ in $(seq 100); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.05; done
    sleep 1
    idle=$(rss $pid)
    "$BIN" bench ws-relay --url "$URL" --keys "$OUT/keys.json" --cores 1 --no-pin --peers 2000 \
      --rate 20000 --duration 5 --warmup 1 --json >"$OUT/relay-$v-$round.json" 2>>"$OUT/bench.log" || true
    ws_peak=$(peak $pid)
    sleep "$SETTLE_S"
    ws_after=$(rss $pid)
    fdflood "$PORT" >"$OUT/fd-$v-$round.txt" &
    fl=$!
    sleep 2.5 # the connections are open and held until 3 s
    fd_peak=$(rss $pid)
    wait $fl
    fd_conns=$(cat "$OUT/fd-$v-$round.txt")
    sleep "$SETTLE_S"
    fd_after=$(rss $pid)
    hz=$(wrk -t1 -c64 -d5s "$URL/healthz" | awk '/Requests\/sec/{print $2}')
    hb=$("$BIN" bench http --url "$URL" --keys "$OUT/keys.json" --cores 1 --no-pin --duration 5 \
      --warmup 1 --concurrency 64 --mix heartbeat=1 --json 2>>"$OUT/bench.log" |
      python3 -c 'import json,sys; r=json.load(sys.stdin); print(r.get("requests_per_s") or r.get("rps") or r.get("throughput_rps") or "?")')
    kill -TERM $pid; wait $pid 2>/dev/null || true
    line="$round,$v,$idle,$ws_peak,$ws_after,$fd_conns,$fd_peak,$fd_after,$hz,$hb"
    echo "$line" | tee -a "$OUT/results.csv"
  done
done
echo "results: $OUT/results.csv"
