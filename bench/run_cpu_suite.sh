#!/usr/bin/env bash
# run_cpu_suite.sh - the whole CPU benchmark suite in one run, the figures docs/benchmarks.md quotes.
#
#   bench/run_cpu_suite.sh [--threads 2] [--batch 16]
# Writes $BUILD_DIR/bench/{peak,layers,forward}.json and prints the tables.
set -euo pipefail
threads=2; batch=16
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads=$2; shift ;;
    --batch) batch=$2; shift ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run_cpu_suite.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
out="$build/bench"
mkdir -p "$out"
bench="$build/bin/pin-bench"
[ -x "$bench" ] || { echo "run_cpu_suite.sh: $bench not found: build first (./setup.sh)" >&2; exit 1; }
echo "== machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs; $(date -u +%FT%TZ)"
"$bench" peak --threads "$threads" --json > "$out/peak.json"
"$bench" layers --threads "$threads" --batch "$batch" --backward --iters 4 --rounds 3 --json > "$out/layers.json"
BUILD_DIR="$build" bench/compare_torch.sh --threads "$threads" --batch "$batch" --iters 4 --defend
