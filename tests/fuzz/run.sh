#!/usr/bin/env bash
# tests/fuzz/run.sh - builds the libFuzzer targets (clang, ASan + UBSan) and fuzzes each parser for
# SECONDS (default 10), starting from the seed corpus in tests/fuzz/corpus/<target>. Inputs found
# along the way go to WORK_DIR (not into the repository); a crash stops with its input saved there
# and a non-zero exit. Turn a crash into a regression test by adding its input to the seed corpus
# (tests/fuzz/corpus_check.sh replays every seed under the sanitizers in CI).
#
#   tests/fuzz/run.sh [SECONDS] [WORK_DIR] [BUILD_DIR]
set -euo pipefail
secs=${1:-10}
work=${2:-/tmp/pin-fuzz}
build=${3:-build-fuzz}
cd "$(dirname "$0")/../.."
command -v clang++ >/dev/null || { echo "run.sh: clang++ not found, skipping the fuzz run"; exit 0; }
CC=clang CXX=clang++ cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPIN_FUZZ=ON -DPIN_CUDA=OFF \
  -DPIN_BUILD_TESTS=OFF -DPIN_BUILD_BENCH=OFF -DPIN_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target fuzz_safetensors fuzz_tfjs fuzz_pairs fuzz_image
mkdir -p "$work"
status=0
for t in safetensors tfjs pairs image; do
  mkdir -p "$work/corpus_$t"
  if [ "$secs" = --ci ]; then
    runs=100000; [ "$t" = image ] && runs=2000
    limits=(-seed=1 -runs="$runs" -max_total_time=120)
    echo "fuzzing $t: $runs inputs, seed 1"
  else
    limits=(-max_total_time="$secs")
    echo "fuzzing $t for ${secs}s"
  fi
  if ! "$build/bin/fuzz_$t" "${limits[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$work/crash_$t-" "$work/corpus_$t" "tests/fuzz/corpus/$t" > "$work/$t.log" 2>&1; then
    echo "FAIL: fuzz_$t crashed; input and log in $work" >&2
    tail -30 "$work/$t.log" >&2
    status=1
  fi
  grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "$work/$t.log" | tail -1 || true
done
exit $status
