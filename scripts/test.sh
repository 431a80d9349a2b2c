#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what it needs, then runs
# every unit and integration test (both io drivers are exercised by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  . "$HOME/.cargo/env"
fi
# Python test environment (the chatixia agent from PyPI needs Python >= 3.12), when
# the interop tests are present.
if [ -x scripts/setup-python.sh ]; then
  scripts/setup-python.sh
fi
# Debian's chromium for the dashboard's browser test (tests/it/dashboard_browser.rs, driven by
# Playwright from the venv with executable_path=/usr/bin/chromium; no browser download).
if ! command -v chromium >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y chromium || { $SUDO apt-get update && $SUDO apt-get install -y chromium; }
fi
# coturn for the TURN test (tests/it/sidecar_turn.rs runs `turnserver` on loopback).
if ! command -v turnserver >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y coturn || { $SUDO apt-get update && $SUDO apt-get install -y coturn; }
fi
# redis-server (7) for the cluster crate's tests (cluster/tests/link.rs starts its own on a free
# port); redis-sentinel for its Sentinel tests (cluster/tests/sentinel.rs). Either missing
# installs both.
if ! command -v redis-server >/dev/null || ! command -v redis-sentinel >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y redis-server redis-sentinel || { $SUDO apt-get update && $SUDO apt-get install -y redis-server redis-sentinel; }
fi
# systemd-analyze (tests/it/packaging.rs verifies the unit), dpkg-dev and binutils
# (scripts/build-deb.sh: dpkg-shlibdeps, strip) for the Debian package's test.
# iproute2 and setpriv: `bench compare --sidecar` makes network namespaces (tests/it/bench_compare_sidecar.rs).
for tool_pkg in systemd-analyze:systemd dpkg-shlibdeps:dpkg-dev strip:binutils ip:iproute2 setpriv:util-linux; do
  if ! command -v "${tool_pkg%%:*}" >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y "${tool_pkg#*:}" || { $SUDO apt-get update && $SUDO apt-get install -y "${tool_pkg#*:}"; }
  fi
done
# testssl.sh for the TLS port's scan (tests/it/tls_testssl.rs); curl for the TLS tests.
if ! command -v testssl >/dev/null || ! command -v curl >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y testssl.sh curl || { $SUDO apt-get update && $SUDO apt-get install -y testssl.sh curl; }
fi
# Formatting and lints are part of the suite (clippy with warnings as errors).
if command -v rustup >/dev/null; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
cargo fmt --all --check
# No import circle in any crate, and the server crate's layering (the shard layer under
# the services, nothing below server/ importing it): docs/ARCHITECTURE.md, "Layers".
python3 scripts/check-module-cycles.py
# The test switches (--test-clock, --ws-echo, CHATIXIA_DENY_IO_URING) exist only with
# this feature; a default build lacks them.
FEATURES=(--features chatixia-core/test-switches)
cargo test --workspace --locked "${FEATURES[@]}"
cargo clippy --workspace --all-targets --locked "${FEATURES[@]}" -- -D warnings
# The vendored, patched dependencies run their own suites; a patch that stops applying
# fails here (scripts/check-patches.py).
scripts/test-vendored.sh
# Benchmarks must keep compiling; they are run by hand (docs/BENCHMARKS.md).
cargo check --workspace --benches --locked
# Fuzz every parser for a bounded time (20 s per target), where nightly exists.
if cargo +nightly --version >/dev/null 2>&1; then
  scripts/fuzz.sh --seconds "${FUZZ_SECONDS:-20}"
fi
