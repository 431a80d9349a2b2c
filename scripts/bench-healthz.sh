#!/usr/bin/env bash
# GET /healthz requests per second on one shard, server and load pinned to separate
# cores, io_uring and epoll side by side in one run (alternating, RUNS each).
# Usage: scripts/bench-healthz.sh [RUNS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; SECS=${2:-5}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --bin chatixia-core -q
BIN=target/release/chatixia-core
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
for run in $(seq 1 "$RUNS"); do
  for drv in uring epoll; do
    RUST_LOG=warn taskset -c 0 "$BIN" --cores 1 --io-driver "$drv" --listen "127.0.0.1:$PORT" & pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.05; done
    rps=$(taskset -c 1 wrk -t1 -c64 -d"${SECS}s" --latency "http://127.0.0.1:$PORT/healthz" | awk '/Requests\/sec/ {print $2}')
    kill -TERM $pid; wait $pid
    echo "run=$run driver=$drv rps=$rps"
  done
done
