#!/usr/bin/env bash
# End-to-end check of `pin eigen` and `pin defend` on synthetic faces (PGM written here):
# a PCA defense gives byte-identical files for 1 and 2 threads and for two batch sizes; bad
# input is reported with the file name and a non-zero exit, the good faces still written;
# without a trained model `pin defend` says so and fails.
set -euo pipefail
pin=${1:?usage: defend_check.sh PATH_TO_PIN WORK_DIR}
work=${2:?usage: defend_check.sh PATH_TO_PIN WORK_DIR}
rm -rf "$work" && mkdir -p "$work/faces"
fail() { echo "FAIL: $*" >&2; exit 1; }

# 30 people x 2 faces, 112x112 8-bit PGM with person-specific patterns plus noise.
python3 "$(dirname "$0")/make_faces.py" "$work/faces" 30 2 7

"$pin" eigen --data "$work/faces" --split train --count 60 --keep 20 -o "$work/basis.safetensors" \
  > "$work/eigen.log" 2>&1 || { cat "$work/eigen.log"; fail "pin eigen"; }
grep -q "not defined there, using all images" "$work/eigen.log" || fail "pin eigen did not report the split fall-back"

# The same faces through an image list (relative paths).
(cd "$work" && find faces -name '*.pgm' | sort > list.txt)
"$pin" eigen --data "$work/list.txt" --split all --count 60 --keep 20 -o "$work/basis_list.safetensors" > /dev/null 2>&1 \
  || fail "pin eigen from an image list"
cmp -s "$work/basis.safetensors" "$work/basis_list.safetensors" || fail "list and folder give different eigenbases"

"$pin" defend --defense pca-10 --basis "$work/basis.safetensors" --in "$work/faces" --out "$work/out1" --threads 1 --batch 7 >/dev/null 2>&1 \
  || fail "pin defend (1 thread)"
"$pin" defend --defense pca-10 --basis "$work/basis.safetensors" --in "$work/faces" --out "$work/out2" --threads 2 --batch 16 >/dev/null 2>"$work/bar.log" \
  || fail "pin defend (2 threads)"
grep -q "defending" "$work/bar.log" || fail "pin defend showed no progress"
"$pin" defend --defense pca-10 --basis "$work/basis.safetensors" --in "$work/faces" --out "$work/out_quiet" --no-progress >/dev/null 2>"$work/bar.log" \
  || fail "pin defend --no-progress"
[ ! -s "$work/bar.log" ] || { cat "$work/bar.log"; fail "pin defend --no-progress wrote to stderr"; }
[ "$(find "$work/out1" -name '*.png' | wc -l)" = 60 ] || fail "expected 60 defended faces"
diff -r "$work/out1" "$work/out2" >/dev/null || fail "outputs differ between 1 and 2 threads / batch sizes"

# A broken file among good ones: reported by name, exit 1, the others still written.
printf 'not an image' > "$work/faces/person_00/broken.png"
if "$pin" defend --defense pca-10 --basis "$work/basis.safetensors" --in "$work/faces" --out "$work/out3" > "$work/bad.log" 2>&1; then
  fail "pin defend accepted a broken image"
fi
grep -q "broken.png: not a readable image" "$work/bad.log" || { cat "$work/bad.log"; fail "message does not name the broken file"; }
[ "$(find "$work/out3" -name '*.png' | wc -l)" = 60 ] || fail "good faces were not all written next to a broken one"

# No trained PIN model: say so, exit non-zero.
if "$pin" defend --model "$work/no-model" --in "$work/faces" --out "$work/out4" > "$work/nomodel.log" 2>&1; then
  fail "pin defend without a model succeeded"
fi
grep -q "not a PIN model" "$work/nomodel.log" || fail "missing-model message"
"$pin" defend --defense pca-0 --basis "$work/basis.safetensors" --in "$work/faces" --out "$work/o5" > /dev/null 2>&1 && fail "pca-0 accepted"
# --gpu-tune (GPU tuning) refuses what it cannot do before any work: a usage error, exit 2.
bad_tune() {  # MESSAGE ARGS...
  local message=$1 rc=0
  shift
  "$pin" defend --defense pca-10 --basis "$work/basis.safetensors" --in "$work/faces" --out "$work/o_tune" "$@" >"$work/msg" 2>&1 || rc=$?
  [ $rc = 2 ] && grep -q -- "$message" "$work/msg" || { cat "$work/msg"; fail "pin defend $*: exit $rc, expected 2 saying '$message'"; }
}
bad_tune "--gpu-tune needs --device cuda" --gpu-tune --gpu-math bf16
bad_tune "chooses among --gpu-math bf16's configurations: add --gpu-math bf16" --device cuda --gpu-tune
bad_tune "--gpu-tune chooses --gpu-tile itself" --device cuda --gpu-math bf16 --gpu-tune --gpu-tile 128
bad_tune "--gpu-tune-repeats goes with --gpu-tune" --device cuda --gpu-math bf16 --gpu-tune-repeats 2
bad_tune "--gpu-tune-repeats expects an integer in \[1, 100\]" --device cuda --gpu-math bf16 --gpu-tune --gpu-tune-repeats 0
bad_tune "--gpu-tune-only goes with --gpu-tune" --device cuda --gpu-math bf16 --gpu-tune-only tile64
if "$pin" info 2>&1 | grep -q "CUDA kernels     built"; then  # the configurations' ids are the CUDA build's
  bad_tune "--gpu-tune-only: no configuration 'tile32' (the ids: tile64, tile64-l1, tile128, wgmma-wait," \
    --device cuda --gpu-math bf16 --gpu-tune --gpu-tune-only tile64,tile32
  bad_tune "--gpu-tune-only names 'ws' twice" --device cuda --gpu-math bf16 --gpu-tune --gpu-tune-only ws,tile128,ws
  bad_tune "--gpu-tune-only: an empty item in 'tile64,'" --device cuda --gpu-math bf16 --gpu-tune --gpu-tune-only tile64,
fi
[ ! -e "$work/o_tune" ] || fail "a refused --gpu-tune run wrote files"
echo "defend_check: all checks passed"
