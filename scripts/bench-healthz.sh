#!/usr/bin/env bash
# GET /healthz on one core, three servers side by side in one run, alternating, RUNS
# rounds: nginx (one worker, `return 200 '{"status":"ok"}'`, the anchor), chatixia-core
# --cores 1 on io_uring, and on epoll. Server on core 0, `wrk -t1 -c64` on core 1.
# Per run: req/s and the server's CPU per request = (utime+stime from /proc/PID/stat over
# the wrk window) / requests served. Prints every run, then medians and ratios.
# Usage: scripts/bench-healthz.sh [RUNS] [SECONDS]
#   BIN=…      chatixia-core binary (default: target/release/chatixia-core, built here)
#   SERVERS=…  which servers, in order (default "nginx uring epoll")
#              (also `before`: BEFORE_BIN=… on io_uring; and uring-plain, uring-coop, uring-single: io_uring with that ring setup,
#              REACTOR_URING_SETUP in reactor/src/driver.rs; the floors of reactor/examples/, each a canned
#              200 with no parsing: `ring-proto` raw io_uring with multishot accept/recv and a buffer ring,
#              `monoio-proto` monoio one-shot read/write, `epoll-proto` raw epoll + read/write)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; SECS=${2:-5}
SERVERS=${SERVERS:-nginx uring epoll}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { apt-get update -qq && apt-get install -y -qq nginx-light; }
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin chatixia-core -q
  BIN=target/release/chatixia-core
fi
TMP=$(mktemp -d)
pid=
stop() { if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; fi; pid=; }
trap 'stop; rm -rf "$TMP"' EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# nginx: one process (master_process off, so the PID measured is the one serving),
# loopback only, everything it writes under $TMP.
nginx_conf() { # $1 = port
  mkdir -p "$TMP/nginx"
  cat > "$TMP/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$1;
    location = /healthz {
      default_type application/json;
      return 200 '{"status":"ok"}';
    }
  }
}
EOF
}

start() { # $1 = nginx | uring | epoll
  PORT=$(free_port)
  case $1 in
    nginx)
      nginx_conf "$PORT"
      taskset -c 0 "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" 2>>"$TMP/server.log" & pid=$! ;;
    uring*)
      # uring-plain / uring-coop / uring-single: that REACTOR_URING_SETUP (reactor/src/driver.rs).
      local setup=; [ "$1" = uring ] || setup=REACTOR_URING_SETUP=${1#uring-}
      env $setup RUST_LOG=warn taskset -c 0 "$BIN" --cores 1 --io-driver uring --stun-url none \
        --listen "127.0.0.1:$PORT" 2>>"$TMP/server.log" & pid=$! ;;
    uring-oneshot)
      # io_uring with monoio's one-shot reads instead of the multishot receive
      # (REACTOR_MULTISHOT=0, reactor/src/recv_ring.rs).
      REACTOR_MULTISHOT=0 RUST_LOG=warn taskset -c 0 "$BIN" --cores 1 --io-driver uring --stun-url none \
        --listen "127.0.0.1:$PORT" 2>>"$TMP/server.log" & pid=$! ;;
    before)
      # Another build (BEFORE_BIN) on io_uring, for before/after ratios in the same run.
      RUST_LOG=warn taskset -c 0 "$BEFORE_BIN" --cores 1 --io-driver uring --stun-url none \
        --listen "127.0.0.1:$PORT" 2>>"$TMP/server.log" & pid=$! ;;
    ring-proto)
      # reactor/examples/ring_healthz.rs: the raw io_uring ceiling (multishot, buffer ring).
      taskset -c 0 target/release/examples/ring_healthz "127.0.0.1:$PORT" 2>>"$TMP/server.log" & pid=$! ;;
    monoio-proto)
      # reactor/examples/monoio_healthz.rs: the same canned answer through monoio's
      # one-shot read/write (as the server's connection loop), nothing else.
      taskset -c 0 target/release/examples/monoio_healthz "127.0.0.1:$PORT" 2>>"$TMP/server.log" & pid=$! ;;
    hybrid-proto)
      # monoio_healthz with MULTISHOT=1: reads through reactor::recv_ring (multishot
      # receive on monoio's own ring), writes on monoio.
      MULTISHOT=1 taskset -c 0 target/release/examples/monoio_healthz "127.0.0.1:$PORT" 2>>"$TMP/server.log" & pid=$! ;;
    epoll-proto)
      # reactor/examples/epoll_healthz.rs: the raw epoll ceiling (epoll_wait, read, write).
      taskset -c 0 target/release/examples/epoll_healthz "127.0.0.1:$PORT" 2>>"$TMP/server.log" & pid=$! ;;
    epoll)
      RUST_LOG=warn taskset -c 0 "$BIN" --cores 1 --io-driver epoll --stun-url none \
        --listen "127.0.0.1:$PORT" 2>>"$TMP/server.log" & pid=$! ;;
  esac
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.05; done
}
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
HZ=$(getconf CLK_TCK)
: > "$TMP/results.tsv"
for run in $(seq 1 "$RUNS"); do
  for srv in $SERVERS; do
    start "$srv"
    t0=$(ticks)
    out=$(taskset -c 1 wrk -t1 -c64 -d"${SECS}s" "http://127.0.0.1:$PORT/healthz")
    t1=$(ticks)
    stop
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); non2xx=${non2xx:-0}
    [ "$non2xx" = 0 ] || echo "warning: $srv answered $non2xx non-2xx responses" >&2
    us=$(python3 -c "print(f'{($t1-$t0)/$HZ*1e6/$reqs:.2f}')")
    rps=$(python3 -c "print(round($reqs/$SECS))")
    echo "run=$run server=$srv rps=$rps cpu_us_per_req=$us"
    echo -e "$srv\t$rps\t$us" >> "$TMP/results.tsv"
  done
done
python3 - "$TMP/results.tsv" <<'PY'
import sys, statistics as st
rows = [l.split('\t') for l in open(sys.argv[1]).read().split('\n') if l]
srv = {}
for name, rps, us in rows:
    srv.setdefault(name, ([], []))
    srv[name][0].append(float(rps)); srv[name][1].append(float(us))
med = {k: (st.median(v[0]), st.median(v[1])) for k, v in srv.items()}
print("server\tmedian req/s\tmedian server CPU µs/req")
for k, (r, u) in med.items():
    print(f"{k}\t{r:,.0f}\t{u:.2f}")
def ratio(a, b):
    if a in med and b in med:
        print(f"CPU/req {a}/{b} = {med[a][1] / med[b][1]:.3f}   req/s {a}/{b} = {med[a][0] / med[b][0]:.3f}")
ratio("uring", "before")
for a in [k for k in med if k.startswith("uring")]:
    ratio(a, "nginx"); ratio(a, "epoll")
ratio("epoll", "nginx")
PY
