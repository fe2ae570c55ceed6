#!/usr/bin/env bash
# pin-bench-gpu, built for the CPU emulation of CUDA, at batch 1: every stage that bench/gpu_check.sh
# times on a lent GPU must run and print its JSON line (no "error"), and the vector-bf16
# configuration must reach the kernels it exists for. The times themselves mean nothing here, so
# the configurations run without the untimed warm-up before each timing (--no-warm-up: half the
# time; the one-part run below keeps it). Bad arguments exit 2 with a message.
set -euo pipefail
bench=${1:?usage: bench_gpu_check.sh PATH_TO_PIN_BENCH_GPU_EMULATED}
fail() { echo "FAIL: $*" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

for config in generic-fp32 vector-bf16 gemm-bf16; do
  "$bench" --batches 1 --iters 1 --no-warm-up --config $config > "$out/$config.txt" 2>&1 || { cat "$out/$config.txt"; fail "pin-bench-gpu --config $config"; }
done
# One part of a configuration alone (gpu_check.sh runs the fast one's parts as separate processes).
"$bench" --batches 1 --iters 1 --config generic-fp32 --parts defense > "$out/part.txt" 2>&1 || { cat "$out/part.txt"; fail "--parts defense"; }
python3 - "$out" <<'PY' || fail "pin-bench-gpu JSON lines"
import json, sys
out = sys.argv[1]
def lines(config):
    return [json.loads(l) for l in open(f"{out}/{config}.txt") if l.startswith("{")]
for config in ("generic-fp32", "vector-bf16"):
    js = lines(config)
    errors = [j for j in js if "error" in j]
    assert not errors, errors
    assert "device" in js[0], js[0]
    layers = [j for j in js if "layer" in j]
    assert len(layers) == 9, [j["layer"] for j in layers]  # 7 convolutions, 2 transposed
    for j in layers:  # TFLOP/s print as 0.00 at the emulation's speed
        assert j["forward_ms"] > 0 and all(j[k] >= 0 for k in ("forward_tflops", "backward_input_tflops", "backward_weight_tflops")), j
    # bfloat16 activations and weights (the asynchronous-copy kernel): every layer with 32k input
    # channels in the vector-bf16 configuration (all but the stem), none elsewhere.
    timed = [j["layer"] for j in layers if "forward_bf16_async_ms" in j]
    assert len(timed) == (8 if config == "vector-bf16" else 0), timed
    assert all(j["forward_bf16_async_ms"] > 0 for j in layers if "forward_bf16_async_ms" in j), layers
    # and the weight gradients from bfloat16 x and dy: the same layers but the transposed ones.
    timed = [j["layer"] for j in layers if "backward_weight_bf16_async_ms" in j]
    assert len(timed) == (6 if config == "vector-bf16" else 0) and not any("convT" in t for t in timed), timed
    assert all(j["backward_weight_bf16_async_ms"] > 0 for j in layers if "backward_weight_bf16_async_ms" in j), layers
    # and the forward on the warpgroup-MMA kernel (the emulation runs it as an H200 would): the layers
    # with 64k input channels, here the same as the asynchronous-copy kernel's, with both pipelines and L1 caching,
    # and warp-specialized (cooperative and ping-pong) with L1 caching, also within 196 and 164 KiB of
    # shared memory a block (fewer stages, more L1) and storing C from the registers.
    for key in ("forward_bf16_wgmma_ms", "forward_bf16_wgmma_inflight_ms", "forward_bf16_wgmma_l1_ms", "forward_bf16_wgmma_ws_l1_ms",
                "forward_bf16_wgmma_pingpong_l1_ms", "forward_bf16_wgmma_ws_l1_smem196_ms", "forward_bf16_wgmma_ws_l1_smem164_ms",
                "forward_bf16_wgmma_pingpong_l1_smem196_ms", "forward_bf16_wgmma_pingpong_l1_smem164_ms", "forward_bf16_wgmma_ws_l1_direct_ms",
                "forward_bf16_wgmma_pingpong_l1_direct_ms", "forward_bf16_wgmma_ws_tma_ms", "forward_bf16_wgmma_pingpong_tma_ms",
                "forward_bf16_wgmma_ws_wide_ms", "forward_bf16_wgmma_pingpong_wide_ms"):
        timed = [j["layer"] for j in layers if key in j]
        assert timed == ([j["layer"] for j in layers if "forward_bf16_async_ms" in j] if config == "vector-bf16" else []), (key, timed)
    # and the input gradient from a bfloat16 dy, on the asynchronous-copy and the warpgroup-MMA
    # kernels: the weight gradient's layers (every output channel count there a multiple of 64).
    # And with the gathered copies cached in L1 (ops.cuh GatherCaching): the forward pass and the
    # weight gradient on the asynchronous-copy kernel (above, forward_bf16_wgmma_l1 on wgmma).
    # And the weight gradient on the warpgroup-MMA kernel, with both pipelines: the same layers (the
    # input gradient also warp-specialized, both forms).
    for key in ("backward_input_bf16_async_ms", "backward_input_bf16_wgmma_ms", "backward_input_bf16_wgmma_ws_ms",
                "backward_input_bf16_wgmma_pingpong_ms", "backward_weight_bf16_async_l1_ms", "backward_weight_bf16_wgmma_ms",
                "backward_weight_bf16_wgmma_inflight_ms"):
        timed = [j["layer"] for j in layers if key in j]
        assert timed == [j["layer"] for j in layers if "backward_weight_bf16_async_ms" in j], (key, timed)
        assert all(j[key] > 0 for j in layers if key in j), (key, layers)
    timed = [j["layer"] for j in layers if "forward_bf16_async_l1_ms" in j]
    assert timed == [j["layer"] for j in layers if "backward_weight_bf16_async_ms" in j], timed  # the 3 x 3 convolutions
    stages = {j["stage"]: j for j in js if "stage" in j}
    for stage in ("defense_forward", "training_step"):
        assert stages[stage]["ms"] > 0 and stages[stage]["images_per_second"] >= 0 and stages[stage]["batch"] == 1, stages.get(stage)
    assert stages["training_step_profile"]["total_ms"] > 0 and stages["training_step_profile"]["ops_ms"], stages["training_step_profile"]
    # The defense forward's profile by kind of layer: every part of the network is in it, and the
    # parts' times add up to no more than the whole forward's.
    prof = stages["defense_forward_profile"]
    kinds = {"dae conv, 1 input channel", "dae conv, 1 output channel", "dae conv 3x3/1", "dae conv 3x3/2", "dae transposed conv 3x3/2",
             "esn conv, 1 input channel", "esn conv 3x3/1", "esn conv 3x3/2", "esn conv 1x1 (shortcut)", "head (flatten, fc1, fc2)",
             "masks", "projection"}
    assert set(prof["ops_ms"]) == kinds, sorted(prof["ops_ms"])
    assert 0 < sum(prof["ops_ms"].values()) <= prof["total_ms"] * 1.001, prof
    launches = [j["gemm_launches"] for j in js if "gemm_launches" in j]
    assert len(launches) == 1, launches
    # Beside the launches, their arithmetic by kernel (2 M N K, GFLOP): a kernel has some exactly
    # when it was launched; the total is every kernel's but one_input_bands', async_cols128's, wgmma_tma's, wgmma_wide's and
    # wgmma_split's (parts of one_input's, async's, wgmma's).
    gflop, total = [(j["gemm_gflop"], j["gemm_gflop_total"]) for j in js if "gemm_launches" in j][0]
    assert set(gflop) == set(launches[0]) and all((gflop[k] > 0) == (launches[0][k] > 0) for k in gflop), (gflop, launches)
    assert total > 0 and abs(total - (sum(gflop.values()) - gflop["one_input_bands"] - gflop["async_cols128"] - gflop["wgmma_tma"] - gflop["wgmma_wide"] - gflop["wgmma_split"])) <= 1e-5 * total, (gflop, total)
    # The defense also with bfloat16 activations, with both tiles of the asynchronous-copy kernel and
    # the warpgroup-MMA kernel (both pipelines), and the training step with the 256 x 128 tile and the
    # warpgroup-MMA kernel (both pipelines; ops.cuh AsyncTileShape): the vector-bf16 configuration only.
    fast = ("defense_forward_bf16_storage", "defense_forward_bf16_storage_cols128", "defense_forward_bf16_storage_wgmma",
            "defense_forward_bf16_storage_wgmma_inflight", "defense_forward_bf16_storage_l1", "defense_forward_bf16_storage_wgmma_l1",
            "training_step_cols128", "training_step_wgmma", "training_step_wgmma_inflight", "training_step_wgmma_l1",
            "training_step_bf16_storage", "training_step_bf16_storage_wgmma_l1", "defense_forward_bf16_storage_wgmma_ws_l1",
            "training_step_bf16_storage_wgmma_ws_l1", "defense_forward_bf16_storage_wgmma_l1_profile",
            "training_step_bf16_storage_wgmma_l1_profile", "defense_forward_bf16_storage_wgmma_ws_l1_profile",
            "training_step_bf16_storage_wgmma_ws_l1_profile", "defense_forward_bf16_storage_wgmma_pingpong_l1",
            "training_step_bf16_storage_wgmma_pingpong_l1", "defense_forward_bf16_storage_wgmma_pingpong_l1_profile",
            "training_step_bf16_storage_wgmma_pingpong_l1_profile", "defense_forward_bf16_storage_wgmma_ws_l1_smem196",
            "defense_forward_bf16_storage_wgmma_pingpong_l1_smem196", "defense_forward_bf16_storage_wgmma_pingpong_l1_smem164",
            "defense_forward_bf16_storage_wgmma_ws_l1_direct", "defense_forward_bf16_storage_wgmma_pingpong_l1_direct",
            "defense_forward_bf16_storage_wgmma_ws_tma", "defense_forward_bf16_storage_wgmma_pingpong_tma",
            "training_step_bf16_storage_wgmma_ws_tma", "training_step_bf16_storage_wgmma_pingpong_tma",
            "defense_forward_bf16_storage_wgmma_ws_tma_profile", "training_step_bf16_storage_wgmma_pingpong_tma_profile",
            "defense_forward_bf16_storage_wgmma_ws_wide", "defense_forward_bf16_storage_wgmma_pingpong_wide",
            "defense_forward_bf16_storage_wgmma_pingpong_wide_profile", "training_step_bf16_storage_wgmma_pingpong_wide",
            "training_step_bf16_storage_wgmma_pingpong_wide_profile")
    if config == "vector-bf16":
        for stage in fast:
            assert stages[stage]["ms" if "profile" not in stage else "total_ms"] > 0 and stages[stage]["batch"] == 1, stages.get(stage)
    else:
        assert not any(stage in stages for stage in fast), stages
    assert "gemm_bf16" not in stages, stages
    if config == "vector-bf16":  # the wide, asynchronous-copy (both tiles), warpgroup-MMA (also its wide and split-column tiles) and both per-pixel kernels reached
        assert all(launches[0][k] > 0 for k in ("wide", "async", "async_cols128", "wgmma", "wgmma_tma", "wgmma_wide", "wgmma_split", "one_output",
                                                 "one_input", "one_input_bands")), launches
        x128 = [j["layer"] for j in layers if "forward_bf16_async128_ms" in j]  # layers with 128k output channels
        assert x128 == [j["layer"] for j in layers if "backward_weight_bf16_async128_ms" in j or j["layer"] == "convT 256->256 s2 @14"], x128
        assert len(x128) == 5, x128
    else:  # the generic fp32 configuration runs every GEMM on the fp32 kernel
        assert launches[0]["fp32"] > 0 and all(launches[0][k] == 0 for k in ("tensor_core", "wide", "one_output", "one_input", "async", "wgmma")), launches
# The bfloat16 GEMMs alone (--config gemm-bf16): the warpgroup-MMA probe (cuda/wgmma_gemm.cuh), the
# asynchronous-copy kernel with both tiles and the warpgroup-MMA convolution on the same GEMM (a 128
# cube at batch 1), the probe and the convolution also with one slice's MMAs in flight and
# warp-specialized, cooperative and ping-pong (ops.cuh WgmmaPipeline), the probe's warp-specialized
# forms also fed by tensor copies (WgmmaLoads::TensorCopies) and ws on the wide tiles (WgmmaMmaN; at
# N 128 not wide: that is the 8192 cube's on a GPU), each within 1e-5 of the probe's result; nothing else.
js = lines("gemm-bf16")
gemms = {j["kernel"]: j for j in js if j.get("stage") == "gemm_bf16"}
assert sorted(gemms) == ["async128", "async64", "wgmma", "wgmma_conv", "wgmma_conv_inflight", "wgmma_conv_pingpong", "wgmma_conv_pingpong_tma",
                        "wgmma_conv_ws", "wgmma_conv_ws_tma", "wgmma_conv_ws_wide", "wgmma_inflight", "wgmma_pingpong", "wgmma_pingpong_tma",
                        "wgmma_ws", "wgmma_ws_tma", "wgmma_ws_wide"], js
assert all("error" not in j and j["ms"] > 0 and j["k"] == 128 for j in gemms.values()), gemms
assert all(gemms[k]["on_async_kernel"] and gemms[k]["max_rel_diff_vs_wgmma"] <= 1e-5 for k in ("async64", "async128")), gemms
assert all(gemms[k]["on_wgmma_kernel"] and gemms[k]["max_rel_diff_vs_wgmma"] <= 1e-5 for k in ("wgmma_conv", "wgmma_conv_inflight", "wgmma_conv_ws",
                                                                                          "wgmma_conv_pingpong", "wgmma_conv_ws_tma",
                                                                                          "wgmma_conv_pingpong_tma", "wgmma_conv_ws_wide")), gemms
# The 1 x 1 convolution's 128 output columns fit a 128-row tile (ws), not ping-pong's 64 rows.
assert [k for k in gemms if gemms[k].get("by_tensor_copies")] == ["wgmma_conv_ws_tma", "wgmma_conv_ws_wide"], gemms
assert not any(gemms[k].get("on_wide_tile") for k in gemms), gemms
assert all(gemms[k]["max_rel_diff_vs_wgmma"] <= 1e-5 for k in ("wgmma_inflight", "wgmma_ws", "wgmma_pingpong", "wgmma_ws_tma",
                                                                  "wgmma_pingpong_tma", "wgmma_ws_wide")), gemms
assert not any("layer" in j or j.get("stage") not in (None, "gemm_bf16") for j in js), js
samplers = sorted(j["sampler"] for j in lines("generic-fp32") if j.get("stage") == "sample_masks")
assert samplers == ["curand", "pin"], samplers
# --parts defense: the whole-network defense forward (and its profile) and nothing else of the
# configuration (the configuration-independent stages before it stay: the mask samplers).
js = lines("part")
assert [j["stage"] for j in js if j.get("stage", "").startswith(("defense", "training"))] == ["defense_forward", "defense_forward_profile"], js
assert not any("layer" in j or "error" in j for j in js), js
assert [j["parts"] for j in js if "gemm_launches" in j] == ["defense"], js
assert all(j["parts"] == "layers,defense,training" for j in lines("vector-bf16") if "gemm_launches" in j)
PY
grep -q "defense forward" "$out/vector-bf16.txt" || fail "no table at the end of the output"
# bench/rank_stages.py (gpu_check.sh --quick ends with it) ranks the timed variants of each kind.
python3 "$(dirname "$0")/../../bench/rank_stages.py" "$out/vector-bf16.txt" --batch 1 > "$out/rank.txt" || fail "rank_stages.py"
grep -q "^fastest defense at batch 1 (images/s): defense_forward" "$out/rank.txt" &&
  grep -q "^fastest training at batch 1 (images/s): training_step" "$out/rank.txt" || { cat "$out/rank.txt"; fail "rank_stages.py ranked nothing"; }
set +e
"$bench" --config no-such-config > "$out/bad.txt" 2>&1; rc=$?
set -e
[ $rc -eq 2 ] && grep -q "unknown --config" "$out/bad.txt" || fail "an unknown --config exits $rc, not 2 with a message"
set +e
"$bench" --config generic-fp32 --parts defense,everything > "$out/bad.txt" 2>&1; rc=$?
set -e
[ $rc -eq 2 ] && grep -q "unknown part 'everything'" "$out/bad.txt" || fail "an unknown --parts exits $rc, not 2 with a message"
set +e
"$bench" --iters 0 > "$out/bad.txt" 2>&1; rc=$?
set -e
[ $rc -eq 2 ] && grep -q "iters must be a positive" "$out/bad.txt" || fail "--iters 0 exits $rc, not 2 with a message"
"$bench" --help | grep -q "^usage: pin-bench-gpu" || fail "--help"
# --no-tma (gpu_check.sh passes it when the [cuda][tma] tests fail): the GEMMs without the tensor
# copies' timings, the others all there.
"$bench" --batches 1 --iters 1 --no-warm-up --config gemm-bf16 --no-tma > "$out/no-tma.txt" 2>&1 || { cat "$out/no-tma.txt"; fail "--no-tma"; }
python3 - "$out/no-tma.txt" <<'PY' || fail "--no-tma left tensor-copy timings in, or others out"
import json, sys
kernels = sorted(json.loads(l)["kernel"] for l in open(sys.argv[1]) if l.startswith('{"stage": "gemm_bf16"'))
assert kernels == ["async128", "async64", "wgmma", "wgmma_conv", "wgmma_conv_inflight", "wgmma_conv_pingpong", "wgmma_conv_ws", "wgmma_inflight",
                   "wgmma_pingpong", "wgmma_ws"], kernels
PY
# --no-ws (gpu_check.sh passes it when the [cuda][ws] tests fail): the GEMMs on the pipelines in
# which every warp copies and multiplies, nothing warp-specialized (so no tensor copies, no wide tile).
"$bench" --batches 1 --iters 1 --no-warm-up --config gemm-bf16 --no-ws > "$out/no-ws.txt" 2>&1 || { cat "$out/no-ws.txt"; fail "--no-ws"; }
python3 - "$out/no-ws.txt" <<'PY' || fail "--no-ws left warp-specialized timings in, or others out"
import json, sys
kernels = sorted(json.loads(l)["kernel"] for l in open(sys.argv[1]) if l.startswith('{"stage": "gemm_bf16"'))
assert kernels == ["async128", "async64", "wgmma", "wgmma_conv", "wgmma_conv_inflight", "wgmma_inflight"], kernels
PY
echo "bench_gpu_check.sh: passed"
