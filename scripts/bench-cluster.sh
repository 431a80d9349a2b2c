#!/usr/bin/env bash
# Issue 25's relay goals: relays between peers of one node against relays between peers on
# two nodes of a cluster, side by side in one run. Starts its own redis-server (a free port,
# retried), two nodes (`--cores 1` each, `--cluster`, node A on CPU 0, node B on CPU 1,
# one keys file and one SIGNALING_SECRET), and for each offered rate and pair count runs
# `bench ws-relay`, alternating, RUNS rounds:
#   local   every pair's two peers on node A (`--url A`): relays that never leave a node
#   split   the pairs spread over A and B, both peers of each pair on one node (`--target A
#           --target B --same-node`): relays that never leave a node, with the load on
#           two nodes as in `cross` (the like-for-like control: a shard's CPU per message
#           depends on how many messages each of its wake-ups carries, so one node with
#           all the load is cheaper per message than two with half each)
#   cross   each pair's peers on A and B (`--target A --target B`): every relay goes
#           through Redis (one EVALSHA of the RELAY script: HGET + SPUBLISH)
# Both runs read both nodes' CPU (`--server-pid A --server-pid B`, summed), Redis's command
# counts (`--redis`, INFO commandstats over the measured window) and Redis's own CPU
# (`--redis-pid`, apart: the goal counts the nodes).
# Prints medians per case and the goals: cross-node CPU per message (both nodes) at most
# 2x local (against `local` and against `split`); p99 under 5 ms at 10,000 msg/s. Raw reports stay in $OUT (default: a temp dir,
# removed).
# Usage: scripts/bench-cluster.sh [RUNS]
#   BIN=…        chatixia-core (default target/release/chatixia-core, built here)
#   RATES=…      offered msg/s, default "2000 10000"
#   PAIRS=…      pairs of peers, default "1 100"
#   DURATION=…   seconds measured per run (default 5; warm-up 1)
#   NODE_ARGS=…  more flags for both nodes (e.g. "--io-driver epoll")
#   STAT=1       also count each node's system calls and context switches over each run
#                (perf stat: raw_syscalls:sys_enter, context-switches → OUT/stat-*.csv;
#                the window is DURATION + 1 s from the load generator's start, its set-up
#                and warm-up included), printed per second and node after the table
#   NODE_ENV=…   more environment for both nodes only, not the load generator (e.g.
#                "REACTOR_URING_SETUP=defer")
#   OUT=DIR      keep every run's JSON report there
#   PERF=DIR     also `perf record -g` both nodes during each cross-node run of the first
#                round (DIR/perf-{a,b}-PAIRS-RATE.data; read with `perf report -i …`); the
#                recording costs CPU: take the figures from a run without it
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
RATES=${RATES:-2000 10000}
PAIRS=${PAIRS:-1 100}
DURATION=${DURATION:-5}
command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin chatixia-core -q
  BIN=target/release/chatixia-core
fi
TMP=$(mktemp -d)
KEEP=${OUT:-}
OUT=${OUT:-$TMP/out}
mkdir -p "$OUT"
. scripts/lib/bench-server.sh  # free_port, start_redis, stop_pid
rpid= apid= bpid=
cleanup() { stop_pid "$apid"; stop_pid "$bpid"; stop_pid "$rpid"; rm -rf "$TMP"; }
trap cleanup EXIT

start_redis "$TMP"

maxpeers=0; for p in $PAIRS; do [ $((2 * p)) -gt $maxpeers ] && maxpeers=$((2 * p)); done
"$BIN" bench keys --count "$maxpeers" --out "$TMP/keys.json" >/dev/null
export SIGNALING_SECRET=bench-cluster-secret API_KEYS_FILE=$TMP/keys.json RUST_LOG=warn
node() { # $1 = name, $2 = CPU; prints "PID PORT"
  local port; port=$(free_port)
  mkdir -p "$TMP/$1"
  local ne=(); read -ra ne <<<"${NODE_ENV:-}"
  env "${ne[@]}" "CHATIXIA_DATA_DIR=$TMP/$1" taskset -c "$2" "$BIN" --cores 1 --stun-url none \
    --listen "127.0.0.1:$port" --cluster "$REDIS" --node-id "$1" ${NODE_ARGS:-} 2>>"$TMP/$1.log" >/dev/null &
  echo "$! $port"
}
read -r apid APORT < <(node node-a 0)
read -r bpid BPORT < <(node node-b 1)
A=http://127.0.0.1:$APORT B=http://127.0.0.1:$BPORT
for u in "$A" "$B"; do
  for _ in $(seq 200); do [ "$(curl -s -o /dev/null -w '%{http_code}' "$u/readyz")" = 200 ] && break; sleep 0.05; done
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$u/readyz")" = 200 ] || { echo "$u never ready" >&2; cat "$TMP"/node-*.log >&2; exit 1; }
done
echo "redis $REDIS (pid $rpid); node-a $A (pid $apid, CPU 0); node-b $B (pid $bpid, CPU 1); $(nproc) CPUs" >&2

for run in $(seq 1 "$RUNS"); do
  for pairs in $PAIRS; do
    for rate in $RATES; do
      for place in local split cross; do
        case $place in
          local) where=(--url "$A") ;;
          split) where=(--target "$A" --target "$B" --same-node) ;;
          cross) where=(--target "$A" --target "$B") ;;
        esac
        f=$OUT/$place-$pairs-$rate-$run.json
        perfs=()
        if [ -n "${PERF:-}" ] && [ "$place" = cross ] && [ "$run" = 1 ]; then
          mkdir -p "$PERF"
          for n in a b; do
            p=$apid; [ $n = b ] && p=$bpid
            perf record -g -p "$p" -o "$PERF/perf-$n-$pairs-$rate.data" -- sleep $((DURATION + 2)) \
              >/dev/null 2>>"$TMP/perf.log" & perfs+=($!)
          done
        fi
        stats=()
        if [ -n "${STAT:-}" ]; then
          for n in a b; do
            p=$apid; [ $n = b ] && p=$bpid
            perf stat -e raw_syscalls:sys_enter,context-switches -x, -p "$p" \
              -o "$OUT/stat-$n-$place-$pairs-$rate-$run.csv" -- sleep $((DURATION + 1)) \
              >/dev/null 2>>"$TMP/perf.log" & stats+=($!)
          done
        fi
        "$BIN" bench ws-relay --no-pin "${where[@]}" --keys "$TMP/keys.json" \
          --peers $((2 * pairs)) --rate "$rate" --duration "$DURATION" --warmup 1 \
          --server-pid "$apid" --server-pid "$bpid" --redis "$REDIS" --redis-pid "$rpid" --json > "$f" 2>"$TMP/err" \
          || { echo "run $place pairs=$pairs rate=$rate failed: $(tail -2 "$TMP/err")" >&2; }
        for p in "${perfs[@]}" "${stats[@]}"; do wait "$p" || true; done
      done
    done
  done
done

python3 - "$OUT" "$RUNS" "$PAIRS" "$RATES" <<'EOF'
import json, statistics, sys, os
out, runs, pairs, rates = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
def get(r, path):
    for k in path.split('.'):
        if not isinstance(r, dict) or k not in r: return None
        r = r[k]
    return r
def load(place, p, rate):
    rs = []
    for run in range(1, runs + 1):
        f = f"{out}/{place}-{p}-{rate}-{run}.json"
        try: rs.append(json.load(open(f)))
        except Exception: pass
    return rs
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def fmt(x, d=1):
    return '-' if x is None else f"{x:.{d}f}"
cols = ["msg/s", "p50 us", "p99 us", "CPU us/msg A+B", "A", "B", "Redis", "EVALSHA/msg", "SPUBLISH/msg", "all cmds/msg", "lost", "errors"]
print(f"{'case':<26}" + "".join(f"{c:>15}" for c in cols))
print("(medians; CPU in us per relayed message: A+B is both nodes summed, Redis apart)")
goals = []
for p in pairs:
    for rate in rates:
        row = {}
        for place in ("local", "split", "cross"):
            rs = load(place, p, rate)
            each = lambda i: med([get(r, "server_cpu.each")[i]["cpu_us_per_op"] if get(r, "server_cpu.each") else None for r in rs])
            v = [med([get(r, "relayed_per_s") for r in rs]), med([get(r, "latency_us.p50") for r in rs]),
                 med([get(r, "latency_us.p99") for r in rs]), med([get(r, "server_cpu.cpu_us_per_op") for r in rs]),
                 each(0), each(1), med([get(r, "redis.cpu.cpu_us_per_op") for r in rs]),
                 med([get(r, "redis.evalsha_per_msg") for r in rs]),
                 med([get(r, "redis.spublish_per_msg") for r in rs]), med([get(r, "redis.all_calls_per_msg") for r in rs]),
                 sum(get(r, "messages.lost") or 0 for r in rs), sum(sum((get(r, "errors") or {}).values()) for r in rs)]
            row[place] = v
            digits = [0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 0, 0]
            print(f"{place + ' ' + p + ' pairs ' + rate + '/s':<26}" + "".join(f"{fmt(x, d):>15}" for x, d in zip(v, digits)) + f"   ({len(rs)} runs)")
        l, sp, c = row["local"][3], row["split"][3], row["cross"][3]
        if l and c:
            goals.append(f"{p} pairs at {rate}/s: cross/local CPU per message (A+B) = {c / l:.2f} (goal <= 2): {'met' if c <= 2 * l else 'MISSED'}")
        if sp and c:
            goals.append(f"{p} pairs at {rate}/s: cross/split CPU per message (A+B) = {c / sp:.2f} (goal <= 2): {'met' if c <= 2 * sp else 'MISSED'}")
        if int(rate) >= 10000 and row["cross"][2] is not None:
            goals.append(f"{p} pairs at {rate}/s: cross-node p99 = {row['cross'][2] / 1000:.2f} ms (goal < 5 ms): {'met' if row['cross'][2] < 5000 else 'MISSED'}")
print()
print("\n".join(goals))
EOF
if [ -n "${STAT:-}" ]; then
  python3 - "$OUT" "$RUNS" "$PAIRS" "$RATES" "$DURATION" <<'EOF'
import statistics, sys
out, runs, pairs, rates, dur = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split(), int(sys.argv[5])
def counts(f):
    c = {}
    try:
        for line in open(f):
            parts = line.strip().split(",")
            if len(parts) > 2 and parts[0].isdigit():
                c[parts[2]] = int(parts[0])
    except OSError:
        pass
    return c
print()
print("per node and second (medians of the runs; window DURATION + 1 s, set-up and warm-up included):")
print(f"{'case':<26}{'A calls/s':>12}{'A switches/s':>14}{'B calls/s':>12}{'B switches/s':>14}")
for p in pairs:
    for rate in rates:
        for place in ("local", "split", "cross"):
            cols = []
            for n in ("a", "b"):
                cs = [counts(f"{out}/stat-{n}-{place}-{p}-{rate}-{r}.csv") for r in range(1, runs + 1)]
                for ev in ("raw_syscalls:sys_enter", "context-switches"):
                    xs = [c[ev] / (dur + 1) for c in cs if ev in c]
                    cols.append(f"{statistics.median(xs):.0f}" if xs else "-")
            print(f"{place + ' ' + p + ' pairs ' + rate + '/s':<26}" + "".join(f"{x:>12}" if i % 2 == 0 else f"{x:>14}" for i, x in enumerate(cols)))
EOF
fi
if [ -n "$KEEP" ]; then echo "reports in $KEEP" >&2; fi
