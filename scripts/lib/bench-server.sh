# Sourced by the benchmark scripts that start servers, the reference among them
# (scripts/bench-api.sh, scripts/bench-ws-paths.sh). Uses and clears `$pid`.

# Stops the server `$pid`: TERM, then KILL after 2 s (the reference may ignore SIGTERM
# while connections are open).
stop() {
  stop_pid "$pid"
  pid=
}

# Stops process $1 (if any): TERM, then KILL after 2 s.
stop_pid() {
  [ -n "$1" ] || return 0
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 40); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# A port the reference can bind on 0.0.0.0 (it binds the wildcard address): below the
# ephemeral range, since a wildcard bind fails on a port that any connected socket on
# this host (other tests, wrk) uses as its local port.
free_port() {
  python3 -c '
import random, socket
for _ in range(1000):
    p = random.randint(20000, 31999)
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", p)); print(p); break
    except OSError:
        pass
    finally:
        s.close()'
}

# Starts a redis-server in the background with its files in directory $1 (no
# persistence): Redis cannot bind port 0 and say which, so a port is picked and the start
# retried when it is taken. Sets `rpid`, `RPORT` and `REDIS` (its URL); exits the script
# when no start worked.
start_redis() {
  local dir=$1
  rpid=
  for _ in $(seq 20); do
    RPORT=$(free_port)
    redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
      --dir "$dir" --logfile "$dir/redis.log" >/dev/null 2>&1 & rpid=$!
    for _ in $(seq 100); do
      kill -0 "$rpid" 2>/dev/null || break
      grep -q "Ready to accept connections" "$dir/redis.log" 2>/dev/null && break
      sleep 0.05
    done
    kill -0 "$rpid" 2>/dev/null && grep -q "Ready to accept" "$dir/redis.log" && break
    wait "$rpid" 2>/dev/null || true; rpid=
  done
  [ -n "$rpid" ] || { echo "redis-server did not start: $(tail -3 "$dir/redis.log")" >&2; exit 1; }
  REDIS=redis://127.0.0.1:$RPORT
}
