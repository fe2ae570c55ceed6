#!/usr/bin/env bash
# compare_torch_eigen.sh - eigenfaces in pin and in PyTorch (float64 Gram + torch.linalg.eigh +
# back-projection), in the same run, and the time ratio.
#
#   bench/compare_torch_eigen.sh [--data DIR] [--count 5000] [--keep 2500] [--threads 2]
# pin runs `pin eigen` on the train split of DIR (default ../shared/data/lfw112); PyTorch runs on
# synthetic faces of the same size (its time does not depend on the values). Needs python3-torch.
set -euo pipefail
data=../shared/data/lfw112; count=5000; keep=2500; threads=2
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data=$2; shift ;;
    --count) count=$2; shift ;;
    --keep) keep=$2; shift ;;
    --threads) threads=$2; shift ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare_torch_eigen.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
py=/usr/bin/python3; [ -x "$py" ] || py=python3
out="$build/bench"; mkdir -p "$out"
echo "== pin eigen: $count faces, keep $keep, $threads threads"
/usr/bin/time -f "pin wall %e s, max RSS %M KiB" "$build/bin/pin" eigen --data "$data" --split train --count "$count" \
  --keep "$keep" --threads "$threads" -o "$out/eigenbasis.safetensors" 2> >(grep -v 'loading faces \[' >&2) | tee "$out/eigen_pin.txt"
echo "== PyTorch: the same sizes"
OMP_NUM_THREADS=$threads "$py" bench/peers/torch_eigen.py --count "$count" --keep "$keep" --threads "$threads" | tee "$out/eigen_torch.json"
"$py" - "$out/eigen_pin.txt" "$out/eigen_torch.json" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
m = re.search(r"mean \+ Gram ([\d.]+) s, eigenpairs ([\d.]+) s, back-projection ([\d.]+) s, total ([\d.]+) s", text)
t = json.load(open(sys.argv[2]))
if not m or "total_s" not in t:
    sys.exit("could not read the timings")
gram, eig, back, total = map(float, m.groups())
compute = gram + eig + back
print("\n%-26s %10s %10s" % ("", "pin", "PyTorch"))
print("%-26s %10.1f %10.1f" % ("mean + Gram (s)", gram, t["gram_s"]))
print("%-26s %10.1f %10.1f" % ("eigenpairs (s)", eig, t["eigh_s"]))
print("%-26s %10.1f %10.1f" % ("back-projection (s)", back, t["backproject_s"]))
print("%-26s %10.1f %10.1f" % ("total compute (s)", compute, t["total_s"]))
print("pin / PyTorch time: %.2f (bar: <= 1.5); pin's total with image loading: %.1f s" % (compute / t["total_s"], total))
PY
