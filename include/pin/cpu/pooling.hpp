// pin/cpu/pooling.hpp - the pooling and resampling ops of the face recognizer, forward and backward
// (input gradient): max pooling and average pooling ("valid": windows inside the image), global
// average pooling, ReLU on cached outputs, and bilinear resizing (half-pixel centres, PyTorch's
// align_corners=False) with its adjoint. Activations are NHWC.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "pin/core/error.hpp"
#include "pin/core/parallel.hpp"
#include "pin/core/tensor.hpp"

namespace pin::cpu {

inline int64_t pool_output_size(int64_t in, int64_t window, int64_t stride) { return (in - window) / stride + 1; }

// y = max over window x window, stride s; `argmax` (same shape as y) receives the flat NHWC index
// of the chosen input element, for the backward pass (first maximum on ties).
inline void maxpool2d_forward(const Tensor& x, int64_t window, int64_t stride, Tensor& y, std::vector<int64_t>* argmax) {
    PIN_CHECK(x.rank() == 4 && x.layout() == Layout::NHWC, "maxpool2d_forward: input must be rank-4 NHWC");
    const int64_t N = x.n(), C = x.c(), H = x.h(), W = x.w();
    const int64_t Ho = pool_output_size(H, window, stride), Wo = pool_output_size(W, window, stride);
    PIN_CHECK(Ho >= 1 && Wo >= 1, "maxpool2d_forward: input ", shape_to_string(x.shape()), " smaller than the window");
    check_shape(y, {N, C, Ho, Wo}, "maxpool2d_forward output");
    if (argmax) argmax->resize(static_cast<size_t>(y.numel()));
    const float* xd = x.data();
    float* yd = y.data();
    parallel_for(N * Ho, [&](int64_t row) {
        const int64_t n = row / Ho, oh = row % Ho;
        for (int64_t ow = 0; ow < Wo; ++ow) {
            float* yo = yd + ((n * Ho + oh) * Wo + ow) * C;
            int64_t* ao = argmax ? argmax->data() + ((n * Ho + oh) * Wo + ow) * C : nullptr;
            for (int64_t c = 0; c < C; ++c) yo[c] = -std::numeric_limits<float>::infinity();
            for (int64_t kh = 0; kh < window; ++kh)
                for (int64_t kw = 0; kw < window; ++kw) {
                    const int64_t base = ((n * H + oh * stride + kh) * W + ow * stride + kw) * C;
                    for (int64_t c = 0; c < C; ++c)
                        if (xd[base + c] > yo[c]) {
                            yo[c] = xd[base + c];
                            if (ao) ao[c] = base + c;
                        }
                }
        }
    });
}

// dx (zeroed here) receives dy at each window's maximum.
inline void maxpool2d_backward(const Tensor& dy, const std::vector<int64_t>& argmax, Tensor& dx) {
    PIN_CHECK(static_cast<int64_t>(argmax.size()) == dy.numel(), "maxpool2d_backward: argmax does not match dy");
    dx.fill(0.0f);
    // Windows overlap (3x3, stride 2), so threads split by image: no two write the same element.
    const int64_t N = dy.n(), per = dy.numel() / std::max<int64_t>(N, 1);
    float* dxd = dx.data();
    parallel_for(N, [&](int64_t n) {
        for (int64_t i = n * per; i < (n + 1) * per; ++i) dxd[argmax[static_cast<size_t>(i)]] += dy.data()[i];
    });
}

// Average over window x window, stride s, "valid".
inline void avgpool2d_forward(const Tensor& x, int64_t window, int64_t stride, Tensor& y) {
    PIN_CHECK(x.rank() == 4 && x.layout() == Layout::NHWC, "avgpool2d_forward: input must be rank-4 NHWC");
    const int64_t N = x.n(), C = x.c(), H = x.h(), W = x.w();
    const int64_t Ho = pool_output_size(H, window, stride), Wo = pool_output_size(W, window, stride);
    PIN_CHECK(Ho >= 1 && Wo >= 1, "avgpool2d_forward: input ", shape_to_string(x.shape()), " smaller than the window");
    check_shape(y, {N, C, Ho, Wo}, "avgpool2d_forward output");
    const float inv = 1.0f / static_cast<float>(window * window);
    parallel_for(N * Ho, [&](int64_t row) {
        const int64_t n = row / Ho, oh = row % Ho;
        for (int64_t ow = 0; ow < Wo; ++ow) {
            float* yo = y.data() + ((n * Ho + oh) * Wo + ow) * C;
            std::fill(yo, yo + C, 0.0f);
            for (int64_t kh = 0; kh < window; ++kh)
                for (int64_t kw = 0; kw < window; ++kw) {
                    const float* xi = x.data() + ((n * H + oh * stride + kh) * W + ow * stride + kw) * C;
                    for (int64_t c = 0; c < C; ++c) yo[c] += xi[c];
                }
            for (int64_t c = 0; c < C; ++c) yo[c] *= inv;
        }
    });
}

// dx (N, C, H, W), zeroed here; dy (N, C, Ho, Wo).
inline void avgpool2d_backward(const Tensor& dy, int64_t window, int64_t stride, Tensor& dx) {
    const int64_t N = dx.n(), C = dx.c(), H = dx.h(), W = dx.w();
    const int64_t Ho = pool_output_size(H, window, stride), Wo = pool_output_size(W, window, stride);
    check_shape(dy, {N, C, Ho, Wo}, "avgpool2d_backward dy");
    dx.fill(0.0f);
    const float inv = 1.0f / static_cast<float>(window * window);
    parallel_for(N, [&](int64_t n) {
        for (int64_t oh = 0; oh < Ho; ++oh)
            for (int64_t ow = 0; ow < Wo; ++ow) {
                const float* g = dy.data() + ((n * Ho + oh) * Wo + ow) * C;
                for (int64_t kh = 0; kh < window; ++kh)
                    for (int64_t kw = 0; kw < window; ++kw) {
                        float* d = dx.data() + ((n * H + oh * stride + kh) * W + ow * stride + kw) * C;
                        for (int64_t c = 0; c < C; ++c) d[c] += g[c] * inv;
                    }
            }
    });
}

// (N, C, H, W) -> (N, C): the mean over positions.
inline Tensor global_avgpool_forward(const Tensor& x) {
    const int64_t N = x.n(), C = x.c(), P = x.h() * x.w();
    Tensor y = Tensor::zeros({N, C});
    for (int64_t n = 0; n < N; ++n)
        for (int64_t p = 0; p < P; ++p)
            for (int64_t c = 0; c < C; ++c) y.data()[n * C + c] += x.data()[(n * P + p) * C + c];
    for (int64_t i = 0; i < N * C; ++i) y.data()[i] /= static_cast<float>(P);
    return y;
}
inline Tensor global_avgpool_backward(const Tensor& dy, const Shape& x_shape) {
    Tensor dx = Tensor::empty(x_shape, Layout::NHWC);
    const int64_t N = x_shape[0], C = x_shape[1], P = x_shape[2] * x_shape[3];
    for (int64_t n = 0; n < N; ++n)
        for (int64_t p = 0; p < P; ++p)
            for (int64_t c = 0; c < C; ++c) dx.data()[(n * P + p) * C + c] = dy.data()[n * C + c] / static_cast<float>(P);
    return dx;
}

inline void relu_inplace(Tensor& x) {
    float* d = x.data();
    parallel_for((x.numel() + 65535) / 65536, [&](int64_t b) {
        for (int64_t i = b * 65536; i < std::min(x.numel(), (b + 1) * 65536); ++i) d[i] = std::max(d[i], 0.0f);
    });
}
// dy *= (y > 0), with y the ReLU's output.
inline void relu_backward_inplace(const Tensor& y, Tensor& dy) {
    PIN_CHECK(y.numel() == dy.numel(), "relu_backward: shapes differ");
    parallel_for((y.numel() + 65535) / 65536, [&](int64_t b) {
        for (int64_t i = b * 65536; i < std::min(y.numel(), (b + 1) * 65536); ++i)
            if (!(y.data()[i] > 0.0f)) dy.data()[i] = 0.0f;
    });
}

// Bilinear resampling weights along one axis: output i reads in[i0] (1 - f) + in[i1] f, with the
// source position (i + 0.5) * in / out - 0.5 clamped at 0 (PyTorch, align_corners=False; no
// anti-aliasing, meant for upsampling).
struct BilinearAxis {
    std::vector<int64_t> i0, i1;
    std::vector<float> f;
};
inline BilinearAxis bilinear_axis(int64_t in, int64_t out) {
    BilinearAxis a;
    const double scale = static_cast<double>(in) / static_cast<double>(out);
    for (int64_t i = 0; i < out; ++i) {
        const double src = std::max(0.0, (i + 0.5) * scale - 0.5);
        const int64_t i0 = std::min<int64_t>(static_cast<int64_t>(src), in - 1);
        a.i0.push_back(i0);
        a.i1.push_back(std::min<int64_t>(i0 + 1, in - 1));
        a.f.push_back(static_cast<float>(src - static_cast<double>(i0)));
    }
    return a;
}

// x (N, C, H, W) -> y (N, C, Ho, Wo).
inline void resize_bilinear_forward(const Tensor& x, Tensor& y) {
    const int64_t N = x.n(), C = x.c(), H = x.h(), W = x.w(), Ho = y.h(), Wo = y.w();
    check_shape(y, {N, C, Ho, Wo}, "resize_bilinear_forward output");
    const BilinearAxis ay = bilinear_axis(H, Ho), ax = bilinear_axis(W, Wo);
    parallel_for(N * Ho, [&](int64_t row) {
        const int64_t n = row / Ho, oh = row % Ho;
        const float fy = ay.f[static_cast<size_t>(oh)];
        const float* r0 = x.data() + (n * H + ay.i0[static_cast<size_t>(oh)]) * W * C;
        const float* r1 = x.data() + (n * H + ay.i1[static_cast<size_t>(oh)]) * W * C;
        for (int64_t ow = 0; ow < Wo; ++ow) {
            const float fx = ax.f[static_cast<size_t>(ow)];
            const int64_t c0 = ax.i0[static_cast<size_t>(ow)] * C, c1 = ax.i1[static_cast<size_t>(ow)] * C;
            float* o = y.data() + ((n * Ho + oh) * Wo + ow) * C;
            for (int64_t c = 0; c < C; ++c) {
                const float top = r0[c0 + c] * (1 - fx) + r0[c1 + c] * fx;
                const float bot = r1[c0 + c] * (1 - fx) + r1[c1 + c] * fx;
                o[c] = top * (1 - fy) + bot * fy;
            }
        }
    });
}

// The adjoint: dx (N, C, H, W) = R^T dy, zeroed here.
inline void resize_bilinear_backward(const Tensor& dy, Tensor& dx) {
    const int64_t N = dx.n(), C = dx.c(), H = dx.h(), W = dx.w(), Ho = dy.h(), Wo = dy.w();
    check_shape(dy, {N, C, Ho, Wo}, "resize_bilinear_backward dy");
    const BilinearAxis ay = bilinear_axis(H, Ho), ax = bilinear_axis(W, Wo);
    dx.fill(0.0f);
    parallel_for(N, [&](int64_t n) {
        for (int64_t oh = 0; oh < Ho; ++oh) {
            const float fy = ay.f[static_cast<size_t>(oh)];
            float* r0 = dx.data() + (n * H + ay.i0[static_cast<size_t>(oh)]) * W * C;
            float* r1 = dx.data() + (n * H + ay.i1[static_cast<size_t>(oh)]) * W * C;
            for (int64_t ow = 0; ow < Wo; ++ow) {
                const float fx = ax.f[static_cast<size_t>(ow)];
                const int64_t c0 = ax.i0[static_cast<size_t>(ow)] * C, c1 = ax.i1[static_cast<size_t>(ow)] * C;
                const float* g = dy.data() + ((n * Ho + oh) * Wo + ow) * C;
                for (int64_t c = 0; c < C; ++c) {
                    r0[c0 + c] += g[c] * (1 - fx) * (1 - fy);
                    r0[c1 + c] += g[c] * fx * (1 - fy);
                    r1[c0 + c] += g[c] * (1 - fx) * fy;
                    r1[c1 + c] += g[c] * fx * fy;
                }
            }
        }
    });
}

}  // namespace pin::cpu
