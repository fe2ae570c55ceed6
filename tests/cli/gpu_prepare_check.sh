#!/usr/bin/env bash
# bench/gpu_prepare.sh on a scratch git checkout (never this one: it moves the model's tensors):
# prepare moves the tracked tensors aside and writes .devdeps (git-ignored); restore brings them
# back without overwriting anything - a locally changed tensor stays changed, a tensor in both
# places is refused - and takes from git only a tracked tensor that is in neither place.
set -euo pipefail
script=${1:?usage: gpu_prepare_check.sh PATH_TO_GPU_PREPARE_SH WORK_DIR}
work=${2:?usage: gpu_prepare_check.sh PATH_TO_GPU_PREPARE_SH WORK_DIR}
fail() { echo "FAIL: $*" >&2; exit 1; }
for need in /usr/include/catch2 /usr/include/nlohmann /usr/include/stb; do
  [ -e "$need" ] || { echo "SKIPPED: $need is missing (Debian's catch2, nlohmann-json3-dev, libstb-dev)"; exit 77; }
done
rm -rf "$work" && mkdir -p "$work/repo/bench" "$work/repo/weights/pin-default" "$work/repo/weights/face-api"
repo="$work/repo"
export PIN_WEIGHTS_ASIDE="$work/aside"
cp "$script" "$repo/bench/gpu_prepare.sh"
head -c 3000 /dev/urandom > "$repo/weights/pin-default/agent.safetensors"
head -c 2000 /dev/urandom > "$repo/weights/pin-default/eigenbasis.safetensors"
echo "model" > "$repo/weights/pin-default/README.md"
echo "/weights/face-api/" > "$repo/.gitignore"
git -C "$repo" init -q && git -C "$repo" add -A && git -C "$repo" -c user.name=t -c user.email=t@t commit -qm init
prep() { bash "$repo/bench/gpu_prepare.sh" "$@"; }

# Without face-api's manifest, prepare stops before moving anything and says what to run.
if out=$(prep prepare 2>&1); then fail "prepare without weights/face-api succeeded"; fi
grep -q "setup.sh" <<< "$out" || fail "prepare without weights/face-api did not say to run ./setup.sh: $out"
[ -f "$repo/weights/pin-default/agent.safetensors" ] || fail "prepare moved tensors although it failed"
echo '{}' > "$repo/weights/face-api/face_recognition_model-weights_manifest.json"

# prepare: tensors aside, README stays, .devdeps written and ignored.
prep prepare > "$work/prepare.log" || fail "prepare: $(cat "$work/prepare.log")"
for f in agent eigenbasis; do [ -f "$work/aside/$f.safetensors" ] || fail "$f.safetensors not moved aside"; done
ls "$repo"/weights/pin-default/*.safetensors >/dev/null 2>&1 && fail "tensors left in weights/pin-default"
[ -f "$repo/weights/pin-default/README.md" ] || fail "prepare moved more than the tensors"
for f in include/stb/stb_image.h include/nlohmann/json.hpp lib/libCatch2WithMain.a; do
  [ -f "$repo/.devdeps/usr/$f" ] || fail ".devdeps has no usr/$f"
done
[ -z "$(git -C "$repo" status --porcelain --untracked-files=all -- .devdeps)" ] || fail ".devdeps is not git-ignored"
grep -q "carry" "$work/prepare.log" || fail "prepare did not say what to carry"
prep prepare > /dev/null || fail "a second prepare (nothing left to move) failed"

# restore: back, equal to the commit.
prep restore > /dev/null || fail "restore failed"
[ -z "$(git -C "$repo" status --porcelain -- weights)" ] || fail "restore left weights/ differing from the commit"
ls "$work"/aside/*.safetensors >/dev/null 2>&1 && fail "restore left tensors aside"

# A locally changed tensor survives prepare + restore; a tensor in both places is refused, not overwritten.
printf 'x' >> "$repo/weights/pin-default/agent.safetensors"
changed=$(md5sum < "$repo/weights/pin-default/agent.safetensors")
prep prepare > /dev/null
git -C "$repo" checkout -q -- weights/pin-default/agent.safetensors  # the committed one is back beside the aside copy
if prep restore > /dev/null 2>&1; then fail "restore overwrote a tensor present in both places"; fi
[ "$(md5sum < "$work/aside/agent.safetensors")" = "$changed" ] || fail "the aside copy changed"
rm "$repo/weights/pin-default/agent.safetensors"
prep restore > /dev/null || fail "restore failed"
[ "$(md5sum < "$repo/weights/pin-default/agent.safetensors")" = "$changed" ] || fail "restore replaced the locally changed tensor"

# A tracked tensor in neither place comes back from git.
rm "$repo/weights/pin-default/eigenbasis.safetensors"
prep restore > /dev/null || fail "restore failed"
git -C "$repo" diff --quiet -- weights/pin-default/eigenbasis.safetensors || fail "the missing tensor did not come back from git"
echo "gpu_prepare check passed"
