#!/usr/bin/env bash
# Two builds of chatixia-core side by side in one run, for a change that must not make
# the hot paths slower (issue 9's refactor): the heartbeat (wrk, 64 connections) and the
# signaling relay (the load generator's ws-relay at a fixed rate, 100 peers), each on a
# fresh `--cores 1` server pinned to core 0 with the load on core 1, alternating the two
# builds for ROUNDS rounds. Per run: requests (or messages) per second and the server's
# CPU per operation (utime+stime from /proc/PID/stat over the measured window).
# Prints medians and the ratio AFTER/BEFORE.
#
# Usage: scripts/bench-before-after.sh BEFORE_BIN AFTER_BIN [ROUNDS] [SECS] [RATE]
#   e.g. git worktree add /tmp/base <commit> && (cd /tmp/base && cargo build --release)
#        scripts/bench-before-after.sh /tmp/base/target/release/chatixia-core \
#                                      target/release/chatixia-core 5 5 20000
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=$1; AFTER=$2; ROUNDS=${3:-5}; SECS=${4:-5}; RATE=${5:-20000}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
"$AFTER" bench keys --count 100 --out "$OUT/keys100.json" >/dev/null
pid=
stop() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; pid=; }
trap stop EXIT
start() { # $1 = binary
  PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  API_KEYS_FILE="$OUT/keys100.json" RUST_LOG=warn taskset -c 0 "$1" --cores 1 --stun-url none \
    --listen "127.0.0.1:$PORT" 2>>"$OUT/server.log" & pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.05; done
}
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
HZ=$(getconf CLK_TCK)
: > "$OUT/results.tsv"
for round in $(seq 1 "$ROUNDS"); do
  for which in before after; do
    bin=$BEFORE; [ "$which" = after ] && bin=$AFTER
    # Heartbeat.
    start "$bin"
    for i in $(seq 0 99); do
      curl -sf -X POST -H 'content-type: application/json' \
        -d "{\"agent_id\":\"bench-$i\",\"hostname\":\"h$i\",\"skill_names\":[\"s$((i % 10))\"]}" \
        "http://127.0.0.1:$PORT/api/hub/heartbeat" >/dev/null
    done
    t0=$(ticks)
    reqs=$(taskset -c 1 wrk -t1 -c64 -d"${SECS}s" -s scripts/lib/hb.lua "http://127.0.0.1:$PORT" \
      | awk '/requests in/ {print $1}')
    t1=$(ticks)
    echo -e "heartbeat\t$which\t$reqs\t$SECS\t$(( t1 - t0 ))" >> "$OUT/results.tsv"
    stop
    # Relay.
    start "$bin"
    t0=$(ticks)
    taskset -c 1 "$AFTER" bench ws-relay --url "http://127.0.0.1:$PORT" --keys "$OUT/keys100.json" \
      --peers 100 --rate "$RATE" --duration "$SECS" --warmup 0 --json > "$OUT/relay-$which-$round.json"
    t1=$(ticks)
    msgs=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["messages"]["received"])' "$OUT/relay-$which-$round.json")
    echo -e "relay\t$which\t$msgs\t$SECS\t$(( t1 - t0 ))" >> "$OUT/results.tsv"
    stop
    echo "round $round $which done" >&2
  done
done
python3 - "$OUT/results.tsv" "$HZ" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
hz = int(sys.argv[2])
res = {}
for scen, which, ops, secs, ticks in rows:
    ops = float(ops); secs = float(secs); ticks = float(ticks)
    d = res.setdefault((scen, which), {"rate": [], "cpu_us": []})
    d["rate"].append(ops / secs)
    d["cpu_us"].append(ticks / hz * 1e6 / ops if ops else float("nan"))
print(f"{'scenario':<10} {'build':<7} {'ops/s (median)':>15} {'server CPU µs/op (median)':>26}")
for scen in ("heartbeat", "relay"):
    for which in ("before", "after"):
        d = res[(scen, which)]
        print(f"{scen:<10} {which:<7} {statistics.median(d['rate']):>15,.0f} {statistics.median(d['cpu_us']):>26.2f}")
    b, a = res[(scen, "before")], res[(scen, "after")]
    print(f"{scen:<10} ratio   {statistics.median(a['rate'])/statistics.median(b['rate']):>15.3f} "
          f"{statistics.median(a['cpu_us'])/statistics.median(b['cpu_us']):>26.3f}")
PY
echo "raw results in $OUT"
