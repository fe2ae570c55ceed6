// pin/detect/tf_layers.hpp - forward-only layers with TensorFlow's conventions, for the face-api
// detector and landmark networks (tfjs models): "same" padding puts the odd pixel at the bottom and
// right, max pooling pads with -inf, weights come as (kh, kw, cin, cout) and depthwise filters as
// (kh, kw, c, 1), bilinear resizing without half-pixel centres (tf.image.resizeBilinear with
// alignCorners = false, halfPixelCenters = false, as face-api calls it).
// Activations are NHWC tensors; regular and pointwise convolutions run on the engine's conv2d.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "pin/core/error.hpp"
#include "pin/core/parallel.hpp"
#include "pin/core/tensor.hpp"
#include "pin/cpu/conv2d.hpp"
#include "pin/io/image.hpp"
#include "pin/io/tfjs_weights.hpp"

namespace pin::detect {

// TensorFlow "same": out = ceil(in / stride), the padding (k - stride or what is needed) split with the
// smaller half before.
struct SamePadding {
    int64_t out, before, after;
};
inline SamePadding tf_same_padding(int64_t in, int64_t k, int64_t stride) {
    const int64_t out = (in + stride - 1) / stride;
    const int64_t total = std::max<int64_t>((out - 1) * stride + k - in, 0);
    return {out, total / 2, total - total / 2};
}

// x (B, C, H, W) NHWC -> zero-padded copy.
inline Tensor pad_nhwc(const Tensor& x, int64_t top, int64_t bottom, int64_t left, int64_t right, float value = 0.0f) {
    const int64_t B = x.n(), C = x.c(), H = x.h(), W = x.w(), Hp = H + top + bottom, Wp = W + left + right;
    Tensor y = Tensor::full({B, C, Hp, Wp}, value, Layout::NHWC);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
            std::copy(x.data() + ((b * H + h) * W) * C, x.data() + ((b * H + h) * W + W) * C,
                      y.data() + ((b * Hp + h + top) * Wp + left) * C);
    return y;
}

// A convolution with bias from tfjs weights: filters (k, k, cin, cout) repacked to (cout, cin, k, k).
struct TfConv {
    Tensor w;
    std::vector<float> bias;
    int64_t k = 1, cin = 0, cout = 0;
    static TfConv from(const io::TfjsWeights& ws, const std::string& filters, const std::string& bias, const std::string& path) {
        const Tensor& f = ws.at(filters, path);
        PIN_CHECK(f.shape().size() == 4 && f.shape()[0] == f.shape()[1], path, ": ", filters, " has shape ", shape_to_string(f.shape()),
                  ", expected (k, k, cin, cout)");
        TfConv c;
        c.k = f.shape()[0], c.cin = f.shape()[2], c.cout = f.shape()[3];
        c.w = Tensor::empty({c.cout, c.cin, c.k, c.k});
        for (int64_t t = 0; t < c.k * c.k; ++t)
            for (int64_t i = 0; i < c.cin; ++i)
                for (int64_t o = 0; o < c.cout; ++o) c.w.data()[(o * c.cin + i) * c.k * c.k + t] = f.data()[(t * c.cin + i) * c.cout + o];
        const Tensor& b = ws.at(bias, path);
        PIN_CHECK(b.numel() == c.cout, path, ": ", bias, " has ", b.numel(), " values, expected ", c.cout);
        c.bias.assign(b.data(), b.data() + b.numel());
        return c;
    }
    // "valid" (no padding) or TensorFlow "same" at the given stride.
    Tensor forward(const Tensor& x, int64_t stride, bool same) const {
        PIN_CHECK(x.c() == cin, "TfConv: input has ", x.c(), " channels, the layer expects ", cin);
        Tensor in = x;
        if (same && k > 1) {
            const SamePadding ph = tf_same_padding(x.h(), k, stride), pw = tf_same_padding(x.w(), k, stride);
            in = pad_nhwc(x, ph.before, ph.after, pw.before, pw.after);
        }
        const cpu::Conv2dParams p{k, stride, 0};
        Tensor y = Tensor::empty({x.n(), cout, cpu::conv2d_output_size(in.h(), p), cpu::conv2d_output_size(in.w(), p)}, Layout::NHWC);
        cpu::ConvEpilogue ep;
        ep.bias = bias.data();
        cpu::conv2d_forward(in, w, y, p, ep);
        return y;
    }
};

// Depthwise k x k convolution, filters (k, k, C, 1), TensorFlow "same" padding, no bias.
inline Tensor depthwise_conv_same(const Tensor& x, const Tensor& filters, int64_t stride) {
    const int64_t B = x.n(), C = x.c(), H = x.h(), W = x.w(), k = filters.shape()[0];
    PIN_CHECK(filters.shape().size() == 4 && filters.shape()[2] == C && filters.shape()[3] == 1, "depthwise filters of shape ",
              shape_to_string(filters.shape()), " for ", C, " channels");
    const SamePadding ph = tf_same_padding(H, k, stride), pw = tf_same_padding(W, k, stride);
    Tensor y = Tensor::empty({B, C, ph.out, pw.out}, Layout::NHWC);
    const float* xs = x.data();
    const float* f = filters.data();
    float* ys = y.data();
    parallel_for(B * ph.out, [&](int64_t row) {
        const int64_t b = row / ph.out, oh = row % ph.out;
        for (int64_t ow = 0; ow < pw.out; ++ow) {
            float* out = ys + ((b * ph.out + oh) * pw.out + ow) * C;
            std::fill(out, out + C, 0.0f);
            for (int64_t kh = 0; kh < k; ++kh) {
                const int64_t ih = oh * stride - ph.before + kh;
                if (ih < 0 || ih >= H) continue;
                for (int64_t kw = 0; kw < k; ++kw) {
                    const int64_t iw = ow * stride - pw.before + kw;
                    if (iw < 0 || iw >= W) continue;
                    const float* in = xs + ((b * H + ih) * W + iw) * C;
                    const float* wt = f + (kh * k + kw) * C;
                    for (int64_t c = 0; c < C; ++c) out[c] += in[c] * wt[c];
                }
            }
        }
    });
    return y;
}

// tf.separableConv2d + bias: depthwise 3x3 then pointwise 1x1 (with the bias).
struct TfSeparableConv {
    Tensor depthwise;
    TfConv pointwise;
    static TfSeparableConv from(const io::TfjsWeights& ws, const std::string& prefix, const std::string& path) {
        TfSeparableConv s;
        s.depthwise = ws.at(prefix + "/depthwise_filter", path);
        s.pointwise = TfConv::from(ws, prefix + "/pointwise_filter", prefix + "/bias", path);
        PIN_CHECK(s.depthwise.shape().size() == 4 && s.depthwise.shape()[2] == s.pointwise.cin && s.pointwise.k == 1, path, ": ", prefix,
                  ": depthwise ", shape_to_string(s.depthwise.shape()), " does not fit pointwise ", s.pointwise.cin, " -> ", s.pointwise.cout);
        return s;
    }
    Tensor forward(const Tensor& x, int64_t stride) const { return pointwise.forward(depthwise_conv_same(x, depthwise, stride), 1, false); }
};

inline void leaky_relu_inplace(Tensor& x, float slope = 0.1f) {
    for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = std::max(x.data()[i], slope * x.data()[i]);
}
inline void relu_inplace(Tensor& x) {
    for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = std::max(x.data()[i], 0.0f);
}
inline void add_inplace(Tensor& y, const Tensor& x) {
    PIN_CHECK(y.numel() == x.numel(), "add: ", y.numel(), " vs ", x.numel(), " elements");
    for (int64_t i = 0; i < y.numel(); ++i) y.data()[i] += x.data()[i];
}

// Max pooling k x k, TensorFlow "same" (padding never wins: -inf).
inline Tensor maxpool_same(const Tensor& x, int64_t k, int64_t stride) {
    const int64_t B = x.n(), C = x.c(), H = x.h(), W = x.w();
    const SamePadding ph = tf_same_padding(H, k, stride), pw = tf_same_padding(W, k, stride);
    Tensor y = Tensor::full({B, C, ph.out, pw.out}, -std::numeric_limits<float>::infinity(), Layout::NHWC);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t oh = 0; oh < ph.out; ++oh)
            for (int64_t ow = 0; ow < pw.out; ++ow) {
                float* out = y.data() + ((b * ph.out + oh) * pw.out + ow) * C;
                for (int64_t kh = 0; kh < k; ++kh)
                    for (int64_t kw = 0; kw < k; ++kw) {
                        const int64_t ih = oh * stride - ph.before + kh, iw = ow * stride - pw.before + kw;
                        if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                        const float* in = x.data() + ((b * H + ih) * W + iw) * C;
                        for (int64_t c = 0; c < C; ++c) out[c] = std::max(out[c], in[c]);
                    }
            }
    return y;
}

// tf.image.resizeBilinear(alignCorners = false, halfPixelCenters = false): source = dest * in / out.
// src: h x w x channels row-major.
inline std::vector<float> resize_bilinear_tf(const std::vector<float>& src, int64_t h, int64_t w, int64_t channels, int64_t out_h,
                                             int64_t out_w) {
    std::vector<float> dst(static_cast<size_t>(out_h * out_w * channels));
    const double sy = static_cast<double>(h) / out_h, sx = static_cast<double>(w) / out_w;
    for (int64_t y = 0; y < out_h; ++y) {
        const double fy = y * sy;
        const int64_t y0 = std::min<int64_t>(static_cast<int64_t>(fy), h - 1), y1 = std::min<int64_t>(y0 + 1, h - 1);
        const double ay = fy - y0;
        for (int64_t x = 0; x < out_w; ++x) {
            const double fx = x * sx;
            const int64_t x0 = std::min<int64_t>(static_cast<int64_t>(fx), w - 1), x1 = std::min<int64_t>(x0 + 1, w - 1);
            const double ax = fx - x0;
            for (int64_t c = 0; c < channels; ++c) {
                auto at = [&](int64_t yy, int64_t xx) { return static_cast<double>(src[static_cast<size_t>((yy * w + xx) * channels + c)]); };
                const double top = at(y0, x0) + (at(y0, x1) - at(y0, x0)) * ax;
                const double bot = at(y1, x0) + (at(y1, x1) - at(y1, x0)) * ax;
                dst[static_cast<size_t>((y * out_w + x) * channels + c)] = static_cast<float>(top + (bot - top) * ay);
            }
        }
    }
    return dst;
}

// face-api's input: the image pasted at (offset_x, offset_y) into a zero square of its longer side
// (zeros before the mean subtraction), resized to size x size, then (v - mean[c]) / 255.
// Returns (1, 3, size, size) NHWC.
inline Tensor tf_network_input(const io::RgbImage& img, int offset_x, int offset_y, int size, const float mean[3]) {
    const int side = std::max(img.width, img.height);
    std::vector<float> square(static_cast<size_t>(side) * side * 3, 0.0f);
    for (int y = 0; y < img.height; ++y)
        std::copy(img.rgb.begin() + static_cast<std::ptrdiff_t>(y) * img.width * 3,
                  img.rgb.begin() + static_cast<std::ptrdiff_t>(y + 1) * img.width * 3,
                  square.begin() + (static_cast<std::ptrdiff_t>(y + offset_y) * side + offset_x) * 3);
    const std::vector<float> resized = resize_bilinear_tf(square, side, side, 3, size, size);
    Tensor x = Tensor::empty({1, 3, size, size}, Layout::NHWC);
    for (size_t i = 0; i < resized.size(); ++i) x.data()[i] = (resized[i] - mean[i % 3]) / 255.0f;
    return x;
}

}  // namespace pin::detect
