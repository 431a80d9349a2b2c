#!/usr/bin/env bash
# Heartbeat and list-agents on one core, servers side by side in one run, alternating,
# RUNS rounds: chatixia-core --cores 1 on io_uring, on epoll, and the reference registry
# with one tokio worker (when REF_REGISTRY points at it). Server on core 0, `wrk -t1
# -c64` on core 1, a fresh server per round. 100 agents are registered first so
# list-agents returns a realistic body; heartbeats rotate over those agents.
# Per run: req/s and the server's CPU per request = (utime+stime from /proc/PID/stat over
# the wrk window) / requests served. Prints every run, then medians and ratios.
# Usage: scripts/bench-api.sh [SECONDS] [RUNS]
#   BIN=…           chatixia-core binary (default: target/release/chatixia-core, built here)
#   REF_REGISTRY=…  reference registry binary (default <repo>/../shared/reference/chatixia-registry
#                   if it exists; REF_REGISTRY=none to skip it)
#   SERVERS=…       which servers, in order (default "uring epoll ref"; also `before`:
#                   BEFORE_BIN=… on io_uring; `ring-proto`: the raw io_uring floor of
#                   reactor/examples/ring_healthz.rs, a canned 200 for every request)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}; RUNS=${2:-3}
SERVERS=${SERVERS:-uring epoll ref}
REF_REGISTRY=${REF_REGISTRY:-$PWD/../shared/reference/chatixia-registry}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin chatixia-core -q
  BIN=target/release/chatixia-core
fi
TMP=$(mktemp -d)
pid=
. scripts/lib/bench-server.sh  # stop, free_port
trap 'stop; rm -rf "$TMP"' EXIT
"$BIN" bench keys --count 100 --out "$TMP/keys100.json" >/dev/null
start() { # $1 = uring | epoll | ref
  PORT=$(free_port)
  case $1 in
    uring+*)
      # uring+mimalloc / uring+jemalloc: the same binary with that malloc preloaded
      # (Debian libmimalloc2.0 / libjemalloc2), to try an allocator without a rebuild.
      local lib=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2
      [ "$1" = uring+jemalloc ] && lib=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
      LD_PRELOAD=$lib API_KEYS_FILE="$TMP/keys100.json" RUST_LOG=warn taskset -c 0 "$BIN" --cores 1 \
        --io-driver uring --stun-url none --listen "127.0.0.1:$PORT" 2>>"$TMP/server.log" & pid=$! ;;
    uring-oneshot)
      # io_uring with monoio's one-shot reads instead of the multishot receive
      # (REACTOR_MULTISHOT=0, reactor/src/recv_ring.rs).
      REACTOR_MULTISHOT=0 API_KEYS_FILE="$TMP/keys100.json" RUST_LOG=warn taskset -c 0 "$BIN" --cores 1 \
        --io-driver uring --stun-url none --listen "127.0.0.1:$PORT" 2>>"$TMP/server.log" & pid=$! ;;
    uring-nospin)
      # io_uring with the mailbox spin off (REACTOR_MAILBOX_SPIN_US=0, reactor/src/runtime.rs).
      REACTOR_MAILBOX_SPIN_US=0 API_KEYS_FILE="$TMP/keys100.json" RUST_LOG=warn taskset -c 0 "$BIN" --cores 1 \
        --io-driver uring --stun-url none --listen "127.0.0.1:$PORT" 2>>"$TMP/server.log" & pid=$! ;;
    uring|epoll)
      API_KEYS_FILE="$TMP/keys100.json" RUST_LOG=warn taskset -c 0 "$BIN" --cores 1 --io-driver "$1" \
        --stun-url none --listen "127.0.0.1:$PORT" 2>>"$TMP/server.log" & pid=$! ;;
    before)
      # Another build (BEFORE_BIN) on io_uring, for before/after ratios in the same run.
      API_KEYS_FILE="$TMP/keys100.json" RUST_LOG=warn taskset -c 0 "$BEFORE_BIN" --cores 1 \
        --io-driver uring --stun-url none --listen "127.0.0.1:$PORT" 2>>"$TMP/server.log" & pid=$! ;;
    ring-proto)
      # reactor/examples/ring_healthz.rs: a raw io_uring loop that answers every request
      # with a canned 200 (no parsing, no registry): the floor any server pays here.
      taskset -c 0 target/release/examples/ring_healthz "127.0.0.1:$PORT" 2>>"$TMP/server.log" & pid=$! ;;
    ref)
      TOKIO_WORKER_THREADS=1 PORT=$PORT API_KEYS_FILE="$TMP/keys100.json" RUST_LOG=warn \
        taskset -c 0 "$REF_REGISTRY" 2>>"$TMP/server.log" & pid=$! ;;
  esac
  # Up to 30 s: a loaded machine can be slow to start the reference.
  for _ in $(seq 600); do curl -sf -o /dev/null -X POST -H 'content-type: application/json' \
    -d '{"agent_id":"probe","hostname":"h","skill_names":[]}' \
    "http://127.0.0.1:$PORT/api/hub/heartbeat" && break; sleep 0.05; done
  for i in $(seq 0 99); do
    curl -sf -X POST -H 'content-type: application/json' \
      -d "{\"agent_id\":\"bench-$i\",\"hostname\":\"h$i\",\"skill_names\":[\"s$((i % 10))\"]}" \
      "http://127.0.0.1:$PORT/api/hub/heartbeat" >/dev/null
  done
}
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
HZ=$(getconf CLK_TCK)
measure() { # $1 = server, $2 = scenario, rest = wrk target arguments
  local srv=$1 scen=$2; shift 2
  local t0 t1 out reqs us rps
  t0=$(ticks)
  out=$(taskset -c 1 wrk -t1 -c64 -d"${SECS}s" --latency "$@")
  t1=$(ticks)
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  us=$(python3 -c "print(f'{($t1-$t0)/$HZ*1e6/$reqs:.2f}')")
  rps=$(python3 -c "print(round($reqs/$SECS))")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  echo "run=$run server=$srv scenario=$scen rps=$rps cpu_us_per_req=$us p99=$p99"
  echo -e "$scen\t$srv\t$rps\t$us" >> "$TMP/results.tsv"
}
: > "$TMP/results.tsv"
for run in $(seq 1 "$RUNS"); do
  for srv in $SERVERS; do
    if [ "$srv" = ref ] && { [ "$REF_REGISTRY" = none ] || [ ! -x "$REF_REGISTRY" ]; }; then continue; fi
    start "$srv"
    measure "$srv" heartbeat -s scripts/lib/hb.lua "http://127.0.0.1:$PORT"
    measure "$srv" list-agents "http://127.0.0.1:$PORT/api/registry/agents"
    stop
  done
done
python3 - "$TMP/results.tsv" <<'PY'
import sys, statistics as st
rows = [l.split('\t') for l in open(sys.argv[1]).read().split('\n') if l]
d = {}
for scen, srv, rps, us in rows:
    d.setdefault((scen, srv), ([], []))
    d[(scen, srv)][0].append(float(rps)); d[(scen, srv)][1].append(float(us))
med = {k: (st.median(v[0]), st.median(v[1])) for k, v in d.items()}
print("scenario\tserver\tmedian req/s\tmedian server CPU µs/req")
for (scen, srv), (r, u) in med.items():
    print(f"{scen}\t{srv}\t{r:,.0f}\t{u:.2f}")
for scen in sorted({k[0] for k in med}):
    for a, b in (("uring", "ref"), ("uring", "epoll"), ("epoll", "ref"), ("uring", "before"), ("before", "ref"),
                 ("uring", "uring-oneshot"), ("ring-proto", "ref"),
                 ("uring+mimalloc", "uring"), ("uring+jemalloc", "uring")):
        if (scen, a) in med and (scen, b) in med:
            print(f"{scen}: CPU/req {a}/{b} = {med[(scen, a)][1] / med[(scen, b)][1]:.3f}")
PY
