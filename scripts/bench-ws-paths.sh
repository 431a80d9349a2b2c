#!/usr/bin/env bash
# Issue 14's WebSocket goals, servers side by side in one run, alternating, RUNS rounds,
# a fresh server per scenario (server on core 0 at --cores 1 / one tokio worker, the
# load generator on core 1):
#   relay-100   `bench ws-relay --peers 100 --rate RATE` with 100 API keys loaded
#   relay-10k   the same with 10,000 keys loaded
#   connect-10k `bench ws-idle --connections 10000` (100 meshes): time to connect, upgrade
#               and register all, server CPU per connection, RSS per idle connection
# Server CPU per operation is utime+stime of the server over the measured window
# (/proc/PID/stat) divided by the operations (the load generator's --server-pid).
# Usage: scripts/bench-ws-paths.sh [RUNS] [RATE]
#   BIN=…          chatixia-core (default target/release/chatixia-core, built here)
#   SERVERS=…      default "uring uring-oneshot epoll ref"; also `before` (BEFORE_BIN=…, io_uring),
#                  and `ring-relay` / `epoll-relay`: the relay floors, reactor/examples/ring_relay.rs
#                  and epoll_relay.rs (raw io_uring / epoll, doing only what `bench ws-relay` needs;
#                  built here, or FLOOR_DIR=… holding both) — what the kernel side of relaying
#                  costs (docs/BENCHMARKS.md "The relay floor")
#   REF_REGISTRY=… the reference registry (default <repo>/../shared/reference/chatixia-registry)
#   SCENARIOS=…    default "relay-100 relay-10k connect-10k"
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; RATE=${2:-20000}
SERVERS=${SERVERS:-uring uring-oneshot epoll ref}
SCENARIOS=${SCENARIOS:-relay-100 relay-10k connect-10k}
REF_REGISTRY=${REF_REGISTRY:-$PWD/../shared/reference/chatixia-registry}
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin chatixia-core -q
  BIN=target/release/chatixia-core
fi
case " $SERVERS " in *" ring-relay "*|*" epoll-relay "*)
  if [ -z "${FLOOR_DIR:-}" ]; then
    cargo build --release -p reactor --example ring_relay --example epoll_relay -q
    FLOOR_DIR=target/release/examples
  fi ;;
esac
TMP=$(mktemp -d)
pid=
. scripts/lib/bench-server.sh  # stop, free_port
trap 'stop; rm -rf "$TMP"' EXIT
"$BIN" bench keys --count 100 --out "$TMP/keys-100.json" >/dev/null
"$BIN" bench keys --count 10000 --out "$TMP/keys-10k.json" >/dev/null
"$BIN" bench keys --count 10000 --meshes 100 --out "$TMP/keys-10k-meshes.json" >/dev/null
start() { # $1 = server, $2 = keys file
  PORT=$(free_port)
  local data; data=$(mktemp -d "$TMP/data.XXXX")
  case $1 in
    uring|epoll)
      CHATIXIA_DATA_DIR=$data API_KEYS_FILE=$2 RUST_LOG=warn taskset -c 0 "$BIN" --cores 1 --io-driver "$1" \
        --stun-url none --listen "127.0.0.1:$PORT" 2>>"$TMP/server.log" & pid=$! ;;
    uring-oneshot)
      REACTOR_MULTISHOT=0 CHATIXIA_DATA_DIR=$data API_KEYS_FILE=$2 RUST_LOG=warn taskset -c 0 "$BIN" --cores 1 \
        --io-driver uring --stun-url none --listen "127.0.0.1:$PORT" 2>>"$TMP/server.log" & pid=$! ;;
    before)
      CHATIXIA_DATA_DIR=$data API_KEYS_FILE=$2 RUST_LOG=warn taskset -c 0 "$BEFORE_BIN" --cores 1 \
        --io-driver uring --stun-url none --listen "127.0.0.1:$PORT" 2>>"$TMP/server.log" & pid=$! ;;
    ring-relay|epoll-relay)
      taskset -c 0 "$FLOOR_DIR/${1/-/_}" "127.0.0.1:$PORT" 2>>"$TMP/server.log" & pid=$! ;;
    ref)
      CHATIXIA_DATA_DIR=$data TOKIO_WORKER_THREADS=1 PORT=$PORT API_KEYS_FILE=$2 STUN_URLS=none RUST_LOG=warn \
        taskset -c 0 "$REF_REGISTRY" 2>>"$TMP/server.log" & pid=$! ;;
  esac
  for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/api/config" && break; sleep 0.05; done
}
: > "$TMP/results.tsv"
for run in $(seq 1 "$RUNS"); do
  for scen in $SCENARIOS; do
    for srv in $SERVERS; do
      if [ "$srv" = ref ] && [ ! -x "$REF_REGISTRY" ]; then continue; fi
      case $scen in
        relay-100) keys=$TMP/keys-100.json ;;
        relay-10k) keys=$TMP/keys-10k.json ;;
        connect-10k) keys=$TMP/keys-10k-meshes.json ;;
      esac
      start "$srv" "$keys"
      case $scen in
        relay-*)
          taskset -c 1 "$BIN" bench ws-relay --no-pin --url "http://127.0.0.1:$PORT" --keys "$keys" \
            --peers 100 --rate "$RATE" --duration 5 --warmup 1 --server-pid "$pid" --json > "$TMP/out.json" || true ;;
        connect-10k)
          taskset -c 1 "$BIN" bench ws-idle --no-pin --url "http://127.0.0.1:$PORT" --keys "$keys" \
            --connections 10000 --hold 1 --server-pid "$pid" --json > "$TMP/out.json" || true ;;
      esac
      stop
      python3 - "$TMP/out.json" "$scen" "$srv" "$run" >> "$TMP/results.tsv" <<'PY'
import json, sys
path, scen, srv, run = sys.argv[1:]
try:
    r = json.load(open(path))
except Exception as e:
    print(f"run={run} {scen} {srv}: no report ({e})", file=sys.stderr); sys.exit(0)
def get(d, dotted):
    for k in dotted.split('.'):
        if not isinstance(d, dict) or k not in d: return None
        d = d[k]
    return d
if scen.startswith('relay'):
    vals = {'msg_per_s': get(r, 'relayed_per_s'), 'cpu_us_per_msg': get(r, 'server_cpu.cpu_us_per_op'),
            'lost': get(r, 'messages.lost')}
else:
    vals = {'connect_s': get(r, 'connect_s'), 'cpu_us_per_conn': get(r, 'server_cpu.cpu_us_per_op'),
            'rss_kib_per_conn': get(r, 'server_rss.per_connection_kib')}
print(f"run={run} {scen} {srv} " + " ".join(f"{k}={v}" for k, v in vals.items()), file=sys.stderr)
for k, v in vals.items():
    if v is not None:
        print(f"{scen}\t{srv}\t{k}\t{v}")
PY
    done
  done
done
python3 - "$TMP/results.tsv" <<'PY'
import sys, statistics as st
rows = [l.split('\t') for l in open(sys.argv[1]).read().split('\n') if l]
med = {}
for scen, srv, k, v in rows:
    med.setdefault((scen, k), {}).setdefault(srv, []).append(float(v))
print("scenario\tmetric\t" + "\t".join(sorted({r[1] for r in rows})))
for (scen, k), by in med.items():
    m = {s: st.median(v) for s, v in by.items()}
    line = f"{scen}\t{k}\t" + "\t".join(f"{s}={m[s]:.2f}" for s in m)
    if 'ref' in m and m['ref']:
        line += "\t" + " ".join(f"{s}/ref={m[s]/m['ref']:.3f}" for s in m if s != 'ref')
    if 'uring-oneshot' in m and 'uring' in m and m['uring-oneshot']:
        line += f"\turing/oneshot={m['uring']/m['uring-oneshot']:.3f}"
    if 'epoll' in m and 'uring' in m and m['epoll']:
        line += f"\turing/epoll={m['uring']/m['epoll']:.3f}"
    if 'ring-relay' in m and 'uring' in m and m['ring-relay']:
        line += f"\turing/ring-relay={m['uring']/m['ring-relay']:.3f}"
    if 'epoll-relay' in m and 'epoll' in m and m['epoll-relay']:
        line += f"\tepoll/epoll-relay={m['epoll']/m['epoll-relay']:.3f}"
    if 'before' in m and 'uring' in m and m['before']:
        line += f"\turing/before={m['uring']/m['before']:.3f}"
    print(line)
PY
