#!/usr/bin/env bash
# Issue 10: the cost of durability, side by side with the in-memory build before it.
# Approvals/s and task submissions/s at 1 and 64 concurrent clients (wrk, --latency for
# p99), fsyncs/s (the store's group commits, from GET /metrics), each on a fresh
# `--cores 1` server pinned to core 0 (its storage thread too) with wrk on core 1, on a
# fresh data directory. Then start-up time with 100,000 stored entries.
#
# Usage: scripts/bench-durable.sh BEFORE_BIN AFTER_BIN [APPROVALS_1] [APPROVALS_64] [SECS]
#   Both builds need the test-switches feature (--test-clock).
#   BEFORE_BIN: a build without the store (it ignores the admin token and --data-dir).
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=$1; AFTER=$2; N1=${3:-500}; N64=${4:-4000}; SECS=${5:-3}; ADUR=${ADUR:-10s}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export SIGNALING_SECRET=bench-durable-secret
cat > "$OUT/keys.json" <<'JSON'
{"keys": {"ak_bench_admin": {"peer_id": "admin-1", "role": "admin"},
          "ak_bench_agent": {"peer_id": "agent-1", "role": "agent"}}}
JSON
pid=
stop() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; pid=; }
trap stop EXIT
start() { # $1 = binary, $2 = data dir (passed only to a build that has --data-dir)
  local dd=(); "$1" --help | grep -q -- --data-dir && dd=(--data-dir "$2")
  PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  API_KEYS_FILE="$OUT/keys.json" RUST_LOG=warn taskset -c 0 "$1" --cores 1 --stun-url none \
    --test-clock --listen "127.0.0.1:$PORT" "${dd[@]}" 2>>"$OUT/server.log" & pid=$!
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.05; done
}
commits() { curl -sf "http://127.0.0.1:$PORT/metrics" | awk '/^chatixia_store_commits_total/ {print $2}' | grep . || echo 0; }
# Prepares $1 pending entries (many source addresses past the per-IP pair limit, the
# test clock moved past the window) and writes their ids to $2.
prep() {
  python3 - "$PORT" "$1" "$2" <<'PY'
import http.client, json, socket, sys, threading
port, n, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ids, lock = [], threading.Lock()
def conn(src):
    c = http.client.HTTPConnection("127.0.0.1", port, source_address=(src, 0), timeout=30)
    return c
def req(c, method, path, body=None, headers=None):
    h = {"Content-Type": "application/json"}; h.update(headers or {})
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    r = c.getresponse(); data = r.read()
    return r.status, data
ctl = conn("127.0.0.1")
def worker(ips, per_ip):
    for ip in ips:
        c = conn(ip)
        for _ in range(per_ip):
            st, d = req(c, "POST", "/api/pairing/generate-code", headers={"X-API-Key": "ak_bench_agent"})
            code = json.loads(d)["code"]
            st, d = req(c, "POST", "/api/pairing/pair", {"code": code, "agent_name": "bench"})
            assert st == 200, d
            with lock: ids.append(json.loads(d)["id"])
        c.close()
left = n
while left > 0:
    ips = [f"127.0.{a}.{b}" for a in range(1, 3) for b in range(1, 255)]
    per = 5
    take = min(left, len(ips) * per)
    ips = ips[: (take + per - 1) // per]
    threads = [threading.Thread(target=worker, args=(ips[i::32], per)) for i in range(32)]
    [t.start() for t in threads]; [t.join() for t in threads]
    left = n - len(ids)
    req(ctl, "POST", "/debug/clock", {"advance_secs": 61})
open(out, "w").write("\n".join(ids[:n]) + "\n")
PY
}
# Each id is approved once; the run's time is from the first request to the last 200
# (wrk's own duration is the -d bound). Past the list, it re-sends approved ids (404).
cat > "$OUT/approve.lua" <<'LUA'
local threads = {}
function setup(thread) table.insert(threads, thread) end
ids, i, ok, t0, t1 = {}, 0, 0, nil, nil
local auth = "Bearer " .. os.getenv("ADMIN_JWT")
local function now() local f = io.popen("date +%s.%N"); local s = f:read("*l"); f:close(); return tonumber(s) end
function init(args) for line in io.lines(os.getenv("IDS")) do ids[#ids + 1] = line end end
function request()
  i = i + 1
  if i == 1 then t0 = now() end
  local id = ids[(i - 1) % #ids + 1]
  return wrk.format("POST", "/api/pairing/" .. id .. "/approve", {["Authorization"] = auth})
end
function response(status)
  if status == 200 then ok = ok + 1 end
  if ok == #ids and not t1 then t1 = now(); wrk.thread:stop() end
end
function done(summary, latency, requests)
  local t = threads[1]
  local a, b, n = t:get("t0"), t:get("t1"), t:get("ok")
  if a and b then print(string.format("APPROVED %d IN %.4f", n, b - a)) else print(string.format("APPROVED %d UNFINISHED", n)) end
end
LUA
cat > "$OUT/task.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"skill":"bench","payload":{"n":1}}'
LUA
echo -e "scenario\tclients\tbuild\treq/s\tp99\tfsyncs/s" > "$OUT/results.tsv"
run() { # $1 build label, $2 binary
  for c in 1 64; do
    n=$N1; [ "$c" = 64 ] && n=$N64
    # Approvals.
    d="$OUT/data-$1-a$c"; rm -rf "$d"; start "$2" "$d"
    prep "$n" "$OUT/ids"
    jwt=$(curl -sf -X POST -H 'X-API-Key: ak_bench_admin' "http://127.0.0.1:$PORT/api/token" | python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])')
    c0=$(commits)
    IDS="$OUT/ids" ADMIN_JWT=$jwt taskset -c 1 wrk -t1 -c"$c" -d"$ADUR" --latency -s "$OUT/approve.lua" \
      "http://127.0.0.1:$PORT" > "$OUT/wrk-$1-a$c.txt"
    c1=$(commits); stop
    read -r rps fs < <(python3 - "$OUT/wrk-$1-a$c.txt" "$c0" "$c1" <<'PY'
import re, sys
m = re.search(r"APPROVED (\d+) IN ([0-9.]+)", open(sys.argv[1]).read())
n, secs = int(m.group(1)), float(m.group(2))
print(round(n / secs), round((float(sys.argv[3]) - float(sys.argv[2])) / secs, 1))
PY
)
    p99=$(awk '$1=="99%" {print $2}' "$OUT/wrk-$1-a$c.txt")
    echo -e "approve\t$c\t$1\t$rps\t$p99\t$fs" >> "$OUT/results.tsv"
    # Task submissions.
    d="$OUT/data-$1-t$c"; rm -rf "$d"; start "$2" "$d"
    c0=$(commits)
    taskset -c 1 wrk -t1 -c"$c" -d"${SECS}s" --latency -s "$OUT/task.lua" \
      "http://127.0.0.1:$PORT/api/hub/tasks" > "$OUT/wrk-$1-t$c.txt"
    c1=$(commits); stop
    rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk-$1-t$c.txt")
    p99=$(awk '$1=="99%" {print $2}' "$OUT/wrk-$1-t$c.txt")
    echo -e "submit\t$c\t$1\t$rps\t$p99\t$(python3 -c "print(round(($c1-$c0)/$SECS,1))")" >> "$OUT/results.tsv"
    echo "$1 $c clients done" >&2
  done
}
run before "$BEFORE"
run after "$AFTER"
column -t -s $'\t' "$OUT/results.tsv"
echo "raw output in $OUT" >&2
