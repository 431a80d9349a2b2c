# Sourced by the benchmark scripts that start servers, the reference among them
# (scripts/bench-api.sh, scripts/bench-ws-paths.sh). Uses and clears `$pid`.

# Stops the server `$pid`: TERM, then KILL after 2 s (the reference may ignore SIGTERM
# while connections are open).
stop() {
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
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
