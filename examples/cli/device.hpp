// examples/cli/device.hpp - `--device cpu|cuda` for the commands that run a defense (defend, eval).
// With cuda the PIN defense's forward (agent, Bernoulli masks, projection) runs on the GPU through
// a model::Defense accelerator: the weights are copied there once, the masks are the CPU's for the
// same seed, everything else (other defenses, other mask modes, recognizers, attacks) stays on the
// CPU. The --gpu-* settings and GPU tuning (--gpu-tune) here serve pin train too.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cli/options.hpp"
#include "pin/model/defense.hpp"
#if defined(PIN_HAVE_CUDA)
#include "gpu_defense.hpp"
#include "gpu_tuning.hpp"
#include "ops.cuh"
#include "rng.cuh"
#endif

namespace cli {

// The GPU's settings, each only with --device cuda (cuda/ops.cuh):
//   --gpu-math fp32|tf32|bf16   the GEMMs' arithmetic (MathMode); fp32 (the default) matches the CPU
//                               to ~1e-6, tf32 ~1e-3, bf16 ~1e-2
//   --gpu-gather generic|rows|vector  how the convolutions read their gathered operand (GatherMode);
//                               vector with bf16 math runs the wide and asynchronous-copy kernels
//   --gpu-storage fp32|bf16     the defense's activations between convolutions (ActivationStorage)
//   --gpu-tile 64|128|wgmma     the asynchronous-copy kernel's block tile, 256 x 64 or 256 x 128
//                               (AsyncTileShape; the wider where the output channels allow), or
//                               the convolutions' three passes on sm_90a's warpgroup MMA (H100 / H200)
//   --gpu-pipeline wait|inflight|ws|pingpong  with wgmma: wait for each slice's MMAs, leave one
//                               slice's in flight while the next is issued, or a copying warpgroup
//                               feeding two MMA warpgroups through mbarriers, both on each tile (ws)
//                               or on tiles of their own in turn (pingpong) (WgmmaPipeline)
//   --gpu-loads cp-async|tma    with ws / pingpong: the operands by cp.async, or, for the forward
//                               convolutions and stride-1 input gradients, by tensor copies (WgmmaLoads)
//   --gpu-mma-n 128|256         with tma: the warpgroup MMA's N, 256 on the wide tiles where a layer
//                               takes them (WgmmaMmaN)
//   --gpu-gather-cache l2|l1    the gathered activations' asynchronous copies through L2 only, or
//                               L1 too (GatherCaching; the asynchronous-copy and wgmma kernels)
// They are library settings made command-line options so that a GPU's user can run any
// configuration without recompiling. The arithmetic stays fp32 by default (the CPU's results to
// ~1e-6); with --gpu-math bf16 the others default to the configuration the H200 ran fastest, the
// defense forward and the training step alike (docs/gpu.md, 2026-12-04: vector gather, bfloat16
// activations, the warpgroup-MMA tile waiting for each slice, gathered copies through L1).
struct GpuSetting {
    const char* flag;
    std::vector<std::string> values;  // the first is the default
    std::string with_bf16 = {};       // the default with --gpu-math bf16 instead, where not empty
};
inline const std::vector<GpuSetting>& gpu_settings() {
    static const std::vector<GpuSetting> s = {
        {"gpu-math", {"fp32", "tf32", "bf16"}},   {"gpu-gather", {"generic", "rows", "vector"}, "vector"},
        {"gpu-storage", {"fp32", "bf16"}, "bf16"}, {"gpu-tile", {"64", "128", "wgmma"}, "wgmma"},
        {"gpu-pipeline", {"wait", "inflight", "ws", "pingpong"}},   {"gpu-gather-cache", {"l2", "l1"}, "l1"},
        {"gpu-loads", {"cp-async", "tma"}},       {"gpu-mma-n", {"128", "256"}}};
    return s;
}
// gpu_settings()'s entry for --`flag`; a flag not there is a programming error.
inline const GpuSetting& gpu_setting(const std::string& flag) {
    const auto found = std::find_if(gpu_settings().begin(), gpu_settings().end(), [&](const GpuSetting& g) { return flag == g.flag; });
    if (found == gpu_settings().end()) throw std::logic_error("--" + flag + " is not in gpu_settings()");
    return *found;
}
// The value of setting `s` in force: its flag's, else its default (which --gpu-math may set).
inline std::string gpu_setting_value(const Options& o, const GpuSetting& s) {
    const bool bf16 = o.get("gpu-math", "fp32") == "bf16";
    return o.get(s.flag, bf16 && !s.with_bf16.empty() ? s.with_bf16 : s.values[0]);
}
#if defined(PIN_HAVE_CUDA)
// Each setting's enum values, in the order of its flag's values in gpu_settings().
namespace gpu_enums {
namespace pc = pin::cuda;
inline constexpr pc::MathMode math[] = {pc::MathMode::FP32, pc::MathMode::TF32, pc::MathMode::BF16};
inline constexpr pc::GatherMode gather[] = {pc::GatherMode::Generic, pc::GatherMode::Rows, pc::GatherMode::Vector};
inline constexpr pc::ActivationStorage storage[] = {pc::ActivationStorage::FP32, pc::ActivationStorage::BF16};
inline constexpr pc::AsyncTileShape tile[] = {pc::AsyncTileShape::Cols64, pc::AsyncTileShape::Cols128, pc::AsyncTileShape::Wgmma};
inline constexpr pc::WgmmaPipeline pipeline[] = {pc::WgmmaPipeline::WaitEachSlice, pc::WgmmaPipeline::OneSliceInFlight,
                                                 pc::WgmmaPipeline::WarpSpecialized, pc::WgmmaPipeline::PingPong};
inline constexpr pc::GatherCaching caching[] = {pc::GatherCaching::L2, pc::GatherCaching::L1};
inline constexpr pc::WgmmaLoads loads[] = {pc::WgmmaLoads::CpAsync, pc::WgmmaLoads::TensorCopies};
inline constexpr pc::WgmmaMmaN mma_n[] = {pc::WgmmaMmaN::N128, pc::WgmmaMmaN::N256};
}  // namespace gpu_enums
// Each setting's flag and the value that selects `k`'s choice, in gpu_settings()'s order.
inline std::vector<std::pair<std::string, std::string>> gpu_flag_values(const pin::cuda::KernelSettings& k) {
    namespace e = gpu_enums;
    std::vector<std::pair<std::string, std::string>> flags;
    auto add = [&](const char* name, const auto& enums, auto value) {
        const GpuSetting& g = gpu_setting(name);
        const size_t i = static_cast<size_t>(std::find(std::begin(enums), std::end(enums), value) - std::begin(enums));
        if (std::size(enums) != g.values.size() || i >= g.values.size()) throw std::logic_error(std::string("gpu_flag_values: --") + name);
        flags.emplace_back(name, g.values[i]);
    };
    add("gpu-math", e::math, k.math), add("gpu-gather", e::gather, k.gather), add("gpu-storage", e::storage, k.storage);
    add("gpu-tile", e::tile, k.tile), add("gpu-pipeline", e::pipeline, k.pipeline), add("gpu-gather-cache", e::caching, k.caching);
    add("gpu-loads", e::loads, k.loads), add("gpu-mma-n", e::mma_n, k.mma_n);
    return flags;
}
// --gpu-tune-only ID,ID,...: the configurations tuning may try (pin::cuda::all_bf16_candidates' ids);
// all where not given. An unknown or repeated id is a usage error naming the ids.
inline std::vector<std::string> gpu_tune_only(const Options& o) {
    std::vector<std::string> known, wanted;
    for (const pin::cuda::TuningCandidate& c : pin::cuda::all_bf16_candidates()) known.push_back(c.id);
    if (!o.has("gpu-tune-only")) return known;
    const std::string list = o.get("gpu-tune-only", "");
    std::string ids;
    for (const std::string& id : known) ids += (ids.empty() ? "" : ", ") + id;
    for (const std::string& id : comma_items("gpu-tune-only", list)) {
        if (std::find(known.begin(), known.end(), id) == known.end())
            fail_usage("--gpu-tune-only: no configuration '" + id + "' (the ids: " + ids + ")");
        if (std::find(wanted.begin(), wanted.end(), id) != wanted.end()) fail_usage("--gpu-tune-only names '" + id + "' twice");
        wanted.push_back(id);
    }
    return wanted;
}
// The flags that select `k` ("--gpu-math bf16 --gpu-gather vector ..."), every setting of
// gpu_settings() spelled out, so that a run can repeat a configuration another chose.
inline std::string gpu_flags_of(const pin::cuda::KernelSettings& k) {
    std::string line;
    for (const auto& [flag, value] : gpu_flag_values(k)) line += (line.empty() ? "--" : " --") + flag + " " + value;
    return line;
}
#endif

// Checks every --gpu-* value (a usage error names the flag, the value and the choices) and applies
// them. Only with --device cuda. --gpu-tune's own checks too (GPU tuning: tune_gpu_settings).
inline void apply_gpu_settings(const Options& o, const std::string& device) {
    if (o.has("gpu-tune") || o.has("gpu-tune-repeats") || o.has("gpu-tune-only")) {
        if (device != "cuda") fail_usage("--gpu-tune needs --device cuda");
        if (!o.has("gpu-tune")) fail_usage(std::string("--") + (o.has("gpu-tune-repeats") ? "gpu-tune-repeats" : "gpu-tune-only") + " goes with --gpu-tune");
        (void)int_option(o, "gpu-tune-repeats", 3, 1, 100);  // a bad count fails here, before any work
#if defined(PIN_HAVE_CUDA)
        (void)gpu_tune_only(o);  // and an unknown configuration
#endif
        if (o.get("gpu-math", "fp32") != "bf16")
            fail_usage("--gpu-tune chooses among --gpu-math bf16's configurations: add --gpu-math bf16");
        for (const GpuSetting& s : gpu_settings())
            if (std::string(s.flag) != "gpu-math" && o.has(s.flag))
                fail_usage(std::string("--gpu-tune chooses --") + s.flag + " itself: leave out one or the other");
    }
    for (const GpuSetting& s : gpu_settings()) {
        if (!o.has(s.flag)) continue;
        const std::string v = gpu_setting_value(o, s);
        if (std::find(s.values.begin(), s.values.end(), v) == s.values.end()) {
            std::string choices;
            for (size_t i = 0; i < s.values.size(); ++i) choices += (i == 0 ? "" : i + 1 == s.values.size() ? " or " : ", ") + s.values[i];
            fail_usage(std::string("--") + s.flag + " must be " + choices + ", got '" + v + "'");
        }
        if (device != "cuda") fail_usage(std::string("--") + s.flag + " " + v + " needs --device cuda");
    }
#if defined(PIN_HAVE_CUDA)
    if (device != "cuda") return;
    namespace pc = pin::cuda;
    // A flag's enum value: the one at its value's index in gpu_settings()'s list (checked above);
    // `enums` lists them in that order, as many (a list out of step is a programming error).
    auto choice = [&](const std::string& flag, const auto& enums) {
        const GpuSetting& s = gpu_setting(flag);
        if (std::size(enums) != s.values.size()) throw std::logic_error("apply_gpu_settings: --" + flag + "'s enum list is out of step");
        const std::string v = gpu_setting_value(o, s);
        return enums[static_cast<size_t>(std::find(s.values.begin(), s.values.end(), v) - s.values.begin())];
    };
    namespace e = gpu_enums;
    pc::set_math_mode(choice("gpu-math", e::math));
    pc::set_gather_mode(choice("gpu-gather", e::gather));
    pc::set_activation_storage(choice("gpu-storage", e::storage));
    pc::set_async_tile(choice("gpu-tile", e::tile));
    pc::set_wgmma_pipeline(choice("gpu-pipeline", e::pipeline));
    pc::set_gather_caching(choice("gpu-gather-cache", e::caching));
    pc::set_wgmma_loads(choice("gpu-loads", e::loads));
    pc::set_wgmma_mma_n(choice("gpu-mma-n", e::mma_n));
#endif
}
// "math M gather G storage S tile T pipeline P gather-cache C loads L mma-n N" with the defaults filled in: results depend on them (caches
// key on it, the eval JSON records each).
inline std::string gpu_settings_tag(const Options& o) {
    std::string tag;
    for (const GpuSetting& s : gpu_settings())
        tag += std::string(tag.empty() ? "" : " ") + (s.flag + 4) + " " + gpu_setting_value(o, s);
    return tag;
}

#if defined(PIN_HAVE_CUDA)
// The counts before the run's own work (--gpu-tune's forwards come before it), which the reports
// below leave out; zero unless set.
inline pin::cuda::KernelCounts& gpu_launch_baseline() {
    static pin::cuda::KernelCounts base;
    return base;
}
inline pin::cuda::KernelCounts& gpu_flops_baseline() {
    static pin::cuda::KernelCounts base;
    return base;
}
#endif
// Which GEMM kernels this run's GPU work has reached (pin::cuda::kernel_launches since gpu_launch_baseline), by kernel:
// where a setting does not apply (the warpgroup-MMA kernel off compute capability 9.0, a layer
// shape a kernel does not take) another kernel runs in its place without a word, so defend, train
// and eval with --device cuda report them. Empty without CUDA.
inline std::vector<std::pair<const char*, int64_t>> gpu_gemm_launches() {
#if defined(PIN_HAVE_CUDA)
    return pin::cuda::named_counts(pin::cuda::kernel_launches() - gpu_launch_baseline());
#else
    return {};
#endif
}
// Their arithmetic (pin::cuda::kernel_gemm_flops: 2 M N K per launch), in GFLOP, by kernel in the
// same order: the share a kernel carries is what the run's speed depends on. Empty without CUDA.
inline std::vector<std::pair<const char*, double>> gpu_gemm_gflop() {
    std::vector<std::pair<const char*, double>> gflop;
#if defined(PIN_HAVE_CUDA)
    for (const auto& [kernel, flops] : pin::cuda::named_counts(pin::cuda::kernel_gemm_flops() - gpu_flops_baseline()))
        gflop.emplace_back(kernel, static_cast<double>(flops) * 1e-9);
#endif
    return gflop;
}
// All of it, in GFLOP (pin::cuda::KernelCounts::total: one_input_bands is part of one_input's,
// async_cols128 of async's and wgmma_tma, wgmma_wide and wgmma_split of wgmma's, not beside them, so
// the sum of gpu_gemm_gflop() counts those twice or more). 0 without CUDA.
inline double gpu_gemm_gflop_total() {
#if defined(PIN_HAVE_CUDA)
    return static_cast<double>((pin::cuda::kernel_gemm_flops() - gpu_flops_baseline()).total()) * 1e-9;
#else
    return 0.0;
#endif
}
// Whether this device runs the warpgroup-MMA kernel (--gpu-tile wgmma).
inline bool gpu_runs_wgmma() {
#if defined(PIN_HAVE_CUDA)
    return pin::cuda::wgmma_supported();
#else
    return false;
#endif
}
// "pin COMMAND: GPU GEMM launches by kernel: fp32 0, ..., wgmma 40 (this device runs wgmma)" and
// "pin COMMAND: GPU GEMM GFLOP by kernel: fp32 0.000, ..., wgmma 23.460; total 23.652" on stderr.
inline void report_gpu_gemm_launches(const char* command) {
    std::string line;
    for (const auto& [kernel, count] : gpu_gemm_launches()) line += std::string(line.empty() ? "" : ", ") + kernel + " " + std::to_string(count);
    std::fprintf(stderr, "pin %s: GPU GEMM launches by kernel: %s (this device %s wgmma)\n", command, line.c_str(),
                 gpu_runs_wgmma() ? "runs" : "does not run");
    line.clear();
    for (const auto& [kernel, gflop] : gpu_gemm_gflop()) {
        char number[32];
        std::snprintf(number, sizeof number, "%.3f", gflop);
        line += std::string(line.empty() ? "" : ", ") + kernel + " " + number;
    }
    std::fprintf(stderr, "pin %s: GPU GEMM GFLOP by kernel: %s; total %.3f\n", command, line.c_str(), gpu_gemm_gflop_total());
}

#if defined(PIN_HAVE_CUDA)
// --gpu-tune: runs GPU tuning (cuda/gpu_tuning.hpp) through `tune` - tune_defense or
// tune_training_step on the run's own device copies; `what` names its unit, "forward" or "training
// step" - at `batch`, a line per configuration on stderr as it finishes, applies the fastest that
// agrees with fp32 and writes its flags into `o` (what records the run's settings - eval's cache key
// and JSON - then records the choice); the run's launch reports leave the tuning's work out. False
// (after saying so) where no configuration agrees.
using GpuTuner = std::function<pin::cuda::TuningReport(const std::vector<pin::cuda::TuningCandidate>&, const pin::cuda::TuningOptions&)>;
inline bool tune_gpu_settings(Options& o, int64_t batch, const char* command, const char* what, const GpuTuner& tune) {
    namespace pc = pin::cuda;
    pc::TuningOptions options;
    options.batch = batch;
    options.repeats = static_cast<int>(int_option(o, "gpu-tune-repeats", 3, 1, 100));
    // The configurations this device runs, of those --gpu-tune-only names.
    const std::vector<std::string> only = gpu_tune_only(o);
    std::vector<pc::TuningCandidate> candidates;
    for (const pc::TuningCandidate& c : pc::bf16_candidates())
        if (std::find(only.begin(), only.end(), c.id) != only.end()) candidates.push_back(c);
    if (candidates.empty()) {
        std::fprintf(stderr, "pin %s: --gpu-tune-only: none of its configurations runs on %s (the warpgroup-MMA ones need compute "
                             "capability 9.0)\n", command, pc::device_name().c_str());
        return false;
    }
    // A configuration that never finishes ends the process (the host cannot stop a kernel); the
    // library's message says which, and the --gpu-tune-only list that tunes without it.
    options.caller = std::string("pin ") + command;
    options.only_option = "--gpu-tune-only";
    std::fprintf(stderr, "pin %s: GPU tuning on %s at batch %lld: %zu configuration%s, each checked against the fp32 %s, then "
                         "timed (the best of %d)\n",
                 command, pc::device_name().c_str(), static_cast<long long>(batch), candidates.size(), candidates.size() == 1 ? "" : "s",
                 what, options.repeats);
    options.on_result = [&](const pc::TuningResult& r) {
        if (!r.accepted)
            std::fprintf(stderr, "  %-18s %-38s left out: %s\n", r.candidate.id.c_str(), r.candidate.name.c_str(), r.why.c_str());
        else if (r.target == pc::TuningTarget::DefenseForward)
            std::fprintf(stderr, "  %-18s %-38s %9.3f ms  (p within %.2g of fp32's)\n", r.candidate.id.c_str(), r.candidate.name.c_str(), r.ms,
                         r.p_error);
        else
            std::fprintf(stderr, "  %-18s %-38s %9.3f ms  (gradients within %.2g of fp32's, furthest %s)\n", r.candidate.id.c_str(),
                         r.candidate.name.c_str(), r.ms, r.gradient_error, r.furthest_tensor.c_str());
    };
    const pc::TuningReport report = tune(candidates, options);
    const pc::TuningResult* best = report.best();
    if (!best) {
        std::fprintf(stderr, "pin %s: --gpu-tune: no bfloat16 configuration agreed with the fp32 %s on this GPU; run without "
                             "--gpu-tune (fp32) or report it\n", command, what);
        return false;
    }
    best->candidate.settings.apply();
    for (const auto& [flag, value] : gpu_flag_values(best->candidate.settings)) o.values[flag] = value;
    std::fprintf(stderr, "pin %s: --gpu-tune chose '%s': %.3f ms a %s (the fp32 %s %.3f ms); to choose it without tuning: %s\n", command,
                 best->candidate.name.c_str(), best->ms, what, what, report.fp32_ms, gpu_flags_of(best->candidate.settings).c_str());
    gpu_launch_baseline() = pc::kernel_launches();  // the run's own launches are what report_gpu_gemm_launches names
    gpu_flops_baseline() = pc::kernel_gemm_flops();
    return true;
}
#endif

// Applies --device to `defense`. A bad value or a defense the GPU does not run is a usage error;
// false (after a message saying why) when cuda was asked for and cannot run here. --gpu-tune
// chooses the GPU settings at `tune_batch`, the batch the run's forwards have; the choice's flags
// are then in `o` (tune_gpu_settings).
inline bool apply_device(Options& o, pin::model::Defense& defense, const char* command, int64_t tune_batch) {
    const std::string device = o.get("device", "cpu");
    if (device != "cpu" && device != "cuda") fail_usage("--device must be cpu or cuda, got '" + device + "'");
    apply_gpu_settings(o, device);
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
    // The weights go to the device once: tuning runs on them, then the run.
    auto gpu = std::make_shared<pin::cuda::GpuDefense>(*defense.agent(), *defense.basis());
    if (o.has("gpu-tune") &&
        !tune_gpu_settings(o, tune_batch, command, "forward", [&](const std::vector<pin::cuda::TuningCandidate>& candidates,
                                                                 const pin::cuda::TuningOptions& options) {
            return pin::cuda::tune_defense(*gpu, defense, candidates, options);
        }))
        return false;
    defense.set_accelerator(pin::cuda::make_accelerator(std::move(gpu)));
    return true;
#else
    (void)tune_batch;
    std::fprintf(stderr, "pin %s: --device cuda: this build has no CUDA kernels (nvcc was not found, or PIN_CUDA=OFF)\n",
                 command);
    return false;
#endif
}

}  // namespace cli
