#!/usr/bin/env bash
# bench/eval_report.sh - the robustness matrix in one command: every defense against every attack,
# offline and online, the black-box and sticker attacks, and the sanity checks of Carlini et al.
# (2019); one JSON per cell in RESULTS_DIR, then bench/make_report.py writes docs/results.md with
# tables in the paper's layout, ROC curves, similarity histograms and a face grid. Cells whose JSON
# exists are not run again (delete a JSON to redo it), so an interrupted report resumes; offline
# attacks and clean embeddings are computed once and shared through a cache folder.
#
#   bench/eval_report.sh --model DIR [--data DIR] [--folds 5-8] [--results DIR] [--cache DIR] [--quick]
#     --quick   the paper-layout table only (no sanity checks, black-box or sticker cells)
#
# Cells on every pair of the folds: clean, and every offline attack (the attack sees only the bare
# recognizer, so it is run once and each defense is evaluated on the same attacked faces). Online
# cells cost one defense forward (PIN, DAE: a network) per attack step, so the expensive ones run on
# an evenly spread subset of the folds' pairs: the pair count is in each JSON and in every table.
set -euo pipefail
cd "$(dirname "$0")/.."
data=../shared/data/lfw112; folds=5-8; results=docs/results/folds5-8; model=""; quick=0; cache=build/eval-cache
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data=$2; shift ;; --folds) folds=$2; shift ;; --results) results=$2; shift ;; --model) model=$2; shift ;;
    --cache) cache=$2; shift ;; --quick) quick=1 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "eval_report.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$model" ] || { echo "eval_report.sh: --model DIR (a PIN model folder) is required" >&2; exit 2; }
pin=${PIN:-build/bin/pin}
mkdir -p "$results/examples"
started=$(date +%s); ran=0
cell() {  # name, then pin eval arguments
  local name=$1; shift
  if [ -f "$results/$name.json" ]; then return 0; fi
  ran=$((ran + 1))
  echo "== $name ($(( ($(date +%s) - started) / 60 )) min so far)"
  local ex=()
  case "$name" in *_pgd_offline|*_pgd_online|*_pgd_online_sample|*_sticker_offline) ex=(--examples "$results/examples/$name") ;; esac
  "$pin" eval --data "$data" --folds "$folds" --cache "$cache" "$@" "${ex[@]}" --json "$results/$name.json"
}
args_for() {  # the model / basis flags a defense needs
  case "$1" in
    pin|dae) echo "--model $model" ;;
    pca-*) echo "--basis $model/eigenbasis.safetensors" ;;
    *) echo "" ;;
  esac
}
defenses=(none pca-200 pca-2000 jpeg-75 bits-4 dae pin)
# 1. Clean and offline (every pair).
for d in "${defenses[@]}"; do
  a=$(args_for "$d")
  cell "${d}_clean" --defense "$d" $a
  for attack in fgsm deepfool pgd di2-fgsm; do cell "${d}_${attack}_offline" --defense "$d" $a --attack $attack; done
done
# 2. Online (white box through the defense). PCA, JPEG and bit depth: FGSM on every pair, DeepFool
#    and PGD on 300; the DAE (exact gradient through both passes) and PIN on fewer. PIN first.
pin_args=(--defense pin --model "$model" --protocol online)
cell pin_fgsm_online_sample "${pin_args[@]}" --attack fgsm --pairs 300
for g in sample fixed expectation bpda; do cell "pin_pgd_online_$g" "${pin_args[@]}" --attack pgd --pin-gradient $g --pairs 120; done
cell pin_deepfool_online_sample "${pin_args[@]}" --attack deepfool --pairs 120
for d in pca-200 pca-2000 jpeg-75 bits-4; do
  a=$(args_for "$d")
  cell "${d}_fgsm_online" --defense "$d" $a --attack fgsm --protocol online
  cell "${d}_deepfool_online" --defense "$d" $a --attack deepfool --protocol online --pairs 300
  cell "${d}_pgd_online" --defense "$d" $a --attack pgd --protocol online --pairs 300
done
cell dae_fgsm_online --defense dae --model "$model" --attack fgsm --protocol online --pairs 240
cell dae_deepfool_online --defense dae --model "$model" --attack deepfool --protocol online --pairs 60
cell dae_pgd_online --defense dae --model "$model" --attack pgd --protocol online --pairs 60
[ $quick = 1 ] && { python3 bench/make_report.py "$results" docs/results.md "$folds"; exit 0; }
cell pin_ifgsm_online_sample "${pin_args[@]}" --attack ifgsm --pairs 120
cell pin_pgd_online_eot "${pin_args[@]}" --attack pgd --pin-gradient eot --eot 20 --pairs 24
cell pin_pgd_online_expectation-agent "${pin_args[@]}" --attack pgd --pin-gradient expectation-agent --pairs 60
# 3. Sanity checks: the error against the intensity bound; convergence in the number of PGD steps
#    (10 vs 20 on the same pairs: no defense, and PCA-2000 online; PIN online is at 100 % with 10);
#    random search against PGD on the same pairs.
for e in 0.005 0.01 0.02 0.08; do cell "none_pgd_offline_eps$e" --attack pgd --eps $e --pairs 300; done
cell none_pgd10_offline_p300 --attack pgd --pairs 300
cell none_pgd20_offline_p300 --attack pgd --iterations 20 --pairs 300
cell pca-2000_pgd20_online --defense pca-2000 $(args_for pca-2000) --attack pgd --iterations 20 --protocol online --pairs 300
cell none_random-search_offline --attack random-search --queries 20 --pairs 300
cell pca-2000_random-search_offline --defense pca-2000 $(args_for pca-2000) --attack random-search --queries 20 --pairs 300
# 4. Black box (Dong et al.'s evolutionary attack): distortion left after 1,000 / 5,000 / 10,000
#    queries on 4 pairs (2 dodging, 2 impersonation); through PCA-2000 5,000 and through PIN 1,000
#    queries (a network per query).
cell none_evolutionary_offline --attack evolutionary --queries 10000 --pairs 4
cell pca-2000_evolutionary_online --defense pca-2000 $(args_for pca-2000) --attack evolutionary --queries 5000 --pairs 4 --protocol online
cell pin_evolutionary_online --defense pin --model "$model" --attack evolutionary --queries 1000 --pairs 4 --protocol online
# 5. The forehead sticker: 500 people against one target; crafted on the bare recognizer
#    (shared by every defense) and, for PCA-2000 and PIN, through the defense on fewer people.
for d in "${defenses[@]}"; do cell "${d}_sticker_offline" --defense "$d" $(args_for "$d") --attack sticker --iterations 20 --identities 500; done
cell pca-2000_sticker_online --defense pca-2000 $(args_for pca-2000) --attack sticker --iterations 20 --identities 100 --protocol online
cell pin_sticker_online --defense pin --model "$model" --attack sticker --iterations 20 --identities 32 --protocol online
wall=$(( $(date +%s) - started ))
echo "matrix done in $(( wall / 60 )) min ($ran cells run by this invocation)"
# The wall time of this invocation, for the report (a resumed run covers only the cells it ran).
printf '{"wall_seconds": %d, "cells_run": %d, "finished": "%s", "threads": "%s"}\n' "$wall" "$ran" "$(date -u +%FT%TZ)" "$(nproc)" \
  > "$results/matrix_run.json"
python3 bench/make_report.py "$results" docs/results.md "$folds"
