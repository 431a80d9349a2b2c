#!/usr/bin/env bash
# TLS (issue 23): chatixia-core terminating TLS itself against nginx terminating TLS, side
# by side in one run, the same client (our load generator, `chatixia-core bench …`) and
# the same certificate (a throwaway CA and an ECDSA P-256 server certificate made here
# with openssl). Server on core 0 (`--cores 1`; nginx: one process, master_process off,
# so the PID measured is the one serving), the load generator on core 1.
#
# 1. heartbeat: `bench http --mix heartbeat=1` over TLS keep-alive (64 connections, closed
#    loop): ours answers POST /api/hub/heartbeat (the real route: token check, registry
#    update, JSON); nginx answers the same requests with a static 200 (`return 200`), and
#    POST /api/token with a static token so the client can start. Server CPU per request
#    from /proc/PID/stat (utime+stime over the measured window). Also ours over plain
#    HTTP, for the cost of TLS itself. `healthz`: the same client sending GET /healthz
#    to both (a fixed answer on both sides: like for like).
# 2. handshakes: `bench tls-handshakes` (16 at once; each a full TLS 1.3 handshake with no
#    resumption, X25519 key exchange, the ECDSA P-256 certificate, one GET /healthz with
#    `connection: close`). Server CPU per handshake; handshakes per second of server CPU
#    = handshakes per second one core would do.
# 2b. counts (part `counts`, opt-in, in the first MEMORY_RUNS rounds): what does not depend on the
#    machine's kernel cost. System calls per heartbeat on the server under the heartbeat
#    load above (perf's `raw_syscalls:sys_enter` tracepoint for COUNT_SECS of the run),
#    and user-space instructions per heartbeat under callgrind: N1 and then N2
#    heartbeats over one TLS keep-alive connection (Python's http.client with the
#    agent's bearer token), the difference of the two totals over N2 - N1 (start-up and
#    the handshake cancel out). Ours runs its epoll driver there (valgrind does not run
#    io_uring); the kernel's share is not counted by callgrind.
# 3. idle: `bench ws-idle --connections N` over wss:// (token over https, the /ws upgrade,
#    register, then held idle): RSS after all are up minus RSS before, over N. Ours: the
#    server's RSS, everything included (TLS state, socket, registry entry); also ours
#    over plain ws://. nginx: nginx proxying wss:// to a plain chatixia-core behind it
#    (proxy_pass, the Upgrade headers), nginx's own RSS only (the backend's is not
#    counted). `idle-keepalive`: N idle TLS keep-alive HTTP connections between
#    heartbeats (bench http at a low --rate), RSS sampled while all are held: ours (and
#    ours over plain HTTP) and nginx (static 200).
#
# Usage: scripts/bench-tls.sh [RUNS] [SECONDS]   (default 3 rounds of 5 s; servers
#        alternate within a round)
#   BIN=…     chatixia-core binary (default: target/release/chatixia-core, built here)
#   IDLE_N=…  idle connections (default 4000)
#   SETTLE=…  seconds between a server's start and the memory baseline (default 11)
#   MEMORY_RUNS=…  rounds that measure memory (the idle parts; default 1)
#   KEEP_TMP=1  keep the temporary directory (logs, nginx's error.log)
#   PARTS=…   which parts (default "heartbeat healthz handshakes idle idle-keepalive"; also
#             `counts`, opt-in: it needs valgrind and perf's tracepoints, installed here)
#   COUNT_SECS=…, N1=…, N2=…  part counts: seconds of the system-call count (default 3);
#             heartbeats of the two callgrind runs (default 300 and 1300)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; SECS=${2:-5}
IDLE_N=${IDLE_N:-4000}
SETTLE=${SETTLE:-11}
MEMORY_RUNS=${MEMORY_RUNS:-1}
PARTS=${PARTS:-heartbeat healthz handshakes idle idle-keepalive}
COUNT_SECS=${COUNT_SECS:-3}
N1=${N1:-300}; N2=${N2:-1300}   # heartbeats per callgrind run (part counts)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { apt-get update -qq && apt-get install -y -qq nginx-light; }
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }
case " $PARTS " in
  *" counts "*)
    command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
    command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf; } ;;
esac
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin chatixia-core -q
  BIN=target/release/chatixia-core
fi
TMP=$(mktemp -d)
pid=; backend=
. scripts/lib/bench-server.sh  # stop, free_port
stop_all() { stop; if [ -n "$backend" ]; then pid=$backend; stop; backend=; fi; }
trap 'stop_all; [ -n "${KEEP_TMP:-}" ] && echo "kept $TMP" >&2 || rm -rf "$TMP"' EXIT
ulimit -n "$(ulimit -Hn)"

# The PKI: a CA and the server's ECDSA P-256 certificate for localhost and 127.0.0.1.
pki() {
  local d=$TMP/pki; mkdir -p "$d"
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$d/ca.key" -subj /CN=bench-tls-ca -days 2 -out "$d/ca.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/server.ec" 2>/dev/null
  openssl pkcs8 -topk8 -nocrypt -in "$d/server.ec" -out "$d/server.key"
  openssl req -new -key "$d/server.key" -subj /CN=localhost -out "$d/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$d/ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
    -days 2 -extfile "$d/ext" -out "$d/server.pem" 2>/dev/null
  CA=$d/ca.pem; CERT=$d/server.pem; KEY=$d/server.key
}
pki
"$BIN" bench keys --count "$(( IDLE_N > 100 ? IDLE_N : 100 ))" --meshes 100 --out "$TMP/keys.json" >/dev/null

# nginx, one process, everything it writes under $TMP. $1 = port, $2 = mode:
#   static: TLS, static answers for /api/token, /api/hub/heartbeat and /healthz;
#   proxy:  TLS, everything proxied to the plain chatixia-core on port $3 (WebSocket
#           upgrades included).
nginx_conf() {
  local d=$TMP/nginx; mkdir -p "$d"
  local routes
  if [ "$2" = static ]; then
    routes="
    location = /api/token { default_type application/json; return 200 '{\"token\":\"x.e30.x\",\"expires_in\":300}'; }
    location = /api/hub/heartbeat { default_type application/json; return 200 '{\"pending_tasks\":[],\"status\":\"ok\"}'; }
    location = /healthz { default_type application/json; return 200 '{\"status\":\"ok\"}'; }"
  else
    routes="
    location / {
      proxy_pass http://127.0.0.1:$3;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header Host \$host;
      proxy_read_timeout 3600s;
    }"
  fi
  cat > "$d/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile $(( 4 * IDLE_N + 2048 ));
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections $(( 4 * IDLE_N + 1024 )); }
http {
  access_log off;
  client_body_temp_path $d/body;
  proxy_temp_path $d/proxy;
  fastcgi_temp_path $d/fastcgi;
  uwsgi_temp_path $d/uwsgi;
  scgi_temp_path $d/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  server {
    listen 127.0.0.1:$1 ssl;
    ssl_certificate $CERT;
    ssl_certificate_key $KEY;
    # As ours: TLS 1.3 and 1.2, AEAD suites with ECDHE, no session resumption (every
    # connection a full handshake), X25519 first.
    ssl_protocols TLSv1.3 TLSv1.2;
    ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;
    ssl_ecdh_curve X25519:prime256v1:secp384r1;
    ssl_session_cache off;
    ssl_session_tickets off;
    $routes
  }
}
EOF
}

wait_port() { # $1 = url
  for _ in $(seq "${WAIT_TRIES:-200}"); do
    curl -sf --cacert "$CA" -o /dev/null "$1/healthz" && return 0; sleep 0.05
  done
  echo "server did not come up: $1" >&2; cat "$TMP/server.log" >&2; exit 1
}

# The idle keep-alive part holds IDLE_N HTTP connections from 127.0.0.1: above the
# default --max-http-connections-per-ip (1024), which would answer the rest 503.
HTTP_PER_IP=$(( IDLE_N + 1024 ))

# Starts $1 (ours | ours-plain | nginx | nginx-proxy); sets $pid and $URL.
start() {
  PORT=$(free_port)
  case $1 in
    ours)
      API_KEYS_FILE="$TMP/keys.json" RUST_LOG=warn taskset -c 0 ${WRAP:-} "$BIN" --cores 1 --stun-url none \
        --max-http-connections-per-ip "$HTTP_PER_IP" --listen "127.0.0.1:$PORT" --tls-cert "$CERT" --tls-key "$KEY" --data-dir "$TMP/data-$PORT" \
        ${OURS_EXTRA:-} 2>>"$TMP/server.log" & pid=$!
      URL=https://localhost:$PORT ;;
    ours-plain)
      API_KEYS_FILE="$TMP/keys.json" RUST_LOG=warn taskset -c 0 "$BIN" --cores 1 --stun-url none \
        --max-http-connections-per-ip "$HTTP_PER_IP" --listen "127.0.0.1:$PORT" --data-dir "$TMP/data-$PORT" 2>>"$TMP/server.log" & pid=$!
      URL=http://127.0.0.1:$PORT ;;
    nginx)
      nginx_conf "$PORT" static
      taskset -c 0 ${WRAP:-} "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" 2>>"$TMP/server.log" & pid=$!
      URL=https://localhost:$PORT ;;
    nginx-proxy)
      # The backend: a plain chatixia-core on core 1 beside the load generator (its CPU
      # and memory are not measured here).
      local bport; bport=$(free_port)
      API_KEYS_FILE="$TMP/keys.json" RUST_LOG=warn taskset -c 1 "$BIN" --cores 1 --stun-url none \
        --listen "127.0.0.1:$bport" --data-dir "$TMP/data-$bport" 2>>"$TMP/server.log" & backend=$!
      nginx_conf "$PORT" proxy "$bport"
      taskset -c 0 "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" 2>>"$TMP/server.log" & pid=$!
      URL=https://localhost:$PORT ;;
  esac
  wait_port "$URL"
}

# A run that fails (errors, connections refused) still prints its report: `get` warns.
bench() { taskset -c 1 "$BIN" bench "$@" --keys "$TMP/keys.json" --ca-file "$CA" --no-pin --json || true; }
# Prints the fields (dotted paths) of the JSON report $1; warns about errors in it.
get() {
  python3 - "$@" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
errs = r.get("errors") or {}
if errs or r.get("reached") is False:
    print(f"warning: {r['scenario']}: errors {errs} stopped_by {r.get('stopped_by')}", file=sys.stderr)
def field(path):
    v = r
    for k in path.split("."):
        v = v[k]
    return str(v)
print(" ".join(field(p) for p in sys.argv[2:]))
PY
}
rss() { awk '/^VmRSS:/{print $2}' "/proc/$pid/status"; }
# User-space instructions of server $1 (ours | nginx) serving $2 heartbeats over one TLS
# keep-alive connection, under callgrind (part `counts`), into CG_TOTAL; fails (with a
# message, the server stopped) when the heartbeats or the profile fail.
callgrind_total() {
  local cg=$TMP/cg; rm -rf "$cg"; mkdir -p "$cg"
  CG_TOTAL=
  WRAP="valgrind --tool=callgrind --callgrind-out-file=$cg/cg.%p" WAIT_TRIES=1200 \
    OURS_EXTRA="--io-driver epoll" start "$1"
  if ! python3 - "$URL" "$2" "$CA" "$TMP/keys.json" <<'PY'
import http.client, json, ssl, sys, urllib.parse
url, n, ca, keys = urllib.parse.urlsplit(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
key = next(iter(json.load(open(keys))["keys"]))
c = http.client.HTTPSConnection(url.hostname, url.port, timeout=300,
                                context=ssl.create_default_context(cafile=ca))
c.request("POST", "/api/token", "", {"X-API-Key": key}); r = c.getresponse()
token = json.loads(r.read())["token"]; assert r.status == 200
agent = json.load(open(keys))["keys"][key]["peer_id"]
headers = {"content-type": "application/json", "authorization": "Bearer " + token}
for i in range(n):
    body = '{"agent_id":"%s","hostname":"bench","status":"active","skill_names":["bench"]}' % agent
    c.request("POST", "/api/hub/heartbeat", body, headers)
    r = c.getresponse(); r.read(); assert r.status == 200, r.status
PY
  then
    echo "counts: the heartbeats to $1 under callgrind failed" >&2
    stop
    return 1
  fi
  # Callgrind writes its profile at the exit: TERM, up to 60 s for it, then KILL.
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
  local f; f=$(ls -t "$cg"/cg.* 2>/dev/null | head -1)
  [ -n "$f" ] && CG_TOTAL=$(awk '/^summary:/ {print $2}' "$f")
  [ -n "$CG_TOTAL" ] || { echo "counts: no callgrind profile from $1" >&2; return 1; }
}

: > "$TMP/results.tsv"
row() { echo -e "$1\t$2\t$3\t$4" >> "$TMP/results.tsv"; echo "run=$run part=$1 server=$2 $3=$4"; }

for run in $(seq 1 "$RUNS"); do
  for part in $PARTS; do
    # Memory varies little between rounds (±2%): measured in the first MEMORY_RUNS.
    case $part in idle*|counts) [ "$run" -le "$MEMORY_RUNS" ] || continue ;; esac
    case $part in
      heartbeat)
        for srv in ours nginx ours-plain; do
          start "$srv"
          out=$(bench http --url "$URL" --mix heartbeat=1 --concurrency 64 \
            --duration "$SECS" --warmup 1 --server-pid "$pid")
          stop
          read -r us rps < <(get "$out" server_cpu.cpu_us_per_op throughput_rps)
          row heartbeat "$srv" cpu_us_per_req "$us"
          row heartbeat-rps "$srv" req_per_s "$rps"
        done ;;
      counts)
        for srv in ours nginx; do
          start "$srv"
          taskset -c 1 "$BIN" bench http --url "$URL" --mix heartbeat=1 --concurrency 64 \
            --duration "$(( COUNT_SECS + 2 ))" --warmup 0 --keys "$TMP/keys.json" --ca-file "$CA" \
            --no-pin --json > "$TMP/counts.json" 2>>"$TMP/counts.err" &
          lg=$!
          sleep 1
          calls=
          if perf stat -e raw_syscalls:sys_enter -x, -o "$TMP/perf-stat" -p "$pid" \
              -- sleep "$COUNT_SECS" 2>>"$TMP/counts.err"; then
            calls=$(awk -F, '/raw_syscalls/ {print $1}' "$TMP/perf-stat")
          fi
          wait "$lg" || true
          stop
          rps=$(get "$(cat "$TMP/counts.json")" throughput_rps 2>/dev/null || true)
          if [[ "$calls" =~ ^[0-9]+$ && "$rps" =~ ^[0-9.]+$ ]]; then
            row syscalls "$srv" per_req "$(python3 -c "print(round($calls / $COUNT_SECS / $rps, 4))")"
          else
            echo "warning: counts: no system-call count for $srv (perf: '$calls', rate: '$rps'; $TMP/counts.err)" >&2
          fi
          if callgrind_total "$srv" "$N1" && a=$CG_TOTAL && callgrind_total "$srv" "$N2"; then
            row instructions "$srv" per_req "$(( (CG_TOTAL - a) / (N2 - N1) ))"
          else
            echo "warning: counts: no instruction count for $srv" >&2
          fi
        done ;;
      healthz)
        # Like for like: GET /healthz, a fixed answer on both (no state, no token check).
        for srv in ours nginx; do
          start "$srv"
          out=$(bench http --url "$URL" --mix healthz=1 --concurrency 64 \
            --duration "$SECS" --warmup 1 --server-pid "$pid")
          stop
          read -r us rps < <(get "$out" server_cpu.cpu_us_per_op throughput_rps)
          row healthz "$srv" cpu_us_per_req "$us"
          row healthz-rps "$srv" req_per_s "$rps"
        done ;;
      handshakes)
        for srv in ours nginx; do
          start "$srv"
          out=$(bench tls-handshakes --url "$URL" --concurrency 16 --duration "$SECS" \
            --warmup 1 --server-pid "$pid")
          stop
          read -r us per_core rate < <(get "$out" server_cpu.cpu_us_per_op \
            handshakes_per_server_cpu_s handshakes_per_s)
          row handshakes "$srv" cpu_us_per_handshake "$us"
          row handshakes-per-core "$srv" handshakes_per_cpu_s "$per_core"
          row handshakes-rate "$srv" handshakes_per_s "$rate"
        done ;;
      idle)
        for srv in ours nginx-proxy ours-plain; do
          start "$srv"
          # After a heap trim (ours: every 10 s): pages the start freed are not counted
          # as before and then reused by the connections.
          sleep "$SETTLE"
          out=$(bench ws-idle --url "$URL" --connections "$IDLE_N" --hold 2 --server-pid "$pid")
          stop_all
          read -r kib < <(get "$out" server_rss.per_connection_kib)
          row idle-wss "$srv" kib_per_conn "$kib"
        done ;;
      idle-keepalive)
        # N keep-alive connections, each sending one heartbeat every 15 s (the first
        # spread over the first 15 s): at 17 s all are open and idle between requests
        # (a connection whose next request would fall after --duration ends early, so
        # the run is longer than the sample and stopped after it).
        for srv in ours nginx ours-plain; do
          start "$srv"
          sleep "$SETTLE"
          before=$(rss)
          taskset -c 1 "$BIN" bench http --url "$URL" --ca-file "$CA" --keys "$TMP/keys.json" \
            --no-pin --json --mix heartbeat=1 --concurrency "$IDLE_N" \
            --rate "$(( IDLE_N / 15 ))" --duration 60 --warmup 0 --agents 100 > "$TMP/ka.json" &
          lg=$!
          sleep 17
          after=$(rss)
          held=$(ss -Htn state established "( sport = :$PORT )" | wc -l)
          kill "$lg" 2>/dev/null || true
          wait "$lg" 2>/dev/null || true
          stop
          [ "$held" -ge "$IDLE_N" ] || echo "warning: $srv held $held of $IDLE_N connections" >&2
          kib=$(python3 -c "print(round(($after - $before) / $held, 3))")
          row idle-keepalive "$srv" kib_per_conn "$kib"
        done ;;
    esac
  done
done

python3 - "$TMP/results.tsv" <<'PY'
import sys, statistics as st
rows = [l.split('\t') for l in open(sys.argv[1]).read().split('\n') if l]
med = {}
for part, srv, unit, v in rows:
    med.setdefault((part, srv, unit), []).append(float(v))
print("part\tserver\tunit\tmedian\truns")
for (part, srv, unit), vs in med.items():
    print(f"{part}\t{srv}\t{unit}\t{st.median(vs):,.3f}\t{' '.join(f'{v:g}' for v in vs)}")
def m(part, srv):
    for (p, s, _), vs in med.items():
        if p == part and s == srv:
            return st.median(vs)
def ratio(label, a, b):
    if a is not None and b:
        print(f"{label}: {a / b:.3f}")
print()
ratio("heartbeat CPU/request ours/nginx (goal <= 1)", m("heartbeat", "ours"), m("heartbeat", "nginx"))
ratio("healthz CPU/request ours/nginx (like for like)", m("healthz", "ours"), m("healthz", "nginx"))
ratio("heartbeat user-space instructions/request ours/nginx (callgrind)", m("instructions", "ours"), m("instructions", "nginx"))
ratio("heartbeat system calls/request ours/nginx", m("syscalls", "ours"), m("syscalls", "nginx"))
ratio("heartbeat CPU/request ours TLS/ours plain", m("heartbeat", "ours"), m("heartbeat", "ours-plain"))
ratio("handshakes per core ours/nginx (goal >= 1)", m("handshakes-per-core", "ours"), m("handshakes-per-core", "nginx"))
ratio("idle wss:// memory ours/nginx proxy (goal <= 0.25; ours <= 8 KiB)", m("idle-wss", "ours"), m("idle-wss", "nginx-proxy"))
ratio("idle wss:// memory ours TLS/ours plain ws://", m("idle-wss", "ours"), m("idle-wss", "ours-plain"))
ratio("idle TLS keep-alive memory ours/nginx", m("idle-keepalive", "ours"), m("idle-keepalive", "nginx"))
PY
