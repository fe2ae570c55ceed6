// pin/cpu/conv2d.hpp - 2-D convolution (no bias), forward and both backward passes, on the CPU.
//
// Tensors: activations are rank 4, shapes in NCHW order, stored channels-last (Layout::NHWC);
// weights are (out_channels, in_channels, k, k) in PyTorch's order, stored NCHW.
// 3x3 kernels with padding 1 at stride 1 or 2 (every 3x3 layer of PIN) run through the Winograd
// forms of winograd.hpp when both channel counts are at least kWinogradMinChannels; everything
// else, and any call with ConvAlgorithm::direct, runs as gather convolutions (conv_kernels.hpp):
//   forward          taps (kh - pad, kw - pad) at stride s over the output grid
//   backward_input   for each of the s*s sub-pixel classes (a, b) of the input, the taps with
//                    (a + pad - kh) divisible by s, at stride 1: no zero-stuffing, no col2im scatter
//   backward_weight  tap_weight_gradient over the output grid
#pragma once
#include <cstdint>

#include "pin/core/tensor.hpp"
#include "pin/cpu/conv_kernels.hpp"
#include "pin/cpu/winograd.hpp"

namespace pin::cpu {

struct Conv2dParams {
    int64_t kernel = 3;
    int64_t stride = 1;
    int64_t padding = 1;
    ConvAlgorithm algorithm = ConvAlgorithm::automatic;
};

// Below this many input or output channels the transforms cost more than the products save (the
// first layer has one input channel, the last one output channel).
constexpr int64_t kWinogradMinChannels = 32;

// Whether a convolution pass with these channel counts runs through winograd.hpp. The automatic
// choice follows `pin-bench layers --backward --algorithm direct|winograd` on the Xeon of
// docs/benchmarks.md (best GF/s, direct-convolution FLOPs):
//   stride 1: Winograd for all three passes (forward 1.6-1.9x the direct speed), except the
//             weight gradient of 512 x 512 channels (7 x 7 grid: a quarter of its tiles is padding);
//   stride 2: Winograd for the forward and input gradient up to 256 x 256 channels (1.05-1.15x),
//             direct for 512 x 512 (its 26 MB of transformed weights) and for every weight
//             gradient (the direct one was 1.1-1.35x faster there in every measured case).
// ConvAlgorithm::winograd on a geometry the forms do not cover (not 3x3, padding 1, stride 1 or 2)
// is an error, not a silent fallback.
inline bool conv2d_uses_winograd(const Conv2dParams& p, int64_t cin, int64_t cout, bool weight_gradient = false) {
    const bool covered = p.kernel == 3 && p.padding == 1 && (p.stride == 1 || p.stride == 2);
    PIN_CHECK(covered || p.algorithm != ConvAlgorithm::winograd, "conv2d: the Winograd form covers 3x3 kernels with ",
              "padding 1 at stride 1 or 2, not kernel ", p.kernel, " stride ", p.stride, " padding ", p.padding);
    if (!covered || p.algorithm == ConvAlgorithm::direct) return false;
    if (p.algorithm == ConvAlgorithm::winograd) return true;
    if (cin < kWinogradMinChannels || cout < kWinogradMinChannels) return false;
    if (p.stride == 1) return !weight_gradient || cin * cout < 512 * 512;
    return !weight_gradient && cin * cout <= 256 * 256;
}

inline int64_t conv2d_output_size(int64_t in, const Conv2dParams& p) {
    return (in + 2 * p.padding - p.kernel) / p.stride + 1;
}

namespace detail {
inline void check_conv_args(const Tensor& x, const Tensor& w, const Conv2dParams& p, const char* op) {
    PIN_CHECK(p.kernel >= 1 && p.stride >= 1 && p.padding >= 0, op, ": bad geometry kernel=", p.kernel,
              " stride=", p.stride, " padding=", p.padding);
    PIN_CHECK(x.rank() == 4 && x.layout() == Layout::NHWC, op, ": activations must be rank-4 NHWC, got shape ",
              shape_to_string(x.shape()));
    PIN_CHECK(w.rank() == 4 && w.dim(2) == p.kernel && w.dim(3) == p.kernel, op, ": weight shape ",
              shape_to_string(w.shape()), " does not match kernel ", p.kernel);
}

// Taps of a forward convolution: (kh - pad, kw - pad) for every kernel position.
inline GatherConvGeometry conv2d_forward_geometry(int64_t batch, int64_t h, int64_t w, int64_t cin, int64_t cout,
                                                  const Conv2dParams& p) {
    GatherConvGeometry g;
    g.batch = batch;
    g.src_h = h;
    g.src_w = w;
    g.src_channels = cin;
    g.grid_h = conv2d_output_size(h, p);
    g.grid_w = conv2d_output_size(w, p);
    g.src_stride = p.stride;
    for (int64_t kh = 0; kh < p.kernel; ++kh)
        for (int64_t kw = 0; kw < p.kernel; ++kw) {
            g.tap_dh.push_back(kh - p.padding);
            g.tap_dw.push_back(kw - p.padding);
        }
    g.dst_h = g.grid_h;
    g.dst_w = g.grid_w;
    g.dst_channels = cout;
    return g;
}

inline int64_t floor_mod(int64_t a, int64_t m) { return ((a % m) + m) % m; }

// Input gradient of a convolution whose weight is weight(co, ci, kh, kw), written into dx
// (N, in_h, in_w, cin), from dy (N, out_h, out_w, cout). Also the transposed convolution's forward.
template <typename WeightAt>
void conv2d_input_gradient(const float* dy, int64_t batch, int64_t out_h, int64_t out_w, int64_t cout, float* dx,
                           int64_t in_h, int64_t in_w, int64_t cin, const Conv2dParams& p, WeightAt weight_at,
                           const ConvEpilogue& ep) {
    const int64_t s = p.stride;
    std::vector<GatherConvGeometry> geos;
    std::vector<std::vector<int64_t>> khs, kws;
    for (int64_t a = 0; a < s; ++a)
        for (int64_t b = 0; b < s; ++b) {
            GatherConvGeometry g;
            g.batch = batch;
            g.src_h = out_h;
            g.src_w = out_w;
            g.src_channels = cout;
            g.grid_h = a < in_h ? (in_h - a + s - 1) / s : 0;
            g.grid_w = b < in_w ? (in_w - b + s - 1) / s : 0;
            g.src_stride = 1;
            std::vector<int64_t> kh_list, kw_list;
            for (int64_t kh = 0; kh < p.kernel; ++kh)
                for (int64_t kw = 0; kw < p.kernel; ++kw)
                    if (floor_mod(a + p.padding - kh, s) == 0 && floor_mod(b + p.padding - kw, s) == 0) {
                        g.tap_dh.push_back((a + p.padding - kh) / s);
                        g.tap_dw.push_back((b + p.padding - kw) / s);
                        kh_list.push_back(kh);
                        kw_list.push_back(kw);
                    }
            g.dst_h = in_h;
            g.dst_w = in_w;
            g.dst_channels = cin;
            g.dst_stride = s;
            g.dst_row0 = a;
            g.dst_col0 = b;
            if (g.grid_h == 0 || g.grid_w == 0) continue;
            // No tap reaches this class (a 1 x 1 stride-2 kernel reaches one class of four): its
            // outputs are act(0) = 0, nothing to add when accumulating.
            if (g.taps() == 0 && ep.accumulate && !ep.bias) continue;
            geos.push_back(std::move(g));
            khs.push_back(std::move(kh_list));
            kws.push_back(std::move(kw_list));
        }
    const auto weight_of = [&](size_t k) {
        return [&, k](int64_t ci, int64_t co, int64_t t) {
            return weight_at(co, ci, khs[k][static_cast<size_t>(t)], kws[k][static_cast<size_t>(t)]);
        };
    };
    // Classes with equal grids and taps everywhere run together, each task running all of them
    // on one pixel block: the block of dy is read from memory once instead of once per class.
    bool together = geos.size() > 1 && cin > kNarrowOutputChannels;
    for (const auto& g : geos)
        together = together && g.taps() > 0 && g.grid_h == geos[0].grid_h && g.grid_w == geos[0].grid_w;
    if (!together) {
        for (size_t k = 0; k < geos.size(); ++k) gather_conv(dy, geos[k], weight_of(k), dx, ep);
        return;
    }
    std::vector<Tensor> packs;
    std::vector<const GatherConvGeometry*> gptr;
    std::vector<const float*> wptr;
    for (size_t k = 0; k < geos.size(); ++k) {
        packs.push_back(pack_gather_weights(cin, cout, geos[k].taps(), weight_of(k)));
        gptr.push_back(&geos[k]);
        wptr.push_back(packs.back().data());
    }
    gather_conv_packed_classes(dy, gptr.data(), wptr.data(), static_cast<int64_t>(geos.size()), dx, ep);
}
}  // namespace detail

// y = conv2d(x, w). x: (N, Cin, H, W) NHWC; w: (Cout, Cin, k, k); y: (N, Cout, Ho, Wo) NHWC,
// overwritten (or, with epilogue.accumulate, added to). The epilogue may fuse a PReLU.
inline void conv2d_forward(const Tensor& x, const Tensor& w, Tensor& y, const Conv2dParams& p,
                           const ConvEpilogue& epilogue = {}) {
    detail::check_conv_args(x, w, p, "conv2d_forward");
    const int64_t N = x.n(), cin = x.c(), cout = w.dim(0);
    PIN_CHECK(w.dim(1) == cin, "conv2d_forward: weight ", shape_to_string(w.shape()), " expects ", w.dim(1),
              " input channels, input has ", cin);
    const GatherConvGeometry g = detail::conv2d_forward_geometry(N, x.h(), x.w(), cin, cout, p);
    PIN_CHECK(g.grid_h >= 1 && g.grid_w >= 1, "conv2d_forward: input ", shape_to_string(x.shape()),
              " smaller than the kernel");
    check_shape(y, {N, cout, g.grid_h, g.grid_w}, "conv2d_forward output");
    PIN_CHECK(y.layout() == Layout::NHWC, "conv2d_forward: output must be NHWC");
    const int64_t kk = p.kernel * p.kernel;
    const float* wd = w.data();
    if (conv2d_uses_winograd(p, cin, cout)) {
        const auto weight = [&](int64_t co, int64_t ci, int64_t kh, int64_t kw) { return wd[(co * cin + ci) * 9 + kh * 3 + kw]; };
        const winograd::Nhwc s{N, x.h(), x.w(), cin}, o{N, g.grid_h, g.grid_w, cout};
        if (p.stride == 1) winograd::convolve<winograd::Stride1>(x.data(), s, y.data(), o, weight, epilogue);
        else winograd::convolve<winograd::Stride2>(x.data(), s, y.data(), o, weight, epilogue);
        return;
    }
    gather_conv(
        x.data(), g, [&](int64_t co, int64_t ci, int64_t t) { return wd[(co * cin + ci) * kk + t]; }, y.data(),
        epilogue);
}

// dx = d(loss)/dx given dy = d(loss)/dy, overwriting dx (N, Cin, H, W) NHWC, or with accumulate adding to it.
inline void conv2d_backward_input(const Tensor& dy, const Tensor& w, Tensor& dx, const Conv2dParams& p,
                                  bool accumulate = false) {
    detail::check_conv_args(dx, w, p, "conv2d_backward_input");
    const int64_t N = dx.n(), cin = dx.c(), cout = w.dim(0);
    PIN_CHECK(w.dim(1) == cin, "conv2d_backward_input: weight/input channel mismatch");
    check_shape(dy, {N, cout, conv2d_output_size(dx.h(), p), conv2d_output_size(dx.w(), p)},
                "conv2d_backward_input output gradient");
    PIN_CHECK(dy.layout() == Layout::NHWC, "conv2d_backward_input: gradient must be NHWC");
    const int64_t k = p.kernel;
    const float* wd = w.data();
    if (conv2d_uses_winograd(p, cin, cout)) {
        // Read as an operation from dy (cout channels) to dx (cin channels): at stride 1 the
        // convolution with the kernel turned by 180 degrees, at stride 2 Stride2Transposed, which
        // takes the taps in the convolution's own order.
        const winograd::Nhwc s{N, dy.h(), dy.w(), cout}, o{N, dx.h(), dx.w(), cin};
        const ConvEpilogue ep{nullptr, accumulate, nullptr};
        if (p.stride == 1)
            winograd::convolve<winograd::Stride1>(
                dy.data(), s, dx.data(), o,
                [&](int64_t a, int64_t b, int64_t kh, int64_t kw) { return wd[(b * cin + a) * 9 + (2 - kh) * 3 + (2 - kw)]; }, ep);
        else
            winograd::convolve<winograd::Stride2Transposed>(
                dy.data(), s, dx.data(), o,
                [&](int64_t a, int64_t b, int64_t kh, int64_t kw) { return wd[(b * cin + a) * 9 + kh * 3 + kw]; }, ep);
        return;
    }
    detail::conv2d_input_gradient(
        dy.data(), N, dy.h(), dy.w(), cout, dx.data(), dx.h(), dx.w(), cin, p,
        [&](int64_t co, int64_t ci, int64_t kh, int64_t kw) { return wd[((co * cin + ci) * k + kh) * k + kw]; },
        ConvEpilogue{nullptr, accumulate, nullptr});
}

// dw = d(loss)/dw (Cout, Cin, k, k), overwritten.
inline void conv2d_backward_weight(const Tensor& x, const Tensor& dy, Tensor& dw, const Conv2dParams& p) {
    detail::check_conv_args(x, dw, p, "conv2d_backward_weight");
    const int64_t N = x.n(), cin = x.c(), cout = dw.dim(0);
    PIN_CHECK(dw.dim(1) == cin, "conv2d_backward_weight: weight/input channel mismatch");
    GatherConvGeometry g = detail::conv2d_forward_geometry(N, x.h(), x.w(), cin, cout, p);
    check_shape(dy, {N, cout, g.grid_h, g.grid_w}, "conv2d_backward_weight output gradient");
    PIN_CHECK(dy.layout() == Layout::NHWC, "conv2d_backward_weight: gradient must be NHWC");
    if (conv2d_uses_winograd(p, cin, cout, true)) {
        float* o = dw.data();
        const auto store = [o, cin](int64_t co, int64_t ci, int64_t kh, int64_t kw, float v) { o[(co * cin + ci) * 9 + kh * 3 + kw] = v; };
        const winograd::Nhwc s{N, x.h(), x.w(), cin}, go{N, g.grid_h, g.grid_w, cout};
        if (p.stride == 1) winograd::weight_gradient<winograd::Stride1>(x.data(), s, dy.data(), go, store);
        else winograd::weight_gradient<winograd::Stride2>(x.data(), s, dy.data(), go, store);
        return;
    }
    const int64_t kk = p.kernel * p.kernel;
    Tensor dwt = Tensor::empty({kk, cin, cout});
    tap_weight_gradient(x.data(), g, dy.data(), dwt.data(), dw.data());  // dw: (co, ci, k, k)
}

}  // namespace pin::cpu
