#!/usr/bin/env bash
# compare_torch.sh - the PIN agent forward in pin and in PyTorch, in the same run, and the ratio.
#
#   bench/compare_torch.sh [--batch 16] [--threads 2] [--iters 3] [--defend]
# --defend also runs the pin::Defense pipeline on 1000 faces against PyTorch's on 1008 (slow:
# PyTorch needs about five minutes).
# Needs build/bin/pin-bench (BUILD_DIR to change) and Debian's python3-torch for the peer.
# Writes both JSON results to $BUILD_DIR/bench-forward.json and prints a short table.
set -euo pipefail
batch=16; threads=2; iters=3; defend=0
while [ $# -gt 0 ]; do
  case "$1" in
    --batch) batch=$2; shift ;;
    --threads) threads=$2; shift ;;
    --iters) iters=$2; shift ;;
    --defend) defend=1 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare_torch.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
bench="$build/bin/pin-bench"
[ -x "$bench" ] || { echo "compare_torch.sh: $bench not found: build first (./setup.sh)" >&2; exit 1; }
py=/usr/bin/python3
[ -x "$py" ] || py=python3

echo "== FMA peak"
peak=$("$bench" peak --threads "$threads" --json)
echo "== pin: agent forward (DAE twice + ESN + head + sampling + projection), batch $batch, $threads threads"
ours=$("$bench" forward --batch "$batch" --threads "$threads" --iters "$iters" --json)
echo "== PyTorch: the same network"
if theirs=$(OMP_NUM_THREADS=$threads "$py" bench/peers/torch_agent.py --batch "$batch" --threads "$threads" --iters "$iters"); then
  :
else
  echo "compare_torch.sh: the PyTorch peer did not run ($theirs); install python3-torch" >&2
  theirs='{"error": "pytorch unavailable"}'
fi
if [ "$defend" = 1 ]; then
  echo "== pin: pin::Defense on 1000 faces (the pipeline of pin defend, without image files)"
  ours_defend=$("$bench" defend --faces 1000 --batch "$batch" --threads "$threads" --json)
  echo "== PyTorch: the same pipeline on 1008 faces (63 batches of $batch)"
  # A failed peer prints its own one-line error JSON; replace it, not append to it.
  theirs_defend=$(OMP_NUM_THREADS=$threads "$py" bench/peers/torch_agent.py --batch "$batch" --threads "$threads" --iters 63 2>/dev/null) ||
    theirs_defend='{}'
  "$py" - "$ours_defend" "$theirs_defend" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
line = "defend 1000 faces: pin %.2f images/s" % o["images_per_second"]
if "images_per_second" in t:
    line += ", PyTorch %.2f images/s, ratio %.2fx" % (t["images_per_second"], o["images_per_second"] / t["images_per_second"])
print(line)
PY
fi
"$py" - "$peak" "$ours" "$theirs" "$build/bench-forward.json" <<'PY'
import json, sys
peak, ours, theirs = (json.loads(s) for s in sys.argv[1:4])
out = {"peak": peak, "pin": ours, "pytorch": theirs}
print()
print("%-28s %12s %12s" % ("", "pin", "PyTorch"))
t_ips = theirs.get("images_per_second")
print("%-28s %12.2f %12s" % ("images/s", ours["images_per_second"], "%.2f" % t_ips if t_ips else "-"))
print("%-28s %12.0f %12s" % ("peak RSS (MiB)", ours["peak_rss_mib"],
                              "%.0f" % theirs["peak_rss_mib"] if "peak_rss_mib" in theirs else "-"))
for k in ("dae_ms", "esn_ms", "head_ms", "sample_project_ms"):
    print("%-28s %12.1f %12s" % (k.replace("_ms", " (ms/batch)"), ours["stages"][k],
                                  "%.1f" % theirs["stages"][k] if "stages" in theirs else "-"))
print("%-28s %12.1f" % ("GFLOP/s (direct count)", ours["gflops"]))
print("%-28s %11.1f%%" % ("fraction of FMA peak", 100 * ours["gflops"] / peak["peak_gflops"]))
if t_ips:
    out["speedup_vs_pytorch"] = ours["images_per_second"] / t_ips
    out["memory_ratio_vs_pytorch"] = ours["peak_rss_mib"] / theirs["peak_rss_mib"]
    print("%-28s %11.2fx" % ("speed-up over PyTorch", out["speedup_vs_pytorch"]))
    print("%-28s %11.2fx" % ("peak memory / PyTorch's", out["memory_ratio_vs_pytorch"]))
with open(sys.argv[4], "w") as f:
    json.dump(out, f, indent=1)
print("(written to %s)" % sys.argv[4])
PY
