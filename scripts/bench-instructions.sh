#!/usr/bin/env bash
# Instructions per request, counted by valgrind (callgrind), for one or more builds of
# chatixia-core: repeatable whatever else the machine is doing, so two builds can be
# compared on a shared, noisy host. Each build runs `--cores 1` under callgrind twice,
# serving N1 and then N2 keep-alive requests of one kind; the difference of the two
# totals divided by N2 - N1 is the server's cost of one request (start-up and shutdown
# cancel out). The kernel's share is not counted (user-space instructions only), and the
# epoll driver is used (valgrind does not run io_uring).
#
# Usage: scripts/bench-instructions.sh KIND N1 N2 BIN [BIN ...]
#   KIND: heartbeat | healthz | relay | relay-local
#   e.g. scripts/bench-instructions.sh heartbeat 500 2500 /tmp/base/chatixia-core target/release/chatixia-core
# relay and relay-local count one relayed signaling message (an `ice_candidate` of a
# typical size) between two peers connected to `/ws`, sent and received in lock-step, on a
# server of two shards: relay with the peers on different shards (the message crosses a
# mailbox), relay-local with both on one shard. They need the Python `websockets` and
# `jwt` packages (target/pyenv, or PYTHON=...).
# CALLGRIND_ARGS adds callgrind options, e.g. to count only the relay's own code (the
# sender's and the owner's handling, without the executor's idle turns, whose count
# depends on timing): CALLGRIND_ARGS="--collect-atstart=no
# --toggle-collect=*on_events_now* --toggle-collect=*dispatch::apply*".
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=$1; N1=$2; N2=$3; shift 3
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=python3
CORES=1
case "$KIND" in
  relay|relay-local)
    CORES=2
    PY=${PYTHON:-target/pyenv/bin/python3}
    # Two peers (API keys in the default mesh) on different shards (relay) or on the
    # same one (relay-local), by the server's key hash (reactor::stable_hash).
    "$PY" - "$KIND" >"$OUT/keys.json" <<'PY'
import json, sys
M = (1 << 64) - 1
def h(key):
    x = 0xcbf29ce484222325
    for b in key.encode():
        x = ((x ^ b) * 0x100000001b3) & M
    x ^= x >> 33; x = (x * 0xff51afd7ed558ccd) & M
    x ^= x >> 33; x = (x * 0xc4ceb9fe1a85ec53) & M
    return x ^ (x >> 33)
shard = lambda k: (h(k) * 2) >> 64
a = "bench-a"
same = sys.argv[1] == "relay-local"
b = next(f"bench-b{i}" for i in range(1000) if (shard(f"bench-b{i}") == shard(a)) == same)
print(json.dumps({"keys": {"ak_a": {"peer_id": a, "role": "agent"}, "ak_b": {"peer_id": b, "role": "agent"}}}))
PY
    export API_KEYS_FILE="$OUT/keys.json"
    # The mailbox spin (polling for more mail a moment after a message from another
    # shard) lasts a time, not a number of polls: under valgrind it would add a count
    # that varies from run to run. Off, a shard sleeps on its doorbell at once.
    export REACTOR_MAILBOX_SPIN_US=0
    ;;
esac
total() { # $1 = binary, $2 = requests -> total instructions
  local port pid
  port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  RUST_LOG=warn valgrind --tool=callgrind ${CALLGRIND_ARGS:-} --callgrind-out-file="$OUT/cg.%p" \
    "$1" --cores "$CORES" --io-driver epoll --stun-url none --listen "127.0.0.1:$port" 2>>"$OUT/valgrind.log" & pid=$!
  "$PY" -W ignore - "$port" "$2" "$KIND" "${API_KEYS_FILE:-}" <<'PY'
import http.client, json, sys, time
port, n, kind = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for _ in range(600):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30); c.request("GET", "/healthz"); c.getresponse().read(); break
    except OSError:
        time.sleep(0.1)
if kind.startswith("relay"):
    import jwt
    from websockets.sync.client import connect
    a, b = [k["peer_id"] for k in json.load(open(sys.argv[4]))["keys"].values()]
    tok = lambda p: jwt.encode({"sub": p, "role": "agent", "iat": int(time.time()), "exp": int(time.time()) + 36000}, "dev-secret-change-me", algorithm="HS256")
    wa = connect(f"ws://127.0.0.1:{port}/ws?token={tok(a)}", open_timeout=60, close_timeout=60)
    wb = connect(f"ws://127.0.0.1:{port}/ws?token={tok(b)}", open_timeout=60, close_timeout=60)
    for i in range(n):
        m = {"type": "ice_candidate", "peer_id": a, "target_id": b, "payload": {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 %d typ host" % (40000 + i % 1000), "sdpMid": "0", "sdpMLineIndex": 0}}
        wa.send(json.dumps(m))
        got = json.loads(wb.recv(timeout=60))
        assert got["type"] == "ice_candidate" and got["peer_id"] == a, got
    wa.close(); wb.close()
    sys.exit(0)
for i in range(n):
    if kind == "heartbeat":
        body = '{"agent_id":"bench-%d","hostname":"h","skill_names":["s%d"]}' % (i % 100, i % 10)
        c.request("POST", "/api/hub/heartbeat", body, {"content-type": "application/json"})
    else:
        c.request("GET", "/healthz")
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
  kill -TERM "$pid"; wait "$pid" || true
  local f
  f=$(ls -t "$OUT"/cg.* | head -1)
  awk '/^summary:/ {print $2}' "$f"
  rm -f "$OUT"/cg.*
}
printf '%-60s %14s\n' "build ($KIND)" "instr/request"
for bin in "$@"; do
  a=$(total "$bin" "$N1"); b=$(total "$bin" "$N2")
  printf '%-60s %14.0f\n' "$bin" "$(python3 -c "print(($b - $a) / ($N2 - $N1))")"
done
