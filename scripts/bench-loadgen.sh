#!/usr/bin/env bash
# The load generator (`chatixia-core bench`) against one server, each scenario RUNS
# times on a fresh server, server on core 0 and load on core 1 (taskset), reports as
# JSON in $OUT and medians on stdout.
#
# Usage: scripts/bench-loadgen.sh [RUNS]
#   BIN=path/to/chatixia-core        the load generator (default: the release build)
#   SERVER="cmd …"                    the server to measure, started with $PORT and
#                                     $API_KEYS_FILE set (default: chatixia-core --cores 1).
#                                     Point it at another build, e.g. the reference.
#   IDLE=10000                        ws-idle connection count
#   OUT=dir                           where the JSON reports go (default: a temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/chatixia-core}
IDLE=${IDLE:-10000}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
[ -x "$BIN" ] || cargo build --release --bin chatixia-core -q
export API_KEYS_FILE="$OUT/api_keys.json"
"$BIN" bench keys --count $((IDLE + 1000)) --meshes 100 --out "$API_KEYS_FILE" >/dev/null
SERVER=${SERVER:-"$BIN --cores 1 --stun-url none --listen 127.0.0.1:\$PORT"}
pid=
stop() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; pid=; }
trap stop EXIT
start() {
  PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  export PORT
  RUST_LOG=warn taskset -c 0 bash -c "exec $(eval echo "$SERVER")" 2>>"$OUT/server.log" & pid=$!
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && return; sleep 0.05; done
  echo "server did not start" >&2; exit 1
}
bench() { # name, args…
  local name=$1; shift
  for r in $(seq "$RUNS"); do
    start
    local args=("${@//@PID@/$pid}")
    taskset -c 1 "$BIN" bench "${args[@]}" --url "http://127.0.0.1:$PORT" --keys "$API_KEYS_FILE" --json \
      > "$OUT/$name.$r.json" || true
    stop
  done
  python3 - "$OUT" "$name" <<'PY'
import json, sys, glob, statistics
out, name = sys.argv[1], sys.argv[2]
runs = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{name}.*.json"))]
def get(r, path):
    for k in path.split('.'):
        r = r.get(k) if isinstance(r, dict) else None
    return r
keys = ["throughput_rps", "relayed_per_s", "upgrades_per_s", "connect_rate_per_s",
        "established", "server_rss.per_connection_kib", "server_rss.before_kib", "server_rss.after_kib",
        "latency_us.p50", "latency_us.p99", "latency_us.p999", "connect_latency_us.p50",
        "connect_latency_us.p99", "upgrade_latency_us.p50", "upgrade_latency_us.p99",
        "cycle_latency_us.p50", "cycle_latency_us.p99", "messages.lost", "loadgen.cpu_percent"]
print(f"== {name} ({len(runs)} runs, medians)")
for k in keys:
    v = [get(r, k) for r in runs]
    v = [x for x in v if isinstance(x, (int, float))]
    if v:
        print(f"  {k:34} {statistics.median(v):>12.1f}   runs: {v}")
errs = [r.get("errors") for r in runs if r.get("errors")]
if errs: print("  errors:", errs)
PY
}
# Warm-up is inside each scenario (--warmup); ws-idle's RSS is read after a 1 s settle.
bench http-closed http --duration 10 --warmup 2 --concurrency 64
bench http-heartbeat http --duration 10 --warmup 2 --concurrency 64 --mix heartbeat=1
bench http-open http --duration 10 --warmup 2 --concurrency 64 --rate "${HTTP_RATE:-1000}"
bench ws-idle ws-idle --connections "$IDLE" --hold 5 --server-pid @PID@
bench ws-relay ws-relay --peers 200 --rate "${RELAY_RATE:-20000}" --duration 10 --warmup 2
bench storm storm --duration 10 --warmup 2 --concurrency 32
echo "reports in $OUT"
