// tests/cuda_test_support.hpp - what the GPU test files (test_cuda.cpp: the ops; test_cuda_network.cpp:
// the defense, the estimators and the training step) share: uploads and downloads, the per-math-mode
// tolerances and comparisons, the Catch2 generators over the math and gather modes, bfloat16 uploads.
// Only with PIN_HAVE_CUDA (against a GPU, or the CPU emulation of CUDA).
#pragma once
#if defined(PIN_HAVE_CUDA)
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "rng.cuh"

using namespace pin;  // the test files' convention

// Each GEMM test runs three times: CUDA-core FP32, TF32 and BF16 tensor cores (Catch2 sections).
#define PIN_EACH_MATH_MODE()                                                                                   \
    const pin::cuda::MathMode mode =                                                                           \
        GENERATE(pin::cuda::MathMode::FP32, pin::cuda::MathMode::TF32, pin::cuda::MathMode::BF16);             \
    pin::cuda::set_math_mode(mode);                                                                            \
    (void)mode
// The convolution tests also run every way of reading the gathered operand (ops.cuh GatherMode;
// Vector with BF16 is the wide kernel, with FP32 and TF32 it reads as Rows).
#define PIN_EACH_GATHER_MODE()                                                                                 \
    const pin::cuda::GatherMode gather =                                                                       \
        GENERATE(pin::cuda::GatherMode::Generic, pin::cuda::GatherMode::Rows, pin::cuda::GatherMode::Vector);  \
    pin::cuda::set_gather_mode(gather);                                                                        \
    INFO("gather mode " << (gather == pin::cuda::GatherMode::Vector ? "vector" : gather == pin::cuda::GatherMode::Rows ? "rows" : "generic"))
#include "estimator_checks.hpp"
#include "gpu_defense.hpp"
#include "gpu_trainer.hpp"
#include "ops.cuh"
#include "pin/cpu/activations.hpp"
#include "pin/cpu/conv2d.hpp"
#include "pin/cpu/conv_transpose2d.hpp"
#include "pin/cpu/linear.hpp"
#include "pin/cpu/projection.hpp"
#include "pin/model/defense.hpp"
#include "pin/train/estimators.hpp"
#include "pin/train/mask_cost.hpp"
#include "pin/train/noise.hpp"
#include "pin/train/trainer.hpp"

namespace {
// Both tiles of the asynchronous-copy kernel (ops.cuh AsyncTileShape; the 256 x 128 one where N is a
// multiple of 128); the settings before it come back when the test ends.
#define PIN_EACH_ASYNC_TILE()                                                                                  \
    const pin::cuda::KernelSettingsScope async_tile_scope;                                                     \
    const pin::cuda::AsyncTileShape async_shape =                                                              \
        GENERATE(pin::cuda::AsyncTileShape::Cols64, pin::cuda::AsyncTileShape::Cols128);                       \
    pin::cuda::set_async_tile(async_shape);                                                                    \
    INFO("asynchronous-copy tile 256 x " << (async_shape == pin::cuda::AsyncTileShape::Cols128 ? 128 : 64))
// The warpgroup-MMA kernel's pipelines (ops.cuh WgmmaPipeline) in two families with test cases of
// their own: those in which every warp copies and multiplies (WaitEachSlice, OneSliceInFlight; on a
// GPU since 2026-12-04) under the tag [wgmma], and the warp-specialized ones (WarpSpecialized,
// PingPong: a producer warpgroup, mbarriers, a persistent grid; the tensor copies and the wide
// tiles run only there) under [ws]. bench/gpu_check.sh runs the tags as processes of their own and
// leaves out the timings of a family whose tests failed (pin-bench-gpu --no-wgmma, --no-ws), so that
// a fault in the newer family cannot cost the measured one's figures.
enum class WgmmaPipelines { EveryWarpCopies, WarpSpecialized };
inline pin::cuda::WgmmaPipeline wgmma_pipeline_of(WgmmaPipelines family, int i) {
    namespace pc = pin::cuda;
    return family == WgmmaPipelines::EveryWarpCopies ? (i == 0 ? pc::WgmmaPipeline::WaitEachSlice : pc::WgmmaPipeline::OneSliceInFlight)
                                                     : (i == 0 ? pc::WgmmaPipeline::WarpSpecialized : pc::WgmmaPipeline::PingPong);
}
// Each pipeline of `family` (two each); the settings before it come back when the test ends.
#define PIN_EACH_WGMMA_PIPELINE(family)                                                                        \
    const pin::cuda::KernelSettingsScope wgmma_pipeline_scope;                                                 \
    const pin::cuda::WgmmaPipeline wgmma_pipeline_used = wgmma_pipeline_of((family), GENERATE(0, 1));          \
    pin::cuda::set_wgmma_pipeline(wgmma_pipeline_used);                                                        \
    INFO("wgmma pipeline: " << (wgmma_pipeline_used == pin::cuda::WgmmaPipeline::OneSliceInFlight   ? "one slice in flight"  \
                                : wgmma_pipeline_used == pin::cuda::WgmmaPipeline::WarpSpecialized ? "warp-specialized" \
                                : wgmma_pipeline_used == pin::cuda::WgmmaPipeline::PingPong        ? "ping-pong"        \
                                                                                                    : "wait each slice"))
// After PIN_EACH_WGMMA_PIPELINE: the warp-specialized kernels with their own stages and with their
// fewest (2, as a 1 KiB limit gives them: ops.cuh set_wgmma_ws_smem_kib; their mbarriers through
// the most phases per slice), each storing C through shared memory and from the registers
// (WgmmaStores::Direct); the other pipelines once.
#define PIN_EACH_WS_FORM()                                                                                     \
    const int ws_form = GENERATE(0, 1, 2, 3);                                                                  \
    if (ws_form != 0 && !pin::cuda::warp_specialized(wgmma_pipeline_used)) return;                            \
    const int ws_smem_kib = ws_form % 2;                                                                       \
    pin::cuda::set_wgmma_ws_smem_kib(ws_smem_kib);                                                             \
    pin::cuda::set_wgmma_stores(ws_form / 2 ? pin::cuda::WgmmaStores::Direct : pin::cuda::WgmmaStores::ThroughShared); \
    INFO("warp-specialized: " << (ws_smem_kib != 0 ? "the fewest stages (2)" : "the tile's own stages")          \
                              << (ws_form / 2 ? ", C from the registers" : ", C through shared memory"))
// Both, for `family`'s pipelines, operands brought as `loads` says (WgmmaLoads::TensorCopies: the
// warp-specialized pipelines only, the others return), the tensor-copy tiles' MMA N as `mma_n` says.
#define PIN_EACH_WGMMA_FORM_WITH_LOADS(family, loads, mma_n)                                                   \
    PIN_EACH_WGMMA_PIPELINE(family);                                                                           \
    if ((loads) == pin::cuda::WgmmaLoads::TensorCopies && !pin::cuda::warp_specialized(wgmma_pipeline_used)) return; \
    PIN_EACH_WS_FORM();                                                                                        \
    pin::cuda::set_wgmma_loads(loads);                                                                         \
    pin::cuda::set_wgmma_mma_n(mma_n)
// Whether a GEMM with n columns runs on a wide (m64n256k16) tile under these settings (ops_wgmma.cu
// with_tensor_tile: ws where n is a multiple of 256, ping-pong where it is not one of 128), given
// that tensor copies feed it.
inline bool on_wide_tile(int64_t n) {
    namespace pc = pin::cuda;
    if (pc::wgmma_mma_n() != pc::WgmmaMmaN::N256 || pc::wgmma_loads() != pc::WgmmaLoads::TensorCopies) return false;
    if (pc::wgmma_pipeline() == pc::WgmmaPipeline::PingPong) return n % 128 != 0;
    return pc::wgmma_pipeline() == pc::WgmmaPipeline::WarpSpecialized && n % 256 == 0;
}
// The share of a tensor-copy tile's `rows` that an image's Ho x Wo outputs fill: whole images in
// one tile, or tiles of whole output rows (wgmma_gemm.cuh WgmmaTensorConvOperands::row_share).
inline double tile_row_share(int64_t rows, int64_t Ho, int64_t Wo) {
    if (Wo > rows) return 0.0;
    if (Ho * Wo <= rows) return static_cast<double>(rows / (Ho * Wo) * Ho * Wo) / static_cast<double>(rows);
    const int64_t bh = rows / Wo, tiles = (Ho + bh - 1) / bh;
    return static_cast<double>(Ho * Wo) / static_cast<double>(tiles * rows);
}
// The pixels of ws's split-column tile (128 channels; ops_wgmma.cu conv_on_tensor_copies) that a
// convolution with n output channels and Ho x Wo outputs, fed by tensor copies, runs on - 200
// (wide) or 112 - where its rows fill more of it than of 128 rows; 0 where it runs elsewhere.
inline int64_t split_cols_tile_rows(int64_t n, int64_t Ho, int64_t Wo) {
    namespace pc = pin::cuda;
    const int64_t rows = pc::wgmma_mma_n() == pc::WgmmaMmaN::N256 ? 200 : 112;
    const bool on = pc::wgmma_loads() == pc::WgmmaLoads::TensorCopies && pc::wgmma_pipeline() == pc::WgmmaPipeline::WarpSpecialized &&
                    n % 128 == 0 && tile_row_share(rows, Ho, Wo) > tile_row_share(128, Ho, Wo);
    return on ? rows : 0;
}
// The output grids of the GEMMs a transposed gather of Ho x Wo outputs runs (ops_internal.cuh
// launch_transposed_gemm, with GatherMode Rows or Vector): at stride 1 the whole output, else one
// per sub-pixel class (ry, rx) that has taps - output pixels (oh0 + s i, ow0 + s j) with oh0 =
// (ry - p) mod s, taking the taps ry + s a < k - restated here from the transposed convolution's
// arithmetic, not from gather.cuh, so that the dispatch is checked against it.
struct OutputGrid {
    int64_t Ho, Wo;
};
inline std::vector<OutputGrid> transposed_gemm_grids(int64_t Ho, int64_t Wo, int64_t k, int64_t s, int64_t p) {
    if (s == 1) return {OutputGrid{Ho, Wo}};
    std::vector<OutputGrid> grids;
    const auto rows = [&](int64_t r, int64_t n) {
        const int64_t first = ((r - p) % s + s) % s;
        return n > first ? (n - first + s - 1) / s : 0;
    };
    for (int64_t ry = 0; ry < s; ++ry)
        for (int64_t rx = 0; rx < s; ++rx)
            if (ry < k && rx < k && rows(ry, Ho) > 0 && rows(rx, Wo) > 0) grids.push_back(OutputGrid{rows(ry, Ho), rows(rx, Wo)});
    return grids;
}
inline bool gpu_or_skip() {
    std::string reason;
    if (pin::cuda::device_available(&reason)) return true;
    WARN("SKIPPED: no usable CUDA device: " << reason);
    return false;
}
// gpu_or_skip, and also sm_90a's warpgroup MMA (cuda::wgmma_supported).
inline bool wgmma_or_skip() {
    if (!gpu_or_skip()) return false;
    std::string reason;
    if (pin::cuda::wgmma_supported(&reason)) return true;
    WARN("SKIPPED: " << reason);
    return false;
}
inline pin::cuda::DeviceBuffer to_gpu(const Tensor& t) {
    pin::cuda::DeviceBuffer b(static_cast<size_t>(t.numel()));
    b.upload(t.data(), static_cast<size_t>(t.numel()));
    return b;
}
inline pin::cuda::DeviceBuffer to_gpu(const std::vector<float>& v) {
    pin::cuda::DeviceBuffer b(v.size());
    b.upload(v.data(), v.size());
    return b;
}
inline std::vector<float> from_gpu(const pin::cuda::DeviceBuffer& b, int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    b.download(v.data(), v.size());
    return v;
}
// GEMM results: fp32 sums in another order agree to 1e-4 of the output's scale; TF32 rounds every
// operand to 10 mantissa bits (2^-11 relative), which leaves about 1e-3: checked at 5e-3.
// BF16 keeps 8 mantissa bits (2^-9 relative per operand): about 4x TF32's error, checked at 2e-2.
inline double gemm_tolerance() {
    const pin::cuda::MathMode m = pin::cuda::math_mode();
    return m == pin::cuda::MathMode::BF16 ? 2e-2 : m == pin::cuda::MathMode::TF32 ? 5e-3 : 1e-4;
}
inline const char* math_tag() {
    const pin::cuda::MathMode m = pin::cuda::math_mode();
    return m == pin::cuda::MathMode::BF16 ? "[bf16] " : m == pin::cuda::MathMode::TF32 ? "[tf32] " : "[fp32] ";
}
// max |gpu - cpu| <= tol * max |cpu|; tol < 0 means gemm_tolerance().
inline void require_matches(const std::vector<float>& gpu, const float* cpu, int64_t n, std::string what, double tol = -1) {
    if (tol < 0) {
        tol = gemm_tolerance();
        what = math_tag() + what;
    }
    double worst = 0, scale = 0;
    int64_t at = 0;
    for (int64_t i = 0; i < n; ++i) {
        scale = std::max(scale, std::fabs(static_cast<double>(cpu[i])));
        const double d = std::fabs(static_cast<double>(gpu[static_cast<size_t>(i)]) - cpu[i]);
        if (!(d <= worst)) {
            worst = d;
            at = i;
        }
    }
    // Printed on success too: docs/gpu.md records how close each op came, not only that it passed.
    std::printf("match %-40s worst |gpu - cpu| / max|cpu| = %.3g (tolerance %.1g)\n", what.c_str(), scale > 0 ? worst / scale : worst, tol);
    INFO(what << ": worst element " << at << " gpu " << gpu[static_cast<size_t>(at)] << " cpu " << cpu[at] << ", scale " << scale);
    REQUIRE(worst <= tol * scale + 1e-7);
}
// ||gpu - cpu|| / ||cpu|| <= tol (L2 norms, in double): for results whose every element carries
// bfloat16's rounding through a long chain (a training step's gradients), where single elements near
// zero may be off by much of the largest while the tensor as a whole is close.
inline void require_relative_l2(const std::vector<float>& gpu, const float* cpu, int64_t n, const std::string& what, double tol) {
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < n; ++i) {
        const double d = static_cast<double>(gpu[static_cast<size_t>(i)]) - cpu[i];
        diff += d * d;
        norm += static_cast<double>(cpu[i]) * cpu[i];
    }
    const double rel = norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
    std::printf("match %-40s ||gpu - cpu|| / ||cpu|| = %.3g (tolerance %.1g)\n", what.c_str(), rel, tol);
    INFO(what << ": ||gpu - cpu|| " << std::sqrt(diff) << ", ||cpu|| " << std::sqrt(norm));
    REQUIRE(rel <= tol);
}
inline Tensor rnd(const Shape& s, uint64_t seed, Layout l = Layout::NHWC) { return pin::test::random_tensor(s, seed, 1.0f, l); }

struct Bf16Upload {
    pin::cuda::DeviceBuffer buffer;
    Tensor rounded;  // the values the GPU reads, as fp32
};
// t's values rounded to bfloat16 (as the GPU reads them), as fp32.
inline Tensor bf16_rounded(const Tensor& t) {
    Tensor r = t.clone();
    for (int64_t i = 0; i < r.numel(); ++i) r.data()[i] = pin::cuda::to_float(pin::cuda::to_bf16(r.data()[i]));
    return r;
}
inline Bf16Upload to_gpu_bf16(const Tensor& t) {
    const int64_t n = t.numel();
    std::vector<pin::cuda::Bf16> bits(static_cast<size_t>(n + 1), pin::cuda::Bf16{0});
    for (int64_t i = 0; i < n; ++i) bits[static_cast<size_t>(i)] = pin::cuda::to_bf16(t.data()[i]);
    Bf16Upload u{pin::cuda::DeviceBuffer(static_cast<size_t>((n + 1) / 2)), bf16_rounded(t)};
    u.buffer.upload(reinterpret_cast<const float*>(bits.data()), static_cast<size_t>((n + 1) / 2));
    return u;
}
inline std::vector<float> from_gpu_bf16(const pin::cuda::DeviceBuffer& b, int64_t n) {
    std::vector<pin::cuda::Bf16> bits(static_cast<size_t>(n + 1));
    b.download(reinterpret_cast<float*>(bits.data()), static_cast<size_t>((n + 1) / 2));
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = pin::cuda::to_float(bits[static_cast<size_t>(i)]);
    return v;
}
inline pin::cuda::Bf16* bf16_view(const pin::cuda::DeviceBuffer& b) { return reinterpret_cast<pin::cuda::Bf16*>(b.data()); }
}  // namespace
#endif
