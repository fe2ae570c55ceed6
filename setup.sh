#!/usr/bin/env bash
# setup.sh - one command from a fresh Debian machine to a built pin.
#
#   ./setup.sh            install what is missing, build (Release), run the main job
#   ./setup.sh --test     install what is missing, build, run the whole test suite
#   ./setup.sh --bench    install what is missing, build, compare the PIN forward's speed with PyTorch
#
# Options: --no-install (skip apt), --build-dir DIR (default build), --jobs N, -h/--help.
# The main job (`pin demo`): face-api's demo photos -> every face found, aligned, attacked with PGD
# against the recognizer and defended with PIN (weights/pin-default); a table and demo/montage.png.
# --bench needs Debian's python3-torch, which only that mode installs.
set -euo pipefail

mode=main
install=1
build_dir=build
jobs=$(nproc 2>/dev/null || echo 2)
while [ $# -gt 0 ]; do
  case "$1" in
    --test) mode=test ;;
    --bench) mode=bench ;;
    --no-install) install=0 ;;
    --build-dir) build_dir=${2:?--build-dir needs a value}; shift ;;
    --jobs) jobs=${2:?--jobs needs a value}; shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")"

# ---- dependencies (Debian packages) -------------------------------------------------------------
packages=(cmake g++ make libstb-dev nlohmann-json3-dev catch2)
[ "$mode" = test ] && packages+=(clang libclang-rt-dev python3)
[ "$mode" = bench ] && packages+=(python3 python3-torch libopenblas0-pthread)
# npm fetches the face-api weights (recognizer, detector, landmarks); any npm on PATH will do.
command -v npm >/dev/null 2>&1 || packages+=(npm)
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

# ---- the face recognizer's weights (npm package @vladmandic/face-api, MIT) ---------------------------
# `npm pack` fetches the published tarball; its sha256 and the sha256 of every model file used
# (weights/face-api.sha256) are checked, so a changed package is noticed, not silently used.
fetch_face_api() {
  local dir=weights/face-api tgz=vladmandic-face-api-1.7.15.tgz
  local tgz_sha=0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031
  if [ -d "$dir" ] && (cd "$dir" && sha256sum --quiet -c ../face-api.sha256 >/dev/null 2>&1); then return 0; fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "setup.sh: npm not found: cannot fetch the face recognizer (apt-get install npm); its tests will skip" >&2
    return 0
  fi
  local tmp
  tmp=$(mktemp -d)
  if ! (cd "$tmp" && npm pack @vladmandic/face-api@1.7.15 --silent >/dev/null 2>&1); then
    echo "setup.sh: npm pack @vladmandic/face-api@1.7.15 failed (no registry?); the recognizer's tests will skip" >&2
    rm -rf "$tmp"; return 0
  fi
  echo "$tgz_sha  $tmp/$tgz" | sha256sum --quiet -c - || { echo "setup.sh: $tgz: unexpected sha256" >&2; rm -rf "$tmp"; exit 1; }
  tar -xzf "$tmp/$tgz" -C "$tmp" package/model package/demo
  mkdir -p "$dir"
  cp "$tmp"/package/model/face_recognition_model* "$tmp"/package/model/tiny_face_detector_model* \
     "$tmp"/package/model/face_landmark_68_model* "$dir"/
  cp "$tmp"/package/demo/sample*.jpg "$dir"/ 2>/dev/null || true
  rm -rf "$tmp"
  (cd "$dir" && sha256sum --quiet -c ../face-api.sha256) || { echo "setup.sh: face-api model files: sha256 mismatch" >&2; exit 1; }
  echo "setup.sh: face recognizer weights in $dir (sha256 checked)"
}
fetch_face_api

# ---- configure and build ------------------------------------------------------------------------
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build_dir" -j "$jobs"

# ---- run ----------------------------------------------------------------------------------------
if [ "$mode" = test ]; then
  ctest --test-dir "$build_dir" --output-on-failure -j "$jobs"
  # The unit tests again under AddressSanitizer + UndefinedBehaviorSanitizer (clang), when present.
  if command -v clang++ >/dev/null 2>&1; then
    echo "setup.sh: unit tests under ASan + UBSan (clang)"
    # Line tables are all a sanitizer report needs (file:line in every frame); full debug info
    # made the compile 13 % slower. Each test case runs in its own process, $jobs at a time.
    CC=clang CXX=clang++ cmake -S . -B "$build_dir-sanitize" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPIN_SANITIZE=ON \
      "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -gline-tables-only -DNDEBUG" \
      -DPIN_CUDA=OFF -DPIN_BUILD_BENCH=OFF -DPIN_BUILD_EXAMPLES=OFF >/dev/null
    cmake --build "$build_dir-sanitize" -j "$jobs" --target pin_tests
    ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      tests/run_cases.sh "$build_dir-sanitize/bin/pin_tests" "$jobs"
    # The GPU tests on the CPU emulation of CUDA (needs only the Toolkit's headers): ASan sees every
    # kernel's reads and writes, as compute-sanitizer would on a GPU. The cases that run the whole
    # 112 x 112 network in every mode ([network]) ran in the Release build above, as did the wide
    # tiles' ([wide]: 588 s here under the sanitizers; their code is the [tma] cases' but for the
    # tile's constants).
    if grep -q '^PIN_CUDA_HEADERS:PATH=/' "$build_dir-sanitize/CMakeCache.txt"; then
      cmake --build "$build_dir-sanitize" -j "$jobs" --target pin_tests_cuda_emulated
      ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        tests/run_cases.sh "$build_dir-sanitize/bin/pin_tests_cuda_emulated" "$jobs" "~[network]~[wide]"
    else
      echo "setup.sh: no CUDA Toolkit headers, skipping the emulated GPU tests under the sanitizers"
    fi
    # Every parser under libFuzzer for a few seconds (the long runs are in docs/reliability.md).
    echo "setup.sh: fuzzing the parsers (fixed seed and input count, about 10 s each)"
    tests/fuzz/run.sh --ci "$build_dir-fuzz-work" "$build_dir-fuzz"
  else
    echo "setup.sh: clang++ not found, skipping the sanitizer and fuzz runs"
  fi
elif [ "$mode" = bench ]; then
  BUILD_DIR="$build_dir" bench/compare_torch.sh
else
  "$build_dir/bin/pin" demo --out demo
fi
