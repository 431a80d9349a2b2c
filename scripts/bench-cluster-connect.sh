#!/usr/bin/env bash
# Issue 25: 10,000 peers connecting over three nodes of a cluster. Starts its own
# redis-server and three nodes (`--cores 1`, `--cluster`), writes one keys file of
# PEERS peers in meshes of 10 (`bench keys --meshes`; every node loads all of it), splits
# it in three, and runs three `bench ws-idle` at once, one per node, each connecting its
# third (upgrade, `register`, the peer list read) and holding it HOLD s. Prints, per node:
# connections reached, connect time and rate, connect p99, peers listed, the node's RSS
# per connection; and Redis's memory for the directory and the nodes' peer-list sizes.
# Usage: scripts/bench-cluster-connect.sh   (PEERS=10002 HOLD=8 BIN=…)
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=${PEERS:-10002}
HOLD=${HOLD:-8}
command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin chatixia-core -q
  BIN=target/release/chatixia-core
fi
TMP=$(mktemp -d)
. scripts/lib/bench-server.sh  # free_port, start_redis
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; sleep 0.5;
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
start_redis "$TMP"; pids+=("$rpid")
"$BIN" bench keys --count "$PEERS" --meshes $((PEERS / 10)) --out "$TMP/keys.json" >/dev/null
python3 - "$TMP" <<'PY'
import json, sys
tmp = sys.argv[1]
keys = json.load(open(f"{tmp}/keys.json"))["keys"]
items = list(keys.items())
third = (len(items) + 2) // 3
for i in range(3):
    part = dict(items[i * third:(i + 1) * third])
    json.dump({"keys": part}, open(f"{tmp}/keys-{i}.json", "w"))
    open(f"{tmp}/count-{i}", "w").write(str(len(part)))
PY
export SIGNALING_SECRET=bench-connect-secret API_KEYS_FILE=$TMP/keys.json RUST_LOG=warn
ports=() npids=()
for i in 0 1 2; do
  port=$(free_port)
  mkdir -p "$TMP/n$i"
  CHATIXIA_DATA_DIR=$TMP/n$i "$BIN" --cores 1 --stun-url none --listen "127.0.0.1:$port" \
    --cluster "$REDIS" --node-id "n$i" 2>>"$TMP/n$i.log" >/dev/null &
  npids+=($!); pids+=($!); ports+=("$port")
done
for p in "${ports[@]}"; do
  for _ in $(seq 200); do [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p/readyz")" = 200 ] && break; sleep 0.05; done
done
echo "redis $REDIS; nodes ${ports[*]}; $PEERS peers in meshes of 10" >&2
lg=()
for i in 0 1 2; do
  "$BIN" bench ws-idle --no-pin --url "http://127.0.0.1:${ports[$i]}" --keys "$TMP/keys-$i.json" \
    --connections "$(cat "$TMP/count-$i")" --hold "$HOLD" --server-pid "${npids[$i]}" --json \
    > "$TMP/idle-$i.json" 2>"$TMP/idle-$i.err" & lg+=($!)
done
# Redis's memory while every peer is held (the connects take about a second).
sleep $(( HOLD / 2 + 2 ))
redis-cli -p "$RPORT" info memory | grep -E '^used_memory:' > "$TMP/mem"
redis-cli -p "$RPORT" dbsize > "$TMP/dbsize"
for p in "${lg[@]}"; do wait "$p" || true; done
python3 - "$TMP" <<'PY'
import json, sys
tmp = sys.argv[1]
def get(r, path):
    for k in path.split('.'):
        if not isinstance(r, dict) or k not in r: return None
        r = r[k]
    return r
tot = 0
for i in range(3):
    try:
        r = json.load(open(f"{tmp}/idle-{i}.json"))
    except Exception as e:
        print(f"n{i}: no report ({open(f'{tmp}/idle-{i}.err').read()[-300:]})"); continue
    tot += r.get("established") or 0
    print(f"n{i}: {r.get('established')}/{r.get('requested')} connected in {r.get('connect_s')} s "
          f"({r.get('connect_rate_per_s')}/s), connect p99 {get(r, 'connect_latency_us.p99')} us, "
          f"peers listed {r.get('peers_listed_total')}, dropped {r.get('dropped_during_hold')}, "
          f"RSS per connection {get(r, 'server_rss.per_connection_kib')} KiB")
mem = open(f"{tmp}/mem").read().strip().split(':')[1]
print(f"all: {tot} connections; while held: Redis used_memory {int(mem) / 1048576:.1f} MiB, keys {open(f'{tmp}/dbsize').read().strip()}")
PY
