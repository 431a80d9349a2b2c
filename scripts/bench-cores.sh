#!/usr/bin/env bash
# Heartbeat CPU at `--cores 1` against `--cores 2` (issue 26), split into user and
# system time, for one or more builds side by side: RUNS rounds, each starting a fresh
# server per (build, cores), alternating. The server is pinned to CPU 0 (both shards on
# one core, so that the load generator has the other: what is measured is the hop
# between shards, not the contention of a 2-vCPU VM), `wrk -t1 -c64` on CPU 1, 100
# agents registered first, heartbeats rotating over them (`scripts/lib/hb.lua`, as in
# scripts/bench-api.sh: about half land on the shard that does not own their agent).
# Per run: the server's utime and stime from /proc/PID/stat over the wrk window, per
# request. Prints every run, then per build the median `--cores 2` / `--cores 1` ratio.
# Usage: scripts/bench-cores.sh [SECONDS] [RUNS] BIN [BIN ...]
#   RATE=R: instead of wrk's closed loop, the first BIN's load generator at a fixed R
#     heartbeats a second (`bench http --mix heartbeat=100 --rate R --concurrency 64
#     --agents 100`, open loop, the agents' bearer tokens, one skill): both shard counts
#     then serve the same load, so a slower round does not also mean smaller batches.
#     CPU from the server's /proc/PID/stat over the measured window, as reported by the
#     load generator (`--server-pid`). A BIN may be a wrapper script that `exec`s the
#     binary (e.g. to set REACTOR_MAILBOX_SPIN_US).
#   HTTP_ARGS="...": more arguments for that load generator, e.g. `--agent-per-connection`
#     (each connection speaks for one agent, as an agent process does: issue 26's
#     connection steering then serves its heartbeats on its agent's shard).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}; RUNS=${2:-5}; shift 2
[ $# -gt 0 ] || { echo "usage: $0 SECONDS RUNS BIN [BIN ...]" >&2; exit 2; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
TMP=$(mktemp -d)
pid=
. scripts/lib/bench-server.sh  # stop
trap 'stop; rm -rf "$TMP"' EXIT
HZ=$(getconf CLK_TCK)
if [ -n "${RATE:-}" ]; then
  # The agents' API keys, for the load generator's tokens; the servers read them.
  KEYS=$TMP/keys.json
  "$1" bench keys --count 100 --out "$KEYS" >/dev/null
  export API_KEYS_FILE=$KEYS SIGNALING_SECRET=bench-cores-secret
fi
: > "$TMP/results.tsv"
for run in $(seq 1 "$RUNS"); do
  for bin in "$@"; do
    for cores in 1 2; do
      d=$(mktemp -d "$TMP/run.XXXX")
      RUST_LOG=warn taskset -c 0 "$bin" --cores "$cores" --stun-url none \
        --listen 127.0.0.1:0 --port-file "$d/addr" --data-dir "$d/data" 2>>"$TMP/server.log" &
      pid=$!
      for _ in $(seq 200); do [ -s "$d/addr" ] && break; sleep 0.05; done
      [ -s "$d/addr" ] || { echo "server $bin --cores $cores did not start" >&2; tail -5 "$TMP/server.log" >&2; exit 1; }
      addr=$(cat "$d/addr")
      if [ -n "${RATE:-}" ]; then
        taskset -c 1 "$1" bench http --no-pin --url "http://$addr" --keys "$KEYS" \
          --mix heartbeat=100 --concurrency 64 --agents 100 --rate "$RATE" ${HTTP_ARGS:-} \
          --duration "$SECS" --warmup 1 --server-pid "$pid" --json > "$d/out.json" 2>"$d/err" \
          || { echo "bench http failed: $(tail -2 "$d/err")" >&2; exit 1; }
        stop
        python3 - "$d/out.json" "$bin" "$cores" "$run" >>"$TMP/results.tsv" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
cpu = r["server_cpu"]["cpu_us_per_op"]
print(f"{sys.argv[4]}\t{sys.argv[2]}\t{sys.argv[3]}\t{r['throughput_rps']:.0f}\t-\t-\t{cpu:.2f}")
PY
        tail -1 "$TMP/results.tsv" | awk -F'\t' '{printf "run=%s bin=%s cores=%s rps=%s cpu_us_per_req=%s (p99 above)\n", $1, $2, $3, $4, $7}'
        python3 -c 'import json,sys; print("  p99_us", json.load(open(sys.argv[1]))["latency_us"]["p99"])' "$d/out.json"
        continue
      fi
      for i in $(seq 0 99); do
        curl -sf -X POST -H 'content-type: application/json' \
          -d "{\"agent_id\":\"bench-$i\",\"hostname\":\"h$i\",\"skill_names\":[\"s$((i % 10))\"]}" \
          "http://$addr/api/hub/heartbeat" >/dev/null
      done
      taskset -c 1 wrk -t1 -c64 -d1s -s scripts/lib/hb.lua "http://$addr" >/dev/null  # warm-up
      read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
      out=$(taskset -c 1 wrk -t1 -c64 -d"${SECS}s" -s scripts/lib/hb.lua "http://$addr")
      read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
      reqs=$(awk '/requests in/ {print $1}' <<<"$out")
      stop
      python3 - "$bin" "$cores" "$reqs" "$u0" "$u1" "$s0" "$s1" "$HZ" "$SECS" "$run" \
        >>"$TMP/results.tsv" <<'PY'
import sys
b, c = sys.argv[1], sys.argv[2]
r, u0, u1, s0, s1, hz, secs = map(float, sys.argv[3:10])
user, sys_ = (u1 - u0) / hz * 1e6 / r, (s1 - s0) / hz * 1e6 / r
print(f"{sys.argv[10]}\t{b}\t{c}\t{r / secs:.0f}\t{user:.2f}\t{sys_:.2f}\t{user + sys_:.2f}")
PY
      tail -1 "$TMP/results.tsv" | awk -F'\t' '{printf "run=%s bin=%s cores=%s rps=%s user_us=%s sys_us=%s cpu_us_per_req=%s\n", $1, $2, $3, $4, $5, $6, $7}'
    done
  done
done
python3 - "$TMP/results.tsv" <<'PY'
import sys, statistics as st
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1]) if l.strip()]
by = {}
for run, b, c, rps, u, s, t in rows:
    by.setdefault(b, {}).setdefault(run, {})[c] = float(t)
for b, runs in by.items():
    ratios = [r['2'] / r['1'] for r in runs.values() if '1' in r and '2' in r]
    c1 = st.median(r['1'] for r in runs.values())
    c2 = st.median(r['2'] for r in runs.values())
    print(f"{b}: median CPU/req --cores 1 {c1:.2f} µs, --cores 2 {c2:.2f} µs; "
          f"per-round ratios {', '.join(f'{x:.2f}' for x in ratios)}; median ratio {st.median(ratios):.3f}")
PY
