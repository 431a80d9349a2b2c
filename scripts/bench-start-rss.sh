#!/usr/bin/env bash
# Start-up RSS of one or more builds, and where it goes (issue 26): each build started
# `--cores 1` on CPU 0 with a keys file of 6,000 keys (100 meshes), port 0 and a fresh
# data directory; one second after it reports its port, its VmRSS and the resident KiB
# of each mapping (/proc/PID/smaps: the binary's own pages, libc, heap, anonymous
# memory, the io_uring rings, the stack). Builds alternate, ROUNDS rounds.
# Usage: scripts/bench-start-rss.sh [ROUNDS] LABEL=BINARY [LABEL=BINARY ...]
#   e.g. scripts/bench-start-rss.sh 2 old=/tmp/old/chatixia-core new=target/release/chatixia-core
# A build older than --data-dir takes its data directory from CHATIXIA_DATA_DIR (set too).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=2
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then ROUNDS=$1; shift; fi
[ $# -gt 0 ] || { sed -n 2,9p "$0"; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
first=${1#*=}
"$first" bench keys --count 6000 --meshes 100 --out "$TMP/K" >/dev/null
for round in $(seq "$ROUNDS"); do
  for spec in "$@"; do
    label=${spec%%=*}; bin=${spec#*=}
    d=$(mktemp -d -p "$TMP")
    API_KEYS_FILE=$TMP/K CHATIXIA_DATA_DIR=$d/data RUST_LOG=warn taskset -c 0 "$bin" --cores 1 \
      --stun-url none --listen 127.0.0.1:0 --port-file "$d/port" >"$d/log" 2>&1 &
    pid=$!
    for _ in $(seq 200); do [ -s "$d/port" ] && break; sleep 0.05; done
    sleep 1
    rss=$(awk '/^VmRSS/{print $2}' "/proc/$pid/status")
    maps=$(awk '/^[0-9a-f]+-[0-9a-f]+ /{n=$6; if(n=="")n="[anon]"; sub(".*/","",n)}
                /^Rss:/{r[n]+=$2} END{for(k in r) if(r[k]>0) printf "%s=%d ", k, r[k]}' "/proc/$pid/smaps")
    echo "round=$round build=$label rss_kib=$rss $maps"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
