// examples/cli/device.hpp - `--device cpu|cuda` for the commands that run a defense (defend, eval).
// With cuda the PIN defense's forward (agent, Bernoulli masks, projection) runs on the GPU through
// a model::Defense accelerator: the weights are copied there once, the masks are the CPU's for the
// same seed, everything else (other defenses, other mask modes, recognizers, attacks) stays on the
// CPU.
#pragma once
#include <cstdio>
#include <string>

#include "cli/options.hpp"
#include "pin/model/defense.hpp"
#if defined(PIN_HAVE_CUDA)
#include "gpu_defense.hpp"
#include "ops.cuh"
#include "rng.cuh"
#endif

namespace cli {

// --gpu-math fp32|tf32|bf16: the arithmetic of the GPU's GEMMs (cuda/ops.cuh MathMode). Only with
// --device cuda; fp32 (the default) matches the CPU to ~1e-6, tf32 ~1e-3, bf16 ~1e-2.
inline void apply_gpu_math(const Options& o, const std::string& device) {
    if (!o.has("gpu-math")) return;
    const std::string m = o.get("gpu-math", "fp32");
    if (m != "fp32" && m != "tf32" && m != "bf16") fail_usage("--gpu-math must be fp32, tf32 or bf16, got '" + m + "'");
    if (device != "cuda") fail_usage("--gpu-math " + m + " needs --device cuda");
#if defined(PIN_HAVE_CUDA)
    pin::cuda::set_math_mode(m == "bf16" ? pin::cuda::MathMode::BF16 : m == "tf32" ? pin::cuda::MathMode::TF32 : pin::cuda::MathMode::FP32);
#endif
}

// Applies --device to `defense`. A bad value or a defense the GPU does not run is a usage error;
// false (after a message saying why) when cuda was asked for and cannot run here.
inline bool apply_device(const Options& o, pin::model::Defense& defense, const char* command) {
    const std::string device = o.get("device", "cpu");
    if (device != "cpu" && device != "cuda") fail_usage("--device must be cpu or cuda, got '" + device + "'");
    apply_gpu_math(o, device);
    if (device == "cpu") return true;
    if (defense.kind() != pin::model::DefenseKind::PIN)
        fail_usage("--device cuda runs the PIN defense (--defense pin); this run's defense runs on the CPU without --device");
    if (defense.sampling() != pin::model::SamplingMode::Bernoulli)
        fail_usage("--device cuda runs the PIN defense with --mode sample; --mode " + o.get("mode", "sample") + " runs on the CPU");
#if defined(PIN_HAVE_CUDA)
    std::string reason;
    if (!pin::cuda::device_available(&reason)) {
        std::fprintf(stderr, "pin %s: --device cuda: no usable CUDA device (%s)\n", command, reason.c_str());
        return false;
    }
    defense.set_accelerator(pin::cuda::make_accelerator(defense));
    return true;
#else
    std::fprintf(stderr, "pin %s: --device cuda: this build has no CUDA kernels (nvcc was not found, or PIN_CUDA=OFF)\n",
                 command);
    return false;
#endif
}

}  // namespace cli
