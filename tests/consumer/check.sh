#!/usr/bin/env bash
# Builds tests/consumer against pin twice: installed (find_package) and as a subdirectory.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:?usage: check.sh WORK_DIR}
rm -rf "$work" && mkdir -p "$work"
cmake -S "$src" -B "$work/pin-build" -DPIN_BUILD_TESTS=OFF -DPIN_BUILD_BENCH=OFF -DPIN_BUILD_EXAMPLES=OFF \
      -DPIN_CUDA=OFF -DCMAKE_INSTALL_PREFIX="$work/prefix" >/dev/null
cmake --install "$work/pin-build" >/dev/null
cmake -S "$src/tests/consumer" -B "$work/installed" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/installed" >/dev/null
"$work/installed/consumer"
cmake -S "$src/tests/consumer" -B "$work/subdir" -DPIN_SOURCE_DIR="$src" -DPIN_CUDA=OFF >/dev/null
cmake --build "$work/subdir" >/dev/null
"$work/subdir/consumer"
