#!/usr/bin/env bash
# Token brute force against a release server (issue 20): scripts/brute_token.py sends
# wrong API keys at full speed to POST /api/token for SECONDS from ADDRESSES loopback
# addresses (4 keep-alive connections each, 16 requests pipelined), with a right key
# once a second from a fresh address. Prints the brute force's counts, the server's CPU
# seconds (utime+stime from /proc/PID/stat over the run) and its chatixia_auth_* series.
# Loopback only.
#
#   scripts/bench-brute-token.sh [SECONDS] [ADDRESSES]       # default 10 1
#   CORES=2 BIN=path EXTRA="--auth-failures-per-ip-max 4000000000" scripts/bench-brute-token.sh
#
# EXTRA is passed to the server: the line above makes the budget never bind (every
# wrong key is looked at and answered 401, as before issue 20), for comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}; ADDRS=${2:-1}
CORES=${CORES:-2}
BIN=${BIN:-target/release/chatixia-core}
[ -x "$BIN" ] || cargo build --release --bin chatixia-core -q
TMP=$(mktemp -d)
srv=
trap '[ -n "$srv" ] && kill -TERM "$srv" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"' EXIT
cat >"$TMP/keys.json" <<'EOF'
{"keys": {"ak_bench_right": {"peer_id": "bench", "role": "agent"}}}
EOF
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
# shellcheck disable=SC2086
API_KEYS_FILE="$TMP/keys.json" RUST_LOG=warn "$BIN" --cores "$CORES" --stun-url none \
  --listen "127.0.0.1:$PORT" --data-dir "$TMP/data" ${EXTRA:-} 2>"$TMP/server.log" &
srv=$!
for _ in $(seq 100); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.05; done
cpu() { awk '{print $14 + $15}' "/proc/$srv/stat"; }
tck=$(getconf CLK_TCK)
c0=$(cpu)
python3 scripts/brute_token.py "$URL" "$SECS" --round "$SECS" --addresses "$ADDRS" \
  --good-key ak_bench_right | grep '^total'
c1=$(cpu)
echo "server CPU: $(python3 -c "print(f'{($c1 - $c0) / $tck:.2f}')") s over ${SECS} s ($CORES cores; cores $CORES, addresses $ADDRS, extra: ${EXTRA:-none})"
# The server's counts, summed over shards.
curl -s "$URL/metrics" | grep -E '^chatixia_auth_(failures|refused)_total\{.*route="token"' \
  | sed 's/shard="[0-9]*",//' | awk '{n[$1] += $2} END {for (k in n) if (n[k] > 0) print "  " k, n[k]}' | sort
