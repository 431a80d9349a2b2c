#!/usr/bin/env bash
# Issue 25: heartbeats per second, and server CPU per heartbeat, of a node whose registry
# is mirrored into Redis (`--cluster`) against a node alone (the embedded store only),
# side by side in one run. Starts its own redis-server (a free port, retried) and two
# servers (`--cores 1`, both on CPU 0, loaded one at a time): `alone` and `cluster`
# (`--cluster`, `--node-id c1`). For RUNS rounds, alternating, runs `bench http` with
# heartbeats only (`--mix heartbeat=100`, keep-alive, CONC connections, AGENTS agents,
# closed loop) against each and reads the server's CPU (`--server-pid`). A steady
# heartbeat writes Redis at most every 18 s per agent (HEARTBEAT_WRITE_INTERVAL), so the
# first heartbeat of each agent (and one per 18 s) costs the cluster node a mirror write.
# Prints medians: req/s, p99, CPU us per heartbeat, Redis commands per heartbeat, and the
# ratio cluster/alone of the CPU per heartbeat.
# Usage: scripts/bench-cluster-heartbeat.sh [RUNS]
#   BIN=…  chatixia-core (default target/release/chatixia-core, built here)
#   CONC=… connections (default 64)   AGENTS=… agents (default 1000)   DURATION=… s (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
CONC=${CONC:-64}
AGENTS=${AGENTS:-1000}
DURATION=${DURATION:-5}
command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin chatixia-core -q
  BIN=target/release/chatixia-core
fi
TMP=$(mktemp -d)
. scripts/lib/bench-server.sh  # free_port, start_redis, stop_pid
rpid= apid= cpid=
cleanup() { stop_pid "$apid"; stop_pid "$cpid"; stop_pid "$rpid"; rm -rf "$TMP"; }
trap cleanup EXIT

start_redis "$TMP"

"$BIN" bench keys --count "$AGENTS" --out "$TMP/keys.json" >/dev/null
export SIGNALING_SECRET=bench-heartbeat-secret API_KEYS_FILE=$TMP/keys.json RUST_LOG=warn
server() { # $1 = name, rest: extra flags; prints "PID PORT"
  local name=$1 port; shift; port=$(free_port)
  mkdir -p "$TMP/$name"
  CHATIXIA_DATA_DIR=$TMP/$name taskset -c 0 "$BIN" --cores 1 --stun-url none \
    --listen "127.0.0.1:$port" "$@" 2>>"$TMP/$name.log" >/dev/null &
  echo "$! $port"
}
read -r apid APORT < <(server alone)
read -r cpid CPORT < <(server cluster --cluster "$REDIS" --node-id c1)
for p in $APORT $CPORT; do
  for _ in $(seq 200); do [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p/readyz")" = 200 ] && break; sleep 0.05; done
done
echo "redis $REDIS; alone :$APORT (pid $apid); cluster :$CPORT (pid $cpid); both on CPU 0; load generator on CPU 1" >&2
calls() { redis-cli -p "$RPORT" info commandstats | awk -F'[=,:]' '/^cmdstat_/ && !/cmdstat_info/ {s+=$3} END {print s+0}'; }
for run in $(seq 1 "$RUNS"); do
  for who in alone cluster; do
    case $who in alone) port=$APORT pid=$apid ;; cluster) port=$CPORT pid=$cpid ;; esac
    before=$(calls)
    taskset -c 1 "$BIN" bench http --no-pin --url "http://127.0.0.1:$port" --keys "$TMP/keys.json" \
      --mix heartbeat=100 --concurrency "$CONC" --agents "$AGENTS" --duration "$DURATION" --warmup 1 \
      --server-pid "$pid" --json > "$TMP/$who-$run.json" 2>"$TMP/err" \
      || { echo "run $who $run failed: $(tail -2 "$TMP/err")" >&2; }
    after=$(calls)
    echo "$((after - before))" > "$TMP/$who-$run.calls"
  done
done
python3 - "$TMP" "$RUNS" <<'PY'
import json, statistics, sys
tmp, runs = sys.argv[1], int(sys.argv[2])
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def get(r, path):
    for k in path.split('.'):
        if not isinstance(r, dict) or k not in r: return None
        r = r[k]
    return r
rows = {}
for who in ("alone", "cluster"):
    rs, calls = [], []
    for run in range(1, runs + 1):
        try:
            rs.append(json.load(open(f"{tmp}/{who}-{run}.json")))
            calls.append(int(open(f"{tmp}/{who}-{run}.calls").read()))
        except Exception:
            pass
    reqs = [get(r, "requests.ok") for r in rs]
    rows[who] = dict(
        rps=med([get(r, "throughput_rps") for r in rs]),
        p99=med([get(r, "latency_us.p99") for r in rs]),
        cpu=med([get(r, "server_cpu.cpu_us_per_op") for r in rs]),
        redis=med([c / q if q else None for c, q in zip(calls, reqs)]),
        n=len(rs))
    print(f"{who:<8} req/s {rows[who]['rps']}  p99 us {rows[who]['p99']}  CPU us/heartbeat {rows[who]['cpu']}  "
          f"Redis commands (whole run, warm-up and idle lease/probe included) per measured heartbeat {rows[who]['redis']}  ({rows[who]['n']} runs)")
a, c = rows["alone"]["cpu"], rows["cluster"]["cpu"]
if a and c:
    print(f"cluster/alone CPU per heartbeat: {c / a:.2f}")
PY
