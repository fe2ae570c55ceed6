#!/usr/bin/env bash
# `--device cuda` end to end: pin defend, pin train (and --resume) and pin eval on the GPU against
# the same program on the CPU, with the default settings (fp32) and the fast ones (bfloat16
# operands and activations, the vector gather; the 256 x 128 tile, and the warpgroup-MMA kernel with
# each pipeline and gather caching). PIN is `pin` on a machine with a GPU (without a usable device
# the script checks that --device cuda says why and exits 1, then skips: 77), or `pin-emulated`,
# the same program on the CPU emulation of CUDA (every CI run: about 16 minutes on 2 cores, so the data are
# tiny: 8 faces, 6 eigenfaces, batch 2, two training steps). The eval part needs the face-api
# weights (MANIFEST; skipped without them). The warp-specialized pipelines' part comes last;
# PIN_CLI_CHECK_SKIP_WS=1 leaves it out (bench/gpu_check.sh, when their [cuda][ws] tests failed).
set -euo pipefail
pin=${1:?usage: gpu_cli_check.sh PATH_TO_PIN WORK_DIR [RECOGNIZER_MANIFEST]}
work=${2:?usage: gpu_cli_check.sh PATH_TO_PIN WORK_DIR [RECOGNIZER_MANIFEST]}
manifest=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
q=(--no-progress --threads 2)
fast=(--gpu-math bf16 --gpu-gather vector --gpu-storage bf16)

# A model of the real architecture from 4 people x 2 faces (CPU).
python3 "$here/make_faces.py" "$work/faces" 4 2 11
"$pin" eigen --data "$work/faces" --split all --count 8 --keep 6 -o "$work/basis.safetensors" >/dev/null 2>&1 || fail "pin eigen"
"$pin" pretrain-dae --data "$work/faces" --split all --batch 2 --steps 1 --out "$work/dae" "${q[@]}" >/dev/null 2>&1 || fail "pin pretrain-dae"
tr=("$pin" train --data "$work/faces" --split all --dae "$work/dae/checkpoint.safetensors" --basis "$work/basis.safetensors"
    --batch 2 --masks 8 --estimator local --lambda 0.01 "${q[@]}")
"${tr[@]}" --out "$work/agent_cpu" --steps 2 >/dev/null 2>&1 || fail "pin train (cpu)"

# pin defend: the GPU's masks and faces are the CPU's (within 2 gray levels) with the defaults.
defend=("$pin" defend --model "$work/agent_cpu" --in "$work/faces/person_00" --seed 5 "${q[@]}")
"${defend[@]}" --out "$work/def_cpu" >/dev/null 2>&1 || fail "pin defend (cpu)"
# pin eval's pairs (with the recognizer's weights only): 2 people.
recognizer=false
if [ -n "$manifest" ] && [ -f "$manifest" ]; then
  recognizer=true
  python3 "$here/make_pairs.py" "$work/data" 2
fi
rc=0
"${defend[@]}" --out "$work/def_gpu" --device cuda >"$work/gpu.log" 2>&1 || rc=$?
if [ $rc != 0 ]; then
  # No usable device: each command says why and exits 1 (eval only with the recognizer's weights).
  says_why() {  # NAME EXIT_CODE: the exit code and gpu.log of `pin NAME --device cuda`
    [ "$2" = 1 ] || { cat "$work/gpu.log"; fail "pin $1 --device cuda without a GPU: exit $2, expected 1"; }
    grep -qE "no usable CUDA device|no CUDA kernels" "$work/gpu.log" || fail "pin $1 --device cuda failed without saying why: $(cat "$work/gpu.log")"
  }
  says_why defend $rc
  rc=0
  "${tr[@]}" --out "$work/agent_gpu" --steps 1 --device cuda >"$work/gpu.log" 2>&1 || rc=$?
  says_why train $rc
  if $recognizer; then
    rc=0
    "$pin" eval "${q[@]}" --recognizer "$manifest" --data "$work/data" --defense pin --model "$work/agent_cpu" --device cuda >"$work/gpu.log" 2>&1 || rc=$?
    says_why eval $rc
  fi
  echo "SKIPPED: $(tail -1 "$work/gpu.log")"
  exit 77
fi
# The kernels a run reached, from its "GPU GEMM launches by kernel: fp32 N, ..., wgmma N (this device
# runs wgmma)" and "GPU GEMM GFLOP by kernel: fp32 X, ..., wgmma X; total X" lines: EXPRESSION over k
# (launches by kernel), w (whether the device runs wgmma) and s(kernel) (that kernel's share of the
# run's total GEMM arithmetic). The total is every kernel's but one_input_bands', async_cols128's, wgmma_tma's,
# wgmma_wide's and wgmma_split's, which are parts of one_input's, async's and wgmma's.
kernels() {  # LOG EXPRESSION
  python3 - "$@" <<'PY'
import re, sys
def report(what):
    line = [l for l in open(sys.argv[1]) if what in l]
    assert len(line) == 1, "no (or more than one) '%s' line in %s" % (what, sys.argv[1])
    return line[0]
launches, gflop = report("GPU GEMM launches by kernel:"), report("GPU GEMM GFLOP by kernel:")
k = {name: int(n) for name, n in re.findall(r"(\w+) (\d+)", launches.split("kernel:")[1])}
by_kernel, total = gflop.split("kernel:")[1].split("; total ")
f = {name: float(x) for name, x in re.findall(r"(\w+) ([0-9.]+)", by_kernel)}
total = float(total)
assert set(k) == set(f) and total > 0, (k, f)
assert abs(total - (sum(f.values()) - f["one_input_bands"] - f["async_cols128"] - f["wgmma_tma"] - f["wgmma_wide"] - f["wgmma_split"])) <= 0.001 * len(f), (total, f)  # each printed to 3 decimals
w = "(this device runs wgmma)" in launches
s = lambda kernel: f[kernel] / total
print("  kernels:", launches.split("kernel:")[1].strip())
print("  GFLOP:", gflop.split("kernel:")[1].strip())
assert eval(sys.argv[2], {"k": k, "w": w, "s": s}), sys.argv[2]
PY
}
# The defaults: the fp32 GEMM only (generic gather, CUDA cores), all of the arithmetic.
generic_only='k["fp32"] > 0 and k["tensor_core"] == k["wide"] == k["one_output"] == k["one_input"] == k["async"] == k["wgmma"] == 0 and s("fp32") == 1'
kernels "$work/gpu.log" "$generic_only" || fail "pin defend --device cuda ran kernels other than the fp32 GEMM"
# Defended faces: as many as the CPU's, each within `levels` gray levels of the CPU's at `share` of
# its pixels or more (1.0: all). With bfloat16 a few mask bits may flip (p within bfloat16 rounding
# of a uniform draw), moving the face by a whole eigenface.
same_faces() {  # DIR LEVELS SHARE
  python3 - "$here" "$work/def_cpu" "$1" "$2" "$3" <<'PY'
import os, sys
sys.path.insert(0, sys.argv[1])
from png_gray import gray
cpu, gpu, levels, share = sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
names = sorted(os.listdir(cpu))
assert names and names == sorted(os.listdir(gpu)), (names, os.listdir(gpu))
for n in names:
    a, b = gray(os.path.join(cpu, n)), gray(os.path.join(gpu, n))
    close = sum(abs(x - y) <= levels for x, y in zip(a, b)) / len(a)
    print("  %s: %.4f of the pixels within %d gray levels of the CPU's, largest difference %d" % (n, close, levels, max(abs(x - y) for x, y in zip(a, b))))
    assert len(a) == len(b) == 112 * 112 and close >= share, n
PY
}
same_faces "$work/def_gpu" 2 1.0 || fail "pin defend --device cuda differs from the CPU"
echo "pin defend --device cuda matches the CPU"
"${defend[@]}" --out "$work/def_gpu_fast" --device cuda "${fast[@]}" --gpu-tile 128 >"$work/gpu.log" 2>&1 \
  || { cat "$work/gpu.log"; fail "pin defend --device cuda ${fast[*]} --gpu-tile 128"; }
# The convolutions carry nearly all of the defense's arithmetic (emulated: 99 %), so the
# asynchronous-copy kernel does; the three 3 x 3 stems (the DAE's, twice, and the ESN's) go by row bands.
kernels "$work/gpu.log" 'k["async_cols128"] > 0 and k["wgmma"] == 0 and k["fp32"] == 0 and s("async") >= 0.95 and k["one_input_bands"] == k["one_input"] > 0' \
  || fail "--gpu-tile 128 did not reach the 256 x 128 tile or the stems' row bands, or left the convolutions' arithmetic elsewhere"
same_faces "$work/def_gpu_fast" 4 0.9 || fail "pin defend --device cuda ${fast[*]} --gpu-tile 128 is far from the CPU"
echo "pin defend --device cuda ${fast[*]} --gpu-tile 128 follows the CPU"
# pin train: the GPU run's log follows the CPU's (same masks; costs, kept counts and gradient norms
# within float rounding), and one step + one resumed gives the two-step run's checkpoint, byte for byte.
"${tr[@]}" --out "$work/agent_gpu" --steps 2 --device cuda >"$work/gpu.log" 2>&1 || { cat "$work/gpu.log"; fail "pin train --device cuda"; }
"${tr[@]}" --out "$work/agent_gpu_resumed" --steps 1 --device cuda >/dev/null 2>&1 || fail "pin train --device cuda (first step)"
"${tr[@]}" --out "$work/agent_gpu_resumed" --steps 1 --resume --device cuda >/dev/null 2>&1 || fail "pin train --device cuda --resume"
cmp -s "$work/agent_gpu/checkpoint.safetensors" "$work/agent_gpu_resumed/checkpoint.safetensors" || fail "the resumed GPU training run differs"
follows() {  # LOG COLUMN:TOLERANCE...
  python3 - "$work/agent_cpu/log.csv" "$@" <<'PY'
import csv, sys
a, b = (list(csv.DictReader(open(f))) for f in sys.argv[1:3])
assert len(a) == len(b) == 2, (len(a), len(b))
for ra, rb in zip(a, b):
    for spec in sys.argv[3:]:
        col, tol = spec.split(":")
        x, y = float(ra[col]), float(rb[col])
        print("  step %s %s: cpu %g gpu %g (relative tolerance %s)" % (ra["step"], col, x, y, tol))
        assert abs(x - y) <= float(tol) * max(abs(x), 1e-12), (ra["step"], col, x, y)
PY
}
kernels "$work/gpu.log" "$generic_only" || fail "pin train --device cuda ran kernels other than the fp32 GEMM"
follows "$work/agent_gpu/log.csv" mean_cost:1e-3 mean_kept:1e-9 grad_norm:1e-2 || fail "pin train --device cuda does not follow the CPU run"
echo "pin train --device cuda follows the CPU run; --resume on the GPU gives the same checkpoint"
# The fast settings on the warpgroup-MMA kernel (elsewhere than an H100 / H200 the 256 x 64 tile
# runs in its place), its other pipeline, L1 caching: p differs by bfloat16's rounding, so a few of
# the 16 masks' bits may flip: costs within 5 %, kept counts within 10 %.
"${tr[@]}" --out "$work/agent_gpu_fast" --steps 2 --device cuda "${fast[@]}" --gpu-tile wgmma --gpu-pipeline inflight --gpu-gather-cache l1 \
  >"$work/gpu.log" 2>&1 || { cat "$work/gpu.log"; fail "pin train --device cuda with the fast settings"; }
# Where the device runs wgmma, every 3 x 3 convolution between bfloat16 operands goes there, none
# to the asynchronous-copy kernel; elsewhere the reverse. Either carries nine tenths of the step's
# arithmetic at least (emulated: 97 %; the 1 x 1 shortcuts' three passes and the head go to the wide kernel).
kernels "$work/gpu.log" '(k["wgmma"] > 0) == w and (k["async"] > 0) == (not w) and s("wgmma" if w else "async") >= 0.9' \
  || fail "--gpu-tile wgmma did not reach the kernels it names"
follows "$work/agent_gpu_fast/log.csv" mean_cost:5e-2 mean_kept:1e-1 || fail "pin train --device cuda (fast settings) does not follow the CPU run"
echo "pin train --device cuda ${fast[*]} --gpu-tile wgmma --gpu-pipeline inflight --gpu-gather-cache l1 follows the CPU run"

# pin eval: the GPU's scores are the CPU's; the JSON records the device and every setting.
# (A function, not indented: its python here-documents end at a line's start.)
eval_checks() {
ev=("$pin" eval "${q[@]}" --recognizer "$manifest" --data "$work/data" --defense pin --model "$work/agent_cpu" --seed 3)
"${ev[@]}" --json "$work/eval_cpu.json" >"$work/eval.log" 2>&1 || { cat "$work/eval.log"; fail "pin eval (cpu)"; }
"${ev[@]}" --json "$work/eval_gpu.json" --device cuda >"$work/eval.log" 2>&1 || { cat "$work/eval.log"; fail "pin eval --device cuda"; }
# --gpu-math bf16 alone: the other settings' defaults follow it (the H200's fastest measured).
"${ev[@]}" --json "$work/eval_gpu_fast.json" --device cuda --gpu-math bf16 >"$work/eval.log" 2>&1 \
  || { cat "$work/eval.log"; fail "pin eval --device cuda with the fast settings"; }
python3 - "$work/eval_cpu.json" "$work/eval_gpu.json" "$work/eval_gpu_fast.json" <<'PY' || fail "pin eval --device cuda differs from the CPU"
import json, sys
cpu, gpu, fast = (json.load(open(p)) for p in sys.argv[1:4])
assert cpu["device"] == "cpu" and gpu["device"] == fast["device"] == "cuda", (cpu["device"], gpu["device"], fast["device"])
keys = ("gpu_math", "gpu_gather", "gpu_storage", "gpu_tile", "gpu_pipeline", "gpu_gather_cache", "gpu_loads", "gpu_mma_n")
assert tuple(gpu[k] for k in keys) == ("fp32", "generic", "fp32", "64", "wait", "l2", "cp-async", "128"), gpu
assert tuple(fast[k] for k in keys) == ("bf16", "vector", "bf16", "wgmma", "wait", "l1", "cp-async", "128"), fast
assert len(cpu["scores"]) == len(gpu["scores"]) == len(fast["scores"]) == 2
k = gpu["gpu_gemm_launches"]
assert k["fp32"] > 0 and k["tensor_core"] == k["wide"] == k["async"] == k["wgmma"] == 0, k
k, w = fast["gpu_gemm_launches"], fast["gpu_runs_wgmma"]
assert (k["wgmma"] > 0) == w and (k["async"] > 0) == (not w) and k["fp32"] == 0, (k, w)
f = fast["gpu_gemm_gflop"]
total = fast["gpu_gemm_gflop_total"]
assert set(f) == set(k) and abs(total - (sum(f.values()) - f["one_input_bands"] - f["async_cols128"] - f["wgmma_tma"] - f["wgmma_wide"] - f["wgmma_split"])) <= 1e-9 * total, (f, total)
assert f[("wgmma" if w else "async")] >= 0.95 * total, (f, w)
for run, tol in ((gpu, 1e-3), (fast, 3e-2)):
    d = max(abs(x - y) for x, y in zip(cpu["scores"], run["scores"]))
    print("  scores (%s): largest difference from the CPU's %.3g (tolerance %g)" % (run["gpu_math"], d, tol))
    assert d < tol, (cpu["scores"], run["scores"])
PY
echo "pin eval --device cuda gives the CPU's scores; the JSON records the settings"
}
if $recognizer; then
  eval_checks
else
  echo "pin eval part skipped: no face-api weights at '${manifest}'; ./setup.sh fetches them"
fi

# Last, so that a fault in them costs none of the checks above: the warp-specialized pipelines
# (ops.cuh WgmmaPipeline::WarpSpecialized, PingPong), not yet run on a GPU when this was written.
# bench/gpu_check.sh sets PIN_CLI_CHECK_SKIP_WS=1 when their own tests ([cuda][ws]) failed.
if [ "${PIN_CLI_CHECK_SKIP_WS:-0}" = 1 ]; then
  echo "gpu cli check passed (the warp-specialized pipelines' part skipped: PIN_CLI_CHECK_SKIP_WS=1, their [cuda][ws] tests failed)"
  exit 0
fi
# The warp-specialized warpgroup-MMA kernel (--gpu-pipeline ws, and its ping-pong form): where the
# device runs wgmma it carries the convolutions (elsewhere the asynchronous-copy kernel does).
for pipeline in ws pingpong; do
  "${defend[@]}" --out "$work/def_gpu_$pipeline" --device cuda "${fast[@]}" --gpu-tile wgmma --gpu-pipeline $pipeline --gpu-gather-cache l1 \
    >"$work/gpu.log" 2>&1 || { cat "$work/gpu.log"; fail "pin defend --device cuda ${fast[*]} --gpu-tile wgmma --gpu-pipeline $pipeline"; }
  kernels "$work/gpu.log" '(k["wgmma"] > 0) == w and s("wgmma" if w else "async") >= 0.95' \
    || fail "--gpu-pipeline $pipeline did not reach the kernel it names, or left the convolutions' arithmetic elsewhere"
  same_faces "$work/def_gpu_$pipeline" 4 0.9 || fail "pin defend --device cuda ${fast[*]} --gpu-pipeline $pipeline is far from the CPU"
  echo "pin defend --device cuda ${fast[*]} --gpu-tile wgmma --gpu-pipeline $pipeline --gpu-gather-cache l1 follows the CPU"
done
# And ping-pong with the convolutions fed by tensor copies (--gpu-loads tma), the 64-channel layers
# on the wide tile (--gpu-mma-n 256): where the device runs wgmma, every one of its launches is fed
# by tensor copies (k["wgmma_tma"]: the strided transposed layers' sub-pixel classes too), some of
# them wide (k["wgmma_wide"]) and not all (the 128-channel layers' tile stays 64 x 128).
"${defend[@]}" --out "$work/def_gpu_tma" --device cuda "${fast[@]}" --gpu-tile wgmma --gpu-pipeline pingpong --gpu-gather-cache l1 --gpu-loads tma \
  --gpu-mma-n 256 >"$work/gpu.log" 2>&1 || { cat "$work/gpu.log"; fail "pin defend --device cuda ${fast[*]} --gpu-pipeline pingpong --gpu-loads tma --gpu-mma-n 256"; }
kernels "$work/gpu.log" '(k["wgmma"] > 0) == w and (k["wgmma"] == k["wgmma_tma"] > k["wgmma_wide"] > 0) == w and s("wgmma" if w else "async") >= 0.95' \
  || fail "--gpu-loads tma --gpu-mma-n 256 did not feed every wgmma launch by tensor copies and some by the wide tile, or left the convolutions' arithmetic elsewhere"
same_faces "$work/def_gpu_tma" 4 0.9 || fail "pin defend --device cuda ${fast[*]} --gpu-loads tma --gpu-mma-n 256 is far from the CPU"
echo "pin defend --device cuda ${fast[*]} --gpu-tile wgmma --gpu-pipeline pingpong --gpu-loads tma --gpu-mma-n 256 follows the CPU"
# --gpu-tune: every bfloat16 configuration the device runs (11 where it runs wgmma, else 3), each
# checked against the fp32 forward (none left out) and timed, the fastest used and named as flags;
# a run with those flags writes the same files byte for byte and reaches the same kernels (the
# launch report leaves the tuning's own forwards out), and both follow the CPU.
"${defend[@]}" --out "$work/def_gpu_tuned" --device cuda --gpu-math bf16 --gpu-tune --gpu-tune-repeats 1 --batch 1 >"$work/gpu.log" 2>&1 \
  || { cat "$work/gpu.log"; fail "pin defend --device cuda --gpu-math bf16 --gpu-tune"; }
cp "$work/gpu.log" "$work/tuned.log"
grep -q "this device runs wgmma" "$work/tuned.log" && configurations=11 || configurations=3
[ "$(grep -c " ms  (p within " "$work/tuned.log")" = $configurations ] && ! grep -q "left out:" "$work/tuned.log" \
  || { cat "$work/tuned.log"; fail "--gpu-tune did not run and pass all $configurations configurations"; }
chosen=$(sed -n 's/.*to choose it without tuning: //p' "$work/tuned.log")
[ -n "$chosen" ] || { cat "$work/tuned.log"; fail "--gpu-tune did not name its choice"; }
# shellcheck disable=SC2086  # the flags, word by word
"${defend[@]}" --out "$work/def_gpu_chosen" --device cuda $chosen --batch 1 >"$work/gpu.log" 2>&1 \
  || { cat "$work/gpu.log"; fail "pin defend --device cuda $chosen"; }
for f in "$work"/def_gpu_tuned/*; do cmp -s "$f" "$work/def_gpu_chosen/$(basename "$f")" || fail "--gpu-tune's run and $chosen differ in $(basename "$f")"; done
[ "$(grep "GPU GEMM launches by kernel:" "$work/tuned.log")" = "$(grep "GPU GEMM launches by kernel:" "$work/gpu.log")" ] \
  || fail "--gpu-tune's run reports other kernel launches than $chosen's: $(grep "GPU GEMM launches" "$work/tuned.log" "$work/gpu.log")"
same_faces "$work/def_gpu_tuned" 4 0.9 || fail "pin defend --device cuda --gpu-tune is far from the CPU"
echo "pin defend --device cuda --gpu-math bf16 --gpu-tune chose $chosen ($configurations configurations checked) and follows the CPU"
# pin eval --gpu-tune: its JSON records the configuration chosen (gpu_tuned, the gpu_* settings
# equal to the printed flags), and a run with those flags gives the same scores, bit for bit.
eval_tune_checks() {
"${ev[@]}" --json "$work/eval_tuned.json" --device cuda --gpu-math bf16 --gpu-tune --gpu-tune-repeats 1 --batch 1 >"$work/eval.log" 2>&1 \
  || { cat "$work/eval.log"; fail "pin eval --device cuda --gpu-math bf16 --gpu-tune"; }
chosen=$(sed -n 's/.*to choose it without tuning: //p' "$work/eval.log")
[ -n "$chosen" ] && [ "$(grep -c " ms  (p within " "$work/eval.log")" = $configurations ] \
  || { cat "$work/eval.log"; fail "pin eval --gpu-tune did not try all $configurations configurations and name its choice"; }
# shellcheck disable=SC2086  # the flags, word by word
"${ev[@]}" --json "$work/eval_chosen.json" --device cuda $chosen --batch 1 >"$work/eval.log" 2>&1 \
  || { cat "$work/eval.log"; fail "pin eval --device cuda $chosen"; }
python3 - "$work/eval_tuned.json" "$work/eval_chosen.json" "$chosen" <<'PY' || fail "pin eval --gpu-tune's JSON does not record its choice, or its run differs from one with the flags it printed"
import json, sys
tuned, chosen = (json.load(open(p)) for p in sys.argv[1:3])
words = sys.argv[3].split()
flags = {words[i][2:].replace("-", "_"): words[i + 1] for i in range(0, len(words), 2)}
assert len(flags) == 8 and all(tuned[k] == v == chosen[k] for k, v in flags.items()), (flags, tuned, chosen)
assert tuned.get("gpu_tuned") is True and "gpu_tuned" not in chosen, (tuned.get("gpu_tuned"), chosen.get("gpu_tuned"))
assert tuned["scores"] == chosen["scores"] and tuned["gpu_gemm_launches"] == chosen["gpu_gemm_launches"], (tuned, chosen)
PY
echo "pin eval --device cuda --gpu-math bf16 --gpu-tune records its choice ($chosen) and scores as a run with those flags"
# Without --batch (32) it tunes at the number of faces the pairs name, the largest batch the run
# defends (one configuration: 80 s emulated).
faces=$(python3 -c 'import sys
lines = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:] if l.strip()]
print(len({(l[0], l[1]) for l in lines} | {(l[0] if len(l) == 3 else l[2], l[-1]) for l in lines}))' "$work/data/pairs.txt")
"${ev[@]}" --json "$work/eval_tuned_faces.json" --device cuda --gpu-math bf16 --gpu-tune --gpu-tune-repeats 1 --gpu-tune-only tile128 \
  >"$work/eval.log" 2>&1 || { cat "$work/eval.log"; fail "pin eval --device cuda --gpu-math bf16 --gpu-tune --gpu-tune-only tile128"; }
grep -q "GPU tuning on .* at batch $faces: 1 configuration," "$work/eval.log" \
  || { cat "$work/eval.log"; fail "pin eval --gpu-tune did not tune at the $faces faces of its pairs"; }
echo "pin eval --gpu-tune tunes at the $faces faces its pairs name (fewer than --batch 32)"
}
if $recognizer; then
  eval_tune_checks
else
  echo "pin eval --gpu-tune part skipped: no face-api weights at '${manifest}'"
fi
# pin train --gpu-tune: one training step of each configuration --gpu-tune-only names (two: every
# one of the eleven is 30-70 s of steps on the emulation; those the device does not run are left
# out), its gradients checked against the fp32 step's (none rejected), the fastest used and named as
# flags; a run with those flags trains the same weights, bit for bit, logs the same numbers and
# reaches the same kernels.
grep -q "this device runs wgmma" "$work/tuned.log" && configurations=2 || configurations=1
"${tr[@]}" --out "$work/agent_tuned" --steps 2 --batch 1 --device cuda --gpu-math bf16 --gpu-tune --gpu-tune-repeats 1 \
  --gpu-tune-only tile64,wgmma-wait >"$work/gpu.log" 2>&1 || { cat "$work/gpu.log"; fail "pin train --device cuda --gpu-math bf16 --gpu-tune"; }
cp "$work/gpu.log" "$work/tuned.log"
chosen=$(sed -n 's/.*to choose it without tuning: //p' "$work/tuned.log")
[ -n "$chosen" ] && [ "$(grep -c " ms  (gradients within " "$work/tuned.log")" = $configurations ] && ! grep -q "left out:" "$work/tuned.log" \
  && grep -q "GPU tuning on .*: $configurations configurations" "$work/tuned.log" \
  || { cat "$work/tuned.log"; fail "pin train --gpu-tune did not pass the $configurations configurations of --gpu-tune-only and name its choice"; }
# shellcheck disable=SC2086  # the flags, word by word
"${tr[@]}" --out "$work/agent_chosen" --steps 2 --batch 1 --device cuda $chosen >"$work/gpu.log" 2>&1 \
  || { cat "$work/gpu.log"; fail "pin train --device cuda $chosen"; }
cmp -s "$work/agent_tuned/agent.safetensors" "$work/agent_chosen/agent.safetensors" || fail "pin train --gpu-tune's weights differ from $chosen's"
python3 - "$work/agent_tuned/log.csv" "$work/agent_chosen/log.csv" <<'PY' || fail "pin train --gpu-tune logs other numbers than $chosen's run"
import csv, sys
a, b = (list(csv.DictReader(open(p))) for p in sys.argv[1:3])
assert len(a) == len(b) == 2, (a, b)
for ra, rb in zip(a, b):
    for k in ra:
        assert k in ("images_per_second", "seconds") or ra[k] == rb[k], (k, ra, rb)
PY
[ "$(grep "GPU GEMM launches by kernel:" "$work/tuned.log")" = "$(grep "GPU GEMM launches by kernel:" "$work/gpu.log")" ] \
  || fail "pin train --gpu-tune's run reports other kernel launches than $chosen's: $(grep "GPU GEMM launches" "$work/tuned.log" "$work/gpu.log")"
echo "pin train --device cuda --gpu-math bf16 --gpu-tune chose $chosen ($configurations configurations checked) and trains as a run with those flags"

echo "gpu cli check passed"
