// pin/cpu/conv_transpose2d.hpp - transposed 2-D convolution (no bias) on the CPU.
//
// Weight (Cin, Cout, k, k) as in PyTorch's ConvTranspose2d. The transposed convolution is the
// input-gradient of the convolution with the same weight read as (conv_out = Cin, conv_in = Cout),
// so its forward is conv2d's backward_input (sub-pixel classes, no scatter), its input gradient is
// conv2d's forward and its weight gradient is conv2d's weight gradient with the roles swapped.
#pragma once
#include "pin/cpu/conv2d.hpp"

namespace pin::cpu {

struct ConvTranspose2dParams {
    int64_t kernel = 3;
    int64_t stride = 2;
    int64_t padding = 1;
    int64_t output_padding = 1;
    ConvAlgorithm algorithm = ConvAlgorithm::automatic;
    Conv2dParams as_conv() const { return {kernel, stride, padding, algorithm}; }
};

// Whether a pass runs through winograd.hpp's Stride2Transposed / Stride2 forms (stride 2 only;
// ConvAlgorithm::winograd on any other geometry is an error, as for conv2d).
inline bool conv_transpose2d_uses_winograd(const ConvTranspose2dParams& p, int64_t cin, int64_t cout,
                                           bool weight_gradient = false) {
    PIN_CHECK(p.algorithm != ConvAlgorithm::winograd || (p.kernel == 3 && p.stride == 2 && p.padding == 1),
              "conv_transpose2d: the Winograd form covers 3x3 kernels with stride 2 and padding 1, not kernel ",
              p.kernel, " stride ", p.stride, " padding ", p.padding);
    return p.stride == 2 && conv2d_uses_winograd(p.as_conv(), cin, cout, weight_gradient);
}

inline int64_t conv_transpose2d_output_size(int64_t in, const ConvTranspose2dParams& p) {
    return (in - 1) * p.stride - 2 * p.padding + p.kernel + p.output_padding;
}

namespace detail {
inline void check_conv_transpose_args(const Tensor& x, const Tensor& w, const Tensor& y,
                                      const ConvTranspose2dParams& p, const char* op) {
    PIN_CHECK(p.output_padding >= 0 && p.output_padding < std::max(p.stride, p.padding + 1), op,
              ": output_padding ", p.output_padding, " must be smaller than stride or dilation");
    PIN_CHECK(x.rank() == 4 && x.layout() == Layout::NHWC && y.rank() == 4 && y.layout() == Layout::NHWC, op,
              ": activations must be rank-4 NHWC");
    PIN_CHECK(w.rank() == 4 && w.dim(2) == p.kernel && w.dim(3) == p.kernel, op, ": weight shape ",
              shape_to_string(w.shape()), " does not match kernel ", p.kernel);
    check_shape(y, {x.n(), w.dim(1), conv_transpose2d_output_size(x.h(), p), conv_transpose2d_output_size(x.w(), p)},
                op);
    PIN_CHECK(w.dim(0) == x.c(), op, ": weight ", shape_to_string(w.shape()), " expects ", w.dim(0),
              " input channels, input has ", x.c());
}
}  // namespace detail

// y (N, Cout, Ho, Wo) NHWC = conv_transpose2d(x (N, Cin, H, W) NHWC, w (Cin, Cout, k, k)).
inline void conv_transpose2d_forward(const Tensor& x, const Tensor& w, Tensor& y, const ConvTranspose2dParams& p,
                                     const ConvEpilogue& epilogue = {}) {
    detail::check_conv_transpose_args(x, w, y, p, "conv_transpose2d_forward");
    const int64_t cin = x.c(), cout = w.dim(1), k = p.kernel;
    const float* wd = w.data();
    if (conv_transpose2d_uses_winograd(p, cin, cout)) {
        winograd::convolve<winograd::Stride2Transposed>(
            x.data(), {x.n(), x.h(), x.w(), cin}, y.data(), {y.n(), y.h(), y.w(), cout},
            [&](int64_t co, int64_t ci, int64_t kh, int64_t kw) { return wd[(ci * cout + co) * 9 + kh * 3 + kw]; },
            epilogue);
        return;
    }
    // Read as a convolution weight Wc[co = cin][ci = cout]: the same memory.
    detail::conv2d_input_gradient(
        x.data(), x.n(), x.h(), x.w(), cin, y.data(), y.h(), y.w(), cout, p.as_conv(),
        [&](int64_t co, int64_t ci, int64_t kh, int64_t kw) { return wd[((co * cout + ci) * k + kh) * k + kw]; },
        epilogue);
}

// dx (N, Cin, H, W) = gradient through the transposed convolution of dy (N, Cout, Ho, Wo).
inline void conv_transpose2d_backward_input(const Tensor& dy, const Tensor& w, Tensor& dx,
                                            const ConvTranspose2dParams& p) {
    detail::check_conv_transpose_args(dx, w, dy, p, "conv_transpose2d_backward_input");
    const int64_t cin = dx.c(), cout = w.dim(1);
    const Conv2dParams cp = p.as_conv();
    if (conv_transpose2d_uses_winograd(p, cin, cout)) {
        const float* wd = w.data();
        winograd::convolve<winograd::Stride2>(
            dy.data(), {dy.n(), dy.h(), dy.w(), cout}, dx.data(), {dx.n(), dx.h(), dx.w(), cin},
            [&](int64_t co, int64_t ci, int64_t kh, int64_t kw) { return wd[(co * cout + ci) * 9 + kh * 3 + kw]; });
        return;
    }
    GatherConvGeometry g = detail::conv2d_forward_geometry(dy.n(), dy.h(), dy.w(), cout, cin, cp);
    // The output padding rows of dy are read by no input pixel, so the grid is exactly dx.
    g.grid_h = g.dst_h = dx.h();
    g.grid_w = g.dst_w = dx.w();
    const int64_t kk = p.kernel * p.kernel;
    const float* wd = w.data();
    gather_conv(
        dy.data(), g, [&](int64_t co, int64_t ci, int64_t t) { return wd[(co * cout + ci) * kk + t]; }, dx.data());
}

// dw (Cin, Cout, k, k), overwritten.
inline void conv_transpose2d_backward_weight(const Tensor& x, const Tensor& dy, Tensor& dw,
                                             const ConvTranspose2dParams& p) {
    detail::check_conv_transpose_args(x, dw, dy, p, "conv_transpose2d_backward_weight");
    const int64_t cin = x.c(), cout = dw.dim(1), kk = p.kernel * p.kernel;
    if (conv_transpose2d_uses_winograd(p, cin, cout, true)) {
        float* o = dw.data();
        winograd::weight_gradient<winograd::Stride2Transposed>(
            x.data(), {x.n(), x.h(), x.w(), cin}, dy.data(), {dy.n(), dy.h(), dy.w(), cout},
            [o, cout](int64_t co, int64_t ci, int64_t kh, int64_t kw, float v) { o[(ci * cout + co) * 9 + kh * 3 + kw] = v; });
        return;
    }
    GatherConvGeometry g = detail::conv2d_forward_geometry(x.n(), dy.h(), dy.w(), cout, cin, p.as_conv());
    g.grid_h = x.h();
    g.grid_w = x.w();
    Tensor dwt = Tensor::empty({kk, cout, cin});
    // Convolution view: source = dy (channels cout), gradient = x (channels cin).
    // dwt is scratch ([tap][cout][cin]); the weight is (cin, cout, k, k).
    tap_weight_gradient(dy.data(), g, x.data(), dwt.data(), dw.data());
}

}  // namespace pin::cpu
