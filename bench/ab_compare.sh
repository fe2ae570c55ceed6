#!/usr/bin/env bash
# ab_compare.sh - the convolution kernels of a git revision against the working tree, in one process.
#
#   bench/ab_compare.sh [REV] [--reps 30] [--threads 2] [--quick | --shortcuts | --rows] [--pass fwd|bwd-in|bwd-w]
# REV (default HEAD) is the old side, the working tree's include/ the new one. For each PIN 3x3
# layer shape at batch 16 and each pass (forward, input gradient, weight gradient) both builds run
# interleaved in one process, --reps pairs; prints the best times, their new/old ratio, the median
# over the pairs of new/old (steadier on a restless machine) and the largest difference of the
# outputs. --quick: only the shapes the 2026-11-30 changes were aimed at; --shortcuts: the ESN's
# 1x1 shortcut convolutions, the 1 -> 64 first layers and the DAE's 64 -> 1 last instead;
# --rows: the row products (bench/ab/row_pass.cpp) instead, printed as "IN->OUT 1x1 @1": the
# head's two layers at batch 20 and the eigenface projection at batch 16 (W = the basis, out = D:
# fwd = the reconstruction, bwd-in = the coefficients; its bwd-w is not a pass PIN runs);
# --pass: only that pass.
# Needs g++ with -march=native; writes nothing outside a temporary folder.
set -euo pipefail
rev=HEAD; reps=30; threads=2; quick=0; passes="fwd bwd-in bwd-w"
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) reps=$2; shift ;;
    --threads) threads=$2; shift ;;
    --quick) quick=1 ;;
    --shortcuts) quick=2 ;;
    --rows) quick=3 ;;
    --pass) case "${2:-}" in fwd|bwd-in|bwd-w) passes=$2 ;; *) echo "ab_compare.sh: --pass takes fwd, bwd-in or bwd-w" >&2; exit 2 ;; esac; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "ab_compare.sh: unknown option '$1'" >&2; exit 2 ;;
    *) rev=$1 ;;
  esac
  shift
done
cd "$(dirname "$0")/.."
git rev-parse --verify -q "$rev^{commit}" >/dev/null || { echo "ab_compare.sh: '$rev' is not a commit" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git archive "$rev" include | tar -x -C "$tmp"
flags=(-O3 -march=native -std=c++17)
pass_src=bench/ab/conv_pass.cpp
[ "$quick" = 3 ] && pass_src=bench/ab/row_pass.cpp
g++ "${flags[@]}" -I"$tmp/include" -Dpin=pin_old -DAB_PREFIX=ab_old -c "$pass_src" -o "$tmp/old.o"
g++ "${flags[@]}" -Iinclude -DAB_PREFIX=ab_new -c "$pass_src" -o "$tmp/new.o"
g++ "${flags[@]}" bench/ab/ab_main.cpp "$tmp/old.o" "$tmp/new.o" -o "$tmp/ab" -lpthread
echo "== $rev (old) against the working tree (new); $reps interleaved pairs of calls, $threads threads"
# cin size cout stride transposed [kernel, default 3] [batch, default 16]
if [ "$quick" = 3 ]; then  # in 1 out 1 0 1 batch (a linear layer's pass through conv_pass's arguments)
  shapes=("25088 1 512 1 0 1 20" "512 1 2500 1 0 1 20" "2500 1 12544 1 0 1 16")
elif [ "$quick" = 2 ]; then
  shapes=("64 112 64 2 0 1" "64 56 64 1 0 1" "64 56 128 2 0 1" "128 28 128 1 0 1" "128 28 256 2 0 1" "256 14 256 1 0 1"
          "256 14 512 2 0 1" "512 7 512 1 0 1" "1 112 64 1 0 3" "64 112 1 1 0 3")
elif [ "$quick" = 1 ]; then
  shapes=("64 112 64 2 0" "64 56 64 2 1" "64 56 128 1 0" "128 56 128 2 0" "512 14 512 2 0" "512 7 512 1 0")
else
  shapes=("64 112 64 2 0" "64 56 128 1 0" "128 56 128 2 0" "128 28 256 1 0" "256 28 256 2 0" "256 14 256 2 1"
          "256 28 128 1 0" "128 28 128 2 1" "128 56 64 1 0" "64 56 64 2 1" "64 112 64 1 0" "64 56 64 1 0"
          "128 28 128 1 0" "256 14 256 1 0" "256 14 512 1 0" "512 14 512 2 0" "512 7 512 1 0")
fi
for s in "${shapes[@]}"; do
  for pass in $passes; do
    read -r cin size cout stride transposed kernel batch <<< "$s"
    "$tmp/ab" "${batch:-16}" "$cin" "$size" "$cout" "$stride" "$transposed" "$pass" "$reps" "$threads" "${kernel:-3}"
  done
done
