#!/usr/bin/env bash
# bench/converge.sh - which policy-gradient estimator trains the agent: the same data, seed, learning
# rate and number of steps for reinforce (released rule), rloo and local (per-eigenvector credit),
# each from the same initial weights. Writes OUT/<estimator>/log.csv, OUT/converge.csv (all three),
# OUT/converge.svg (mean cost and mean ||q||_0 against step) and prints a summary. With --bf16 each
# estimator also runs as ESTIMATOR-bf16 with `pin train --emulate-gpu-bf16` (the GEMM operands
# rounded to bfloat16 as the GPU's --gpu-math bf16 rounds them), compared with its fp32 run.
#
#   bench/converge.sh --dae FILE --basis FILE [--data DIR] [--steps 150] [--lambda 0.002] [--lr 0.01]
#                     [--out DIR] [--estimators "reinforce rloo local"] [--bf16]
set -euo pipefail
cd "$(dirname "$0")/.."
data=../shared/data/lfw112; steps=150; lambda=0.002; lr=0.01; out=converge-run; dae=""; basis=""
estimators="reinforce rloo local"; bf16=0
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data=$2; shift ;; --steps) steps=$2; shift ;; --lambda) lambda=$2; shift ;; --lr) lr=$2; shift ;;
    --out) out=$2; shift ;; --dae) dae=$2; shift ;; --basis) basis=$2; shift ;; --estimators) estimators=$2; shift ;; --bf16) bf16=1 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "converge.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$dae" ] && [ -n "$basis" ] || { echo "converge.sh: --dae and --basis are required" >&2; exit 2; }
pin=${PIN:-build/bin/pin}
mkdir -p "$out"
runs=()
for est in $estimators; do
  runs+=("$est")
  [ "$bf16" = 1 ] && runs+=("$est-bf16")
done
for run in "${runs[@]}"; do
  if [ -f "$out/$run/log.csv" ] && [ "$(($(wc -l < "$out/$run/log.csv") - 1))" -ge "$steps" ]; then
    echo "converge.sh: $run already has $steps steps in $out/$run"; continue
  fi
  rm -rf "${out:?}/$run"
  echo "converge.sh: $run, $steps steps"
  extra=()
  [ "$run" != "${run%-bf16}" ] && extra=(--emulate-gpu-bf16)
  "$pin" train --data "$data" --dae "$dae" --basis "$basis" --out "$out/$run" --estimator "${run%-bf16}" --lambda "$lambda" \
    --lr "$lr" --batch 20 --masks 30 --flip --steps "$steps" --epochs 1000 --no-progress "${extra[@]}"
done
python3 - "$out" "$steps" "${runs[@]}" <<'PY'
import csv, os, sys
sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
from svg_plot import line_chart
out, steps, ests = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
runs = {}
for e in ests:
    rows = list(csv.DictReader(open(os.path.join(out, e, "log.csv"))))[:steps]
    runs[e] = rows
with open(os.path.join(out, "converge.csv"), "w") as f:
    f.write("estimator,step,mean_cost,mean_kept,seconds\n")
    for e, rows in runs.items():
        for r in rows:
            f.write("%s,%s,%s,%s,%s\n" % (e, r["step"], r["mean_cost"], r["mean_kept"], r["seconds"]))
def smooth(v, w=10):
    return [sum(v[max(0, i - w + 1):i + 1]) / len(v[max(0, i - w + 1):i + 1]) for i in range(len(v))]
cost = [(e, [int(r["step"]) for r in rows], smooth([float(r["mean_cost"]) for r in rows])) for e, rows in runs.items()]
kept = [(e, [int(r["step"]) for r in rows], smooth([float(r["mean_kept"]) for r in rows])) for e, rows in runs.items()]
a = line_chart(cost, "mean cost per step (10-step running mean)", "step", "mean cost")
b = line_chart(kept, "mean eigenfaces kept ||q||_0", "step", "kept")
svg = '<svg xmlns="http://www.w3.org/2000/svg" width="640" height="800">%s<g transform="translate(0,400)">%s</g></svg>' % (
    a[a.index(">") + 1:a.rindex("</svg>")], b[b.index(">") + 1:b.rindex("</svg>")])
open(os.path.join(out, "converge.svg"), "w").write(svg)
print("estimator  first-10 cost  last-20 cost  last-20 kept  s/step")
summary = {}
for e, rows in runs.items():
    c = [float(r["mean_cost"]) for r in rows]; k = [float(r["mean_kept"]) for r in rows]
    t = float(rows[-1]["seconds"]) / len(rows)
    summary[e] = sum(c[-20:]) / 20
    print("%-10s %13.3f %13.3f %13.1f %7.2f" % (e, sum(c[:10]) / 10, summary[e], sum(k[-20:]) / 20, t))
if "reinforce" in summary:
    for e in summary:
        if e != "reinforce" and not e.endswith("-bf16"):
            print("%s: last-20 mean cost %.1f %% below reinforce" % (e, 100 * (1 - summary[e] / summary["reinforce"])))
for e in summary:  # --bf16: each bfloat16-operand run against its fp32 run
    if e.endswith("-bf16") and e[:-5] in summary:
        print("%s: last-20 mean cost %+.2f %% against %s (fp32)" % (e, 100 * (summary[e] / summary[e[:-5]] - 1), e[:-5]))
PY
