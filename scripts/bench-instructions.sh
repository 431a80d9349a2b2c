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
#   KIND: heartbeat | heartbeat-token (the same with `Authorization: Bearer` of a token
#         from POST /api/token, as agents and `bench http` send it) | healthz | relay | relay-local (two registered WebSocket peers,
#         one offer in flight, under --cores 2: on different shards (relay) or on the
#         same one (relay-local); needs Python `websockets`, from target/pyenv)
#   CALLGRIND_ARGS: extra valgrind arguments (e.g. --toggle-collect=...)
#   KEEP_CALLGRIND=DIR: keep each run's callgrind profile there (callgrind_annotate)
#   SHARDS=N: --cores N for heartbeat and healthz (default 1)
#   e.g. scripts/bench-instructions.sh heartbeat 500 2500 /tmp/base/chatixia-core target/release/chatixia-core
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=$1; N1=$2; N2=$3; shift 3
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=python3
[ -x target/pyenv/bin/python ] && PY=target/pyenv/bin/python   # relay: needs `websockets`
CORES=${SHARDS:-1}   # SHARDS=2: heartbeat or healthz over two shards (relay sets 2 itself)
A=bench-a; B=bench-b
case "$KIND" in
  relay|relay-local)
    CORES=2
    # Two peers on different shards (relay) or on the same one (relay-local), by the
    # server's key hash (reactor::stable_hash).
    read -r A B < <("$PY" - "$KIND" <<'PY'
import sys
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
print(a, b)
PY
)
    # The mailbox spin (polling for more mail a moment after a message from another
    # shard) lasts a time, not a number of polls: under valgrind it would add a count
    # that varies from run to run. Off, a shard sleeps on its doorbell at once.
    export REACTOR_MAILBOX_SPIN_US=0
    ;;
esac
total() { # $1 = binary, $2 = requests -> total instructions
  local pid run
  run=$(mktemp -d "$OUT/run.XXXX")
  # Two agents' API keys (relay); port 0, read back from --port-file (no port race).
  printf '{"keys":{"ak_bench_a":{"peer_id":"%s","role":"agent"},"ak_bench_b":{"peer_id":"%s","role":"agent"}}}' "$A" "$B" >"$run/keys.json"
  API_KEYS_FILE="$run/keys.json" CHATIXIA_DATA_DIR="$run/data" RUST_LOG=warn \
    valgrind --tool=callgrind ${CALLGRIND_ARGS:-} --callgrind-out-file="$OUT/cg.%p" \
    "$1" --cores "$CORES" --io-driver epoll --stun-url none --listen "127.0.0.1:0" \
    --port-file "$run/addr" 2>>"$OUT/valgrind.log" & pid=$!
  "$PY" - "$run/addr" "$2" "$KIND" "$A" "$B" <<'PY'
import http.client, json, sys, time
addr_file, n, kind, pa, pb = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
for _ in range(1200):
    try:
        host, port = open(addr_file).read().split()[0].rsplit(":", 1)
        port = int(port)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60); c.request("GET", "/healthz"); c.getresponse().read(); break
    except (OSError, ValueError, IndexError):
        time.sleep(0.1)
if kind.startswith("relay"):
    # Two registered peers; `n` offers from a to b, each read by b before the next is
    # sent (one message in flight: the server's cost per relayed message).
    from websockets.sync.client import connect
    def token(key):
        c.request("POST", "/api/token", "", {"X-API-Key": key}); r = c.getresponse()
        body = json.loads(r.read()); assert r.status == 200, body
        return body["token"]
    def peer(name, key):
        ws = connect(f"ws://127.0.0.1:{port}/ws?token={token(key)}", max_size=None)
        ws.send(json.dumps({"type": "register", "peer_id": name}))
        while json.loads(ws.recv(timeout=60)).get("type") != "peer_list":
            pass
        return ws
    a, b = peer(pa, "ak_bench_a"), peer(pb, "ak_bench_b")
    msg = json.dumps({"type": "offer", "peer_id": pa, "target_id": pb,
                      "payload": {"sdp": "v=0 " + "x" * 200}})
    got = 0
    for i in range(n):
        a.send(msg)
        while True:
            m = json.loads(b.recv(timeout=60))
            if m.get("type") == "offer":
                got += 1
                break
    assert got == n, (got, n)
    a.close(); b.close()
    sys.exit(0)
headers = {"content-type": "application/json"}
if kind == "heartbeat-token":
    c.request("POST", "/api/token", "", {"X-API-Key": "ak_bench_a"}); r = c.getresponse()
    body = json.loads(r.read()); assert r.status == 200, body
    headers["authorization"] = "Bearer " + body["token"]
for i in range(n):
    if kind.startswith("heartbeat"):
        body = '{"agent_id":"bench-%d","hostname":"h","skill_names":["s%d"]}' % (i % 100, i % 10)
        c.request("POST", "/api/hub/heartbeat", body, headers)
    else:
        c.request("GET", "/healthz")
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
  kill -TERM "$pid"; wait "$pid" || true
  local f
  f=$(ls -t "$OUT"/cg.* | head -1)
  awk '/^summary:/ {print $2}' "$f"
  # KEEP_CALLGRIND=DIR: keep each run's profile (for callgrind_annotate).
  if [ -n "${KEEP_CALLGRIND:-}" ]; then
    mkdir -p "$KEEP_CALLGRIND"; cp "$f" "$KEEP_CALLGRIND/$(basename "$1").$2.callgrind"
  fi
  rm -f "$OUT"/cg.*
  rm -rf "$run"
}
printf '%-60s %14s\n' "build ($KIND)" "instr/request"
for bin in "$@"; do
  a=$(total "$bin" "$N1"); b=$(total "$bin" "$N2")
  printf '%-60s %14.0f\n' "$bin" "$(python3 -c "print(($b - $a) / ($N2 - $N1))")"
done
