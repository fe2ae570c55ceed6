// The GPU backend's ops one by one against the CPU engine: the Philox RNG (bit for bit),
// convolutions in every direction, math and gather mode, bfloat16 activations, the linear layers,
// element-wise ops, masks, projection and mask costs. The defense, the estimators and the training
// step: test_cuda_network.cpp. Skips with a printed reason when pin was built without CUDA or no
// GPU is present.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <array>
#include <chrono>
#include <cmath>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "helpers.hpp"

#if defined(PIN_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include "rng.cuh"
#include "gpu_tuning.hpp"
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
#if defined(PIN_HAVE_CUDA)
#include "cuda_test_support.hpp"

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
                         Case{2, 11, 9, 64, 1, 3, 1, 1},
                         // Stems (one input channel): by row bands where 3 x 3 with N / 4 dividing 256 - at stride 2
                         // (lanes beyond the width), unpadded, 256 channels (4 lanes); per pixel otherwise - 12
                         // channels, 5 x 5 taps, and a row too wide for a band's staged input (3 x 1402 floats).
                         Case{3, 13, 17, 1, 8, 3, 2, 1}, Case{1, 9, 20, 1, 256, 3, 1, 0}, Case{2, 7, 9, 1, 12, 3, 1, 1},
                         Case{1, 11, 10, 1, 16, 5, 1, 2}, Case{1, 3, 1400, 1, 4, 3, 1, 1}}) {
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
        const pin::cuda::KernelFlops flops_before = pin::cuda::kernel_gemm_flops();
        pin::cuda::conv2d_forward(gx.data(), gw.data(), gy.data(), s, gb.data(), gs.data());
        const pin::cuda::KernelLaunches after = pin::cuda::kernel_launches();
        {  // Its arithmetic is counted once, 2 M N K of the convolution's GEMM, on the kernel launched.
            const pin::cuda::KernelFlops flops = pin::cuda::kernel_gemm_flops();
            const auto named = pin::cuda::named_counts(flops), named_before = pin::cuda::named_counts(flops_before);
            const auto launched = pin::cuda::named_counts(after), launched_before = pin::cuda::named_counts(before);
            const auto launched_delta = pin::cuda::named_counts(after - before), flops_delta = pin::cuda::named_counts(flops - flops_before);
            int64_t added = 0;
            for (size_t i = 0; i < named.size(); ++i) {
                INFO(named[i].first);
                REQUIRE(launched_delta[i].second == launched[i].second - launched_before[i].second);  // KernelCounts::operator-
                REQUIRE(flops_delta[i].second == named[i].second - named_before[i].second);
                REQUIRE((named[i].second > named_before[i].second) == (launched[i].second > launched_before[i].second));
                const std::string kernel = named[i].first;
                if (kernel != "one_input_bands" && kernel != "async_cols128" && kernel != "wgmma_tma") added += named[i].second - named_before[i].second;  // parts of one_input's, async's, wgmma's
            }
            REQUIRE(added == 2 * (c.b * Ho * Wo) * c.cout * (c.k * c.k * c.cin));
            REQUIRE(flops.total() - flops_before.total() == added);  // total(): the same sum
        }
        // The forward reaches the kernel its configuration is for (ops.cuh GatherMode).
        const bool special = gather != pin::cuda::GatherMode::Generic;
        if (special && c.cout == 1) REQUIRE(after.one_output > before.one_output);
        if (special && c.cin == 1 && c.cout % 4 == 0) {
            REQUIRE(after.one_input > before.one_input);
            const bool bands = c.k == 3 && 256 % (c.cout / 4) == 0 && 3 * ((Wo - 1) * c.s + 3) <= 4096;  // ops_internal.cuh stem_band
            REQUIRE((after.one_input_bands > before.one_input_bands) == bands);
        } else {
            REQUIRE(after.one_input_bands == before.one_input_bands);
        }
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

// The CPU's forward convolution (direct or transposed, s's kernel, stride, padding and output
// padding) with the GPU's epilogue: bias (direct only; may be null), then PReLU.
static void cpu_conv_forward(const Tensor& x, const Tensor& w, Tensor& y, const pin::cuda::ConvShape& s, bool transposed,
                      const std::vector<float>& slope, const float* bias = nullptr) {
    if (transposed) {  // the CPU's transposed forward has no epilogue: PReLU here
        cpu::conv_transpose2d_forward(x, w, y, cpu::ConvTranspose2dParams{s.kernel, s.stride, s.padding, s.output_padding});
        for (int64_t i = 0; i < y.numel(); ++i) {
            float& v = y.data()[i];
            if (v < 0) v *= slope[static_cast<size_t>(i % s.out_c)];
        }
    } else {
        cpu::ConvEpilogue ep;
        ep.prelu_slope = slope.data();
        ep.bias = bias;
        cpu::conv2d_forward(x, w, y, cpu::Conv2dParams{s.kernel, s.stride, s.padding}, ep);
    }
}

// The accumulating input gradient adds to what dx held. Run onto random values r, so that a pixel no
// product reaches (three in four of a 1 x 1 stride-2 convolution's) must keep its own, it gives
// r + dx (dx: the CPU's input gradient); tol as require_matches's (-1: its default).
static void require_accumulates_input_gradient(pin::cuda::ConstActivations dy, const float* w, const pin::cuda::ConvShape& s,
                                               const Tensor& dx, const std::string& what, double tol) {
    const Tensor r = rnd(dx.shape(), 35);
    const pin::cuda::DeviceBuffer gdx = to_gpu(r);
    pin::cuda::conv2d_backward_input(dy, w, gdx.data(), s, true);
    std::vector<float> sum(static_cast<size_t>(dx.numel()));
    for (int64_t i = 0; i < dx.numel(); ++i) sum[static_cast<size_t>(i)] = r.data()[i] + dx.data()[i];
    require_matches(from_gpu(gdx, dx.numel()), sum.data(), dx.numel(), what, tol);
}

TEST_CASE("GPU convolutions read and write bfloat16 activations", "[cuda][conv][bf16]") {
    if (!gpu_or_skip()) return;
    PIN_EACH_MATH_MODE();
    PIN_EACH_GATHER_MODE();
    PIN_EACH_ASYNC_TILE();
    // The 256 x 128 tile runs an asynchronous-copy GEMM with n columns exactly when it is chosen and
    // n is a multiple of 128.
    auto cols128 = [&](bool async, int64_t n) { return async && async_shape == pin::cuda::AsyncTileShape::Cols128 && n % 128 == 0; };
    struct Case {
        int64_t b, h, w, cin, cout, k, s, p;
        bool transposed;
    };
    // Odd sizes (generic and tensor-core kernels), the stem (1 -> 64, fp32 x) and the DAE's last layer
    // (64 -> 1, fp32 y), 64 -> 64 (the wide kernel), a strided transposed one (sub-pixel classes), and
    // with bfloat16 packed weights too the asynchronous-copy kernel (64 -> 64 both ways, 32 -> 72 1 x 1:
    // two column tiles, one K slice; 64 -> 32, whose input gradient reaches it at stride 1; 64 -> 128 and
    // 128 -> 64 stride 2, whose forward and weight gradient or input gradient have 128 columns; a 1 x 1
    // stride-2 shortcut 64 -> 128, whose input gradient is one sub-pixel class with a tap and three
    // without, odd sizes leaving the classes unequal).
    for (const Case& c : {Case{2, 9, 7, 5, 7, 3, 1, 1, false}, Case{2, 15, 13, 1, 64, 3, 1, 1, false}, Case{2, 11, 9, 64, 1, 3, 1, 1, false},
                         Case{1, 14, 13, 64, 64, 3, 2, 1, false}, Case{2, 6, 5, 64, 64, 3, 2, 1, true}, Case{1, 5, 7, 33, 20, 3, 2, 1, true},
                         Case{2, 7, 6, 32, 72, 1, 1, 0, false}, Case{2, 8, 9, 64, 32, 3, 1, 1, false}, Case{2, 7, 6, 64, 128, 3, 1, 1, false},
                         Case{1, 6, 5, 128, 64, 3, 2, 1, false}, Case{2, 7, 9, 64, 128, 1, 2, 0, false}}) {
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
        cpu_conv_forward(xin, w, y, s, c.transposed, slope);
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
            const pin::cuda::DeviceBuffer gdx = to_gpu(rnd(dx.shape(), 36));  // overwritten: every value, reached or not
            const pin::cuda::KernelLaunches before = pin::cuda::kernel_launches();
            pin::cuda::conv2d_backward_input(bf16_view(udy.buffer), gw.data(), gdx.data(), s);
            const bool async = gather == pin::cuda::GatherMode::Vector && mode == pin::cuda::MathMode::BF16 && c.cout % 32 == 0 && c.cin % 8 == 0;
            REQUIRE((pin::cuda::kernel_launches().async > before.async) == async);
            REQUIRE((pin::cuda::kernel_launches().async_cols128 > before.async_cols128) == cols128(async, c.cin));
            const std::string what = name + " input gradient from bf16 dy" + (async ? " (asynchronous copies)" : "");
            require_matches(from_gpu(gdx, dx.numel()), dx.data(), dx.numel(), what);
            require_accumulates_input_gradient(bf16_view(udy.buffer), gw.data(), s, dx, what + " accumulate", -1);
            // The weight gradient from the same bfloat16 dy and x (bfloat16 but for the stem's): both
            // bfloat16, the asynchronous-copy kernel exactly where it applies, whose products of
            // bfloat16 values are exact in fp32 (so only the summation order differs from the CPU's);
            // elsewhere the bfloat16 operands widened to fp32.
            Tensor dw = Tensor::empty(w.shape(), Layout::NCHW);
            cpu::conv2d_backward_weight(xin, udy.rounded, dw, cpu::Conv2dParams{c.k, c.s, c.p});
            pin::cuda::DeviceBuffer gdw(static_cast<size_t>(dw.numel()));
            const pin::cuda::KernelLaunches before_w = pin::cuda::kernel_launches();
            pin::cuda::conv2d_backward_weight(gx, bf16_view(udy.buffer), gdw.data(), s);
            const bool async_w = x_bf16 && gather == pin::cuda::GatherMode::Vector && mode == pin::cuda::MathMode::BF16 && c.cin % 8 == 0 &&
                                 c.cout % 8 == 0;
            REQUIRE((pin::cuda::kernel_launches().async > before_w.async) == async_w);
            REQUIRE((pin::cuda::kernel_launches().async_cols128 > before_w.async_cols128) == cols128(async_w, c.cout));
            require_matches(from_gpu(gdw, dw.numel()), dw.data(), dw.numel(),
                            name + " weight gradient from bf16 dy" + (async_w ? " and x (asynchronous copies)" : ""), async_w ? 1e-3 : -1);
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
                REQUIRE((pin::cuda::kernel_launches().async_cols128 > before.async_cols128) == cols128(async, c.cout));
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
    // Odd sizes, and multiples of 4, which the wide kernel takes (Vector + BF16); 4,100 inputs: a long
    // K with one output tile, which the forward pass splits in two chunks (ops_linear.cu
    // launch_gemm_bias; the projection test below splits K = 12,544 in six).
    const std::pair<int64_t, int64_t> io = GENERATE(std::make_pair<int64_t, int64_t>(333, 77), std::make_pair<int64_t, int64_t>(336, 76),
                                                    std::make_pair<int64_t, int64_t>(4100, 36));
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
        // The slope gradient's reduction (and dx, written in its pass) over many row chunks (70,221 rows: chunks of 69 rows, not a
        // multiple of the 8 row lanes) and a channel count off the 32-channel blocks.
        const Tensor a2 = rnd({1, 45, 263, 267}, 14), g2 = rnd({1, 45, 263, 267}, 15), s2 = rnd({45}, 16, Layout::NCHW);
        const int64_t n2 = a2.numel();
        auto ga2 = to_gpu(a2), gg2 = to_gpu(g2), gs2 = to_gpu(s2);
        pin::cuda::DeviceBuffer dx2(n2), ds2(45);
        Tensor cdx = Tensor::empty(a2.shape(), Layout::NHWC), cds = Tensor::empty({45});
        cpu::prelu_backward(a2, s2, g2, cdx, cds);
        pin::cuda::prelu_backward(ga2.data(), gs2.data(), gg2.data(), dx2.data(), ds2.data(), n2, 45);
        require_matches(from_gpu(ds2, 45), cds.data(), 45, "prelu slope gradient (long reduction)", 1e-5);
        // dx is written by the same chunked pass: every element, across the chunks' and blocks' edges.
        require_matches(from_gpu(dx2, n2), cdx.data(), n2, "prelu input gradient (long reduction)", 1e-6);
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

namespace {
// A B^T of row-major a (M x K) and b (N x K), summed in float64 and rounded once: what a GEMM of
// bfloat16 values (products exact in fp32) should give up to the order of its fp32 sums.
std::vector<float> float64_products(const float* a, const float* b, int64_t M, int64_t N, int64_t K) {
    std::vector<float> c(static_cast<size_t>(M * N));
    for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
            double sum = 0;
            for (int64_t k = 0; k < K; ++k) sum += static_cast<double>(a[m * K + k]) * b[n * K + k];
            c[static_cast<size_t>(m * N + n)] = static_cast<float>(sum);
        }
    return c;
}
// The body of the GEMM tests below: the pipelines of `family` (tensor copies: the warp-specialized
// ones), both ring sizes and epilogues, operands brought as `loads` says.
void check_wgmma_gemm(WgmmaPipelines family, pin::cuda::WgmmaLoads loads, pin::cuda::WgmmaMmaN mma_n = pin::cuda::WgmmaMmaN::N128) {
    PIN_EACH_WGMMA_FORM_WITH_LOADS(family, loads, mma_n);
    // Partial row and column tiles (M, N off 128; N = 9 off the 8-column groups), K of one 8-deep
    // copy, off the 64-deep slice, and several slices (three stages wrap around); for the
    // warp-specialized kernel its two tiles, each with more slices than stages (its mbarriers
    // through several phases): 256 x 64 swapped (3 stages: N 72, 10 slices; M 129 and 200: partial
    // 256-row tiles), 128 x 128 (4: 16 slices; 130 x 256: two column tiles, 9 slices each); it is
    // persistent, and the emulation has 3 SMs: 520 x 200 is 12 swapped tiles, 4 a block, 20 slices
    // in a row; 1300 x 136 x 64 is 18 tiles of one slice, 6 a block, one tile's C after another.
    // Tensor copies: the swapped tiles 224 x 64 (4 stages) and ping-pong 112 x 64 (6 stages).
    // Wide (m64n256k16, m64n224k16): ping-pong's swapped 224 x 64 takes every N here but 128 and
    // 256, ws's 128 x 256 only 256 (130 x 256: two row tiles, 9 slices each) and 300 x 512 (six
    // tiles, two a block, 5 slices each, a partial row tile). The split-column 200 x 128 tile is
    // the convolutions' only (check_wgmma_convolutions).
    struct Dims {
        int64_t M, N, K;
    };
    std::vector<Dims> dims = {Dims{200, 136, 72}, Dims{77, 9, 8}, Dims{129, 257, 200}, Dims{256, 128, 1024}, Dims{70, 72, 640},
                              Dims{130, 256, 520}, Dims{520, 200, 264}, Dims{1300, 136, 64}};
    if (mma_n == pin::cuda::WgmmaMmaN::N256) dims.push_back(Dims{300, 512, 320});
    for (const Dims d : dims) {
        const Bf16Upload a = to_gpu_bf16(rnd({d.M, d.K}, 11, Layout::NCHW)), b = to_gpu_bf16(rnd({d.N, d.K}, 12, Layout::NCHW));
        const std::vector<float> want = float64_products(a.rounded.data(), b.rounded.data(), d.M, d.N, d.K);
        pin::cuda::DeviceBuffer c(static_cast<size_t>(d.M * d.N));
        const pin::cuda::KernelLaunches before = pin::cuda::kernel_launches();
        pin::cuda::gemm_bf16_wgmma(bf16_view(a.buffer), bf16_view(b.buffer), c.data(), d.M, d.N, d.K);
        const pin::cuda::KernelLaunches after = pin::cuda::kernel_launches();
        REQUIRE(after.wgmma == before.wgmma + 1);
        REQUIRE(after.wgmma_tma - before.wgmma_tma == (loads == pin::cuda::WgmmaLoads::TensorCopies ? 1 : 0));
        REQUIRE(after.wgmma_wide - before.wgmma_wide == (on_wide_tile(d.N) ? 1 : 0));
        REQUIRE(after.wgmma_split == before.wgmma_split);  // the split-column tiles are the convolutions'
        // Products of bfloat16 values are exact in fp32: only the fp32 sums' order differs.
        require_matches(from_gpu(c, d.M * d.N), want.data(), d.M * d.N,
                        "wgmma GEMM " + std::to_string(d.M) + "x" + std::to_string(d.N) + "x" + std::to_string(d.K), 1e-5);
    }
    const Bf16Upload a = to_gpu_bf16(rnd({4, 12}, 13, Layout::NCHW));
    pin::cuda::DeviceBuffer c(16);
    REQUIRE_THROWS_WITH(pin::cuda::gemm_bf16_wgmma(bf16_view(a.buffer), bf16_view(a.buffer), c.data(), 4, 4, 12),
                        Catch::Contains("K a positive multiple of 8"));
    // A shared-memory limit beyond what a block may have, or below none, is refused, naming itself.
    for (const int kib : {-1, 228})
        REQUIRE_THROWS_WITH(pin::cuda::set_wgmma_ws_smem_kib(kib), Catch::Contains("set_wgmma_ws_smem_kib") && Catch::Contains(std::to_string(kib)));
    REQUIRE(pin::cuda::wgmma_ws_smem_kib() == ws_smem_kib);
}
}  // namespace

TEST_CASE("The warpgroup-MMA GEMM (sm_90a wgmma) matches float64 products of the same bfloat16 values", "[cuda][wgmma]") {
    if (!wgmma_or_skip()) return;
    check_wgmma_gemm(WgmmaPipelines::EveryWarpCopies, pin::cuda::WgmmaLoads::CpAsync);
}
// The same, warp-specialized (cuda_test_support.hpp WgmmaPipelines: a tag of its own).
TEST_CASE("The warp-specialized warpgroup-MMA GEMM matches float64 products of the same bfloat16 values", "[cuda][ws]") {
    if (!wgmma_or_skip()) return;
    check_wgmma_gemm(WgmmaPipelines::WarpSpecialized, pin::cuda::WgmmaLoads::CpAsync);
}
// The warp-specialized kernels' operands brought by tensor copies (ops.cuh WgmmaLoads; swizzled
// stages; rows, columns and K past the matrices the copies' zero fill). A tag of its own, so that
// bench/gpu_check.sh can leave tensor copies out of its timings alone when these fail on a GPU.
TEST_CASE("The warpgroup-MMA GEMM fed by tensor copies matches float64 products", "[cuda][tma]") {
    if (!wgmma_or_skip()) return;
    check_wgmma_gemm(WgmmaPipelines::WarpSpecialized, pin::cuda::WgmmaLoads::TensorCopies);
}
// The same on the wide tiles (ops.cuh WgmmaMmaN::N256: m64n256k16, 128 accumulators a consumer
// thread once the producer has given its registers back, C from the registers). A tag of its own
// too: gpu_check.sh leaves the wide tiles out of its timings alone when these fail.
TEST_CASE("The warpgroup-MMA GEMM on the wide m64n256k16 tiles matches float64 products", "[cuda][wide]") {
    if (!wgmma_or_skip()) return;
    check_wgmma_gemm(WgmmaPipelines::WarpSpecialized, pin::cuda::WgmmaLoads::TensorCopies, pin::cuda::WgmmaMmaN::N256);
}

// The forward convolutions on the warpgroup-MMA kernel (ops.cuh AsyncTileShape::Wgmma): given the
// K-major bfloat16 weights, exactly the layers whose gathered channel count is a multiple of 64 run
// there (the rest on the asynchronous-copy kernel), and match the CPU's convolution of the same
// bfloat16 values (exact products in fp32: only the order of the fp32 sums differs) with the
// epilogue's bias, PReLU and accumulation. And the input gradients from bfloat16 dy (which pack
// their K-major weights themselves).
namespace {
// The body of the two convolution tests below, operands brought as `loads` says (tensor copies:
// the warp-specialized pipelines only; the forward and input-gradient GEMMs, stride-1 transposed
// ones and the strided ones' sub-pixel classes, whose output rows - a class's - fit the tile, by
// tensor copies, whole output rows a tile, the padding the copies' zero fill; the rest keep
// cp.async).
void check_wgmma_convolutions(WgmmaPipelines family, pin::cuda::WgmmaLoads loads, pin::cuda::WgmmaMmaN mma_n = pin::cuda::WgmmaMmaN::N128) {
    PIN_EACH_WGMMA_FORM_WITH_LOADS(family, loads, mma_n);
    // The rows of the warp-specialized tile a GEMM with n columns runs on (ops_wgmma.cu
    // with_tensor_tile): a convolution fed by tensor copies needs an output row within them. The
    // swapped tensor-copy tiles have 224 rows (ws, and ping-pong's wide one) or 112 (ping-pong),
    // the wide ws one 128 as its narrow one, or 200 (wide) or 112 where a convolution with Ho x Wo
    // outputs takes ws's split-column tile; a convolution is on a wide tile where the GEMM would
    // be, or on the wide split-column one.
    const bool pingpong = wgmma_pipeline_used == pin::cuda::WgmmaPipeline::PingPong;
    const auto tile_rows = [&](int64_t n, int64_t Ho, int64_t Wo) -> int64_t {
        if (const int64_t split = split_cols_tile_rows(n, Ho, Wo)) return split;
        return n % 128 == 0 ? (pingpong ? 64 : 128) : pingpong ? (on_wide_tile(n) ? 224 : 112) : 224;
    };
    const auto on_wide_conv_tile = [&](int64_t n, int64_t Ho, int64_t Wo) { return on_wide_tile(n) || split_cols_tile_rows(n, Ho, Wo) == 200; };
    // The launches fed by tensor copies (all, or those on a wide tile, or on a split-column one)
    // among GEMMs with n columns over these output grids, on the warpgroup MMA where `on_wgmma`.
    enum class OnTile { Any, Wide, SplitCols };
    const auto tensor_copy_launches = [&](bool on_wgmma, int64_t n, const std::vector<OutputGrid>& grids, OnTile which) {
        int64_t count = 0;
        for (const OutputGrid& g : grids)
            count += on_wgmma && loads == pin::cuda::WgmmaLoads::TensorCopies && g.Wo <= tile_rows(n, g.Ho, g.Wo) &&
                     (which == OnTile::Any || (which == OnTile::Wide ? on_wide_conv_tile(n, g.Ho, g.Wo) : split_cols_tile_rows(n, g.Ho, g.Wo) > 0));
        return count;
    };
    pin::cuda::set_math_mode(pin::cuda::MathMode::BF16);
    pin::cuda::set_gather_mode(pin::cuda::GatherMode::Vector);
    pin::cuda::set_async_tile(pin::cuda::AsyncTileShape::Wgmma);  // the macro's scope puts the settings back
    struct Case {
        int64_t b, h, w, cin, cout, k, s, p;
        bool transposed;
    };
    // 64 -> 64 (the 128 x 64 tile, warp-specialized the swapped 256 x 64, ping-pong 128 x 64; a
    // partial row tile), 64 -> 128 stride 2 (128 x 128, ping-pong 64 x 128), 64 -> 256 (two column
    // tiles, K 576: 9 slices, more than the ping-pong tiles' 5 stages), a 1 x 1
    // stride-2 shortcut 128 -> 192 (two slices a tap; three 64-column tiles), two strided
    // transposed ones (sub-pixel classes, each its own taps of the whole gather's K-major weights;
    // fed by tensor copies, 64 -> 64 four 6 x 5 classes, whole images a tile, and 64 -> 128 four 7 x 7
    // ones of 3 images, on ws's split-column tiles: four images, or two, a tile; and the input
    // gradient of 64 -> 64 at stride 2 over 9 x 7, whose classes differ in rows and columns: 5 x 4,
    // 5 x 3, 4 x 4, 4 x 3), a transposed
    // one at stride 1 (one gather, taps walked backwards), and two that do not fit: 32 -> 64 (the
    // asynchronous-copy kernel's) and 64 -> 1 (the per-pixel kernel's). Fed by tensor copies, 30
    // output columns make tiles of several rows and a shorter last one (11 rows: 7 + 4 in 224
    // rows, 4 + 4 + 3 in 128, 3 + 3 + 3 + 2 in 112, 2 x 5 + 1 in 64), and 70 are more than a 64-row
    // tile holds (cp.async). Where an image has no more pixels than the tile has rows, a tile is
    // whole images (9 x 11 twice in 224 rows, once in 112; 7 x 5 at stride 2 three times in 128;
    // the 1 x 1 stride-2 shortcut's 4 x 5 eleven times in 224, five in 112, of 2 images); stride 2
    // over several tiles an image: 11 x 20 outputs, 6 + 5 rows in 128, 3 + 3 + 3 + 2 in 64.
    // Wide, also 64 -> 256 over 11 x 30 (ws's 128 x 256: 4 rows a tile, 4 + 4 + 3, and its
    // 64-channel input gradient on ping-pong's 224 x 64: 7 + 4) and a transposed 64 -> 64 at
    // stride 1 (ping-pong's 224 x 64 with the taps walked backwards; 10 + 1 rows of 22). ws's
    // split-column tile (200 pixels x 128 channels) takes the 128-channel cases whose images fill
    // more of 200 pixels than of 128: 64 -> 128 at stride 2 over 7 x 5 outputs (two images in one
    // tile), the transposed 64 -> 128 (5 x 7), and two more: 128 -> 128 at 28 x 28 (7 rows a tile,
    // 4 tiles, 18 slices; its input gradient too) and 64 -> 128 at 14 x 14 (an image a tile). Not
    // wide, its 112-pixel form takes 64 -> 128 over 3 x 70 (a row a tile), the strided 7 x 5 (three
    // images a tile) and the transposed 5 x 7.
    std::vector<Case> cases = {Case{2, 9, 11, 64, 64, 3, 1, 1, false}, Case{2, 11, 30, 64, 64, 3, 1, 1, false}, Case{1, 11, 30, 128, 128, 3, 1, 1, false},
                               Case{1, 3, 70, 64, 128, 3, 1, 1, false}, Case{1, 21, 40, 64, 128, 3, 2, 1, false},
                               Case{2, 13, 10, 64, 128, 3, 2, 1, false}, Case{1, 5, 6, 64, 256, 3, 1, 1, false},
                               Case{2, 7, 9, 128, 192, 1, 2, 0, false}, Case{2, 6, 5, 64, 64, 3, 2, 1, true}, Case{1, 5, 7, 64, 128, 3, 1, 1, true},
                               Case{3, 7, 7, 64, 128, 3, 2, 1, true}, Case{1, 9, 7, 64, 64, 3, 2, 1, false},
                               Case{2, 8, 7, 32, 64, 3, 1, 1, false}, Case{2, 6, 7, 64, 1, 3, 1, 1, false}};
    if (mma_n == pin::cuda::WgmmaMmaN::N256) {
        cases.push_back(Case{1, 11, 30, 64, 256, 3, 1, 1, false});
        cases.push_back(Case{1, 11, 22, 64, 64, 3, 1, 1, true});
        cases.push_back(Case{1, 28, 28, 128, 128, 3, 1, 1, false});
        cases.push_back(Case{2, 14, 14, 64, 128, 3, 1, 1, false});
    }
    for (const Case& c : cases) {
        const std::string name = std::string(c.transposed ? "wgmma transposed " : "wgmma conv ") + std::to_string(c.cin) + "->" +
                                 std::to_string(c.cout) + " s" + std::to_string(c.s);
        INFO(name);
        const pin::cuda::ConvShape s{c.b, c.h, c.w, c.cin, c.cout, c.k, c.s, c.p, c.transposed && c.s == 2 ? 1 : 0};
        const int64_t Ho = c.transposed ? pin::cuda::conv_transpose2d_out(s, c.h) : pin::cuda::conv2d_out(s, c.h);
        const int64_t Wo = c.transposed ? pin::cuda::conv_transpose2d_out(s, c.w) : pin::cuda::conv2d_out(s, c.w);
        const Bf16Upload ux = to_gpu_bf16(rnd({c.b, c.cin, c.h, c.w}, 41));
        const Bf16Upload uw = to_gpu_bf16(c.transposed ? rnd({c.cin, c.cout, c.k, c.k}, 42, Layout::NCHW)
                                                       : rnd({c.cout, c.cin, c.k, c.k}, 42, Layout::NCHW));
        std::vector<float> slope(static_cast<size_t>(c.cout)), bias(static_cast<size_t>(c.cout));
        for (int64_t i = 0; i < c.cout; ++i) slope[i] = 0.05f * (i % 5), bias[i] = 0.1f * (i % 7) - 0.3f;
        Tensor y = Tensor::empty({c.b, c.cout, Ho, Wo}, Layout::NHWC);
        cpu_conv_forward(ux.rounded, uw.rounded, y, s, c.transposed, slope, c.transposed ? nullptr : bias.data());
        const pin::cuda::DeviceBuffer gw = to_gpu(uw.rounded), gs = to_gpu(slope), gb = to_gpu(bias);
        const int64_t K = c.k * c.k * c.cin;
        const pin::cuda::DeviceBuffer wp =
            c.transposed ? pin::cuda::pack_conv_transpose2d_forward_weight(gw.data(), s) : pin::cuda::pack_conv2d_forward_weight(gw.data(), s);
        const pin::cuda::DeviceBuffer wb = pin::cuda::pack_bf16(wp.data(), K * c.cout), wk = pin::cuda::pack_bf16_kmajor(wp.data(), K, c.cout);
        {  // the K-major pack is the row-major one transposed
            const std::vector<float> packed = from_gpu(wp, K * c.cout), kmajor = from_gpu_bf16(wk, K * c.cout);
            int64_t wrong = 0;
            for (int64_t k = 0; k < K; ++k)
                for (int64_t n = 0; n < c.cout; ++n) wrong += kmajor[static_cast<size_t>(n * K + k)] != packed[static_cast<size_t>(k * c.cout + n)];
            REQUIRE(wrong == 0);
        }
        const pin::cuda::PackedWeight pw(wp.data(), pin::cuda::bf16_data(wb), pin::cuda::bf16_data(wk));
        const bool fits = c.cin % 64 == 0 && c.cout % 8 == 0, async = !fits && c.cin % 32 == 0 && c.cout % 8 == 0;
        const int64_t n = y.numel();
        for (const bool y_bf16 : {false, true}) {
            pin::cuda::DeviceBuffer gy(static_cast<size_t>(y_bf16 ? (n + 1) / 2 : n));
            const pin::cuda::Activations out = y_bf16 ? pin::cuda::Activations(bf16_view(gy)) : pin::cuda::Activations(gy.data());
            auto run = [&](bool accumulate) {
                if (c.transposed)
                    pin::cuda::conv_transpose2d_forward(bf16_view(ux.buffer), gw.data(), out, s, gs.data(), pw);
                else
                    pin::cuda::conv2d_forward(bf16_view(ux.buffer), gw.data(), out, s, gb.data(), gs.data(), accumulate, pw);
            };
            const pin::cuda::KernelLaunches before = pin::cuda::kernel_launches();
            run(false);
            REQUIRE((pin::cuda::kernel_launches().wgmma > before.wgmma) == fits);
            // Tensor copies: direct gathers at any stride here, transposed ones at stride 1 and the
            // strided ones' sub-pixel classes, each GEMM whose output row (a class's) is within the
            // tile (ops.cuh WgmmaLoads); counted per GEMM.
            const std::vector<OutputGrid> grids = c.transposed ? transposed_gemm_grids(Ho, Wo, c.k, c.s, c.p) : std::vector<OutputGrid>{{Ho, Wo}};
            const int64_t by_tensor_copies = tensor_copy_launches(fits, c.cout, grids, OnTile::Any);
            REQUIRE(pin::cuda::kernel_launches().wgmma_tma - before.wgmma_tma == by_tensor_copies);
            REQUIRE(pin::cuda::kernel_launches().wgmma_wide - before.wgmma_wide == tensor_copy_launches(fits, c.cout, grids, OnTile::Wide));
            REQUIRE(pin::cuda::kernel_launches().wgmma_split - before.wgmma_split == tensor_copy_launches(fits, c.cout, grids, OnTile::SplitCols));
            if (c.transposed && loads == pin::cuda::WgmmaLoads::TensorCopies) REQUIRE(by_tensor_copies > 0);  // every case here reaches them
            REQUIRE((pin::cuda::kernel_launches().async > before.async) == async);
            const std::string what = name + (y_bf16 ? " -> bf16" : " -> fp32");
            // fp32 y: the sums' order only; bfloat16 y: and its rounding to 8 significant bits (2^-8 of each value).
            const double tol = y_bf16 ? 4e-3 : 1e-5;
            require_matches(y_bf16 ? from_gpu_bf16(gy, n) : from_gpu(gy, n), y.data(), n, what, tol);
            if (!c.transposed) {  // accumulate: y + conv, twice the values
                run(true);
                std::vector<float> twice(static_cast<size_t>(n));
                for (int64_t i = 0; i < n; ++i) twice[static_cast<size_t>(i)] = 2 * y.data()[i];
                require_matches(y_bf16 ? from_gpu_bf16(gy, n) : from_gpu(gy, n), twice.data(), n, what + " accumulate", 2 * tol);
            }
        }
        if (!c.transposed && c.cout != 1) {
            // The input gradient from a bfloat16 dy (the training step's): a transposed gather over dy
            // whose gathered channels are the output channels, on the warpgroup-MMA kernel where they
            // are a multiple of 64 (by sub-pixel class at stride 2: a 1 x 1 stride-2 gather's one class
            // with a tap, and its three without have their pixels stored as empty sums).
            const Bf16Upload udy = to_gpu_bf16(rnd({c.b, c.cout, Ho, Wo}, 43));
            Tensor dx = Tensor::empty({c.b, c.cin, c.h, c.w}, Layout::NHWC);
            cpu::conv2d_backward_input(udy.rounded, uw.rounded, dx, cpu::Conv2dParams{c.k, c.s, c.p});
            const pin::cuda::DeviceBuffer gdx = to_gpu(rnd(dx.shape(), 36));  // overwritten: every value, reached or not
            const pin::cuda::KernelLaunches before = pin::cuda::kernel_launches();
            pin::cuda::conv2d_backward_input(bf16_view(udy.buffer), gw.data(), gdx.data(), s);
            const bool on_wgmma = c.cout % 64 == 0 && c.cin % 8 == 0;
            REQUIRE((pin::cuda::kernel_launches().wgmma > before.wgmma) == on_wgmma);
            // A transposed gather over dy (by sub-pixel class at stride 2), fed by tensor copies
            // where dx's rows (a class's) fit the tile.
            const std::vector<OutputGrid> din_grids = transposed_gemm_grids(c.h, c.w, c.k, c.s, c.p);
            REQUIRE(pin::cuda::kernel_launches().wgmma_tma - before.wgmma_tma == tensor_copy_launches(on_wgmma, c.cin, din_grids, OnTile::Any));
            REQUIRE(pin::cuda::kernel_launches().wgmma_wide - before.wgmma_wide == tensor_copy_launches(on_wgmma, c.cin, din_grids, OnTile::Wide));
            REQUIRE(pin::cuda::kernel_launches().wgmma_split - before.wgmma_split ==
                    tensor_copy_launches(on_wgmma, c.cin, din_grids, OnTile::SplitCols));
            const std::string what = name + " input gradient";
            // Two fp32 orders of K = 9 cout products: the differences grow with K (64 -> 256's
            // 2304 terms reach 1.2e-5 of the largest value on every pipeline).
            const double dx_tol = 1e-5 * std::max(1.0, static_cast<double>(c.cout * c.k * c.k) / 1152.0);
            require_matches(from_gpu(gdx, dx.numel()), dx.data(), dx.numel(), what, dx_tol);
            require_accumulates_input_gradient(bf16_view(udy.buffer), gw.data(), s, dx, what + " accumulate", 2 * dx_tol);
            // The weight gradient from bfloat16 x and dy: on the warpgroup-MMA kernel wherever the
            // channel counts are multiples of 8 (M/N-major operands, K split along the pixels).
            Tensor dw = Tensor::empty(uw.rounded.shape(), Layout::NCHW);
            cpu::conv2d_backward_weight(ux.rounded, udy.rounded, dw, cpu::Conv2dParams{c.k, c.s, c.p});
            pin::cuda::DeviceBuffer gdw(static_cast<size_t>(dw.numel()));
            const pin::cuda::KernelLaunches before_dw = pin::cuda::kernel_launches();
            pin::cuda::conv2d_backward_weight(bf16_view(ux.buffer), bf16_view(udy.buffer), gdw.data(), s);
            const pin::cuda::KernelLaunches after_dw = pin::cuda::kernel_launches();
            REQUIRE(after_dw.wgmma > before_dw.wgmma);  // every case here has both channel counts multiples of 8
            REQUIRE(after_dw.async == before_dw.async);
            require_matches(from_gpu(gdw, dw.numel()), dw.data(), dw.numel(), name + " weight gradient", 1e-5);
        }
    }
}
}  // namespace

TEST_CASE("The warpgroup-MMA convolutions match the CPU's on the same bfloat16 values", "[cuda][wgmma]") {
    if (!wgmma_or_skip()) return;
    check_wgmma_convolutions(WgmmaPipelines::EveryWarpCopies, pin::cuda::WgmmaLoads::CpAsync);
}
TEST_CASE("The warp-specialized warpgroup-MMA convolutions match the CPU's on the same bfloat16 values", "[cuda][ws]") {
    if (!wgmma_or_skip()) return;
    check_wgmma_convolutions(WgmmaPipelines::WarpSpecialized, pin::cuda::WgmmaLoads::CpAsync);
}
TEST_CASE("The warpgroup-MMA convolutions fed by tensor copies match the CPU's", "[cuda][tma]") {
    if (!wgmma_or_skip()) return;
    check_wgmma_convolutions(WgmmaPipelines::WarpSpecialized, pin::cuda::WgmmaLoads::TensorCopies);
}
TEST_CASE("The warpgroup-MMA convolutions on the wide m64n256k16 tiles match the CPU's", "[cuda][wide]") {
    if (!wgmma_or_skip()) return;
    check_wgmma_convolutions(WgmmaPipelines::WarpSpecialized, pin::cuda::WgmmaLoads::TensorCopies, pin::cuda::WgmmaMmaN::N256);
}

// The weight gradients on the warpgroup-MMA kernel (M/N-major operands), beyond the shapes above:
// K split along the pixels (64 -> 64 over 4 x 23 x 23 = 2116 pixels: 5 row tiles, so split_for
// gives 2 chunks of 1088, the second ending mid-slice), the fewest channels it takes with a stride
// and a partial column tile (8 -> 24, stride 2), and the 128-column tile (128 -> 128). The weight
// gradients have no warp-specialized kernel: with those pipelines set they run WaitEachSlice's,
// which is why this case keeps both families under [wgmma].
TEST_CASE("The warpgroup-MMA weight gradients match the CPU's on the same bfloat16 values", "[cuda][wgmma]") {
    if (!wgmma_or_skip()) return;
    const WgmmaPipelines family = GENERATE(WgmmaPipelines::EveryWarpCopies, WgmmaPipelines::WarpSpecialized);
    PIN_EACH_WGMMA_PIPELINE(family);
    pin::cuda::set_math_mode(pin::cuda::MathMode::BF16);
    pin::cuda::set_gather_mode(pin::cuda::GatherMode::Vector);
    pin::cuda::set_async_tile(pin::cuda::AsyncTileShape::Wgmma);
    struct Case {
        int64_t b, h, w, cin, cout, k, s, p;
    };
    for (const Case& c : {Case{4, 23, 23, 64, 64, 3, 1, 1}, Case{3, 10, 9, 8, 24, 3, 2, 1}, Case{2, 12, 11, 128, 128, 3, 1, 1}}) {
        const std::string name = "wgmma weight gradient " + std::to_string(c.cin) + "->" + std::to_string(c.cout) + " s" + std::to_string(c.s) +
                                 " over " + std::to_string(c.b) + "x" + std::to_string(c.h) + "x" + std::to_string(c.w);
        INFO(name);
        const pin::cuda::ConvShape s{c.b, c.h, c.w, c.cin, c.cout, c.k, c.s, c.p, 0};
        const int64_t Ho = pin::cuda::conv2d_out(s, c.h), Wo = pin::cuda::conv2d_out(s, c.w);
        const Bf16Upload ux = to_gpu_bf16(rnd({c.b, c.cin, c.h, c.w}, 61)), udy = to_gpu_bf16(rnd({c.b, c.cout, Ho, Wo}, 62));
        Tensor dw = Tensor::empty({c.cout, c.cin, c.k, c.k}, Layout::NCHW);
        cpu::conv2d_backward_weight(ux.rounded, udy.rounded, dw, cpu::Conv2dParams{c.k, c.s, c.p});
        pin::cuda::DeviceBuffer gdw(static_cast<size_t>(dw.numel()));
        const pin::cuda::KernelLaunches before = pin::cuda::kernel_launches();
        pin::cuda::conv2d_backward_weight(bf16_view(ux.buffer), bf16_view(udy.buffer), gdw.data(), s);
        REQUIRE(pin::cuda::kernel_launches().wgmma == before.wgmma + 1);
        require_matches(from_gpu(gdw, dw.numel()), dw.data(), dw.numel(), name, 1e-5);
    }
}

// ops.cuh GatherCaching: L1 changes only the cache hint of the gathered operand's copies
// (cp.async.ca for .cg), so every kernel that copies one (the asynchronous-copy kernel in all three
// passes, the warpgroup-MMA kernel's forward and input gradient) gives the same bits either way.
// Under the emulation the hint is also counted, so there the test sees that the setting reaches
// the copies of every pass, and only with L1.
#if defined(PIN_TESTS_ON_EMULATION)
int64_t pin_emulation_l1_cached_copies();  // tests/emulated_backend.cpp
#endif
namespace {
// Copies made with the L1 hint so far (the emulation counts them; a GPU cannot).
int64_t l1_cached_copies() {
#if defined(PIN_TESTS_ON_EMULATION)
    return pin_emulation_l1_cached_copies();
#else
    return 0;
#endif
}
// The three passes of a 3 x 3 convolution 64 -> 128 from bfloat16 activations, weights and dy with
// the current settings: y (fp32), dx and dw, one after the other; cached[i]: pass i's copies with
// the L1 hint.
std::vector<float> bf16_conv_passes(bool kmajor, int64_t (&cached)[3]) {
    const pin::cuda::ConvShape s{2, 9, 7, 64, 128, 3, 1, 1, 0};
    const int64_t K = 9 * 64, n = 2 * 9 * 7 * 128, nx = 2 * 9 * 7 * 64;
    const Bf16Upload ux = to_gpu_bf16(rnd({2, 64, 9, 7}, 51)), udy = to_gpu_bf16(rnd({2, 128, 9, 7}, 53));
    const pin::cuda::DeviceBuffer gw = to_gpu(bf16_rounded(rnd({128, 64, 3, 3}, 52, Layout::NCHW)));
    const pin::cuda::DeviceBuffer wp = pin::cuda::pack_conv2d_forward_weight(gw.data(), s), wb = pin::cuda::pack_bf16(wp.data(), K * 128),
                                  wk = pin::cuda::pack_bf16_kmajor(wp.data(), K, 128);
    pin::cuda::DeviceBuffer gy(static_cast<size_t>(n)), gdx(static_cast<size_t>(nx)), gdw(static_cast<size_t>(K * 128));
    int64_t count = l1_cached_copies();
    auto counted = [&](int pass) {
        const int64_t now = l1_cached_copies();
        cached[pass] = now - count, count = now;
    };
    pin::cuda::conv2d_forward(bf16_view(ux.buffer), gw.data(), gy.data(), s, nullptr, nullptr, false,
                              pin::cuda::PackedWeight(wp.data(), pin::cuda::bf16_data(wb), kmajor ? pin::cuda::bf16_data(wk) : nullptr));
    counted(0);
    pin::cuda::conv2d_backward_input(bf16_view(udy.buffer), gw.data(), gdx.data(), s);
    counted(1);
    pin::cuda::conv2d_backward_weight(bf16_view(ux.buffer), bf16_view(udy.buffer), gdw.data(), s);
    counted(2);
    std::vector<float> all = from_gpu(gy, n);
    for (const std::vector<float>& v : {from_gpu(gdx, nx), from_gpu(gdw, K * 128)}) all.insert(all.end(), v.begin(), v.end());
    return all;
}
void require_gather_caching_changes_no_bit(pin::cuda::AsyncTileShape tile) {
    const pin::cuda::KernelSettingsScope settings_scope;
    pin::cuda::set_math_mode(pin::cuda::MathMode::BF16);
    pin::cuda::set_gather_mode(pin::cuda::GatherMode::Vector);
    pin::cuda::set_async_tile(tile);
    std::vector<float> got[2];
    for (const pin::cuda::GatherCaching caching : {pin::cuda::GatherCaching::L2, pin::cuda::GatherCaching::L1}) {
        const bool l1 = caching == pin::cuda::GatherCaching::L1;
        INFO("gather caching " << (l1 ? "L1" : "L2"));
        pin::cuda::set_gather_caching(caching);
        const pin::cuda::KernelLaunches before = pin::cuda::kernel_launches();
        int64_t cached[3] = {};
        got[l1] = bf16_conv_passes(tile == pin::cuda::AsyncTileShape::Wgmma, cached);
        const pin::cuda::KernelLaunches after = pin::cuda::kernel_launches();
        // With the wgmma tile all three passes on the warpgroup MMA (64 and 128 gathered channels;
        // the weight gradient's 64 and 128 channels multiples of 8), else on the asynchronous-copy kernel.
        REQUIRE(after.async - before.async == (tile == pin::cuda::AsyncTileShape::Wgmma ? 0 : 3));
        REQUIRE(after.wgmma - before.wgmma == (tile == pin::cuda::AsyncTileShape::Wgmma ? 3 : 0));
#if defined(PIN_TESTS_ON_EMULATION)
        // Each pass copies its gathered operand with the hint exactly when L1 is set: at least the
        // whole operand once (126 pixels x 9 taps x 64 or 128 channels, 8 a copy; more where
        // several column tiles copy the same rows or a tile's rows run past the pixels).
        for (int pass = 0; pass < 3; ++pass) {
            INFO("pass " << pass << ": " << cached[pass] << " copies with the L1 hint");
            REQUIRE(cached[pass] >= (l1 ? 126 * 9 * (pass == 1 ? 128 : 64) / 8 : 0));
            if (!l1) REQUIRE(cached[pass] == 0);
        }
#else
        (void)cached;
#endif
    }
    REQUIRE(got[0].size() == got[1].size());
    int64_t differ = 0;
    for (size_t i = 0; i < got[0].size(); ++i) differ += std::memcmp(&got[0][i], &got[1][i], sizeof(float)) != 0;
    REQUIRE(differ == 0);
}
}  // namespace

TEST_CASE("GatherCaching::L1 gives the asynchronous-copy kernel's bits in all three passes", "[cuda][conv][bf16]") {
    if (!gpu_or_skip()) return;
    require_gather_caching_changes_no_bit(pin::cuda::AsyncTileShape::Cols64);
}
TEST_CASE("GatherCaching::L1 gives the warpgroup-MMA kernel's bits", "[cuda][wgmma]") {
    if (!wgmma_or_skip()) return;
    require_gather_caching_changes_no_bit(pin::cuda::AsyncTileShape::Wgmma);
}

// A process may move between devices (cudaSetDevice; the current device is per host thread). A
// kernel's attributes (its shared memory over 48 KB, its carveout) belong to each device, and the
// blocks the caching allocator hands out again must be the current device's. On one device, on
// another, and back on the first, the warpgroup-MMA GEMM with each pipeline matches the float64
// products, and its operands and C lie on the device it ran on. (The emulated runtime has two
// devices; a GPU machine with one skips.) Once for each family of pipelines (the warp-specialized
// kernels set their shared memory over 48 KB on each device).
namespace {
void check_follows_device(WgmmaPipelines family) {
    int devices = 0, first = 0;
    REQUIRE(cudaGetDeviceCount(&devices) == cudaSuccess);
    REQUIRE(cudaGetDevice(&first) == cudaSuccess);
    if (devices < 2) {
        WARN("SKIPPED: one CUDA device; this test moves between two");
        return;
    }
    struct BackTo {
        int device;
        ~BackTo() { (void)cudaSetDevice(device); }
    } const back{first};
    PIN_EACH_WGMMA_PIPELINE(family);
    const int64_t M = 200, N = 136, K = 72;
    const Tensor a = rnd({M, K}, 21, Layout::NCHW), b = rnd({N, K}, 22, Layout::NCHW);
    const Tensor a16 = bf16_rounded(a), b16 = bf16_rounded(b);
    const std::vector<float> want = float64_products(a16.data(), b16.data(), M, N, K);
    const auto device_of = [](const void* p) {
        cudaPointerAttributes attributes{};
        REQUIRE(cudaPointerGetAttributes(&attributes, p) == cudaSuccess);
        return attributes.device;
    };
    const int other = (first + 1) % devices;
    for (const int device : {first, other, first}) {
        INFO("device " << device);
        REQUIRE(cudaSetDevice(device) == cudaSuccess);
        std::string reason;
        if (!pin::cuda::wgmma_supported(&reason)) {
            WARN("SKIPPED on device " << device << ": " << reason);
            continue;
        }
        const Bf16Upload ga = to_gpu_bf16(a), gb = to_gpu_bf16(b);
        pin::cuda::DeviceBuffer c(static_cast<size_t>(M * N));
        pin::cuda::gemm_bf16_wgmma(bf16_view(ga.buffer), bf16_view(gb.buffer), c.data(), M, N, K);
        require_matches(from_gpu(c, M * N), want.data(), M * N, "wgmma GEMM on device " + std::to_string(device), 1e-5);
        REQUIRE(device_of(ga.buffer.data()) == device);
        REQUIRE(device_of(gb.buffer.data()) == device);
        REQUIRE(device_of(c.data()) == device);
    }
}
}  // namespace
TEST_CASE("The kernels and the caching allocator follow the calling thread's device", "[cuda][wgmma]") {
    if (!wgmma_or_skip()) return;
    check_follows_device(WgmmaPipelines::EveryWarpCopies);
}
TEST_CASE("The warp-specialized kernels and the caching allocator follow the calling thread's device", "[cuda][ws]") {
    if (!wgmma_or_skip()) return;
    check_follows_device(WgmmaPipelines::WarpSpecialized);
}

// The check behind GPU tuning (gpu_tuning.hpp compare_with_fp32), on host values: p within its
// tolerance, faces compared only for images whose masks agree, and nothing non-finite passes.
TEST_CASE("GPU tuning accepts a configuration only where it agrees with the fp32 forward", "[cuda][tune]") {
    namespace pc = pin::cuda;
    const int64_t B = 3, N = 5, D = 7;
    std::vector<float> p(B * N), q(B * N), y(B * D);
    for (int64_t i = 0; i < B * N; ++i) p[i] = 0.1f + 0.05f * static_cast<float>(i % 13), q[i] = static_cast<float>(i % 3 == 0);
    for (int64_t i = 0; i < B * D; ++i) y[i] = std::sin(0.7f * static_cast<float>(i)) * 0.9f;
    pc::TuningOptions options;
    options.p_tolerance = 8e-2, options.face_tolerance = 2e-2;  // of their largest
    auto check = [&](std::vector<float> p2, std::vector<float> q2, std::vector<float> y2) { return pc::compare_with_fp32(p2, q2, y2, p, q, y, B, options); };
    const pc::TuningResult same = check(p, q, y);
    REQUIRE(same.target == pc::TuningTarget::DefenseForward);
    REQUIRE(same.accepted);
    REQUIRE(same.p_error == 0);
    REQUIRE(same.faces_checked == B);
    std::vector<float> p_off = p;
    p_off[7] += 0.1f * 0.8f;  // 0.1 of the largest p (0.7 + 0.1)
    const pc::TuningResult far = check(p_off, q, y);
    REQUIRE_FALSE(far.accepted);
    REQUIRE_THAT(far.why, Catch::StartsWith("p differs from the fp32 forward's by 0.1"));
    p_off[7] = p[7] + 0.05f * 0.8f;  // within
    REQUIRE(check(p_off, q, y).accepted);
    std::vector<float> y_off = y;
    y_off[D + 2] += 0.05f;  // image 1's face, its mask the same: compared, and too far
    const pc::TuningResult face = check(p, q, y_off);
    REQUIRE_FALSE(face.accepted);
    REQUIRE_THAT(face.why, Catch::StartsWith("the defended faces differ"));
    std::vector<float> q_flip = q;
    q_flip[N + 1] = 1 - q_flip[N + 1];  // image 1's mask differs in a bit: its face is not compared
    const pc::TuningResult flipped = check(p, q_flip, y_off);
    REQUIRE(flipped.accepted);
    REQUIRE(flipped.faces_checked == B - 1);
    std::vector<float> y_nan = y;
    y_nan[2 * D] = NAN;
    REQUIRE_FALSE(check(p, q, y_nan).accepted);
    std::vector<float> p_nan = p;
    p_nan[0] = INFINITY;
    REQUIRE_FALSE(check(p_nan, q, y).accepted);
}

// The configurations tuning tries: eleven, each with an id of its own (`pin --gpu-tune-only` takes
// them) and settings of its own; the device's list is all of them where it runs the warpgroup MMA,
// else the three that do not need it.
TEST_CASE("GPU tuning's configurations have distinct ids and settings", "[cuda][tune]") {
    namespace pc = pin::cuda;
    const std::vector<pc::TuningCandidate> all = pc::all_bf16_candidates();
    REQUIRE(all.size() == 11);
    for (size_t i = 0; i < all.size(); ++i) {
        INFO(all[i].id);
        REQUIRE(all[i].settings.math == pc::MathMode::BF16);
        REQUIRE((all[i].settings.tile == pc::AsyncTileShape::Wgmma) == (i >= 3));
        for (size_t j = 0; j < i; ++j) {
            const pc::KernelSettings &a = all[i].settings, &b = all[j].settings;
            REQUIRE(all[i].id != all[j].id);
            REQUIRE(all[i].name != all[j].name);
            REQUIRE_FALSE((a.tile == b.tile && a.pipeline == b.pipeline && a.caching == b.caching && a.loads == b.loads && a.mma_n == b.mma_n));
        }
    }
    if (!gpu_or_skip()) return;
    const std::vector<pc::TuningCandidate> here = pc::bf16_candidates();
    REQUIRE(here.size() == (pc::wgmma_supported() ? 11u : 3u));
    for (size_t i = 0; i < here.size(); ++i) REQUIRE(here[i].id == all[i].id);
}

// The training step's check (gpu_tuning.hpp compare_training_with_fp32), on host values: each
// tensor's gradient within its tolerance of the reference's norm, the furthest named; the norm
// before clipping and the mean cost within theirs; nothing non-finite passes.
TEST_CASE("GPU tuning accepts a training-step configuration only where it agrees with the fp32 step", "[cuda][tune]") {
    namespace pc = pin::cuda;
    pc::TrainingStepOutputs ref;
    ref.names = {"esn.conv1.weight", "esn.block1.conv1.weight", "head.fc2.bias"};
    for (size_t k = 0; k < ref.names.size(); ++k) {
        std::vector<float> g(17 + 5 * k);
        for (size_t i = 0; i < g.size(); ++i) g[i] = std::cos(0.9f * static_cast<float>(i + 3 * k)) * (0.5f + static_cast<float>(k));
        ref.gradients.push_back(g);
    }
    ref.grad_norm = 3.7, ref.mean_cost = 0.42;
    pc::TuningOptions options;  // the defaults: gradients 0.7 of their norm, norm 0.1, cost 1e-2
    auto norm_of = [](const std::vector<float>& g) {
        double n = 0;
        for (const float v : g) n += static_cast<double>(v) * v;
        return std::sqrt(n);
    };
    // Tensor 1 moved by `fraction` of its norm along its first element.
    auto moved = [&](double fraction) {
        pc::TrainingStepOutputs got = ref;
        got.gradients[1][0] += static_cast<float>(fraction * norm_of(ref.gradients[1]));
        return got;
    };
    const pc::TuningResult same = pc::compare_training_with_fp32(ref, ref, options);
    REQUIRE(same.target == pc::TuningTarget::TrainingStep);
    REQUIRE(same.accepted);
    REQUIRE(same.gradient_error == 0);
    const pc::TuningResult near = pc::compare_training_with_fp32(moved(0.3), ref, options);
    REQUIRE(near.accepted);
    REQUIRE(near.gradient_error == Approx(0.3).epsilon(1e-4));
    REQUIRE(near.furthest_tensor == "esn.block1.conv1.weight");
    const pc::TuningResult far = pc::compare_training_with_fp32(moved(0.9), ref, options);
    REQUIRE_FALSE(far.accepted);
    REQUIRE_THAT(far.why, Catch::StartsWith("the gradient of esn.block1.conv1.weight differs from the fp32 step's by 0.9"));
    pc::TrainingStepOutputs got = ref;
    got.grad_norm = ref.grad_norm * 1.2;
    REQUIRE_THAT(pc::compare_training_with_fp32(got, ref, options).why, Catch::StartsWith("the gradient's norm differs"));
    got = ref;
    got.mean_cost = ref.mean_cost * 1.02;
    REQUIRE_THAT(pc::compare_training_with_fp32(got, ref, options).why, Catch::StartsWith("the mean cost differs"));
    got.mean_cost = ref.mean_cost * 1.005;
    REQUIRE(pc::compare_training_with_fp32(got, ref, options).accepted);
    for (const float bad : {NAN, INFINITY}) {
        got = ref;
        got.gradients[2][4] = bad;  // after a finite tensor: the non-finite one still counts
        const pc::TuningResult r = pc::compare_training_with_fp32(got, ref, options);
        REQUIRE_FALSE(r.accepted);
        REQUIRE(r.furthest_tensor == "head.fc2.bias");
        got = ref;
        got.mean_cost = bad;
        REQUIRE_FALSE(pc::compare_training_with_fp32(got, ref, options).accepted);
    }
    got = ref;
    got.names[0] = "esn.other.weight";
    REQUIRE_THROWS(pc::compare_training_with_fp32(got, ref, options));
}

// What the default on_hang prints (gpu_tuning.hpp hang_message): the configuration that hung and
// the ids of the others to tune with, in the caller's option where it names one; without tuning
// where the fp32 reference hung or nothing else was asked for.
TEST_CASE("GPU tuning's hang message names the configuration and how to tune without it", "[cuda][tune]") {
    namespace pc = pin::cuda;
    const std::vector<pc::TuningCandidate> all = pc::all_bf16_candidates();
    const std::vector<pc::TuningCandidate> three = {all[0], all[3], all[5]};
    pc::TuningOptions options;
    const std::string hung = "'" + all[3].name + "'";
    REQUIRE(pc::hang_message(hung, three, options) == "pin: GPU tuning: " + hung +
                                                          " did not finish; its kernels may never end on this GPU. Tune without it: the "
                                                          "configurations " + all[0].id + "," + all[5].id);
    options.caller = "pin defend";
    options.only_option = "--gpu-tune-only";
    const std::string line = pc::hang_message(hung, three, options);
    REQUIRE_THAT(line, Catch::StartsWith("pin defend: GPU tuning: " + hung + " did not finish"));
    REQUIRE_THAT(line, Catch::EndsWith("Tune without it: --gpu-tune-only " + all[0].id + "," + all[5].id));
    REQUIRE(line.find('\n') == std::string::npos);
    REQUIRE_THAT(pc::hang_message("the fp32 forward", three, options), Catch::EndsWith("on this GPU. Run without tuning."));
    REQUIRE_THAT(pc::hang_message(hung, {all[3]}, options), Catch::EndsWith("Run without tuning."));
}

// The deadline that GPU tuning keeps on each configuration: on_hang with the armed name once the
// time passes; never after disarm or a later arm.
TEST_CASE("The tuning watchdog calls on_hang only when an armed deadline passes", "[cuda][tune]") {
    std::mutex m;
    std::vector<std::string> hung;
    {
        pin::cuda::Watchdog dog([&](const std::string& what) {
            std::lock_guard<std::mutex> lock(m);
            hung.push_back(what);
        });
        dog.arm("quick", 30);
        dog.disarm();
        dog.arm("replaced", 30);
        dog.arm("slow", 0.05);
        // Until it fires (a loaded machine may wake the watchdog late), at most 20 s.
        for (int i = 0; i < 2000; ++i) {
            {
                std::lock_guard<std::mutex> lock(m);
                if (!hung.empty()) break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));  // and no second call for the same arm
        dog.arm("last", 30);
    }  // destroyed while armed: no call
    REQUIRE(hung == std::vector<std::string>{"slow"});
}

#if defined(PIN_TESTS_ON_EMULATION)
// A device the build has no code for (its compute capability not in CMAKE_CUDA_ARCHITECTURES) is
// refused before any work, naming its compute capability, the build's architectures and the
// configure flag that would build for it, where the first launch would fail with "no kernel image".
// The emulated runtime reports such a device with PIN_EMULATE_NO_KERNEL_IMAGE=1.
TEST_CASE("device_available refuses a device the build has no kernels for, saying how to build for it", "[cuda][device]") {
    std::string reason;
    REQUIRE(pin::cuda::device_available(&reason));
    REQUIRE(setenv("PIN_EMULATE_NO_KERNEL_IMAGE", "1", 1) == 0);
    struct Unset {
        ~Unset() { unsetenv("PIN_EMULATE_NO_KERNEL_IMAGE"); }
    } const unset;
    REQUIRE_FALSE(pin::cuda::device_available(&reason));
    INFO(reason);
    REQUIRE_THAT(reason, Catch::Contains("compute capability 9.0") && Catch::Contains("CUDA architectures 90 (the CPU emulation)") &&
                             Catch::Contains("no kernel image is available") && Catch::EndsWith("-DCMAKE_CUDA_ARCHITECTURES=90"));
}

// The 256 x 128 asynchronous-copy tiles take 135 KB of shared memory: more than a block of the 8.6
// and 8.9 cards may have (99 KB), on which the sm_80 build runs. There --gpu-tile 128 falls back to
// the 256 x 64 tile (75 KB) in all three passes instead of failing every launch; emulated with
// PIN_EMULATE_SHARED_PER_BLOCK, under which a launch of the wider tile fails as on such a card.
TEST_CASE("The 256 x 128 tile gives way to the 256 x 64 one on a device with 99 KB of shared memory a block", "[cuda][device]") {
    const pin::cuda::KernelSettingsScope scope;
    pin::cuda::set_math_mode(pin::cuda::MathMode::BF16);
    pin::cuda::set_gather_mode(pin::cuda::GatherMode::Vector);
    pin::cuda::set_async_tile(pin::cuda::AsyncTileShape::Cols128);
    // 128 -> 128: the forward's, the input gradient's and the weight gradient's GEMMs all have 128 columns.
    const pin::cuda::ConvShape s{2, 7, 6, 128, 128, 3, 1, 1, 0};
    const Tensor x = rnd({2, 128, 7, 6}, 41), w = rnd({128, 128, 3, 3}, 42, Layout::NCHW), dy = rnd({2, 128, 7, 6}, 43);
    const Bf16Upload ux = to_gpu_bf16(x), udy = to_gpu_bf16(dy);
    const pin::cuda::DeviceBuffer gw = to_gpu(w);
    const pin::cuda::DeviceBuffer wp = pin::cuda::pack_conv2d_forward_weight(gw.data(), s);
    const pin::cuda::DeviceBuffer wb = pin::cuda::pack_bf16(wp.data(), 3 * 3 * 128 * 128);
    const pin::cuda::PackedWeight pw(wp.data(), pin::cuda::bf16_data(wb));
    Tensor y = Tensor::empty({2, 128, 7, 6}, Layout::NHWC), dx = Tensor::empty(x.shape(), Layout::NHWC), dw = Tensor::empty(w.shape(), Layout::NCHW);
    cpu_conv_forward(ux.rounded, w, y, s, false, {});
    cpu::conv2d_backward_input(udy.rounded, w, dx, cpu::Conv2dParams{3, 1, 1});
    cpu::conv2d_backward_weight(ux.rounded, udy.rounded, dw, cpu::Conv2dParams{3, 1, 1});
    // Runs the three passes; checks them against the CPU and that each ran on the asynchronous-copy
    // kernel, on its 256 x 128 tile exactly when `wide`.
    auto check_passes = [&](bool wide) {
        const std::string device = wide ? " (227 KB a block)" : " (99 KB a block)";
        pin::cuda::DeviceBuffer gy(static_cast<size_t>(y.numel())), gdx(static_cast<size_t>(dx.numel())), gdw(static_cast<size_t>(dw.numel()));
        const pin::cuda::ConstActivations gx = bf16_view(ux.buffer), gdy = bf16_view(udy.buffer);
        auto pass = [&](const char* what, auto run) {
            const pin::cuda::KernelLaunches before = pin::cuda::kernel_launches();
            run();
            INFO(what << device);
            REQUIRE(pin::cuda::kernel_launches().async > before.async);
            REQUIRE((pin::cuda::kernel_launches().async_cols128 > before.async_cols128) == wide);
        };
        pass("forward", [&] { pin::cuda::conv2d_forward(gx, gw.data(), gy.data(), s, nullptr, nullptr, false, pw); });
        pass("input gradient", [&] { pin::cuda::conv2d_backward_input(gdy, gw.data(), gdx.data(), s); });
        pass("weight gradient", [&] { pin::cuda::conv2d_backward_weight(gx, gdy, gdw.data(), s); });
        require_matches(from_gpu(gy, y.numel()), y.data(), y.numel(), "forward" + device);
        require_matches(from_gpu(gdx, dx.numel()), dx.data(), dx.numel(), "input gradient" + device);
        require_matches(from_gpu(gdw, dw.numel()), dw.data(), dw.numel(), "weight gradient" + device, 1e-3);
    };
    check_passes(true);
    REQUIRE(setenv("PIN_EMULATE_SHARED_PER_BLOCK", "101376", 1) == 0);
    struct Unset {
        ~Unset() { unsetenv("PIN_EMULATE_SHARED_PER_BLOCK"); }
    } const unset;
    check_passes(false);
}
#endif

#endif
