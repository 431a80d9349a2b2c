#!/usr/bin/env bash
# Regenerates docs/dashboard/*.png: starts chatixia-core (debug build, --test-clock) on
# loopback, seeds it, and photographs each dashboard view in headless Debian chromium
# (tests/dashboard/screenshots.py, Playwright from the test venv).
#
#   scripts/dashboard-screenshots.sh            # needs chromium (apt-get install -y chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
python="$(scripts/setup-python.sh)"
cargo build -p chatixia-core --features test-switches
dir="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$dir"' EXIT
# An admin, and two agents whose signaling traffic fills the relay chart.
cat > "$dir/keys.json" <<'JSON'
{"keys": {"ak_shots_admin": {"peer_id": "ops-admin", "role": "admin"},
          "ak_chart_a": {"peer_id": "chart-a", "role": "agent"},
          "ak_chart_b": {"peer_id": "chart-b", "role": "agent"}}}
JSON
API_KEYS_FILE="$dir/keys.json" RUST_LOG=warn target/debug/chatixia-core --listen 127.0.0.1:0 \
  --cores 2 --port-file "$dir/addr" --test-clock --stun-url none 2>"$dir/server.log" &
pid=$!
for _ in $(seq 100); do [ -s "$dir/addr" ] && break; sleep 0.1; done
mkdir -p docs/dashboard
BASE="http://$(cat "$dir/addr")" ADMIN_KEY=ak_shots_admin OUT="$PWD/docs/dashboard" \
  "$python" tests/dashboard/screenshots.py
