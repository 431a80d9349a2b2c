#!/usr/bin/env bash
# Sets up and runs chatixia-core: installs a Rust toolchain if there is none, builds
# the release binaries (the server, chatixia-core, and the agent's sidecar,
# chatixia-sidecar), and starts the server. Arguments are passed to it, e.g.
#   scripts/run.sh --cores 4 --listen 0.0.0.0:8080
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  . "$HOME/.cargo/env"
fi
cargo build --release --locked -p chatixia-core -p chatixia-sidecar
# Where cargo put it: `target/`, or `CARGO_TARGET_DIR` when the environment sets one.
exec "${CARGO_TARGET_DIR:-target}/release/chatixia-core" "$@"
