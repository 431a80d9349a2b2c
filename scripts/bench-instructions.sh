#!/usr/bin/env bash
# Instructions per request, counted by valgrind (callgrind), for one or more builds of
# chatixia-core: repeatable whatever else the machine is doing, so two builds can be
# compared on a shared, noisy host. Each build runs `--cores 1` under callgrind twice,
# serving N1 and then N2 keep-alive requests of one kind; the difference of the two
# totals divided by N2 - N1 is the server's cost of one request (start-up and shutdown
# cancel out). The kernel's share is not counted (user-space instructions only).
#
# Usage: scripts/bench-instructions.sh KIND N1 N2 BIN [BIN ...]
#   KIND: heartbeat | healthz
#   e.g. scripts/bench-instructions.sh heartbeat 500 2500 /tmp/base/chatixia-core target/release/chatixia-core
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=$1; N1=$2; N2=$3; shift 3
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
total() { # $1 = binary, $2 = requests -> total instructions
  local port pid
  port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" \
    "$1" --cores 1 --stun-url none --listen "127.0.0.1:$port" 2>>"$OUT/valgrind.log" & pid=$!
  python3 - "$port" "$2" "$KIND" <<'PY'
import http.client, sys, time
port, n, kind = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for _ in range(600):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30); c.request("GET", "/healthz"); c.getresponse().read(); break
    except OSError:
        time.sleep(0.1)
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
