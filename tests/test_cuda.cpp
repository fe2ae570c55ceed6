// CUDA side of the RNG: the device draws the same Philox stream as the CPU, bit for bit.
// Skips with a printed reason when pin was built without CUDA or no GPU is present.
#include <cstdio>
#include <array>
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "helpers.hpp"

#if defined(PIN_HAVE_CUDA)
#include "rng.cuh"
#endif

using namespace pin;

TEST_CASE("Philox uniforms and Bernoulli masks are identical on the GPU and the CPU", "[cuda][rng]") {
#if !defined(PIN_HAVE_CUDA)
    WARN("SKIPPED: pin was built without CUDA (PIN_CUDA=OFF or no nvcc)");
    return;
#else
    std::string reason;
    if (!pin::cuda::device_available(&reason)) {
        WARN("SKIPPED: no usable CUDA device: " << reason);
        return;
    }
    const int64_t n = 100003;
    std::vector<float> gpu(n), p(n), gq(n);
    pin::cuda::philox_uniform(77, 3, 1000, n, gpu.data());
    const PhiloxStream rng(77, 3);
    for (int64_t i = 0; i < n; ++i) REQUIRE(gpu[i] == rng.uniform(1000 + static_cast<uint64_t>(i)));
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(i % 101) / 100.0f;
    pin::cuda::philox_bernoulli(77, 4, 0, p.data(), n, gq.data());
    const PhiloxStream rq(77, 4);
    for (int64_t i = 0; i < n; ++i) REQUIRE(gq[i] == rq.bernoulli(static_cast<uint64_t>(i), p[i]));
#endif
}

// ---- every GPU kernel against the CPU engine, on random inputs with odd sizes -----------------------
// [network]: the cases that run the whole 112 x 112 network (in every mode, or from four threads):
// minutes under the CPU emulation of CUDA (pin_tests_cuda_emulated), so the sanitizer run leaves
// them to the Release build's.
#if defined(PIN_HAVE_CUDA)
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
bool gpu_or_skip() {
    std::string reason;
    if (pin::cuda::device_available(&reason)) return true;
    WARN("SKIPPED: no usable CUDA device: " << reason);
    return false;
}
pin::cuda::DeviceBuffer to_gpu(const Tensor& t) {
    pin::cuda::DeviceBuffer b(static_cast<size_t>(t.numel()));
    b.upload(t.data(), static_cast<size_t>(t.numel()));
    return b;
}
pin::cuda::DeviceBuffer to_gpu(const std::vector<float>& v) {
    pin::cuda::DeviceBuffer b(v.size());
    b.upload(v.data(), v.size());
    return b;
}
std::vector<float> from_gpu(const pin::cuda::DeviceBuffer& b, int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    b.download(v.data(), v.size());
    return v;
}
// GEMM results: fp32 sums in another order agree to 1e-4 of the output's scale; TF32 rounds every
// operand to 10 mantissa bits (2^-11 relative), which leaves about 1e-3: checked at 5e-3.
// BF16 keeps 8 mantissa bits (2^-9 relative per operand): about 4x TF32's error, checked at 2e-2.
double gemm_tolerance() {
    const pin::cuda::MathMode m = pin::cuda::math_mode();
    return m == pin::cuda::MathMode::BF16 ? 2e-2 : m == pin::cuda::MathMode::TF32 ? 5e-3 : 1e-4;
}
const char* math_tag() {
    const pin::cuda::MathMode m = pin::cuda::math_mode();
    return m == pin::cuda::MathMode::BF16 ? "[bf16] " : m == pin::cuda::MathMode::TF32 ? "[tf32] " : "[fp32] ";
}
// max |gpu - cpu| <= tol * max |cpu|; tol < 0 means gemm_tolerance().
void require_matches(const std::vector<float>& gpu, const float* cpu, int64_t n, std::string what, double tol = -1) {
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
void require_relative_l2(const std::vector<float>& gpu, const float* cpu, int64_t n, const std::string& what, double tol) {
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
Tensor rnd(const Shape& s, uint64_t seed, Layout l = Layout::NHWC) { return pin::test::random_tensor(s, seed, 1.0f, l); }
}  // namespace

TEST_CASE("GPU convolutions (all three passes) match the CPU", "[cuda][conv]") {
    if (!gpu_or_skip()) return;
    PIN_EACH_MATH_MODE();
    PIN_EACH_GATHER_MODE();
    struct Case {
        int64_t b, h, w, cin, cout, k, s, p;
    };
    for (const Case c : {Case{2, 13, 11, 5, 7, 3, 1, 1}, Case{1, 17, 9, 3, 70, 3, 2, 1}, Case{3, 8, 8, 33, 65, 1, 2, 0},
                         Case{2, 15, 15, 1, 64, 3, 1, 1}, Case{1, 12, 10, 6, 5, 7, 2, 0}, Case{2, 9, 11, 32, 48, 3, 1, 1},
                         Case{1, 14, 13, 64, 64, 3, 2, 1}, Case{3, 10, 7, 64, 100, 3, 1, 1}, Case{1, 9, 8, 96, 32, 1, 1, 0},
                         Case{2, 11, 9, 64, 1, 3, 1, 1}}) {
        const cpu::Conv2dParams p{c.k, c.s, c.p};
        const int64_t Ho = cpu::conv2d_output_size(c.h, p), Wo = cpu::conv2d_output_size(c.w, p);
        const Tensor x = rnd({c.b, c.cin, c.h, c.w}, 1), w = rnd({c.cout, c.cin, c.k, c.k}, 2, Layout::NCHW), dy = rnd({c.b, c.cout, Ho, Wo}, 3);
        std::vector<float> bias(static_cast<size_t>(c.cout)), slope(static_cast<size_t>(c.cout));
        for (int64_t i = 0; i < c.cout; ++i) bias[i] = 0.1f * i - 0.3f, slope[i] = 0.05f * (i % 5);
        Tensor y = Tensor::empty({c.b, c.cout, Ho, Wo}, Layout::NHWC), dx = Tensor::empty(x.shape(), Layout::NHWC),
               dw = Tensor::empty(w.shape());
        cpu::ConvEpilogue ep;
        ep.bias = bias.data();
        ep.prelu_slope = slope.data();
        cpu::conv2d_forward(x, w, y, p, ep);
        cpu::conv2d_backward_input(dy, w, dx, p);
        cpu::conv2d_backward_weight(x, dy, dw, p);
        const pin::cuda::ConvShape s{c.b, c.h, c.w, c.cin, c.cout, c.k, c.s, c.p};
        auto gx = to_gpu(x), gw = to_gpu(w), gdy = to_gpu(dy), gb = to_gpu(bias), gs = to_gpu(slope);
        pin::cuda::DeviceBuffer gy(y.numel()), gdx(dx.numel()), gdw(dw.numel());
        const pin::cuda::KernelLaunches before = pin::cuda::kernel_launches();
        pin::cuda::conv2d_forward(gx.data(), gw.data(), gy.data(), s, gb.data(), gs.data());
        const pin::cuda::KernelLaunches after = pin::cuda::kernel_launches();
        // The forward reaches the kernel its configuration is for (ops.cuh GatherMode).
        const bool special = gather != pin::cuda::GatherMode::Generic;
        if (special && c.cout == 1) REQUIRE(after.one_output > before.one_output);
        if (special && c.cin == 1 && c.cout % 4 == 0) REQUIRE(after.one_input > before.one_input);
        if (gather == pin::cuda::GatherMode::Vector && mode == pin::cuda::MathMode::BF16 && c.cin % 32 == 0 && c.cout % 4 == 0)
            REQUIRE(after.wide > before.wide);
        pin::cuda::conv2d_backward_input(gdy.data(), gw.data(), gdx.data(), s);
        pin::cuda::conv2d_backward_weight(gx.data(), gdy.data(), gdw.data(), s);
        if (gather == pin::cuda::GatherMode::Vector && mode == pin::cuda::MathMode::BF16 && c.cin % 4 == 0 && c.cout % 4 == 0)
            REQUIRE(pin::cuda::kernel_launches().wide > after.wide);  // the weight gradient at least
        const std::string name = "conv k" + std::to_string(c.k) + " s" + std::to_string(c.s) + " " + std::to_string(c.cin) + "->" +
                                 std::to_string(c.cout);
        require_matches(from_gpu(gy, y.numel()), y.data(), y.numel(), name + " forward");
        require_matches(from_gpu(gdx, dx.numel()), dx.data(), dx.numel(), name + " input gradient");
        require_matches(from_gpu(gdw, dw.numel()), dw.data(), dw.numel(), name + " weight gradient");
        {  // Weights packed once beforehand: the same bits as packing inside the call.
            const pin::cuda::DeviceBuffer wp = pin::cuda::pack_conv2d_forward_weight(gw.data(), s);
            pin::cuda::DeviceBuffer gy2(y.numel());
            pin::cuda::conv2d_forward(gx.data(), gw.data(), gy2.data(), s, gb.data(), gs.data(), false, wp.data());
            const std::vector<float> a = from_gpu(gy, y.numel()), b = from_gpu(gy2, y.numel());
            REQUIRE(a == b);
        }
        // Accumulating epilogue: y += conv(x).
        pin::cuda::conv2d_forward(gx.data(), gw.data(), gy.data(), s, gb.data(), gs.data(), true);
        std::vector<float> twice(static_cast<size_t>(y.numel()));
        for (int64_t i = 0; i < y.numel(); ++i) twice[i] = 2 * y.data()[i];
        require_matches(from_gpu(gy, y.numel()), twice.data(), y.numel(), name + " accumulate");
        // And the input gradient's: dx += conv2d_backward_input(dy) (the residual blocks' shortcut).
        pin::cuda::conv2d_backward_input(gdy.data(), gw.data(), gdx.data(), s, true);
        std::vector<float> twice_dx(static_cast<size_t>(dx.numel()));
        for (int64_t i = 0; i < dx.numel(); ++i) twice_dx[i] = 2 * dx.data()[i];
        require_matches(from_gpu(gdx, dx.numel()), twice_dx.data(), dx.numel(), name + " input gradient accumulate");
    }
}

TEST_CASE("GPU transposed convolutions match the CPU", "[cuda][conv]") {
    if (!gpu_or_skip()) return;
    PIN_EACH_MATH_MODE();
    PIN_EACH_GATHER_MODE();
    for (const auto& c : std::vector<std::array<int64_t, 4>>{{2, 7, 5, 6}, {1, 9, 64, 64}, {3, 4, 33, 1}}) {
        const int64_t b = c[0], h = c[1], cin = c[2], cout = c[3];
        const cpu::ConvTranspose2dParams p{3, 2, 1, 1};
        const int64_t Ho = cpu::conv_transpose2d_output_size(h, p), Wo = cpu::conv_transpose2d_output_size(h + 2, p);
        const Tensor x = rnd({b, cin, h, h + 2}, 4), w = rnd({cin, cout, 3, 3}, 5, Layout::NCHW), dy = rnd({b, cout, Ho, Wo}, 6);
        Tensor y = Tensor::empty({b, cout, Ho, Wo}, Layout::NHWC), dx = Tensor::empty(x.shape(), Layout::NHWC), dw = Tensor::empty(w.shape());
        cpu::conv_transpose2d_forward(x, w, y, p);
        cpu::conv_transpose2d_backward_input(dy, w, dx, p);
        cpu::conv_transpose2d_backward_weight(x, dy, dw, p);
        const pin::cuda::ConvShape s{b, h, h + 2, cin, cout, 3, 2, 1, 1};
        auto gx = to_gpu(x), gw = to_gpu(w), gdy = to_gpu(dy);
        pin::cuda::DeviceBuffer gy(y.numel()), gdx(dx.numel()), gdw(dw.numel());
        pin::cuda::conv_transpose2d_forward(gx.data(), gw.data(), gy.data(), s);
        pin::cuda::conv_transpose2d_backward_input(gdy.data(), gw.data(), gdx.data(), s);
        pin::cuda::conv_transpose2d_backward_weight(gx.data(), gdy.data(), gdw.data(), s);
        require_matches(from_gpu(gy, y.numel()), y.data(), y.numel(), "transposed forward");
        require_matches(from_gpu(gdx, dx.numel()), dx.data(), dx.numel(), "transposed input gradient");
        require_matches(from_gpu(gdw, dw.numel()), dw.data(), dw.numel(), "transposed weight gradient");
        const pin::cuda::DeviceBuffer wp = pin::cuda::pack_conv_transpose2d_forward_weight(gw.data(), s);
        pin::cuda::DeviceBuffer gy2(y.numel());
        pin::cuda::conv_transpose2d_forward(gx.data(), gw.data(), gy2.data(), s, nullptr, wp.data());
        REQUIRE(from_gpu(gy, y.numel()) == from_gpu(gy2, y.numel()));  // packed once: the same bits
    }
}

// Activations stored as bfloat16 (ops.cuh ActivationStorage, what GpuDefense does with it): every
// kernel that a forward convolution can run on reads a bfloat16 x and writes a bfloat16 or fp32 y.
// The CPU computes on the same bfloat16 values in fp32, so an fp32 y differs by the GEMM's own error
// only; a bfloat16 y adds its rounding to 8 significant bits (at most 2^-8 of each value: 4e-3 of
// the output's scale on top of the GEMM's tolerance).
namespace {
struct Bf16Upload {
    pin::cuda::DeviceBuffer buffer;
    Tensor rounded;  // the values the GPU reads, as fp32
};
Bf16Upload to_gpu_bf16(const Tensor& t) {
    const int64_t n = t.numel();
    std::vector<pin::cuda::Bf16> bits(static_cast<size_t>(n + 1), pin::cuda::Bf16{0});
    Bf16Upload u{pin::cuda::DeviceBuffer(static_cast<size_t>((n + 1) / 2)), t.clone()};
    for (int64_t i = 0; i < n; ++i) {
        bits[static_cast<size_t>(i)] = pin::cuda::to_bf16(t.data()[i]);
        u.rounded.data()[i] = pin::cuda::to_float(bits[static_cast<size_t>(i)]);
    }
    u.buffer.upload(reinterpret_cast<const float*>(bits.data()), static_cast<size_t>((n + 1) / 2));
    return u;
}
std::vector<float> from_gpu_bf16(const pin::cuda::DeviceBuffer& b, int64_t n) {
    std::vector<pin::cuda::Bf16> bits(static_cast<size_t>(n + 1));
    b.download(reinterpret_cast<float*>(bits.data()), static_cast<size_t>((n + 1) / 2));
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = pin::cuda::to_float(bits[static_cast<size_t>(i)]);
    return v;
}
pin::cuda::Bf16* bf16_view(const pin::cuda::DeviceBuffer& b) { return reinterpret_cast<pin::cuda::Bf16*>(b.data()); }
}  // namespace

TEST_CASE("GPU convolutions read and write bfloat16 activations", "[cuda][conv][bf16]") {
    if (!gpu_or_skip()) return;
    PIN_EACH_MATH_MODE();
    PIN_EACH_GATHER_MODE();
    struct Case {
        int64_t b, h, w, cin, cout, k, s, p;
        bool transposed;
    };
    // Odd sizes (generic and tensor-core kernels), the stem (1 -> 64, fp32 x) and the DAE's last layer
    // (64 -> 1, fp32 y), 64 -> 64 (the wide kernel), a strided transposed one (sub-pixel classes), and
    // with bfloat16 packed weights too the asynchronous-copy kernel (64 -> 64 both ways, 32 -> 72 1 x 1:
    // two column tiles, one K slice; 64 -> 32, whose input gradient reaches it at stride 1).
    for (const Case& c : {Case{2, 9, 7, 5, 7, 3, 1, 1, false}, Case{2, 15, 13, 1, 64, 3, 1, 1, false}, Case{2, 11, 9, 64, 1, 3, 1, 1, false},
                         Case{1, 14, 13, 64, 64, 3, 2, 1, false}, Case{2, 6, 5, 64, 64, 3, 2, 1, true}, Case{1, 5, 7, 33, 20, 3, 2, 1, true},
                         Case{2, 7, 6, 32, 72, 1, 1, 0, false}, Case{2, 8, 9, 64, 32, 3, 1, 1, false}}) {
        const std::string name = std::string(c.transposed ? "transposed " : "conv ") + std::to_string(c.cin) + "->" + std::to_string(c.cout);
        const pin::cuda::ConvShape s{c.b, c.h, c.w, c.cin, c.cout, c.k, c.s, c.p, c.transposed ? 1 : 0};
        const int64_t Ho = c.transposed ? pin::cuda::conv_transpose2d_out(s, c.h) : pin::cuda::conv2d_out(s, c.h);
        const int64_t Wo = c.transposed ? pin::cuda::conv_transpose2d_out(s, c.w) : pin::cuda::conv2d_out(s, c.w);
        const Tensor x = rnd({c.b, c.cin, c.h, c.w}, 31);
        const Tensor w = c.transposed ? rnd({c.cin, c.cout, c.k, c.k}, 32, Layout::NCHW) : rnd({c.cout, c.cin, c.k, c.k}, 32, Layout::NCHW);
        std::vector<float> slope(static_cast<size_t>(c.cout));
        for (int64_t i = 0; i < c.cout; ++i) slope[i] = 0.05f * (i % 5);
        const bool x_bf16 = c.cin != 1;  // the stems read the fp32 face
        const Bf16Upload ux = to_gpu_bf16(x);
        const pin::cuda::DeviceBuffer gx32 = to_gpu(x), gw = to_gpu(w), gs = to_gpu(slope);
        Tensor y = Tensor::empty({c.b, c.cout, Ho, Wo}, Layout::NHWC);
        const Tensor& xin = x_bf16 ? ux.rounded : x;
        pin::cuda::ConstActivations gx = x_bf16 ? pin::cuda::ConstActivations(bf16_view(ux.buffer)) : pin::cuda::ConstActivations(gx32.data());
        auto run = [&](pin::cuda::Activations gy, bool accumulate) {
            if (c.transposed)
                pin::cuda::conv_transpose2d_forward(gx, gw.data(), gy, s, gs.data());
            else
                pin::cuda::conv2d_forward(gx, gw.data(), gy, s, nullptr, gs.data(), accumulate);
        };
        if (c.transposed) {  // the CPU's transposed forward has no epilogue: PReLU here
            cpu::conv_transpose2d_forward(xin, w, y, cpu::ConvTranspose2dParams{c.k, c.s, c.p, 1});
            for (int64_t i = 0; i < y.numel(); ++i) {
                float& v = y.data()[i];
                if (v < 0) v *= slope[static_cast<size_t>(i % c.cout)];
            }
        } else {
            cpu::ConvEpilogue ep;
            ep.prelu_slope = slope.data();
            cpu::conv2d_forward(xin, w, y, cpu::Conv2dParams{c.k, c.s, c.p}, ep);
        }
        const int64_t n = y.numel();
        const double tol = gemm_tolerance() + 4e-3;
        {  // bfloat16 y
            pin::cuda::DeviceBuffer gy(static_cast<size_t>((n + 1) / 2));
            const pin::cuda::KernelLaunches before = pin::cuda::kernel_launches();
            run(bf16_view(gy), false);
            if (gather == pin::cuda::GatherMode::Vector && mode == pin::cuda::MathMode::BF16 && c.cin % 32 == 0 && c.cout % 4 == 0)
                REQUIRE(pin::cuda::kernel_launches().wide > before.wide);
            require_matches(from_gpu_bf16(gy, n), y.data(), n, std::string(math_tag()) + name + " bf16 -> bf16", tol);
            if (!c.transposed) {  // accumulate: y = round(y + conv), twice the values, rounded twice
                run(bf16_view(gy), true);
                std::vector<float> twice(static_cast<size_t>(n));
                for (int64_t i = 0; i < n; ++i) twice[static_cast<size_t>(i)] = 2 * y.data()[i];
                require_matches(from_gpu_bf16(gy, n), twice.data(), n, std::string(math_tag()) + name + " bf16 accumulate", 2 * tol);
            }
        }
        {  // fp32 y: the GEMM's error only
            pin::cuda::DeviceBuffer gy(static_cast<size_t>(n));
            run(gy.data(), false);
            require_matches(from_gpu(gy, n), y.data(), n, name + " bf16 -> fp32");
        }
        if (!c.transposed && c.cout != 1) {
            // The input gradient from a bfloat16 dy (the training step's, in the fast configuration): the
            // asynchronous-copy kernel exactly where it applies; the accumulating form adds to dx.
            const Tensor dy = rnd({c.b, c.cout, Ho, Wo}, 33);
            const Bf16Upload udy = to_gpu_bf16(dy);
            Tensor dx = Tensor::empty(x.shape(), Layout::NHWC);
            cpu::conv2d_backward_input(udy.rounded, w, dx, cpu::Conv2dParams{c.k, c.s, c.p});
            pin::cuda::DeviceBuffer gdx(static_cast<size_t>(dx.numel()));
            const pin::cuda::KernelLaunches before = pin::cuda::kernel_launches();
            pin::cuda::conv2d_backward_input(bf16_view(udy.buffer), gw.data(), gdx.data(), s);
            const bool async = gather == pin::cuda::GatherMode::Vector && mode == pin::cuda::MathMode::BF16 && c.cout % 32 == 0 && c.cin % 8 == 0;
            REQUIRE((pin::cuda::kernel_launches().async > before.async) == async);
            const std::string what = name + " input gradient from bf16 dy" + (async ? " (asynchronous copies)" : "");
            require_matches(from_gpu(gdx, dx.numel()), dx.data(), dx.numel(), what);
            pin::cuda::conv2d_backward_input(bf16_view(udy.buffer), gw.data(), gdx.data(), s, true);
            std::vector<float> twice(static_cast<size_t>(dx.numel()));
            for (int64_t i = 0; i < dx.numel(); ++i) twice[static_cast<size_t>(i)] = 2 * dx.data()[i];
            require_matches(from_gpu(gdx, dx.numel()), twice.data(), dx.numel(), what + " accumulate");
        }
        if (x_bf16) {  // the weights packed once, also as bfloat16: both operands copied as they are where the kernel applies
            const pin::cuda::DeviceBuffer wp =
                c.transposed ? pin::cuda::pack_conv_transpose2d_forward_weight(gw.data(), s) : pin::cuda::pack_conv2d_forward_weight(gw.data(), s);
            const pin::cuda::DeviceBuffer wb = pin::cuda::pack_bf16(wp.data(), c.k * c.k * c.cin * c.cout);
            const pin::cuda::PackedWeight pw(wp.data(), pin::cuda::bf16_data(wb));
            const bool async = gather == pin::cuda::GatherMode::Vector && mode == pin::cuda::MathMode::BF16 && c.cin % 32 == 0 && c.cout % 8 == 0;
            for (const bool y_bf16 : {true, false}) {
                pin::cuda::DeviceBuffer gy(static_cast<size_t>(y_bf16 ? (n + 1) / 2 : n));
                const pin::cuda::Activations out = y_bf16 ? pin::cuda::Activations(bf16_view(gy)) : pin::cuda::Activations(gy.data());
                const pin::cuda::KernelLaunches before = pin::cuda::kernel_launches();
                if (c.transposed)
                    pin::cuda::conv_transpose2d_forward(gx, gw.data(), out, s, gs.data(), pw);
                else
                    pin::cuda::conv2d_forward(gx, gw.data(), out, s, nullptr, gs.data(), false, pw);
                REQUIRE((pin::cuda::kernel_launches().async > before.async) == async);
                const std::string what = name + (async ? " (asynchronous copies)" : "") + " packed bf16 weights";
                if (y_bf16)
                    require_matches(from_gpu_bf16(gy, n), y.data(), n, std::string(math_tag()) + what + " -> bf16", tol);
                else
                    require_matches(from_gpu(gy, n), y.data(), n, what + " -> fp32");
            }
        }
    }
}

TEST_CASE("GPU linear, activations and element-wise ops match the CPU", "[cuda][elementwise]") {
    if (!gpu_or_skip()) return;
    PIN_EACH_MATH_MODE();
    PIN_EACH_GATHER_MODE();
    // Odd sizes, and multiples of 4, which the wide kernel takes (Vector + BF16).
    const std::pair<int64_t, int64_t> io = GENERATE(std::make_pair<int64_t, int64_t>(333, 77), std::make_pair<int64_t, int64_t>(336, 76));
    const int64_t B = 5, in = io.first, out = io.second;
    const Tensor x = rnd({B, in}, 7, Layout::NCHW), w = rnd({out, in}, 8, Layout::NCHW), b = rnd({out}, 9, Layout::NCHW),
                 dy = rnd({B, out}, 10, Layout::NCHW);
    Tensor y = Tensor::empty({B, out}), dx = Tensor::empty({B, in}), dw = Tensor::empty({out, in}), db = Tensor::empty({out});
    cpu::linear_forward(x, w, b, y);
    cpu::linear_backward_input(dy, w, dx);
    cpu::linear_backward_params(x, dy, dw, db);
    auto gx = to_gpu(x), gw = to_gpu(w), gb = to_gpu(b), gdy = to_gpu(dy);
    pin::cuda::DeviceBuffer gy(y.numel()), gdx(dx.numel()), gdw(dw.numel()), gdb(db.numel());
    pin::cuda::linear_forward(gx.data(), gw.data(), gb.data(), gy.data(), B, in, out);
    pin::cuda::linear_backward_input(gdy.data(), gw.data(), gdx.data(), B, in, out);
    pin::cuda::linear_backward_params(gx.data(), gdy.data(), gdw.data(), gdb.data(), B, in, out);
    require_matches(from_gpu(gy, y.numel()), y.data(), y.numel(), "linear forward");
    require_matches(from_gpu(gdx, dx.numel()), dx.data(), dx.numel(), "linear input gradient");
    require_matches(from_gpu(gdw, dw.numel()), dw.data(), dw.numel(), "linear weight gradient");
    require_matches(from_gpu(gdb, db.numel()), db.data(), db.numel(), "linear bias gradient");
    {  // The weight transposed once beforehand: the same bits as transposing inside the call.
        const pin::cuda::DeviceBuffer wt = pin::cuda::pack_linear_forward_weight(gw.data(), in, out);
        pin::cuda::DeviceBuffer gy2(y.numel());
        pin::cuda::linear_forward(gx.data(), gw.data(), gb.data(), gy2.data(), B, in, out, wt.data());
        REQUIRE(from_gpu(gy, y.numel()) == from_gpu(gy2, y.numel()));
    }

    const Tensor a = rnd({3, 13, 7, 5}, 11), g = rnd({3, 13, 7, 5}, 12), slope = rnd({13}, 13, Layout::NCHW);
    const int64_t n = a.numel();
    auto ga = to_gpu(a), gg = to_gpu(g), gsl = to_gpu(slope);
    pin::cuda::DeviceBuffer o1(n), o2(n), o3(13);
    Tensor c1 = Tensor::empty(a.shape(), Layout::NHWC), c2 = Tensor::empty(a.shape(), Layout::NHWC), c3 = Tensor::empty({13});
    cpu::prelu_forward(a, slope, c1);
    pin::cuda::prelu_forward(ga.data(), gsl.data(), o1.data(), n, 13);
    require_matches(from_gpu(o1, n), c1.data(), n, "prelu forward", 1e-6);
    cpu::prelu_backward(a, slope, g, c2, c3);
    pin::cuda::prelu_backward(ga.data(), gsl.data(), gg.data(), o2.data(), o3.data(), n, 13);
    require_matches(from_gpu(o2, n), c2.data(), n, "prelu input gradient", 1e-6);
    require_matches(from_gpu(o3, 13), c3.data(), 13, "prelu slope gradient", 1e-6);
    {
        // The slope gradient's reduction over many row chunks (70,221 rows: chunks of 69 rows, not a
        // multiple of the 8 row lanes) and a channel count off the 32-channel blocks.
        const Tensor a2 = rnd({1, 45, 263, 267}, 14), g2 = rnd({1, 45, 263, 267}, 15), s2 = rnd({45}, 16, Layout::NCHW);
        const int64_t n2 = a2.numel();
        auto ga2 = to_gpu(a2), gg2 = to_gpu(g2), gs2 = to_gpu(s2);
        pin::cuda::DeviceBuffer dx2(n2), ds2(45);
        Tensor cdx = Tensor::empty(a2.shape(), Layout::NHWC), cds = Tensor::empty({45});
        cpu::prelu_backward(a2, s2, g2, cdx, cds);
        pin::cuda::prelu_backward(ga2.data(), gs2.data(), gg2.data(), dx2.data(), ds2.data(), n2, 45);
        require_matches(from_gpu(ds2, 45), cds.data(), 45, "prelu slope gradient (long reduction)", 1e-5);
    }
    cpu::tanh_forward(a, c1);
    pin::cuda::tanh_forward(ga.data(), o1.data(), n);
    require_matches(from_gpu(o1, n), c1.data(), n, "tanh forward", 1e-6);
    cpu::tanh_backward(c1, g, c2);
    pin::cuda::tanh_backward(o1.data(), gg.data(), o2.data(), n);
    require_matches(from_gpu(o2, n), c2.data(), n, "tanh backward", 1e-5);
    cpu::sigmoid_forward(a, c1);
    pin::cuda::sigmoid_forward(ga.data(), o1.data(), n);
    require_matches(from_gpu(o1, n), c1.data(), n, "sigmoid forward", 1e-6);
    cpu::sigmoid_backward(c1, g, c2);
    pin::cuda::sigmoid_backward(o1.data(), gg.data(), o2.data(), n);
    require_matches(from_gpu(o2, n), c2.data(), n, "sigmoid backward", 1e-5);
    cpu::add_forward(a, g, c1);
    pin::cuda::add(ga.data(), gg.data(), o1.data(), n);
    require_matches(from_gpu(o1, n), c1.data(), n, "add", 0);
}

TEST_CASE("GPU masks, projection and O(N) mask costs match the CPU", "[cuda][pin]") {
    if (!gpu_or_skip()) return;
    PIN_EACH_MATH_MODE();
    PIN_EACH_GATHER_MODE();
    const int64_t B = 3, D = 12544, N = GENERATE(37, 40);  // 40: the wide kernel's row-major form (Vector + BF16)
    const Tensor basis = rnd({D, N}, 14, Layout::NCHW), mean = rnd({D}, 15, Layout::NCHW), x = rnd({B, D}, 16, Layout::NCHW);
    std::vector<float> p(static_cast<size_t>(B * N));
    for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<float>((i * 37) % 101) / 100.0f;
    auto gbasis = to_gpu(basis), gmean = to_gpu(mean), gx = to_gpu(x), gp = to_gpu(p);
    pin::cuda::DeviceBuffer gq(B * N), gc(B * N), gbt(D * N), gy(B * D);
    pin::cuda::sample_masks(gp.data(), gq.data(), B, N, 99, 1000);
    const std::vector<float> q = from_gpu(gq, B * N);
    for (int64_t b = 0; b < B; ++b) {
        const PhiloxStream rng(99, 1000 + static_cast<uint64_t>(b));
        for (int64_t j = 0; j < N; ++j) REQUIRE(q[b * N + j] == rng.bernoulli(static_cast<uint64_t>(j), p[b * N + j]));
    }
    std::vector<float> c(static_cast<size_t>(B * N)), y(static_cast<size_t>(B * D));
    cpu::project_coefficients(basis.data(), mean.data(), D, N, x.data(), B, c.data());
    pin::cuda::project_coefficients(gbasis.data(), gmean.data(), gx.data(), gc.data(), B, D, N);
    require_matches(from_gpu(gc, B * N), c.data(), B * N, "projection coefficients");
    cpu::reconstruct_from_coefficients(basis.data(), mean.data(), D, N, c.data(), q.data(), B, y.data());
    pin::cuda::transpose(gbasis.data(), gbt.data(), D, N);
    pin::cuda::reconstruct(gbt.data(), gmean.data(), gc.data(), gq.data(), gy.data(), B, D, N);
    require_matches(from_gpu(gy, B * D), y.data(), B * D, "masked reconstruction");

    // Mask costs: g and y2 from random c, d; 9 masks per image; the CPU estimator's streams.
    const int64_t k = 9;
    std::vector<float> gterm(static_cast<size_t>(B * N));
    std::vector<double> y2(static_cast<size_t>(B));
    std::vector<train::MaskCostTerms> terms;
    const Tensor cc = rnd({B, N}, 17, Layout::NCHW), dd = rnd({B, N}, 18, Layout::NCHW);
    for (int64_t b = 0; b < B; ++b) {
        terms.push_back(train::mask_cost_terms(cc.data() + b * N, dd.data() + b * N, N, 40.0 + b, D));
        for (int64_t j = 0; j < N; ++j) gterm[b * N + j] = static_cast<float>(terms.back().g[j]);
        y2[b] = 40.0 + b;
    }
    pin::cuda::DeviceBuffer gg = to_gpu(gterm), gy2(2 * B), gcost(2 * B * k), gkept(2 * B * k);
    gy2.upload(reinterpret_cast<const float*>(y2.data()), 2 * B);
    for (const bool l2 : {true, false}) {
        pin::cuda::mask_costs(gp.data(), gg.data(), reinterpret_cast<const double*>(gy2.data()), reinterpret_cast<double*>(gcost.data()),
                              reinterpret_cast<double*>(gkept.data()), B, N, k, l2, 0.015, D, 5, 20);
        std::vector<double> cost(static_cast<size_t>(B * k)), kept(static_cast<size_t>(B * k));
        gcost.download(reinterpret_cast<float*>(cost.data()), 2 * B * k);
        gkept.download(reinterpret_cast<float*>(kept.data()), 2 * B * k);
        for (int64_t b = 0; b < B; ++b)
            for (int64_t s = 0; s < k; ++s) {
                const PhiloxStream rng(5, (20 + static_cast<uint64_t>(b)) * k + static_cast<uint64_t>(s));
                std::vector<float> m(static_cast<size_t>(N));
                double nk = 0;
                for (int64_t j = 0; j < N; ++j) nk += m[j] = rng.bernoulli(static_cast<uint64_t>(j), p[b * N + j]);
                // g was rounded to float for the GPU: the CPU cost of the same rounded terms.
                train::MaskCostTerms t = terms[b];
                for (int64_t j = 0; j < N; ++j) t.g[j] = gterm[b * N + j];
                const double want = train::mask_cost(t, m.data(), l2 ? train::CostType::L2 : train::CostType::MSE, 0.015);
                REQUIRE(kept[b * k + s] == nk);
                REQUIRE(cost[b * k + s] == Approx(want).epsilon(1e-12));
            }
    }
}

TEST_CASE("cuRAND Philox draws the same masks as the CPU, bit for bit", "[cuda][rng][pin]") {
    if (!gpu_or_skip()) return;
    // Sizes off the 4-word blocks, streams past 2^32 (the counter's high words) and a 64-bit seed.
    for (const auto& c : std::vector<std::array<uint64_t, 4>>{{3, 37, 99, 1000}, {2, 4101, 0x9e3779b97f4a7c15ull, (uint64_t{1} << 32) + 7},
                                                               {5, 2, 1, (uint64_t{1} << 63) + 3}}) {
        const int64_t B = static_cast<int64_t>(c[0]), N = static_cast<int64_t>(c[1]);
        std::vector<float> p(static_cast<size_t>(B * N));
        for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<float>((i * 29) % 103) / 102.0f;
        auto gp = to_gpu(p);
        pin::cuda::DeviceBuffer gq(static_cast<size_t>(B * N));
        pin::cuda::set_mask_sampler(pin::cuda::MaskSampler::CuRand);
        pin::cuda::sample_masks(gp.data(), gq.data(), B, N, c[2], c[3]);
        pin::cuda::set_mask_sampler(pin::cuda::MaskSampler::Pin);
        const std::vector<float> q = from_gpu(gq, B * N);
        int64_t ones = 0, differ = 0;
        for (int64_t b = 0; b < B; ++b) {
            const PhiloxStream rng(c[2], c[3] + static_cast<uint64_t>(b));
            for (int64_t j = 0; j < N; ++j) {
                differ += q[b * N + j] != rng.bernoulli(static_cast<uint64_t>(j), p[b * N + j]);
                ones += q[b * N + j] == 1.0f;
            }
        }
        INFO("batch " << B << ", n " << N << ", seed " << c[2] << ", first image " << c[3]);
        REQUIRE(differ == 0);
        if (B * N > 100) REQUIRE((ones > 0 && ones < B * N));  // p spans [0, 1]: both values drawn
    }
}

TEST_CASE("the GPU defense forward matches the CPU defense", "[cuda][defense][network]") {
    if (!gpu_or_skip()) return;
    PIN_EACH_MATH_MODE();
    PIN_EACH_GATHER_MODE();
    auto agent = std::make_shared<model::Agent>(60);
    agent->reset_parameters(3);
    const Tensor bm = rnd({12544, 60}, 19, Layout::NCHW);
    // An orthonormal-enough basis is not needed for matching: both sides compute the same formula.
    auto basis = std::make_shared<model::EigenBasis>(model::EigenBasis::from_tensors(bm, rnd({12544}, 20, Layout::NCHW)));
    const model::Defense cpu_defense = model::Defense::from_parts(basis, agent, model::SamplingMode::Bernoulli, 7);
    Tensor x = Tensor::empty({3, 1, 112, 112}, Layout::NHWC);
    for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = std::sin(0.001f * i) * 0.8f;
    const model::DefenseOutput ref = cpu_defense.inactivate(x, 40);
    pin::cuda::GpuDefense gpu(*agent, *basis);
    auto gx = to_gpu(x);
    // With BF16 arithmetic, also with the activations stored as bfloat16 (ops.cuh ActivationStorage).
    const bool bf16_storage = mode == pin::cuda::MathMode::BF16 && GENERATE(false, true);
    pin::cuda::set_activation_storage(bf16_storage ? pin::cuda::ActivationStorage::BF16 : pin::cuda::ActivationStorage::FP32);
    const std::string tag = std::string(math_tag()) + (bf16_storage ? "[bf16 storage] " : "");
    pin::cuda::DeviceBuffer gp(3 * 60), gq(3 * 60), gy(3 * 12544);
    const pin::cuda::KernelLaunches before = pin::cuda::kernel_launches();
    gpu.forward(gx.data(), 3, 7, 40, gp.data(), gq.data(), gy.data());
    pin::cuda::set_activation_storage(pin::cuda::ActivationStorage::FP32);
    // bfloat16 storage with the vector gather: the convolutions between bfloat16 activations copy
    // their operands as they are (the asynchronous-copy kernel), and nothing else does.
    REQUIRE((pin::cuda::kernel_launches().async > before.async) == (bf16_storage && gather == pin::cuda::GatherMode::Vector));
    // p passes through the whole network (DAE twice, ten convolution layers, two FC layers): the
    // tensor-core modes' rounding accumulates (BF16's bounds are first guesses, to be measured).
    const int m = mode == pin::cuda::MathMode::BF16 ? 2 : mode == pin::cuda::MathMode::TF32 ? 1 : 0;
    const double p_tol[3] = {1e-3, 2e-2, 8e-2}, face_tol[3] = {1e-4, 5e-3, 2e-2};
    const int64_t max_differ[3] = {1, 9, 36};
    require_matches(from_gpu(gp, 180), ref.p.data(), 180, tag + "defense p", p_tol[m]);
    const std::vector<float> q = from_gpu(gq, 180);
    int64_t differ = 0;
    for (int64_t i = 0; i < 180; ++i) differ += q[i] != ref.q.data()[i];
    std::printf("defense masks %s: %lld of 180 bits differ from the CPU's\n", tag.c_str(), static_cast<long long>(differ));
    REQUIRE(differ <= max_differ[m]);  // a p within rounding of a uniform draw may flip a bit
    if (differ == 0) require_matches(from_gpu(gy, 3 * 12544), ref.defended.data(), 3 * 12544, tag + "defended faces", face_tol[m]);
}

TEST_CASE("a Defense with the GPU accelerator matches the CPU defense", "[cuda][defense]") {
    if (!gpu_or_skip()) return;
    pin::cuda::set_math_mode(pin::cuda::MathMode::FP32);
    pin::cuda::set_gather_mode(pin::cuda::GatherMode::Generic);
    auto agent = std::make_shared<model::Agent>(60);
    agent->reset_parameters(4);
    auto basis = std::make_shared<model::EigenBasis>(
        model::EigenBasis::from_tensors(rnd({12544, 60}, 23, Layout::NCHW), rnd({12544}, 24, Layout::NCHW)));
    const model::Defense cpu = model::Defense::from_parts(basis, agent, model::SamplingMode::Bernoulli, 3);
    model::Defense gpu = model::Defense::from_parts(basis, agent, model::SamplingMode::Bernoulli, 3);
    gpu.set_accelerator(pin::cuda::make_accelerator(gpu));
    REQUIRE(gpu.accelerated());
    Tensor x = Tensor::empty({2, 1, 112, 112}, Layout::NHWC);
    for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = std::cos(0.0007f * i) * 0.7f;
    const model::DefenseOutput a = cpu.inactivate(x, 11), b = gpu.inactivate(x, 11);
    require_matches(std::vector<float>(b.p.data(), b.p.data() + 120), a.p.data(), 120, "accelerated defense p", 1e-3);
    int64_t differ = 0;
    for (int64_t i = 0; i < 120; ++i) differ += a.q.data()[i] != b.q.data()[i];
    REQUIRE(differ <= 1);
    if (differ == 0)
        require_matches(std::vector<float>(b.defended.data(), b.defended.data() + 2 * 12544), a.defended.data(), 2 * 12544,
                        "accelerated defended faces", 1e-4);
}

TEST_CASE("the fused GPU local-expectation gradient matches the CPU estimator", "[cuda][pin][estimator]") {
    if (!gpu_or_skip()) return;
    const int64_t B = 3, N = 301, k = 7, D = 12544;
    std::vector<float> p(static_cast<size_t>(B * N)), gterm(static_cast<size_t>(B * N));
    std::vector<double> y2(static_cast<size_t>(B));
    std::vector<train::MaskCostTerms> terms;
    const Tensor cc = rnd({B, N}, 21, Layout::NCHW), dd = rnd({B, N}, 22, Layout::NCHW);
    for (size_t i = 0; i < p.size(); ++i) p[i] = 0.02f + 0.96f * static_cast<float>((i * 53) % 97) / 96.0f;
    for (int64_t b = 0; b < B; ++b) {
        terms.push_back(train::mask_cost_terms(cc.data() + b * N, dd.data() + b * N, N, 30.0 + b, D));
        // The GPU takes g in float: give the CPU the same rounded terms.
        for (int64_t j = 0; j < N; ++j) gterm[b * N + j] = static_cast<float>(terms.back().g[j]), terms.back().g[j] = gterm[b * N + j];
        y2[b] = 30.0 + b;
    }
    auto gp = to_gpu(p), gg = to_gpu(gterm);
    pin::cuda::DeviceBuffer gy2(2 * B), gdz(2 * B * N), gcost(2 * B * k), gkept(2 * B * k);
    gy2.upload(reinterpret_cast<const float*>(y2.data()), 2 * B);
    for (const bool l2 : {true, false}) {
        const train::BatchGradient cpu = train::estimate_gradient(p, terms, k, train::Estimator::LocalExpectation,
                                                                  l2 ? train::CostType::L2 : train::CostType::MSE, 0.015, 9, 40);
        pin::cuda::local_gradient(gp.data(), gg.data(), reinterpret_cast<const double*>(gy2.data()), reinterpret_cast<double*>(gdz.data()),
                                  reinterpret_cast<double*>(gcost.data()), reinterpret_cast<double*>(gkept.data()), B, N, k, l2, 0.015, D, 9,
                                  40);
        std::vector<double> dz(static_cast<size_t>(B * N)), cost(static_cast<size_t>(B * k)), kept(static_cast<size_t>(B * k));
        gdz.download(reinterpret_cast<float*>(dz.data()), 2 * B * N);
        gcost.download(reinterpret_cast<float*>(cost.data()), 2 * B * k);
        gkept.download(reinterpret_cast<float*>(kept.data()), 2 * B * k);
        pin::test::require_estimator_matches(dz, cost, kept, cpu, l2 ? "local gradient (L2 cost)" : "local gradient (MSE cost)");
    }
}

TEST_CASE("GPU training-step kernels match the CPU", "[cuda][train]") {
    if (!gpu_or_skip()) return;
    // Flatten backwards: NCHW -> NHWC, odd sizes.
    const Tensor nchw = rnd({3, 5, 7, 9}, 41, Layout::NCHW);
    const Tensor nhwc = nchw.to_layout(Layout::NHWC);
    auto gx = to_gpu(nchw);
    pin::cuda::DeviceBuffer gy(static_cast<size_t>(nchw.numel()));
    pin::cuda::nchw_to_nhwc(gx.data(), gy.data(), 3, 5, 7, 9);
    REQUIRE(from_gpu(gy, nchw.numel()) == std::vector<float>(nhwc.data(), nhwc.data() + nhwc.numel()));
    // Sum of squares in double, fixed order: equal to a double sum to rounding, and run to run.
    const Tensor v = rnd({1000003}, 42, Layout::NCHW);
    double ref = 0;
    for (int64_t i = 0; i < v.numel(); ++i) ref += static_cast<double>(v.data()[i]) * v.data()[i];
    auto gv = to_gpu(v);
    const double s1 = pin::cuda::sum_squares(gv.data(), v.numel()), s2 = pin::cuda::sum_squares(gv.data(), v.numel());
    REQUIRE(s1 == Approx(ref).epsilon(1e-12));
    REQUIRE(s1 == s2);
    // SGD with momentum and scale against nn::SGD's rule.
    const int64_t n = 5003;
    const Tensor w0 = rnd({n}, 43, Layout::NCHW), g = rnd({n}, 44, Layout::NCHW), v0 = rnd({n}, 45, Layout::NCHW);
    for (const bool first : {true, false}) {
        auto gw = to_gpu(w0), gg = to_gpu(g), gvel = to_gpu(v0);
        pin::cuda::scale(gg.data(), n, 0.5f);
        pin::cuda::sgd_step(gw.data(), gg.data(), gvel.data(), n, 0.03f, 0.9f, first);
        std::vector<float> w(w0.data(), w0.data() + n), vel(v0.data(), v0.data() + n);
        for (int64_t i = 0; i < n; ++i) {
            const float gi = g.data()[i] * 0.5f;
            vel[i] = first ? gi : 0.9f * vel[i] + gi;
            w[i] -= 0.03f * vel[i];
        }
        require_matches(from_gpu(gw, n), w.data(), n, first ? "sgd_step (first)" : "sgd_step", 1e-6);
        require_matches(from_gpu(gvel, n), vel.data(), n, first ? "sgd velocity (first)" : "sgd velocity", 1e-6);
    }
    // The training noise, drawn on the GPU: train::add_relative_noise's normals and per-image scale
    // (the device's logf / cosf may differ from the host's in the last bit). Images of 1,001 values
    // (not a multiple of the block), image numbers past 2^32.
    const Tensor faces = rnd({3, 1, 7, 143}, 46);
    const Tensor noisy = train::add_relative_noise(faces, 0.3, 99, (uint64_t{1} << 32) + 5);
    auto gfaces = to_gpu(faces);
    pin::cuda::DeviceBuffer gnoisy(static_cast<size_t>(faces.numel()));
    pin::cuda::relative_noise(gfaces.data(), gnoisy.data(), 3, 1001, 0.3, 99, (uint64_t{1} << 32) + 5);
    const std::vector<float> got = from_gpu(gnoisy, faces.numel());
    std::vector<float> eta_gpu(got.size()), eta_cpu(got.size());
    for (size_t i = 0; i < got.size(); ++i) eta_gpu[i] = got[i] - faces.data()[i], eta_cpu[i] = noisy.data()[i] - faces.data()[i];
    require_matches(eta_gpu, eta_cpu.data(), faces.numel(), "relative noise", 1e-5);
}

TEST_CASE("the GPU estimators match the CPU's batch gradient", "[cuda][train][estimator]") {
    if (!gpu_or_skip()) return;
    pin::cuda::set_math_mode(pin::cuda::MathMode::FP32);
    const int64_t B = 3, N = 50;
    auto agent = std::make_shared<model::Agent>(N);
    agent->reset_parameters(6);
    auto basis = std::make_shared<model::EigenBasis>(model::EigenBasis::compute(rnd({60, 12544}, 46, Layout::NCHW), N));
    const Tensor x = pin::test::random_tensor({B, 1, 112, 112}, 47, 0.5f, Layout::NHWC);
    const Tensor xn = train::add_relative_noise(x, 0.04, 3, 10);
    std::vector<float> p(static_cast<size_t>(B * N));
    for (size_t i = 0; i < p.size(); ++i) p[i] = 0.03f + 0.94f * static_cast<float>((i * 37) % 101) / 100.0f;
    auto gp = to_gpu(p), gx = to_gpu(x), gxn = to_gpu(xn);
    for (const auto estimator : {train::Estimator::Reinforce, train::Estimator::Rloo, train::Estimator::LocalExpectation})
        for (const auto cost : {train::CostType::L2, train::CostType::MSE}) {
            train::TrainerOptions opt;
            opt.estimator = estimator;
            opt.cost = cost;
            opt.masks = 6;
            opt.seed = 3;
            const std::string what = std::string(train::estimator_name(estimator)) + (cost == train::CostType::L2 ? " l2" : " mse");
            INFO(what);
            const train::BatchGradient cpu = train::batch_gradient(*basis, x, xn, p, opt, 10);
            pin::cuda::GpuTrainingBackend backend(*agent, *basis, opt);
            pin::cuda::DeviceBuffer gdz(static_cast<size_t>(B * N));
            const train::EstimatorResult r = backend.estimate(gp.data(), gx.data(), gxn.data(), gdz.data(), B, 10);
            std::vector<float> dz_cpu(cpu.dz.begin(), cpu.dz.end());
            require_matches(from_gpu(gdz, B * N), dz_cpu.data(), B * N, "estimator dz (" + what + ")", 1e-3);  // c, d from GEMMs in another order
            REQUIRE(r.mean_cost == Approx(cpu.mean_cost).epsilon(1e-5));
            REQUIRE(r.mean_kept == cpu.mean_kept);  // the same masks
        }
}

TEST_CASE("the GPU training step matches PolicyGradientTrainer", "[cuda][train][network]") {
    if (!gpu_or_skip()) return;
    const int64_t N = 40;
    auto basis = std::make_shared<model::EigenBasis>(model::EigenBasis::compute(rnd({50, 12544}, 48, Layout::NCHW), N));
    const Tensor x0 = pin::test::random_tensor({2, 1, 112, 112}, 49, 0.5f, Layout::NHWC);
    const Tensor x1 = pin::test::random_tensor({3, 1, 112, 112}, 50, 0.5f, Layout::NHWC);
    auto make_agent = [&] {
        auto a = std::make_shared<model::Agent>(N);
        a->reset_parameters(7);
        a->head().scale_output_layer(0.5f);
        return a;
    };
    // fp32 with both estimators; and the fast configuration (bfloat16 tensor cores, the vector gather,
    // the 3 x 3 convolutions' operands converted to bfloat16 for the asynchronous-copy kernel) with
    // the local-expectation estimator, whose gradient has no cancelling advantages to amplify
    // bfloat16's rounding.
    struct Config {
        pin::cuda::MathMode math;
        pin::cuda::GatherMode gather;
        train::Estimator estimator;
        double norm_tol, cost_tol, param_tol;
    };
    // fp32 tolerances: both sides sum in fp32 in different orders, and REINFORCE's advantages cancel.
    // Measured under the emulation (tests/cuda_emulation.hpp): parameter changes and momentum within
    // 5.0e-3 of each tensor's largest for REINFORCE (removing the weight gradients' K split alone
    // moved the first layer's from 1.8e-3 to 3.5e-3), under 4e-4 for local expectation; a wrong mask
    // or a misplaced gradient is off by O(1).
    // bfloat16: every operand of every GEMM rounded to 8 bits through 17 convolutions backwards, so
    // single elements of a gradient may be off by much of its largest; checked as a whole instead,
    // ||gpu - cpu|| / ||cpu|| per tensor: measured under the emulation at most 0.156 (the first
    // block's conv1 and PReLU; the same with and without the conversion to bfloat16 before the GEMMs,
    // which gives them the same operands), gradient norms within 4.6e-3, mean costs within 2.6e-5;
    // an unrelated gradient is off by about 1.4.
    const Config configs[] = {
        {pin::cuda::MathMode::FP32, pin::cuda::GatherMode::Generic, train::Estimator::Reinforce, 1e-3, 1e-4, 1e-2},
        {pin::cuda::MathMode::FP32, pin::cuda::GatherMode::Generic, train::Estimator::LocalExpectation, 1e-3, 1e-4, 1e-2},
        {pin::cuda::MathMode::BF16, pin::cuda::GatherMode::Vector, train::Estimator::LocalExpectation, 1e-2, 1e-4, 0.3},
    };
    for (const Config& cfg : configs) {
        pin::cuda::set_math_mode(cfg.math);
        pin::cuda::set_gather_mode(cfg.gather);
        const std::string tag = std::string(math_tag()) + train::estimator_name(cfg.estimator);
        INFO("configuration " << tag);
        train::TrainerOptions opt;
        opt.estimator = cfg.estimator;
        opt.masks = 5;
        opt.lr = 0.02f;
        opt.clip_norm = 1;
        opt.features_lr_scale = 0.5f;
        opt.seed = 4;
        auto ref_agent = make_agent();
        train::PolicyGradientTrainer ref(ref_agent, basis, opt);
        const train::StepStats c0 = ref.step(x0, 0), c1 = ref.step(x1, 2);
        auto agent = make_agent();
        train::PolicyGradientTrainer holder(agent, basis, opt);
        pin::cuda::GpuTrainingBackend backend(*agent, *basis, opt);
        pin::cuda::GpuTrainer gpu(backend, *agent, holder.optimizer(), opt);
        const pin::cuda::KernelLaunches before = pin::cuda::kernel_launches();
        const train::StepStats b0 = gpu.step(x0, 0), b1 = gpu.step(x1, 2);
        if (cfg.math == pin::cuda::MathMode::BF16) REQUIRE(pin::cuda::kernel_launches().async > before.async);
        std::printf("gpu training step (%s): grad norms %.6g %.6g, cpu %.6g %.6g; mean costs %.6g %.6g, cpu %.6g %.6g\n", tag.c_str(),
                    b0.grad_norm, b1.grad_norm, c0.grad_norm, c1.grad_norm, b0.mean_cost, b1.mean_cost, c0.mean_cost, c1.mean_cost);
        REQUIRE(b0.grad_norm == Approx(c0.grad_norm).epsilon(cfg.norm_tol));
        REQUIRE(b1.grad_norm == Approx(c1.grad_norm).epsilon(cfg.norm_tol));
        REQUIRE(b0.mean_cost == Approx(c0.mean_cost).epsilon(cfg.cost_tol));
        REQUIRE(b1.mean_cost == Approx(c1.mean_cost).epsilon(cfg.cost_tol));
        gpu.download(*agent, holder.optimizer());
        // The change of every parameter over the two steps, and the momentum (the gradients' sum), to
        // param_tol of each tensor's largest.
        auto init = make_agent();
        train::PolicyGradientTrainer init_holder(init, basis, opt);
        const auto got = holder.trained_parameters(), want = ref.trained_parameters(), start = init_holder.trained_parameters();
        for (size_t k = 0; k < got.size(); ++k) {
            const Tensor& a = got[k].param->value;
            const Tensor& b = want[k].param->value;
            const Tensor& a0 = start[k].param->value;
            std::vector<float> da(static_cast<size_t>(a.numel())), db(static_cast<size_t>(a.numel()));
            for (int64_t i = 0; i < a.numel(); ++i) da[i] = a.data()[i] - a0.data()[i], db[i] = b.data()[i] - a0.data()[i];
            const Tensor& va = holder.optimizer().velocity()[k];
            const Tensor& vb = ref.optimizer().velocity()[k];
            const std::vector<float> vgot(va.data(), va.data() + va.numel());
            if (cfg.math == pin::cuda::MathMode::FP32) {
                require_matches(da, db.data(), b.numel(), "step " + tag + " " + got[k].name, cfg.param_tol);
                require_matches(vgot, vb.data(), vb.numel(), "momentum " + tag + " " + got[k].name, cfg.param_tol);
            } else {
                require_relative_l2(da, db.data(), b.numel(), "step " + tag + " " + got[k].name, cfg.param_tol);
                require_relative_l2(vgot, vb.data(), vb.numel(), "momentum " + tag + " " + got[k].name, cfg.param_tol);
            }
        }
    }
    pin::cuda::set_math_mode(pin::cuda::MathMode::FP32);
    pin::cuda::set_gather_mode(pin::cuda::GatherMode::Generic);
}

TEST_CASE("GPU work on separate streams gives the default stream's results, also from several threads", "[cuda][defense][stream][network]") {
    if (!gpu_or_skip()) return;
    pin::cuda::set_math_mode(pin::cuda::MathMode::FP32);
    pin::cuda::set_gather_mode(pin::cuda::GatherMode::Generic);
    // One convolution on a stream of its own: the same bits as on the default stream.
    const pin::cuda::ConvShape s{3, 17, 19, 32, 48, 3, 1, 1};
    const Tensor x = rnd({3, 32, 17, 19}, 61), w = rnd({48, 32, 3, 3}, 62, Layout::NCHW);
    auto gx = to_gpu(x), gw = to_gpu(w);
    const int64_t ny = 3 * 17 * 19 * 48;
    pin::cuda::DeviceBuffer y0(static_cast<size_t>(ny));
    pin::cuda::conv2d_forward(gx.data(), gw.data(), y0.data(), s);
    std::vector<float> on_stream;
    {
        pin::cuda::Stream stream;
        const pin::cuda::StreamScope scope(stream);
        pin::cuda::DeviceBuffer y1(static_cast<size_t>(ny));
        pin::cuda::conv2d_forward(gx.data(), gw.data(), y1.data(), s);
        on_stream = from_gpu(y1, ny);  // the download waits for the stream
    }
    REQUIRE(on_stream == from_gpu(y0, ny));
    // A Defense with the GPU accelerator called from four threads at once (each on its own stream):
    // every thread's result equals the one computed alone.
    auto agent = std::make_shared<model::Agent>(60);
    agent->reset_parameters(8);
    auto basis = std::make_shared<model::EigenBasis>(
        model::EigenBasis::from_tensors(rnd({12544, 60}, 63, Layout::NCHW), rnd({12544}, 64, Layout::NCHW)));
    model::Defense gpu = model::Defense::from_parts(basis, agent, model::SamplingMode::Bernoulli, 5);
    gpu.set_accelerator(pin::cuda::make_accelerator(gpu));
    std::vector<Tensor> inputs, alone(4), together(4);
    for (int t = 0; t < 4; ++t) inputs.push_back(pin::test::random_tensor({2, 1, 112, 112}, 70 + t, 0.6f, Layout::NHWC));
    for (int t = 0; t < 4; ++t) alone[t] = gpu.inactivate(inputs[t], 10 * t).defended;
    std::vector<std::thread> threads;
    std::vector<std::string> errors(4);
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&, t] {
            try {
                together[t] = gpu.inactivate(inputs[t], 10 * t).defended;
            } catch (const std::exception& e) {
                errors[t] = e.what();
            }
        });
    for (auto& th : threads) th.join();
    for (int t = 0; t < 4; ++t) {
        INFO("thread " << t << ": " << errors[t]);
        REQUIRE(errors[t].empty());
        REQUIRE(pin::test::bitwise_equal(together[t], alone[t]));
    }
}
#endif

