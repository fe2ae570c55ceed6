#!/usr/bin/env bash
# bench/gpu_check.sh - the one script for a lent GPU machine (an H200 here): builds the CUDA kernels
# and the GPU tests, runs every CPU-vs-GPU comparison, times the kernels on PIN's layer shapes, the
# whole defense forward and the whole training step at batch 64/256/1024, runs the PyTorch+cuDNN
# peer on the same network (fp32 at 64/256/1024, TF32 at 256 for reference; its training step at
# batch 256), and prints a short table last. Finishes within 8 minutes.
#
#   bench/gpu_check.sh [--quick] [OUT_DIR]   (default: $OUT on the device machine, else /tmp/pin-gpu-check)
#
# --quick (meant to fit about 4 minutes; for a second call after a kernel change): the build, the
# convolution, element-wise, warpgroup-MMA (each pipeline family, tensor copies, wide tiles),
# whole-defense and training tests, the fast
# configuration's defense forward and training step with their profiles, the bfloat16 GEMMs
# (gemm-bf16) and the fast configuration's per-layer timings, as far as the budget goes; no peers,
# no program check, no other configurations.
#
# Debian's header packages (Catch2, nlohmann-json, stb) are not on that machine's image: when a
# folder .devdeps/usr holds copies of them (see docs/gpu.md), CMake is pointed there.
set -uo pipefail
quick=false
[ "${1:-}" = --quick ] && { quick=true; shift; }
out=${1:-${OUT:-/tmp/pin-gpu-check}}
mkdir -p "$out"
cd "$(dirname "$0")/.." || exit 1
export PATH="$PATH:/usr/local/cuda/bin"
log() { echo "== $*" | tee -a "$out/summary.txt"; }
start=$(date +%s)
# Seconds for the next step: at most $1, and never past 450 s from the start (the script must end
# within 8 minutes even when something hangs; later steps then report that they were skipped).
budget() { local left=$(( 450 - ($(date +%s) - start) )); [ "$left" -lt "$1" ] && echo $(( left > 1 ? left : 1 )) || echo "$1"; }
nvidia-smi -L 2>&1 | tee -a "$out/summary.txt"
# The toolchain the figures come from (CI compiles with its own nvcc, which may be newer).
{ echo "toolchain: $(nvcc --version 2>&1 | grep -i release | sed 's/^.*release/nvcc release/'); $(cmake --version 2>&1 | head -1);" \
    "driver $(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1 | head -1)"; } | tee -a "$out/summary.txt"
cmake_args=()
[ -d .devdeps/usr ] && cmake_args=(-DCMAKE_PREFIX_PATH="$PWD/.devdeps/usr")
# Machine code for this GPU alone (90 on an H100 / H200) rather than the default "80;90": the sm_80
# half would never run here and costs the build's cores device time. Where nvidia-smi does not say,
# the default.
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. \r')
archs="80;90 (the default)"
if [[ "$cap" =~ ^[0-9]+$ ]] && [ "$cap" -ge 80 ]; then archs=$cap; cmake_args+=(-DCMAKE_CUDA_ARCHITECTURES="$cap"); fi
log "configure + build for CUDA architectures $archs (gpu_check_programs: pin_tests_cuda, pin-bench-gpu, pin)"
timeout 300 cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DPIN_CUDA=ON -DPIN_BUILD_EXAMPLES=ON "${cmake_args[@]}" \
  > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
timeout 300 cmake --build build-gpu -j "$(nproc)" --target gpu_check_programs >> "$out/build.log" 2>&1 \
  || { grep -E "error" -A3 "$out/build.log" | head -40; exit 1; }
log "built in $(( $(date +%s) - start )) s"

log "GPU tests against the CPU"
# One process per group of tests: a kernel fault (which poisons the CUDA context) in one group
# cannot hide the results of the others.
tests_rc=0
wgmma_flag=()  # --no-wgmma for the timings below when the warpgroup-MMA kernels failed their tests
ws_flag=()     # --no-ws when only the warp-specialized pipelines failed theirs ([ws]; the wait and
               # inflight pipelines, measured on 2026-12-04, keep their timings)
tma_flag=()    # --no-tma when only the tensor copies failed theirs (the other wgmma timings stay)
wide_flag=()   # --no-wide when the wide m64n256k16 tiles (or the tensor copies they are fed by) failed
: > "$out/tests.txt"
tags=(rng conv elementwise pin wgmma ws tma wide defense train)
$quick && tags=(conv elementwise wgmma ws tma wide defense train)
for tag in "${tags[@]}"; do
  echo "---- [cuda][$tag]" >> "$out/tests.txt"
  # The tensor copies and the wide tiles run on the warp-specialized pipelines only: when those
  # failed (or hung) their tests, theirs would too, at up to a minute each of the budget.
  if [ ${#ws_flag[@]} -gt 0 ] && { [ $tag = tma ] || [ $tag = wide ]; }; then
    echo "[cuda][$tag] not run: the warp-specialized pipelines it runs on failed [cuda][ws]" | tee -a "$out/tests.txt" "$out/summary.txt"
    continue
  fi
  timeout "$(budget "$([ $tag = conv ] && echo 150 || echo 60)")" build-gpu/bin/pin_tests_cuda "[cuda][$tag]" -d yes >> "$out/tests.txt" 2>&1 \
    || { tests_rc=1; echo "[cuda][$tag] FAILED"; [ $tag = wgmma ] && wgmma_flag=(--no-wgmma); [ $tag = ws ] && ws_flag=(--no-ws)
         [ $tag = tma ] && tma_flag=(--no-tma); case $tag in tma|wide) wide_flag=(--no-wide) ;; esac; }
  tail -2 "$out/tests.txt" | head -1 | sed "s/^/[cuda][$tag] /" | tee -a "$out/summary.txt"
done
grep -E "^match|failed|FAILED|SKIPPED|differ" "$out/tests.txt" | head -80

# Timings, the most needed first (the 450 s budget skips whatever is left at the end): the
# configuration meant for the speed bars (bf16 with the vector gather: the wide and
# asynchronous-copy kernels, bfloat16 activations), the generic fp32 baseline, the PyTorch peers,
# then the other arithmetics and the row gather.
# bench CONFIG [SECONDS [PARTS]]: one pin-bench-gpu process (at most SECONDS, default 80; PARTS of
# the configuration, default all: layers, defense, training).
bench() {
  local parts=${3:-layers,defense,training}
  timeout "$(budget "${2:-80}")" build-gpu/bin/pin-bench-gpu --batches 64,256,1024 --iters 5 --config "$1" --parts "$parts" \
    "${wgmma_flag[@]}" "${ws_flag[@]}" "${tma_flag[@]}" "${wide_flag[@]}" >> "$out/bench.txt" 2>&1 \
    || echo "{\"config\": \"$1\", \"parts\": \"$parts\", \"error\": \"pin-bench-gpu exited $? (or the budget ran out)\"}" | tee -a "$out/bench.txt"
}
log "defense-forward and training-step timings"
: > "$out/bench.txt"
# The fast configuration's parts each in a process (and time limit) of its own; its per-layer
# timings after the peers, with the diagnostics.
bench vector-bf16 80 defense
bench vector-bf16 80 training
if $quick; then
  bench gemm-bf16 40  # the warpgroup-MMA GEMMs on 8192^3, every pipeline
  bench vector-bf16 60 layers  # each convolution pass on PIN's layer shapes, every wgmma pipeline
  grep -v "^{" "$out/bench.txt"
  grep -E '"stage": "gemm_bf16"' "$out/bench.txt"
  python3 bench/rank_stages.py "$out/bench.txt" | tee -a "$out/summary.txt"  # the variants to choose the defaults from
  log "elapsed $(( $(date +%s) - start )) s; tests exit code $tests_rc (--quick)"
  exit $tests_rc
fi
bench generic-fp32

log "PyTorch + cuDNN peer (same network, random weights)"
: > "$out/torch.jsonl"
for run in "off 64" "off 256" "off 1024" "on 256"; do
  read -r tf32 batch <<< "$run"
  timeout "$(budget 60)" python3 bench/peers/torch_agent.py --device cuda --batch "$batch" --iters 5 --tf32 "$tf32" >> "$out/torch.jsonl" 2>>"$out/torch.err" \
    || echo "{\"error\": \"torch peer failed at batch $batch tf32 $tf32\"}" >> "$out/torch.jsonl"
done
: > "$out/torch_train.jsonl"
for tf32 in off on; do
  timeout "$(budget 60)" python3 bench/peers/torch_train.py --device cuda --batch 256 --masks 30 --iters 3 --tf32 $tf32 >> "$out/torch_train.jsonl" \
    2>>"$out/torch.err" || echo "{\"error\": \"torch training peer failed, tf32 $tf32\"}" >> "$out/torch_train.jsonl"
done

# The pin program end to end: pin defend, pin train (and --resume) and pin eval with --device cuda
# against the CPU, with the defaults and the fast settings (tests/cli/gpu_cli_check.sh, which CI
# runs on the emulation); before the diagnostics below, which only explain the figures, so that the
# budget cannot leave it out. pin eval's part needs the face-api weights (carried in
# weights/face-api; the script says when it skips it).
log "pin --device cuda against the CPU (tests/cli/gpu_cli_check.sh)"
PIN_CLI_CHECK_SKIP_WS=$([ ${#ws_flag[@]} -gt 0 ] && echo 1 || echo 0) \
  timeout "$(budget 120)" bash tests/cli/gpu_cli_check.sh build-gpu/bin/pin /tmp/pin-gpu-cli-check \
  "$PWD/weights/face-api/face_recognition_model-weights_manifest.json" > "$out/cli_gpu.txt" 2>&1
case $? in
  0) ;;
  124) echo "pin --device cuda check: out of time (not a result)" | tee -a "$out/cli_gpu.txt" ;;
  77) echo "pin --device cuda check: skipped, pin found no usable CUDA device (as the GPU tests above say)" | tee -a "$out/cli_gpu.txt" ;;
  *) tests_rc=1 ;;
esac
grep -E "^FAIL|passed|matches|follows|gives|skipped" "$out/cli_gpu.txt" | sed "s/^/[cli] /" | tee -a "$out/summary.txt"

# The wgmma probe (cuda/wgmma_gemm.cuh), the asynchronous-copy kernel and the wgmma convolution (each wgmma with every one of its
# pipelines, ops.cuh WgmmaPipeline) on the same bfloat16 GEMMs,
# in a process of their own, and cuBLAS (through PyTorch) on the square one: this machine's dense
# BF16 rate in practice.
bench gemm-bf16
timeout "$(budget 40)" python3 - >> "$out/bench.txt" 2>>"$out/torch.err" <<'PY' || echo '{"stage": "torch_matmul_bf16", "error": "failed or out of time"}' >> "$out/bench.txt"
import time, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    c = a @ b.t()
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(10):
    c = a @ b.t()
torch.cuda.synchronize()
ms = (time.perf_counter() - t) / 10 * 1e3
print('{"stage": "torch_matmul_bf16", "m": 8192, "n": 8192, "k": 8192, "ms": %.4f, "tflops": %.1f}' % (ms, 2 * 8192**3 / ms / 1e9))
PY

log "per-layer timings of the fast configuration"
bench vector-bf16 60 layers

log "the other arithmetics with the generic gather, and the row gather (GatherMode::Rows)"
for config in generic-tf32 generic-bf16 rows-fp32 rows-tf32; do bench $config; done
grep -v "^{" "$out/bench.txt"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]

def best_by_math_batch(path, keep):
    """The highest images/s per (arithmetic, batch) over the JSON lines of `path` that `keep` accepts
    (for pin: the fastest of the gather modes, ops.cuh GatherMode; all are tested above)."""
    best = {}
    for line in open(path):
        if not line.startswith("{"):
            continue
        j = json.loads(line)
        if "images_per_second" not in j or not keep(j):
            continue
        math = j.get("math") or ("tf32" if j.get("tf32") in ("on", True) else "fp32")
        best[(math, j["batch"])] = max(best.get((math, j["batch"]), 0), j["images_per_second"])
    return best

# Every defense-forward stage is one of pin's ways to run the same forward (storage, tile, pipeline,
# caching), as every training-step stage is of the step: the best of each counts.
ours = best_by_math_batch(out + "/bench.txt", lambda j: j.get("stage", "").startswith("defense_forward"))
torch = best_by_math_batch(out + "/torch.jsonl", lambda j: True)
train = best_by_math_batch(out + "/bench.txt", lambda j: j.get("stage", "").startswith("training_step"))
torch_train = best_by_math_batch(out + "/torch_train.jsonl", lambda j: True)
g = lambda d, m, b: d.get((m, b), 0)
r = lambda a, c: "%.2f" % (a / c) if c else "-"

rows = ["batch   pin fp32   pin tf32   pin bf16 | PyTorch+cuDNN fp32   tf32 | best pin / PyTorch fp32   best pin / PyTorch tf32"]
for b in sorted({k[1] for k in list(ours) + list(torch)}):
    best = max(g(ours, "fp32", b), g(ours, "tf32", b), g(ours, "bf16", b))
    rows.append("%5d %10.0f %10.0f %10.0f | %18.0f %6.0f | %23s %24s" % (b, g(ours, "fp32", b), g(ours, "tf32", b), g(ours, "bf16", b),
                g(torch, "fp32", b), g(torch, "tf32", b), r(best, g(torch, "fp32", b)), r(best, g(torch, "tf32", b))))
open(out + "/table.txt", "w").write("\n".join(rows) + "\n")

rows = ["batch   pin fp32   pin tf32   pin bf16 | PyTorch+cuDNN fp32   tf32   (training step, images/s; bar 3,000)"]
for b in sorted({k[1] for k in list(train) + list(torch_train)}):
    rows.append("%5d %10.0f %10.0f %10.0f | %18.0f %6.0f" % (b, g(train, "fp32", b), g(train, "tf32", b), g(train, "bf16", b),
                g(torch_train, "fp32", b), g(torch_train, "tf32", b)))

def fastest(path, prefix):
    """Per batch, the stage of `prefix` with the most images/s, and its configuration: the settings
    to make the defaults (stage names say storage, tile, pipeline and caching; docs/gpu.md)."""
    best = {}
    for line in open(path):
        if line.startswith("{"):
            j = json.loads(line)
            if j.get("stage", "").startswith(prefix) and "images_per_second" in j and j["images_per_second"] > best.get(j["batch"], (0,))[0]:
                best[j["batch"]] = (j["images_per_second"], "%s-%s %s" % (j.get("gather"), j.get("math"), j["stage"]))
    return ["fastest at batch %d: %s (%.0f images/s)" % (b, best[b][1], best[b][0]) for b in sorted(best)]
rows += fastest(out + "/bench.txt", "training_step")
open(out + "/train_table.txt", "w").write("\n".join(rows) + "\n")
with open(out + "/table.txt", "a") as t:
    t.write("\n".join(fastest(out + "/bench.txt", "defense_forward")) + "\n")
PY
log "elapsed $(( $(date +%s) - start )) s; tests exit code $tests_rc"
echo
echo "Defense forward (DAE x2, ESN, head, masks, projection), images/s:"
cat "$out/table.txt"
echo
echo "Training step (noise, DAE, ESN + head forward and backward, 30 masks, estimator, SGD):"
cat "$out/train_table.txt"
grep -E "^  " "$out/bench.txt"
echo
echo "GEMM launches and GFLOP (2 M N K) by kernel, per configuration:"
grep '"gemm_launches"' "$out/bench.txt"
echo
echo "bfloat16 GEMMs: the warpgroup-MMA probe, the asynchronous-copy kernel and the wgmma convolution (pin), cuBLAS (PyTorch):"
grep -E '"stage": "(gemm_bf16|torch_matmul_bf16)"' "$out/bench.txt"
exit $tests_rc
