#!/usr/bin/env bash
# setup.sh - one command from a fresh Debian machine to a built pin.
#
#   ./setup.sh            install what is missing, build (Release), run the main job
#   ./setup.sh --test     install what is missing, build, run the whole test suite
#
# Options: --no-install (skip apt), --build-dir DIR (default build), --jobs N, -h/--help.
# The main job today is the speed comparison of the PIN agent forward against PyTorch
# (bench/compare_torch.sh); it needs Debian's python3-torch, which only that mode installs.
set -euo pipefail

mode=main
install=1
build_dir=build
jobs=$(nproc 2>/dev/null || echo 2)
while [ $# -gt 0 ]; do
  case "$1" in
    --test) mode=test ;;
    --no-install) install=0 ;;
    --build-dir) build_dir=${2:?--build-dir needs a value}; shift ;;
    --jobs) jobs=${2:?--jobs needs a value}; shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")"

# ---- dependencies (Debian packages) -------------------------------------------------------------
packages=(cmake g++ make libstb-dev nlohmann-json3-dev catch2)
[ "$mode" = test ] && packages+=(clang libclang-rt-dev python3)
[ "$mode" = main ] && packages+=(python3 python3-torch libopenblas0-pthread)
if [ "$install" = 1 ]; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" != 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="$PATH:/usr/local/cuda/bin"
  echo "setup.sh: nvcc found, the CUDA kernels will be built"
else
  echo "setup.sh: nvcc not found, building without the CUDA kernels"
fi

# ---- configure and build ------------------------------------------------------------------------
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build_dir" -j "$jobs"

# ---- run ----------------------------------------------------------------------------------------
if [ "$mode" = test ]; then
  ctest --test-dir "$build_dir" --output-on-failure -j "$jobs"
  # The unit tests again under AddressSanitizer + UndefinedBehaviorSanitizer (clang), when present.
  if command -v clang++ >/dev/null 2>&1; then
    echo "setup.sh: unit tests under ASan + UBSan (clang)"
    CC=clang CXX=clang++ cmake -S . -B "$build_dir-sanitize" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPIN_SANITIZE=ON \
      -DPIN_CUDA=OFF -DPIN_BUILD_BENCH=OFF -DPIN_BUILD_EXAMPLES=OFF >/dev/null
    cmake --build "$build_dir-sanitize" -j "$jobs" --target pin_tests
    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      "$build_dir-sanitize/bin/pin_tests"
  else
    echo "setup.sh: clang++ not found, skipping the sanitizer run"
  fi
else
  BUILD_DIR="$build_dir" bench/compare_torch.sh
fi
