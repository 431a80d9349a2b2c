#!/usr/bin/env bash
# The vendored, patched dependencies (vendor/, wired in by [patch.crates-io]) run their
# own test suites, and a check fails if a patch stops applying (scripts/check-patches.py).
# Each crate has its own empty [workspace] and a committed Cargo.lock, so its tests build
# standalone (--locked) into target/vendored.
#
# Skipped upstream tests, each for a reason of this machine, not of our patch:
#   monoio tcp_connect {legacy,uring}_{cancel_select,cancel_read,connect_timeout_dst}:
#     they connect to hosts on the internet (tests never leave loopback here);
#   monoio uds_stream: EOPNOTSUPP from the kernel in both drivers; fails the same with
#     the unpatched crates.io monoio 0.2.4 on this kernel (checked), and chatixia uses no
#     monoio Unix-stream accept.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/check-patches.py
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/vendored"
cargo test --locked --manifest-path vendor/sctp-proto/Cargo.toml
# monoio with the features the workspace uses, plus what its signal tests need.
for t in $(sed -n 's/^name = "\(.*\)"$/\1/p' vendor/monoio/Cargo.toml | grep -v '^monoio$'); do
  [ "$t" = uds_stream ] && continue
  cargo test --locked --manifest-path vendor/monoio/Cargo.toml --features "signal,sync" \
    --test "$t" -- --skip cancel_select --skip cancel_read --skip connect_timeout_dst
done
cargo test --locked --manifest-path vendor/monoio/Cargo.toml --features "signal,sync" --lib
echo "test-vendored: sctp-proto and monoio suites pass; patches apply"
