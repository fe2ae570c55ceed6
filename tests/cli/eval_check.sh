#!/usr/bin/env bash
# End-to-end check of `pin eval` on a tiny synthetic LFW-style folder (images/<name>/<name>_NNNN.png
# + pairs.txt): the JSON carries eer, auc, tar_at_far and the pair count; attacks run offline and
# online (PCA, and PIN with every gradient variant); a folder without a valid pairs.txt is refused
# with a message naming pairs.txt. Skips (77) without the face-api weights (./setup.sh fetches them).
set -euo pipefail
pin=${1:?usage: eval_check.sh PATH_TO_PIN WORK_DIR RECOGNIZER_MANIFEST}
work=${2:?usage: eval_check.sh PATH_TO_PIN WORK_DIR RECOGNIZER_MANIFEST}
manifest=${3:?usage: eval_check.sh PATH_TO_PIN WORK_DIR RECOGNIZER_MANIFEST}
[ -f "$manifest" ] || { echo "SKIPPED: $manifest missing (./setup.sh fetches the face-api weights)"; exit 77; }
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
python3 "$(dirname "$0")/make_pairs.py" "$work/data" 8
q="--no-progress --threads 2 --recognizer $manifest --data $work/data"
"$pin" eval $q --json "$work/none.json" > "$work/none.log" 2>&1 || { cat "$work/none.log"; fail "pin eval (clean)"; }
python3 - "$work/none.json" <<'PY' || fail "JSON fields"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["pairs"] == 8 and 0 <= j["eer"] <= 1 and 0 <= j["auc"] <= 1 and set(j["tar_at_far"]) == {"0.1", "0.01", "0.001"}, j
assert len(j["scores"]) == 8 and len(j["roc"]) >= 2
PY
# A model: tiny eigenbasis, one DAE step, one agent step.
"$pin" eigen --data "$work/data" --split all --count 16 --keep 12 -o "$work/basis.safetensors" >/dev/null 2>&1 || fail "pin eigen"
"$pin" pretrain-dae --data "$work/data" --split all --batch 4 --steps 1 --out "$work/dae" --no-progress >/dev/null 2>&1 || fail "pretrain-dae"
"$pin" train --data "$work/data" --split all --batch 4 --masks 4 --steps 1 --dae "$work/dae/checkpoint.safetensors" \
  --basis "$work/basis.safetensors" --out "$work/model" --no-progress >/dev/null 2>&1 || fail "train"
"$pin" eval $q --attack fgsm --json "$work/fgsm.json" >/dev/null 2>&1 || fail "fgsm offline"
"$pin" eval $q --attack pgd --iterations 2 --protocol online --defense pca-8 --basis "$work/basis.safetensors" \
  --json "$work/pca.json" >/dev/null 2>&1 || fail "pgd online through PCA"
for g in sample eot bpda expectation expectation-agent fixed; do
  "$pin" eval $q --attack pgd --iterations 2 --protocol online --defense pin --model "$work/model" --pin-gradient $g --eot 3 \
    --json "$work/pin_$g.json" >"$work/pin_$g.log" 2>&1 || { cat "$work/pin_$g.log"; fail "pgd online through PIN ($g)"; }
  grep -q "\"pin_gradient\": \"$g\"" "$work/pin_$g.json" || fail "pin_gradient missing from the JSON ($g)"
done
python3 - "$work/none.json" "$work/fgsm.json" <<'PY' || fail "FGSM did not lower the accuracy"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert b["accuracy"] <= a["accuracy"], (a["accuracy"], b["accuracy"])
PY
# pin info says whether this build has CUDA kernels and, if so, which device they would run on or
# why none is usable.
"$pin" info > "$work/info" 2>&1 || fail "pin info"
if grep -q "CUDA kernels     built" "$work/info"; then
  grep -qE "^  CUDA device      (none usable: .+|.+ \(--device cuda)" "$work/info" || { cat "$work/info"; fail "pin info: no CUDA device line"; }
fi
# --folds: lists and ranges; an empty item or a fold 0 is a usage error.
for bad in "1," "1,,2" "" "0-2" "2-1"; do
  set +e
  "$pin" eval $q --folds "$bad" > "$work/msg" 2>&1; rc=$?
  set -e
  [ $rc = 2 ] && grep -q -- "--folds" "$work/msg" || { cat "$work/msg"; fail "--folds '$bad': expected a usage error"; }
done
grep -q -- "--folds: an empty item in '1,'" <("$pin" eval $q --folds 1, 2>&1) || fail "--folds 1,: the message does not name the empty item"
# --device cuda end to end (the GPU's scores against the CPU's): tests/cli/gpu_cli_check.sh. Here
# the usage errors: a defense the GPU does not run, another command, bad or misplaced --gpu-* values.
set +e
"$pin" eval $q --defense jpeg-50 --device cuda > "$work/msg" 2>&1; rc=$?
set -e
[ $rc = 2 ] && grep -q "runs the PIN defense" "$work/msg" || { cat "$work/msg"; fail "--device cuda with JPEG: expected a usage error"; }
set +e
"$pin" embed --in "$work/data/images" --out "$work/e.safetensors" --device cuda > "$work/msg" 2>&1; rc=$?
set -e
[ $rc = 2 ] && grep -q "only defend, eval and train run on a GPU" "$work/msg" || { cat "$work/msg"; fail "embed --device cuda: expected a usage error"; }
set +e
"$pin" eval $q --defense pin --model "$work/model" --gpu-math bf16 > "$work/msg" 2>&1; rc=$?
set -e
[ $rc = 2 ] && grep -q "needs --device cuda" "$work/msg" || { cat "$work/msg"; fail "--gpu-math without --device cuda: expected a usage error"; }
set +e
"$pin" eval $q --defense pin --model "$work/model" --device cuda --gpu-math fp16 > "$work/msg" 2>&1; rc=$?
set -e
[ $rc = 2 ] && grep -q "fp32, tf32 or bf16" "$work/msg" || { cat "$work/msg"; fail "--gpu-math fp16: expected a usage error"; }
set +e
"$pin" eval $q --defense pin --model "$work/model" --device cuda --gpu-gather wide > "$work/msg" 2>&1; rc=$?
set -e
[ $rc = 2 ] && grep -q -- "--gpu-gather must be generic, rows or vector, got 'wide'" "$work/msg" || { cat "$work/msg"; fail "--gpu-gather wide: expected a usage error"; }
set +e
"$pin" eval $q --defense pin --model "$work/model" --gpu-storage bf16 > "$work/msg" 2>&1; rc=$?
set -e
[ $rc = 2 ] && grep -q -- "--gpu-storage bf16 needs --device cuda" "$work/msg" || { cat "$work/msg"; fail "--gpu-storage without --device cuda: expected a usage error"; }
set +e
"$pin" eval $q --defense pin --model "$work/model" --device cuda --gpu-tile 96 > "$work/msg" 2>&1; rc=$?
set -e
[ $rc = 2 ] && grep -q -- "--gpu-tile must be 64, 128 or wgmma, got '96'" "$work/msg" || { cat "$work/msg"; fail "--gpu-tile 96: expected a usage error"; }
set +e
"$pin" eval $q --defense pin --model "$work/model" --gpu-tile 128 > "$work/msg" 2>&1; rc=$?
set -e
[ $rc = 2 ] && grep -q -- "--gpu-tile 128 needs --device cuda" "$work/msg" || { cat "$work/msg"; fail "--gpu-tile without --device cuda: expected a usage error"; }
set +e
"$pin" eval $q --defense pin --model "$work/model" --device cuda --gpu-pipeline fast > "$work/msg" 2>&1; rc=$?
set -e
[ $rc = 2 ] && grep -q -- "--gpu-pipeline must be wait, inflight, ws or pingpong, got 'fast'" "$work/msg" || { cat "$work/msg"; fail "--gpu-pipeline fast: expected a usage error"; }
set +e
"$pin" eval $q --defense pin --model "$work/model" --gpu-gather-cache l1 > "$work/msg" 2>&1; rc=$?
set -e
[ $rc = 2 ] && grep -q -- "--gpu-gather-cache l1 needs --device cuda" "$work/msg" || { cat "$work/msg"; fail "--gpu-gather-cache without --device cuda: expected a usage error"; }
set +e
"$pin" eval $q --defense pin --model "$work/model" --gpu-math bf16 --gpu-tune > "$work/msg" 2>&1; rc=$?
set -e
[ $rc = 2 ] && grep -q -- "--gpu-tune needs --device cuda" "$work/msg" || { cat "$work/msg"; fail "eval --gpu-tune without --device cuda: expected a usage error"; }
set +e
"$pin" eval $q --defense pin --model "$work/model" --device cuda --gpu-math bf16 --gpu-tune --gpu-pipeline ws > "$work/msg" 2>&1; rc=$?
set -e
[ $rc = 2 ] && grep -q -- "--gpu-tune chooses --gpu-pipeline itself" "$work/msg" || { cat "$work/msg"; fail "eval --gpu-tune --gpu-pipeline: expected a usage error"; }
set +e
"$pin" embed --in "$work/data/images" --out "$work/e.safetensors" --gpu-gather vector > "$work/msg" 2>&1; rc=$?
set -e
[ $rc = 2 ] && grep -q -- "--gpu-gather: embed runs on the CPU" "$work/msg" || { cat "$work/msg"; fail "embed --gpu-gather: expected a usage error"; }
# The newer attacks and defenses end to end, with their JSON fields.
for spec in "deepfool:offline:none" "di2-fgsm:offline:none" "random-search:offline:jpeg-50" "deepfool:online:bits-4" \
            "pgd:online:dae" "fgsm:online:jpeg-50"; do
  IFS=: read -r a p d <<<"$spec"
  "$pin" eval $q --attack $a --protocol $p --defense $d --model "$work/model" --iterations 2 --queries 3 \
    --json "$work/$a-$p-$d.json" >"$work/$a.log" 2>&1 || { cat "$work/$a.log"; fail "$a $p through $d"; }
done
grep -q '"attack_threshold"' "$work/deepfool-offline-none.json" || fail "DeepFool's JSON has no attack_threshold"
"$pin" eval $q --attack evolutionary --queries 30 --pairs 4 --json "$work/evo.json" >"$work/evo.log" 2>&1 || { cat "$work/evo.log"; fail "evolutionary"; }
"$pin" eval $q --attack sticker --iterations 2 --identities 5 --examples "$work/sticker" --json "$work/sticker.json" \
  >"$work/sticker.log" 2>&1 || { cat "$work/sticker.log"; fail "sticker"; }
python3 - "$work/evo.json" "$work/sticker.json" <<'PY' || fail "evolutionary / sticker JSON"
import json, math, sys
e, s = (json.load(open(p)) for p in sys.argv[1:3])
assert e["pairs"] == 4 and e["pairs_in_folds"] == 8 and e["queries"] == 30 and set(e["mse_at_queries"]) == {"1"}, e
assert s["identities"] == 5 and 0 <= s["error_rate"] <= 1 and 0 <= s["clean_error_rate"] <= 1 and len(s["scores"]) == 5, s
PY
ls "$work/sticker/pair0_attacked.png" >/dev/null || fail "no sticker example picture"
# The cache: a second run reads the offline-attacked faces and clean embeddings; same scores.
for i in 1 2; do
  "$pin" eval $q --attack pgd --iterations 2 --defense jpeg-50 --cache "$work/cache" --json "$work/cached$i.json" >/dev/null 2>&1 \
    || fail "pgd with --cache (run $i)"
done
[ "$(ls "$work/cache" | wc -l)" = 2 ] || { ls "$work/cache"; fail "expected one clean and one offline-attack cache file"; }
python3 - "$work/cached1.json" "$work/cached2.json" <<'PY' || fail "cached run differs"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["scores"] == b["scores"], "scores differ"
PY
# DeepFool offline through a defense aims at the bare recognizer's threshold: its embeddings are
# cached once and the cached run finds the same threshold and scores.
for i in 1 2; do
  "$pin" eval $q --attack deepfool --iterations 3 --defense bits-4 --cache "$work/cache" --json "$work/df$i.json" >/dev/null 2>&1 \
    || fail "deepfool with --cache (run $i)"
done
ls "$work/cache" | grep -q '^bare-' || { ls "$work/cache"; fail "no cache entry for the bare recognizer's embeddings"; }
python3 - "$work/df1.json" "$work/df2.json" <<'PY' || fail "cached deepfool run differs"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["scores"] == b["scores"] and a["attack_threshold"] == b["attack_threshold"], (a["attack_threshold"], b["attack_threshold"])
assert a["attack_threshold"] != a["threshold"], "offline DeepFool through a defense should aim at the bare threshold"
PY
"$pin" eval $q --defense jpeg-0 > "$work/msg" 2>&1 && fail "jpeg-0 was accepted"
grep -q "quality must be 1-100" "$work/msg" || { cat "$work/msg"; fail "no message for jpeg-0"; }
# Bad data folders: no pairs.txt; a malformed one.
mkdir -p "$work/nopairs/images"
"$pin" eval $q --data "$work/nopairs" > "$work/msg" 2>&1 && fail "a folder without pairs.txt was accepted"
grep -q "pairs.txt" "$work/msg" || { cat "$work/msg"; fail "the message does not name pairs.txt"; }
# Two folds of 2 + 2 pairs: 2 pairs spread evenly are the first of each fold, both same-person; the
# subset must still hold both classes (half from each).
cp -r "$work/data" "$work/twofolds"
printf '2\t2\nPerson_A\t1\t2\nPerson_B\t1\t2\nPerson_C\t1\tPerson_D\t2\nPerson_E\t1\tPerson_F\t2\nPerson_G\t1\t2\nPerson_H\t1\t2\nPerson_A\t1\tPerson_C\t2\nPerson_B\t1\tPerson_D\t2\n' \
  > "$work/twofolds/pairs.txt"
"$pin" eval $q --data "$work/twofolds" --attack fgsm --pairs 2 --json "$work/twofolds.json" > "$work/msg" 2>&1 \
  || { cat "$work/msg"; fail "--pairs 2 on two folds"; }
python3 - "$work/twofolds.json" <<'PY' || fail "--pairs 2 did not keep both classes"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["pairs"] == 2 and sorted(j["same"]) == [0, 1], j["same"]
PY
cp -r "$work/data" "$work/badpairs" && printf '1\t4\nPerson_A\t1\n' > "$work/badpairs/pairs.txt"
"$pin" eval $q --data "$work/badpairs" > "$work/msg" 2>&1 && fail "a malformed pairs.txt was accepted"
grep -q "badpairs/pairs.txt:2: a same-person pair needs 'name i j'" "$work/msg" || { cat "$work/msg"; fail "no line-numbered message"; }
# The JSON is replaced atomically: no temporary file left behind.
[ ! -e "$work/none.json.tmp" ] || fail "temporary JSON left behind"
echo "eval check passed"
