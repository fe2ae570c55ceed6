#!/usr/bin/env bash
# bench/gpu_prepare.sh prepare|restore - the checkout's steps around a lent GPU's one call to
# bench/gpu_check.sh (docs/gpu.md "Running the check on a lent GPU"), so that device time is not
# spent on a forgotten one:
#
#   prepare   copy Debian's Catch2, nlohmann-json and stb into .devdeps (the device image lacks
#             them; git-ignored through .git/info/exclude), check that weights/face-api is there
#             (pin eval's part of the check), move weights/pin-default's 114 MB of tensors aside
#             (a device call carries at most 64 MiB of working tree), and print what to carry.
#   restore   put the tensors back (from git those that are in neither place; nothing is overwritten).
#
# The aside folder is $PIN_WEIGHTS_ASIDE, default /tmp/pin-default-aside.
set -euo pipefail
cd "$(dirname "$0")/.."
aside=${PIN_WEIGHTS_ASIDE:-/tmp/pin-default-aside}
fail() { echo "gpu_prepare.sh: $*" >&2; exit 1; }

case "${1:-}" in
prepare)
  # Each of these under /usr goes to the same place under .devdeps/usr.
  sources=(include/catch2 include/nlohmann include/stb lib/cmake/Catch2 lib/libCatch2WithMain.a share/cmake/nlohmann_json)
  for need in "${sources[@]}"; do
    [ -e "/usr/$need" ] || fail "/usr/$need is missing: install catch2, nlohmann-json3-dev and libstb-dev first (./setup.sh does)"
  done
  [ -f weights/face-api/face_recognition_model-weights_manifest.json ] \
    || fail "weights/face-api has no face_recognition_model-weights_manifest.json: run ./setup.sh first (it fetches face-api)"
  grep -qx "/.devdeps/" .git/info/exclude 2>/dev/null || echo "/.devdeps/" >> .git/info/exclude
  rm -rf .devdeps
  for need in "${sources[@]}"; do
    mkdir -p ".devdeps/usr/$(dirname "$need")" && cp -r "/usr/$need" ".devdeps/usr/$need"
  done
  shopt -s nullglob
  tensors=(weights/pin-default/*.safetensors)
  if [ ${#tensors[@]} -gt 0 ]; then
    already=("$aside"/*.safetensors)
    [ ${#already[@]} -eq 0 ] || fail "$aside already holds tensors (an earlier prepare): run 'bash bench/gpu_prepare.sh restore' first"
    mkdir -p "$aside"
    mv "${tensors[@]}" "$aside/"
  fi
  # What a device call copies: tracked and untracked-but-not-ignored files, plus the carried folders.
  bytes=$( { git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null;
             find .devdeps weights/face-api -type f -printf '%s\n'; } | awk '{ s += $1 } END { print s + 0 }')
  echo "prepared: .devdeps written, weights/pin-default's tensors in $aside"
  echo "the call copies about $(( bytes / 1048576 )) MiB (at most 64 MiB); carry: [\".devdeps\", \"weights/face-api\"]"
  echo "command: bash bench/gpu_check.sh \"\$OUT\"; afterwards: bash bench/gpu_prepare.sh restore"
  [ "$bytes" -lt $(( 64 * 1048576 )) ] || fail "more than 64 MiB would travel: move other large files aside too"
  ;;
restore)
  shopt -s nullglob
  kept=("$aside"/*.safetensors)
  for f in "${kept[@]}"; do
    [ -e "weights/pin-default/$(basename "$f")" ] && fail "weights/pin-default/$(basename "$f") exists and $f too: keep one by hand"
  done
  [ ${#kept[@]} -eq 0 ] || mv "${kept[@]}" weights/pin-default/
  # A tracked tensor that was in neither place comes back from the commit; tensors that differ from
  # it (a model trained here) stay as they are.
  git ls-files --deleted -z -- weights/pin-default | xargs -0 -r git checkout --
  echo "restored weights/pin-default:"
  git status --short -- weights/pin-default
  ;;
*)
  echo "usage: bench/gpu_prepare.sh prepare|restore   (before and after a lent GPU's bench/gpu_check.sh; see the header)" >&2
  exit 2
  ;;
esac
