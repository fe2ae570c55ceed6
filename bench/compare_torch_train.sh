#!/usr/bin/env bash
# bench/compare_torch_train.sh - training-step speed, pin against PyTorch, in one run: full
# policy-gradient steps (DAE forward, agent forward + backward, k masks, costs, SGD), REINFORCE as
# released, 2 threads. PyTorch twice: with the same O(N) mask costs as pin, and with the released
# code's per-mask reconstruction. Prints one JSON line per program and the ratios.
#   bench/compare_torch_train.sh [BATCH=20] [MASKS=30]
set -euo pipefail
cd "$(dirname "$0")/.."
b=${1:-20}; k=${2:-30}
py=/usr/bin/python3; [ -x $py ] || py=python3
ours=$(build/bin/pin-bench train --batch "$b" --masks "$k" --threads 2 --iters 3 --json 2>/dev/null)
echo "$ours"
peer=$($py bench/peers/torch_train.py --batch "$b" --masks "$k" --threads 2 --iters 2)
echo "$peer"
released=$($py bench/peers/torch_train.py --batch 4 --masks "$k" --threads 2 --iters 1 --cost-mode released)
echo "$released"
$py - "$ours" "$peer" "$released" <<'PY'
import json, sys
o, p, r = (json.loads(a) for a in sys.argv[1:4])
if "error" in p:
    print("PyTorch peer: " + p["error"]); sys.exit(0)
print("pin %.2f images/s; PyTorch O(N) %.2f (ratio %.2f); PyTorch released per-mask reconstruction %.3f (ratio %.1f)" %
      (o["images_per_second"], p["images_per_second"], o["images_per_second"] / p["images_per_second"],
       r["images_per_second"], o["images_per_second"] / r["images_per_second"]))
PY
