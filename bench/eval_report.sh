#!/usr/bin/env bash
# bench/eval_report.sh - the robustness matrix in one command: every defense against every attack,
# offline and online, plus the sanity checks of Carlini et al. (2019); one JSON per cell in
# RESULTS_DIR, then bench/make_report.py writes docs/results.md with tables, ROC curves,
# similarity histograms and a face grid. Cells whose JSON exists are not run again (delete a JSON to
# redo it), so an interrupted report resumes.
#
#   bench/eval_report.sh --model DIR [--data DIR] [--folds 5-8] [--results DIR] [--quick]
#     --quick   the core cells only (no intensity sweep, no extra online variants)
set -euo pipefail
cd "$(dirname "$0")/.."
data=../shared/data/lfw112; folds=5-8; results=docs/results; model=""; quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data=$2; shift ;; --folds) folds=$2; shift ;; --results) results=$2; shift ;; --model) model=$2; shift ;;
    --quick) quick=1 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "eval_report.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$model" ] || { echo "eval_report.sh: --model DIR (a PIN model folder) is required" >&2; exit 2; }
pin=${PIN:-build/bin/pin}
mkdir -p "$results/examples"
cell() {  # name, then pin eval arguments
  local name=$1; shift
  if [ -f "$results/$name.json" ]; then return 0; fi
  echo "== $name"
  local ex=()
  case "$name" in *pgd_offline|*pgd_online|*pgd_online_sample) ex=(--examples "$results/examples/$name") ;; esac
  "$pin" eval --data "$data" --folds "$folds" "$@" "${ex[@]}" --json "$results/$name.json"
}
basis=(--basis "$model/eigenbasis.safetensors")
for d in none pca-200 pca-2000 pin; do
  extra=(); [ "$d" = pin ] && extra=(--model "$model"); [[ "$d" == pca-* ]] && extra=("${basis[@]}")
  cell "${d}_clean" --defense "$d" "${extra[@]}"
  cell "${d}_fgsm_offline" --defense "$d" "${extra[@]}" --attack fgsm
  cell "${d}_pgd_offline" --defense "$d" "${extra[@]}" --attack pgd
  if [ "$d" != none ]; then
    if [ "$d" = pin ]; then
      cell "pin_pgd_online_sample" --defense pin "${extra[@]}" --attack pgd --protocol online --pin-gradient sample
      cell "pin_pgd_online_expectation" --defense pin "${extra[@]}" --attack pgd --protocol online --pin-gradient expectation
      [ $quick = 1 ] || cell "pin_pgd_online_bpda" --defense pin "${extra[@]}" --attack pgd --protocol online --pin-gradient bpda
      [ $quick = 1 ] || cell "pin_fgsm_online_sample" --defense pin "${extra[@]}" --attack fgsm --protocol online
    else
      cell "${d}_pgd_online" --defense "$d" "${extra[@]}" --attack pgd --protocol online
      cell "${d}_fgsm_online" --defense "$d" "${extra[@]}" --attack fgsm --protocol online
    fi
  fi
done
# Sanity checks: iterative vs single step (above), the error against the intensity bound,
# convergence in the number of PGD steps.
if [ $quick = 0 ]; then
  for e in 0.005 0.01 0.02 0.08; do cell "none_pgd_offline_eps$e" --attack pgd --eps $e; done
  cell "none_pgd20_offline" --attack pgd --iterations 20
  cell "pca-2000_pgd20_online" --defense pca-2000 "${basis[@]}" --attack pgd --iterations 20 --protocol online
fi
python3 bench/make_report.py "$results" docs/results.md "$folds"
