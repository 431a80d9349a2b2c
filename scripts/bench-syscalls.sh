#!/usr/bin/env bash
# System calls, io_uring_enter calls and context switches per request of a server under
# `wrk -t1 -c64` GET /healthz (issue 26: does a server make more kernel entries per
# request than the floor?). Each server on CPU 0, wrk on CPU 1, a 2 s warm-up, then
# `perf stat` on the server's PID over a 3 s window of wrk. Prints per server: requests
# in the window, and each count per request.
# Usage: scripts/bench-syscalls.sh [ROUNDS]
#   BIN=…        chatixia-core (default target/release/chatixia-core)
#   FLOOR_DIR=…  the floors' directory (default target/release/examples: ring_healthz)
#   needs: perf (linux-perf) with the raw_syscalls tracepoints readable, wrk
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
BIN=${BIN:-target/release/chatixia-core}
FLOOR_DIR=${FLOOR_DIR:-target/release/examples}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
command -v perf >/dev/null || { echo "perf is needed (apt-get install linux-perf)" >&2; exit 2; }
TMP=$(mktemp -d)
pid=
. scripts/lib/bench-server.sh  # stop, free_port
trap 'stop; rm -rf "$TMP"' EXIT
run() { # $1 = label
  local port
  case $1 in
    # Ours binds port 0 and reports it (no race for a free port).
    ours) rm -f "$TMP/addr"
          RUST_LOG=warn taskset -c 0 "$BIN" --cores 1 --io-driver uring --stun-url none \
            --listen 127.0.0.1:0 --port-file "$TMP/addr" 2>>"$TMP/server.log" & pid=$!
          for _ in $(seq 200); do [ -s "$TMP/addr" ] && break; sleep 0.05; done
          port=$(cut -d: -f2 "$TMP/addr") ;;
    # The floor takes a fixed address.
    floor) port=$(free_port)
           taskset -c 0 "$FLOOR_DIR/ring_healthz" "127.0.0.1:$port" 2>>"$TMP/server.log" & pid=$! ;;
  esac
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.05; done
  taskset -c 1 wrk -t1 -c64 -d2 "http://127.0.0.1:$port/healthz" >/dev/null
  perf stat -x, -e raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,context-switches \
    -p "$pid" -o "$TMP/stat" -- sleep 3 &
  local perf=$!
  local out; out=$(taskset -c 1 wrk -t1 -c64 -d3 "http://127.0.0.1:$port/healthz")
  wait $perf
  stop
  local reqs; reqs=$(echo "$out" | awk '/requests in/{print $1}')
  awk -F, -v r="$reqs" -v l="$1" '
    /raw_syscalls:sys_enter/ {s=$1} /io_uring_enter/ {u=$1} /context-switches/ {c=$1}
    END {printf "%-6s requests %8d  syscalls/req %.3f  io_uring_enter/req %.3f  switches/req %.4f\n", l, r, s/r, u/r, c/r}' "$TMP/stat"
}
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round"
  run ours
  run floor
done
