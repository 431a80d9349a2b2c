#!/usr/bin/env bash
# The embedded TURN server against coturn (issue 24), side by side in one run, the same
# load generator (`chatixia-core bench turn`) for both. Each server on one CPU (the last
# one, taskset), the load generator on CPU 0; loopback only.
#
#   chatixia-core --cores 1 --turn-listen 127.0.0.1:P (UDP GSO on; and, with
#                 SERVERS including "ours-nogso", a second one with CHATIXIA_TURN_GSO=0)
#   turnserver    relay-threads=1, use-auth-secret, no TLS/DTLS/TCP, loopback peers
#
# Scenarios, each run on every server, alternating, ROUNDS times; medians printed:
#   closed-w8    100 allocations, 120-byte payloads, 8 in flight each (saturates the
#                servers as far as one load-generator core can): relayed datagrams/s,
#                server CPU per relayed datagram, datagrams/s per core = 1 / CPU each
#   open-100k-b5, open-200k-b5   open loop, 100k / 200k relayed datagrams/s, each client
#                sending its share in bursts every 5 ms (media frames): CPU per datagram,
#                loss, round-trip p50/p99
#   open-100k-b1, open-50k-b1   open loop, 100k/s (50k/s), one datagram per client per
#                millisecond (every 2 ms): no bursts, so nothing to batch
#   memory       1,000 allocations (each with a channel), no traffic: server RSS growth
#                per allocation, and allocations per second
# Usage: scripts/bench-turn.sh [ROUNDS] [SECONDS]
#   BIN=…      chatixia-core binary (default: target/release/chatixia-core, built here)
#   SERVERS=…  default "ours coturn" (also "ours-nogso")
#   SCENARIOS=… default "closed-w8 open-100k-b5 open-200k-b5 open-100k-b1 open-50k-b1 memory"
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}; SECS=${2:-5}
SERVERS=${SERVERS:-ours coturn}
SCENARIOS=${SCENARIOS:-closed-w8 open-100k-b5 open-200k-b5 open-100k-b1 open-50k-b1 memory}
command -v turnserver >/dev/null || { apt-get update -qq && apt-get install -y -qq coturn; }
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin chatixia-core -q
  BIN=target/release/chatixia-core
fi
NCPU=$(nproc); SCPU=$((NCPU - 1)); LCPU=0
SECRET=bench-turn-secret
TMP=$(mktemp -d)
pid=
stop() { if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; fi; pid=; }
trap 'stop; rm -rf "$TMP"' EXIT
free_port() { python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

start_server() { # $1 = name; sets pid and port
  port=$(free_port)
  case $1 in
    ours|ours-nogso)
      local gso=1; [ "$1" = ours-nogso ] && gso=0
      rm -rf "$TMP/data"
      CHATIXIA_TURN_GSO=$gso TURN_SECRET=$SECRET RUST_LOG=warn taskset -c $SCPU "$BIN" --cores 1 \
        --listen 127.0.0.1:0 --data-dir "$TMP/data" --turn-listen 127.0.0.1:$port \
        --turn-relay-ports 40000-41999 --turn-allow-peer 127.0.0.0/8 \
        --turn-allocations-per-ip-max 100000 --turn-allocations-per-user-max 100000 \
        2>"$TMP/$1.log" &
      pid=$!;;
    coturn)
      rm -f "$TMP/turndb"
      cat > "$TMP/coturn.conf" <<EOF
listening-ip=127.0.0.1
relay-ip=127.0.0.1
listening-port=$port
use-auth-secret
static-auth-secret=$SECRET
realm=chatixia
no-tls
no-dtls
no-tcp
no-tcp-relay
allow-loopback-peers
no-cli
min-port=42000
max-port=43999
relay-threads=1
log-file=$TMP/coturn.log
simple-log
pidfile=$TMP/coturn.pid
userdb=$TMP/turndb
no-software-attribute
EOF
      taskset -c $SCPU turnserver -c "$TMP/coturn.conf" >/dev/null 2>&1 &
      pid=$!;;
  esac
  for _ in $(seq 100); do
    if python3 - "$port" <<'EOF' 2>/dev/null; then break; fi
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.1)
s.sendto(bytes.fromhex("000100002112a442") + b"\x01" * 12, ("127.0.0.1", int(sys.argv[1])))
s.recvfrom(100)
EOF
    sleep 0.1
  done
}

run() { # $1 = scenario; prints one JSON line
  local a=(bench turn --server 127.0.0.1:$port --secret $SECRET --server-pid $pid --json
           --allocations 100 --size 120 --duration $SECS --warmup 1)
  case $1 in
    closed-w8) a+=(--window 8);;
    open-100k-b5) a+=(--rate 100000 --burst-ms 5);;
    open-200k-b5) a+=(--rate 200000 --burst-ms 5);;
    open-100k-b1) a+=(--rate 100000 --burst-ms 1);;
    open-50k-b1) a+=(--rate 50000 --burst-ms 1);;
    memory) a=(bench turn --server 127.0.0.1:$port --secret $SECRET --server-pid $pid --json
               --allocations 1000 --duration 0);;
  esac
  taskset -c $LCPU "$BIN" "${a[@]}" || echo '{"error":"run failed"}'
}

RESULTS="$TMP/results.jsonl"
for r in $(seq "$ROUNDS"); do
  order=$SERVERS
  [ $((r % 2)) = 0 ] && order=$(echo "$SERVERS" | tr ' ' '\n' | tac | tr '\n' ' ')
  for s in $order; do
    for sc in $SCENARIOS; do
      start_server "$s"
      line=$(run "$sc")
      stop
      echo "{\"round\":$r,\"server\":\"$s\",\"scenario\":\"$sc\",\"report\":$line}" | tee -a "$RESULTS" >&2
    done
  done
done

python3 - "$RESULTS" "$SERVERS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
servers = sys.argv[2].split()
def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None
def get(r, *path):
    for p in path:
        if not isinstance(r, dict) or p not in r:
            return None
        r = r[p]
    return r
scen = []
for r in rows:
    if r["scenario"] not in scen:
        scen.append(r["scenario"])
print(f"{'scenario':<14} {'server':<11} {'relayed/s':>10} {'cpu us/dg':>9} {'dg/s/core':>10} {'lost':>7} {'rtt p50':>8} {'rtt p99':>8} {'B/alloc':>8} {'alloc/s':>8}")
table = {}
for sc in scen:
    for s in servers:
        rs = [r["report"] for r in rows if r["scenario"] == sc and r["server"] == s]
        pps = med([get(x, "relayed_per_s") for x in rs])
        cpu = med([get(x, "server_cpu", "cpu_us_per_op") for x in rs])
        lost = med([get(x, "lost_measured") for x in rs])
        p50 = med([get(x, "rtt_us", "p50") for x in rs])
        p99 = med([get(x, "rtt_us", "p99") for x in rs])
        mem = med([get(x, "server_rss_bytes_per_allocation") for x in rs])
        aps = med([get(x, "allocations_per_s") for x in rs])
        per_core = 1e6 / cpu if cpu else None
        table[(sc, s)] = (cpu, mem, aps)
        f = lambda v, fmt: (fmt.format(v) if v is not None else "-")
        print(f"{sc:<14} {s:<11} {f(pps,'{:.0f}'):>10} {f(cpu,'{:.3f}'):>9} {f(per_core,'{:.0f}'):>10} {f(lost,'{:.0f}'):>7} {f(p50,'{:.0f}'):>8} {f(p99,'{:.0f}'):>8} {f(mem,'{:.0f}'):>8} {f(aps,'{:.0f}'):>8}")
if "ours" in servers and "coturn" in servers:
    print()
    for sc in scen:
        o, c = table.get((sc, "ours")), table.get((sc, "coturn"))
        if not o or not c:
            continue
        if o[0] and c[0]:
            print(f"{sc}: datagrams/s per core, ours / coturn = {c[0] / o[0]:.2f}x")
        if o[1] and c[1]:
            print(f"{sc}: memory per allocation, ours / coturn = {o[1] / c[1]:.3f}; allocations/s ours / coturn = {o[2] / c[2]:.2f}x")
EOF
