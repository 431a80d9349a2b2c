#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/) for a bounded time each, starting from the
# committed seed corpora (fuzz/corpus/<target>, read-only here: new inputs go to a
# scratch directory). Needs the nightly toolchain and cargo-fuzz.
#
#   scripts/fuzz.sh [--seconds N] [--sanitizer none|address] [target ...]
#
# Defaults: 20 s per target (10 targets: about 3.5 minutes of fuzzing), no sanitizer (the
# fuzzed code is safe Rust: panics and aborts are what we look for, and a build
# without ASan is much faster). A crash leaves its input in fuzz/artifacts/<target>/
# and makes the script fail; turn it into a regression test in the crate at fault.
#
# Inputs may be 64 KiB long (-max_len) from the first run on (-len_control=0: libFuzzer
# otherwise grows the length limit slowly, and a 20 s run stays at a few hundred bytes),
# so the seeds that are far past wire::json::JSON_DEPTH_MAX (8,000 levels, 16 KB) are
# run and mutated whole. Targets that take JSON get fuzz/dict/json.dict (brackets in
# runs, literals, field names); task_payload builds its depth from a count and reaches
# 100,000 levels from a few bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=20
sanitizer=none
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --sanitizer) sanitizer="$2"; shift 2 ;;
    -h|--help) sed -n 2,11p "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: no nightly toolchain (cargo +nightly); skipping" >&2
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo +nightly install cargo-fuzz --locked
fi
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi
cd fuzz
cargo +nightly fuzz build --sanitizer "$sanitizer"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "corpus/$t"
  case "$t" in
    json_bodies|signaling|sidecar_ipc|task_payload) dict=(-dict=dict/json.dict) ;;
    *) dict=() ;;
  esac
  echo "== fuzz $t for ${seconds}s"
  # libFuzzer runs the code on the main thread (8 MiB of stack); a shard thread has std's
  # 2 MiB: fuzz with that, so that a recursion that would overflow a shard overflows
  # here (issue 20: at 8 MiB the 8,000-level seed ran without a crash, at 2 MiB it
  # crashed the unfixed code at once). A stack overflow is a SIGSEGV that libFuzzer
  # writes no artifact for: run the target on corpus/$t alone to find the input.
  if ! (ulimit -s 2048 && cargo +nightly fuzz run --sanitizer "$sanitizer" "$t" "$scratch/$t" \
      "corpus/$t" -- -max_total_time="$seconds" -max_len=65536 -len_control=0 "${dict[@]}" \
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) >"$scratch/$t.log" 2>&1; then
    failed+=("$t")
    # The panic's message and where (the last 20 lines are cargo-fuzz's own backtrace).
    grep -a -A3 -E "panicked at|ERROR: libFuzzer|SUMMARY" "$scratch/$t.log" | head -n 20 || true
  fi
  tail -n 20 "$scratch/$t.log"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, ${seconds}s each, no crash"
