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
#   SCENARIO-gso     the same with the load generator sending each burst (and each run
#                of echoes to one relayed address) as one UDP GSO send: on loopback the
#                run reaches the server's socket as one packet, as a NIC's GRO would
#                hand it over; a server with UDP_GRO takes it whole, one without it gets
#                the datagrams one by one (e.g. closed-w8-gso, open-200k-b5-gso)
#   SCENARIO-gsogro  … and the load generator's sockets take the servers' GSO runs
#                whole (on loopback the receiver's delivery is charged to the sender)
# NETNS=1: the load generator in a network namespace of its own behind a veth pair
#   (the servers on 10.99.0.1, the load generator on 10.99.0.2), both ends with GRO and
#   threaded NAPI: datagrams sent one by one cross a link whose receiving side polls
#   them in batches (a kernel thread, as a NIC's interrupt and NAPI poll) and coalesces
#   a flow's back-to-back datagrams for a socket that asks for UDP_GRO; and a side's
#   deliveries run in that thread, not in the sender's system call, as across a real
#   network (on loopback the sender pays for the receiver's delivery). The server
#   side's NAPI thread (its receive work: GRO, delivery to its sockets) runs on the
#   server's CPU and its CPU time is added to the server's ("+napi" column, over the
#   whole run: 10 ms ticks of both, per datagram relayed in the run); the load
#   generator's runs on the load generator's CPU. Needs root (ip netns, ethtool).
# Usage: scripts/bench-turn.sh [ROUNDS] [SECONDS]
#   BIN=…      chatixia-core binary (default: target/release/chatixia-core, built here)
#   SERVERS=…  default "ours coturn" (also "ours-nogso": CHATIXIA_TURN_GSO=0, and
#              "ours-nogro": CHATIXIA_TURN_GRO=0)
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
HOST_IP=127.0.0.1; LG_IP=127.0.0.1; NSX=(); NS=; VA=; NAPI=
unlink_ns() { if [ -n "$NS" ]; then ip netns del "$NS" 2>/dev/null || true; ip link del "$VA" 2>/dev/null || true; fi; }
trap 'stop; unlink_ns; rm -rf "$TMP"' EXIT
if [ "${NETNS:-0}" = 1 ]; then
  command -v ethtool >/dev/null || { apt-get update -qq && apt-get install -y -qq ethtool; }
  NS=bench-turn-$$; VA=bt$$a; VB=bt$$b
  ip netns add "$NS"
  ip link add "$VA" type veth peer name "$VB"
  ip link set "$VB" netns "$NS"
  ip addr add 10.99.0.1/24 dev "$VA"; ip link set "$VA" up
  ip netns exec "$NS" ip addr add 10.99.0.2/24 dev "$VB"
  ip netns exec "$NS" ip link set "$VB" up
  ip netns exec "$NS" ip link set lo up
  # TSO off: veth hands a datagram to the NAPI thread (and GRO) only then.
  ethtool -K "$VA" gro on tso off; ip netns exec "$NS" ethtool -K "$VB" gro on tso off
  echo 1 > "/sys/class/net/$VA/threaded"
  ip netns exec "$NS" sh -c "echo 1 > /sys/class/net/$VB/threaded"
  sleep 0.2
  NAPI=$(pgrep "^napi/$VA-" || true); LNAPI=$(pgrep "^napi/$VB-" || true)
  [ -n "$NAPI" ] && [ -n "$LNAPI" ] || { echo "no NAPI threads for $VA/$VB: threaded NAPI unsupported?" >&2; exit 1; }
  taskset -pc "$SCPU" "$NAPI" >/dev/null; taskset -pc "$LCPU" "$LNAPI" >/dev/null
  HOST_IP=10.99.0.1; LG_IP=10.99.0.2; NSX=(ip netns exec "$NS")
fi
# A UDP port free on the servers' address (the servers take no port 0 for TURN here).
free_port() { python3 -c 'import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind((sys.argv[1],0));print(s.getsockname()[1])' "$HOST_IP"; }

start_server() { # $1 = name; sets pid and port
  port=$(free_port)
  case $1 in
    ours|ours-nogso|ours-nogro)
      local gso=1 gro=1; [ "$1" = ours-nogso ] && gso=0; [ "$1" = ours-nogro ] && gro=0
      rm -rf "$TMP/data"
      CHATIXIA_TURN_GSO=$gso CHATIXIA_TURN_GRO=$gro TURN_SECRET=$SECRET RUST_LOG=warn taskset -c $SCPU "$BIN" --cores 1 \
        --listen 127.0.0.1:0 --data-dir "$TMP/data" --turn-listen $HOST_IP:$port \
        --turn-relay-ports 40000-41999 --turn-allow-peer 127.0.0.0/8 --turn-allow-peer 10.99.0.0/24 \
        --turn-allocations-per-ip-max 100000 --turn-allocations-per-user-max 100000 \
        2>"$TMP/$1.log" &
      pid=$!;;
    coturn)
      rm -f "$TMP/turndb"
      cat > "$TMP/coturn.conf" <<EOF
listening-ip=$HOST_IP
relay-ip=$HOST_IP
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
    if python3 - "$port" "$HOST_IP" <<'EOF' 2>/dev/null; then break; fi
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.1)
s.sendto(bytes.fromhex("000100002112a442") + b"\x01" * 12, (sys.argv[2], int(sys.argv[1])))
s.recvfrom(100)
EOF
    sleep 0.1
  done
}

run() { # $1 = scenario; prints one JSON line
  local a=(bench turn --server $HOST_IP:$port --bind $LG_IP --secret $SECRET --server-pid $pid --json
           --allocations 100 --size 120 --duration $SECS --warmup 1)
  local sc=$1
  case $sc in
    *-gsogro) a+=(--gso --gro); sc=${sc%-gsogro};;
    *-gso) a+=(--gso); sc=${sc%-gso};;
  esac
  case $sc in
    closed-w8) a+=(--window 8);;
    open-100k-b5) a+=(--rate 100000 --burst-ms 5);;
    open-200k-b5) a+=(--rate 200000 --burst-ms 5);;
    open-100k-b1) a+=(--rate 100000 --burst-ms 1);;
    open-50k-b1) a+=(--rate 50000 --burst-ms 1);;
    memory) a=(bench turn --server $HOST_IP:$port --bind $LG_IP --secret $SECRET --server-pid $pid --json
               --allocations 1000 --duration 0);;
  esac
  "${NSX[@]}" taskset -c $LCPU "$BIN" "${a[@]}" || echo '{"error":"run failed"}'
}

ticks() { # utime + stime of a process or thread, in clock ticks (all its threads for a pid)
  awk '{print $14 + $15}' "/proc/$1/stat"
}
RESULTS="$TMP/results.jsonl"
for r in $(seq "$ROUNDS"); do
  order=$SERVERS
  [ $((r % 2)) = 0 ] && order=$(echo "$SERVERS" | tr ' ' '\n' | tac | tr '\n' ' ')
  for s in $order; do
    for sc in $SCENARIOS; do
      start_server "$s"
      extra=
      if [ -n "$NAPI" ]; then
        s0=$(ticks "$pid"); n0=$(ticks "$NAPI")
        line=$(run "$sc")
        extra=",\"whole_run\":{\"server_ticks\":$(( $(ticks "$pid") - s0 )),\"napi_ticks\":$(( $(ticks "$NAPI") - n0 )),\"hz\":$(getconf CLK_TCK)}"
      else
        line=$(run "$sc")
      fi
      stop
      echo "{\"round\":$r,\"server\":\"$s\",\"scenario\":\"$sc\",\"report\":$line$extra}" | tee -a "$RESULTS" >&2
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
napi = any("whole_run" in r for r in rows)
def with_napi(r):
    w, rep = r.get("whole_run"), r["report"]
    dg = 2 * (rep.get("round_trips") or 0)
    if not w or not dg:
        return None
    return (w["server_ticks"] + w["napi_ticks"]) / w["hz"] * 1e6 / dg
print(f"{'scenario':<14} {'server':<11} {'relayed/s':>10} {'cpu us/dg':>9} {'dg/s/core':>10} {'lost':>7} {'rtt p50':>8} {'rtt p99':>8} {'B/alloc':>8} {'alloc/s':>8}" + (f" {'+napi us/dg':>11}" if napi else ""))
table = {}
for sc in scen:
    for s in servers:
        rs = [r["report"] for r in rows if r["scenario"] == sc and r["server"] == s]
        wn = med([with_napi(r) for r in rows if r["scenario"] == sc and r["server"] == s])
        pps = med([get(x, "relayed_per_s") for x in rs])
        cpu = med([get(x, "server_cpu", "cpu_us_per_op") for x in rs])
        lost = med([get(x, "lost_measured") for x in rs])
        p50 = med([get(x, "rtt_us", "p50") for x in rs])
        p99 = med([get(x, "rtt_us", "p99") for x in rs])
        mem = med([get(x, "server_rss_bytes_per_allocation") for x in rs])
        aps = med([get(x, "allocations_per_s") for x in rs])
        per_core = 1e6 / cpu if cpu else None
        table[(sc, s)] = (cpu, mem, aps, wn)
        f = lambda v, fmt: (fmt.format(v) if v is not None else "-")
        print(f"{sc:<14} {s:<11} {f(pps,'{:.0f}'):>10} {f(cpu,'{:.3f}'):>9} {f(per_core,'{:.0f}'):>10} {f(lost,'{:.0f}'):>7} {f(p50,'{:.0f}'):>8} {f(p99,'{:.0f}'):>8} {f(mem,'{:.0f}'):>8} {f(aps,'{:.0f}'):>8}" + (f" {f(wn,'{:.3f}'):>11}" if napi else ""))
if "ours" in servers and "coturn" in servers:
    print()
    for sc in scen:
        o, c = table.get((sc, "ours")), table.get((sc, "coturn"))
        if not o or not c:
            continue
        if o[0] and c[0]:
            print(f"{sc}: datagrams/s per core, ours / coturn = {c[0] / o[0]:.2f}x")
        if o[3] and c[3]:
            print(f"{sc}: with each server's NAPI thread, ours / coturn = {c[3] / o[3]:.2f}x")
        if o[1] and c[1]:
            print(f"{sc}: memory per allocation, ours / coturn = {o[1] / c[1]:.3f}; allocations/s ours / coturn = {o[2] / c[2]:.2f}x")
EOF
