#!/usr/bin/env bash
# Issue 11: the sidecar's DataChannel data plane, ours against the reference, side by side.
#
# Two network namespaces joined by a veth pair (10.203.<n>.1 and .2, no default route, so
# the reference's default public STUN server fails fast and nothing leaves the machine).
# chatixia-core (the signaling server) listens in namespace A on the veth address, which
# both namespaces reach. For every case and round, a fresh pair of sidecars is started
# (A in namespace A, B in namespace B; ours, then the reference, alternating), and
# `chatixia-core bench sidecar` drives them over their IPC sockets (a Unix socket path
# works across network namespaces): A sends COUNT messages of SIZE payload bytes to B.
# With PEERS > 1, PEERS receiving sidecars are started in namespace B (each its own key,
# peer id and IPC socket) and A sends round-robin to all of them (they also connect to
# each other: the server lists every peer to every peer, so namespace B holds a full
# mesh of PEERS sidecars). With REPEAT > 1 the COUNT messages are sent REPEAT times
# back to back on the same pair (msg/s: median over the repetitions, the first, cold
# one also shown; CPU over all of them).
# The table shows medians over the rounds and the ratio ours / reference.
#
# The same comparison, on bench compare's harness and report (table, report.json,
# report.html), is `chatixia-core bench compare --sidecar` (README, "Benchmark against
# the reference build"; docs/BENCHMARKS.md, "Sidecar data plane"). This script stays for
# what that command does not do: PERF_SENDER profiling, and re-running the commands
# recorded in docs/BENCHMARKS.md as they were.
#
# Usage (root: it makes namespaces):
#   scripts/bench-sidecar.sh [ROUNDS]
# Environment:
#   REF_SIDECAR  the reference sidecar binary (default <repo>/../shared/reference/chatixia-sidecar)
#   OUR_SIDECAR  our sidecar binary (default target/release/chatixia-sidecar, built here)
#   CASES        space-separated SIZE:COUNT[:PEERS[:REPEAT]] (default: 64 B and 1 KiB at
#                1,000 (repeated 10 times)/20,000/100,000, and 16 KiB at 2,000; PEERS
#                defaults to 1, REPEAT to 1; e.g. 64:20000:50 for 50 receiving sidecars)
#   RUN_TIMEOUT  seconds one measured run may take (default 180; a run past it is reported
#                with what was delivered)
#   OUT          directory for the JSON reports and logs (default: a new temp dir)
#   PERF_SENDER  `ours` or `reference`: record that sender with `perf record --call-graph dwarf`
#                into OUT/<run>.perf.data (then `perf report -i …`)
#   PERF_RECEIVER  the same for the (first) receiver, into OUT/<run>.b.perf.data
#   SIDECAR_LOG  RUST_LOG of the sidecars (default warn; their logs go to OUT)
#   SIDECAR_UDP_GSO  passed to the sidecars when set (ours: `on` sends runs of datagrams
#                as one UDP GSO send; the reference ignores it)
#   NO_BUILD=1   do not run cargo build
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
REF_SIDECAR=${REF_SIDECAR:-$PWD/../shared/reference/chatixia-sidecar}
OUR_SIDECAR=${OUR_SIDECAR:-$PWD/target/release/chatixia-sidecar}
CASES=${CASES:-"64:1000:1:10 64:20000 64:100000 1024:1000:1:10 1024:20000 1024:100000 16384:2000"}
RUN_TIMEOUT=${RUN_TIMEOUT:-180}
CORE=$PWD/target/release/chatixia-core
if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -q -p chatixia-core -p chatixia-sidecar
fi
[ "$(id -u)" = 0 ] || { echo "bench-sidecar.sh: needs root (ip netns)" >&2; exit 2; }
for b in "$CORE" "$OUR_SIDECAR" "$REF_SIDECAR"; do
  [ -x "$b" ] || { echo "bench-sidecar.sh: $b is not an executable" >&2; exit 2; }
done
OUT=${OUT:-$(mktemp -d /tmp/bench-sidecar.XXXXXX)}
mkdir -p "$OUT"

# Names unique to this run (interface names stay under 16 bytes).
TAG=$$
NSA=cxbench-a-$TAG; NSB=cxbench-b-$TAG; VA=cxa$TAG; VB=cxb$TAG
NET=10.203.$((TAG % 250)); IPA=$NET.1; IPB=$NET.2; PORT=18080
server=; sa=; sbs=
stop_pid() { # $1 = pid: TERM, then KILL after a grace (the reference may ignore TERM)
  local p=$1
  [ -n "$p" ] || return 0
  kill -TERM "$p" 2>/dev/null || return 0
  for _ in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
stop_all() { # $@ = pids: TERM to all, then KILL what is left after a grace
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  for _ in $(seq 20); do
    local alive=
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1 && break; done
    [ -n "$alive" ] || break
    sleep 0.05
  done
  kill -KILL "$@" 2>/dev/null || true
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}
cleanup() {
  stop_pid "$sa"; stop_all $sbs; stop_pid "$server"
  ip netns del "$NSA" 2>/dev/null || true
  ip netns del "$NSB" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$NSA"
ip netns add "$NSB"
ip link add "$VA" type veth peer name "$VB"
ip link set "$VA" netns "$NSA"
ip link set "$VB" netns "$NSB"
ip -n "$NSA" addr add "$IPA/24" dev "$VA"
ip -n "$NSB" addr add "$IPB/24" dev "$VB"
for ns in "$NSA" "$NSB"; do ip -n "$ns" link set lo up; done
ip -n "$NSA" link set "$VA" up
ip -n "$NSB" link set "$VB" up

# Receiver j (0-based) authenticates with ak_bench_b<j> as bench-b<j>-sidecar; j = 0
# keeps the names of the one-peer setup (ak_bench_b, bench-b-sidecar).
PEERS_MAX=1
for case in $CASES; do
  IFS=: read -r _ _ p _ <<<"$case"
  [ "${p:-1}" -gt "$PEERS_MAX" ] && PEERS_MAX=${p:-1}
done
b_key() { if [ "$1" = 0 ]; then echo ak_bench_b; else echo "ak_bench_b$1"; fi; }
b_peer() { if [ "$1" = 0 ]; then echo bench-b-sidecar; else echo "bench-b$1-sidecar"; fi; }
{
  printf '{"keys":{"ak_bench_a":{"peer_id":"bench-a-sidecar","role":"agent"}'
  for j in $(seq 0 $((PEERS_MAX - 1))); do
    printf ',\n "%s":{"peer_id":"%s","role":"agent"}' "$(b_key "$j")" "$(b_peer "$j")"
  done
  printf '}}\n'
} > "$OUT/keys.json"
API_KEYS_FILE=$OUT/keys.json RUST_LOG=warn \
  ip netns exec "$NSA" "$CORE" --cores 1 --stun-url none --listen "$IPA:$PORT" \
  2>>"$OUT/server.log" & server=$!
for _ in $(seq 100); do
  ip netns exec "$NSB" curl -sf "http://$IPA:$PORT/healthz" >/dev/null && break; sleep 0.05
done
ip netns exec "$NSB" curl -sf "http://$IPA:$PORT/healthz" >/dev/null \
  || { echo "bench-sidecar.sh: the server did not come up (see $OUT/server.log)" >&2; exit 1; }

udp_drops() { # $1 = ns: UDP datagrams that namespace dropped (receive + send buffer full)
  ip netns exec "$1" awk '/^Udp:/ { if (h) { print $6 + $7; exit } h = 1 }' /proc/net/snmp
}
udp_counters() { # $1 = ns: its UDP RcvbufErrors and SndbufErrors
  ip netns exec "$1" awk '/^Udp:/ { if (h) { print "RcvbufErrors=" $6, "SndbufErrors=" $7; exit } h = 1 }' /proc/net/snmp
}

start_sidecar() { # $1 = ns, $2 = binary, $3 = key, $4 = socket, $5 = log; prints the pid
  ip netns exec "$1" env -i PATH=/usr/bin:/bin HOME=/tmp NO_COLOR=1 RUST_LOG="${SIDECAR_LOG:-warn}" \
    SIGNALING_URL="ws://$IPA:$PORT/ws" TOKEN_URL="http://$IPA:$PORT/api/token" \
    API_KEY="$3" IPC_SOCKET="$4" STUN_URLS=none ${SIDECAR_UDP_GSO:+SIDECAR_UDP_GSO=$SIDECAR_UDP_GSO} \
    "$2" >/dev/null 2>>"$5" &
  echo $!
}

for round in $(seq 1 "$ROUNDS"); do
  for case in $CASES; do
    IFS=: read -r size count peers repeat <<<"$case"
    peers=${peers:-1}; repeat=${repeat:-1}
    for impl in ours reference; do
      bin=$OUR_SIDECAR; [ "$impl" = reference ] && bin=$REF_SIDECAR
      run=$impl-$size-$count-p$peers-r$repeat-$round
      # A start-up of many peers (a full mesh in namespace B) takes longer.
      connect_timeout=$((30 + 2 * peers))
      # A pair that never opens its DataChannel (the bench fails before measuring, with
      # an empty report) is started afresh, up to 3 times; the .err file keeps each cause.
      for attempt in 1 2 3; do
        rm -f "$OUT/$run".*.sock
        drops0=$(( $(udp_drops "$NSA") + $(udp_drops "$NSB") ))
        sa=$(start_sidecar "$NSA" "$bin" ak_bench_a "$OUT/$run.a.sock" "$OUT/$run.a.log")
        sbs=; bargs=()
        for j in $(seq 0 $((peers - 1))); do
          sock=$OUT/$run.b$j.sock
          pid=$(start_sidecar "$NSB" "$bin" "$(b_key "$j")" "$sock" "$OUT/$run.b.log")
          sbs="$sbs $pid"
          bargs+=(--b-socket "$sock" --b-peer "$(b_peer "$j")" --b-pid "$pid")
        done
        perf_pid=; perf_b_pid=
        if [ -n "${PERF_SENDER:-}" ] && [ "$impl" = "$PERF_SENDER" ]; then
          perf record -q -F 499 --call-graph dwarf,16384 -p "$sa" -o "$OUT/$run.perf.data" \
            2>>"$OUT/$run.err" & perf_pid=$!
        fi
        if [ -n "${PERF_RECEIVER:-}" ] && [ "$impl" = "$PERF_RECEIVER" ]; then
          first_b=${sbs# }; first_b=${first_b%% *}
          perf record -q -F 499 --call-graph dwarf,16384 -p "$first_b" -o "$OUT/$run.b.perf.data" \
            2>>"$OUT/$run.err" & perf_b_pid=$!
        fi
        "$CORE" bench sidecar --label "$impl" --json \
          --a-socket "$OUT/$run.a.sock" "${bargs[@]}" \
          --a-pid "$sa" --size "$size" --count "$count" --repeat "$repeat" \
          --connect-timeout "$connect_timeout" \
          --timeout "$RUN_TIMEOUT" --drain-ms 2000 > "$OUT/$run.json" 2>>"$OUT/$run.err" || true
        echo $(( $(udp_drops "$NSA") + $(udp_drops "$NSB") - drops0 )) > "$OUT/$run.udp_drops"
        echo "after $run: A $(udp_counters "$NSA"); B $(udp_counters "$NSB") (cumulative)" >> "$OUT/udp.log"
        for p in $perf_pid $perf_b_pid; do kill -INT "$p" 2>/dev/null; wait "$p" || true; done
        stop_pid "$sa"; sa=
        # shellcheck disable=SC2086
        stop_all $sbs; sbs=
        rm -f "$OUT/$run".*.sock
        [ -s "$OUT/$run.json" ] && break
        echo "attempt $attempt: no report" >> "$OUT/$run.err"
      done
      python3 - "$OUT/$run.json" "$run" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    try:
        r["udp_drops"] = int(open(sys.argv[1][:-5] + ".udp_drops").read())
        json.dump(r, open(sys.argv[1], "w"))
    except Exception:
        pass
except Exception:
    print(f"{sys.argv[2]:<32} FAILED (see {sys.argv[1][:-5]}.err)"); sys.exit()
s, b = r["sender"], r["receiver"]
reps = r.get("repetitions")
print(f"{sys.argv[2]:<32} {r['delivered']:>7}/{r['count'] * r.get('repeat', 1):<7} in_order={r['in_order']!s:<5} "
      f"{r['msg_per_s']:>9.0f} msg/s {r['payload_mb_per_s']:>7.2f} MB/s "
      f"cpu A {s['cpu_us_per_msg']} B {b['cpu_us_per_msg']} us/msg "
      f"rss A {s['rss_idle_kib']}/{s['rss_after_kib']}/{s['rss_drained_kib']} KiB"
      + f" udp drops {r.get('udp_drops')}"
      + (f" first/warm msg/s {reps['first_msg_per_s']}/{reps['warm_median_msg_per_s']}" if reps else "")
      + (f" FAIL {r['failure']}" if r.get('failure') else ""))
PY
    done
  done
done

python3 - "$OUT" "$CASES" <<'PY'
import glob, json, os, statistics, sys
out, cases = sys.argv[1], sys.argv[2].split()
runs = {}
for f in glob.glob(os.path.join(out, "*.json")):
    if f.endswith("keys.json"):
        continue
    try:
        r = json.load(open(f))
    except Exception:
        continue
    key = (r["label"], r["size"], r["count"], r.get("receivers", 1), r.get("repeat", 1))
    runs.setdefault(key, []).append(r)
def med(rs, get):
    v = [get(r) for r in rs]
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None
metrics = [
    ("msg/s", lambda r: r["msg_per_s"], "{:.0f}"),
    ("msg/s first repetition", lambda r: (r.get("repetitions") or {}).get("first_msg_per_s"), "{:.0f}"),
    ("msg/s warm repetitions", lambda r: (r.get("repetitions") or {}).get("warm_median_msg_per_s"), "{:.0f}"),
    ("MB/s (payload)", lambda r: r["payload_mb_per_s"], "{:.2f}"),
    ("sender CPU us/msg", lambda r: r["sender"]["cpu_us_per_msg"], "{:.1f}"),
    ("sender CPU us/msg (10 ms ticks)", lambda r: r["sender"].get("cpu_ticks_us_per_msg"), "{:.1f}"),
    ("receiver CPU us/msg", lambda r: r["receiver"]["cpu_us_per_msg"], "{:.1f}"),
    ("UDP datagrams dropped", lambda r: r.get("udp_drops"), "{:.0f}"),
    ("sender RSS idle MiB", lambda r: r["sender"]["rss_idle_kib"] and r["sender"]["rss_idle_kib"] / 1024, "{:.1f}"),
    ("sender RSS after MiB", lambda r: r["sender"]["rss_after_kib"] and r["sender"]["rss_after_kib"] / 1024, "{:.1f}"),
    ("sender RSS drained MiB", lambda r: r["sender"]["rss_drained_kib"] and r["sender"]["rss_drained_kib"] / 1024, "{:.1f}"),
    ("receiver RSS after MiB", lambda r: r["receiver"]["rss_after_kib"] and r["receiver"]["rss_after_kib"] / 1024, "{:.1f}"),
]
print()
print(f"Medians over rounds; ratio = ours / reference. Reports in {out}")
print(f"| case | metric | ours | reference | ratio |")
print(f"|---|---|---|---|---|")
for c in cases:
    f4 = (c.split(":") + ["1", "1"])[:4]
    size, count, peers, repeat = (int(x or 1) for x in f4)
    ours = runs.get(("ours", size, count, peers, repeat), [])
    ref = runs.get(("reference", size, count, peers, repeat), [])
    ok = lambda rs: f"{sum(1 for r in rs if r['in_order'] and r['delivered'] == r['count'] * r.get('repeat', 1))}/{len(rs)}"
    name = f"{count:,} x {size} B" + (f" to {peers} peers" if peers > 1 else "") + (f" x{repeat}" if repeat > 1 else "")
    print(f"| {name} | complete & in order | {ok(ours)} | {ok(ref)} | |")
    for label, get, fmt in metrics:
        a, b = med(ours, get), med(ref, get)
        ratio = f"{a / b:.2f}x" if a is not None and b else ""
        f = lambda x: fmt.format(x) if x is not None else "-"
        if a is None and b is None:
            continue
        print(f"| {name} | {label} | {f(a)} | {f(b)} | {ratio} |")
PY
