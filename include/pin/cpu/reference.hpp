// pin/cpu/reference.hpp - plain float64 versions of every CPU kernel, the yardstick for tests.
//
// Written for clarity, not speed: NCHW std::vector<double>, the textbook loops, no threading.
// Each fast kernel in pin/cpu is tested against these; these are themselves checked by finite
// differences in double precision (tests/test_reference.cpp).
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

namespace pin::reference {

using Vec = std::vector<double>;

struct ConvShape {
    int64_t n, cin, h, w, cout, k, stride, pad;
    int64_t oh() const { return (h + 2 * pad - k) / stride + 1; }
    int64_t ow() const { return (w + 2 * pad - k) / stride + 1; }
};

// y[n][co][oh][ow] = sum x[n][ci][oh*s - p + kh][ow*s - p + kw] * w[co][ci][kh][kw]
inline Vec conv2d_forward(const Vec& x, const Vec& w, const ConvShape& s) {
    Vec y(static_cast<size_t>(s.n * s.cout * s.oh() * s.ow()), 0.0);
    for (int64_t n = 0; n < s.n; ++n)
        for (int64_t co = 0; co < s.cout; ++co)
            for (int64_t oh = 0; oh < s.oh(); ++oh)
                for (int64_t ow = 0; ow < s.ow(); ++ow) {
                    double acc = 0.0;
                    for (int64_t ci = 0; ci < s.cin; ++ci)
                        for (int64_t kh = 0; kh < s.k; ++kh)
                            for (int64_t kw = 0; kw < s.k; ++kw) {
                                const int64_t ih = oh * s.stride - s.pad + kh, iw = ow * s.stride - s.pad + kw;
                                if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w) continue;
                                acc += x[static_cast<size_t>(((n * s.cin + ci) * s.h + ih) * s.w + iw)] *
                                       w[static_cast<size_t>(((co * s.cin + ci) * s.k + kh) * s.k + kw)];
                            }
                    y[static_cast<size_t>(((n * s.cout + co) * s.oh() + oh) * s.ow() + ow)] = acc;
                }
    return y;
}

// The same sum with absolute values: the scale a float32 result's rounding error is measured against.
inline Vec conv2d_forward_abs(const Vec& x, const Vec& w, const ConvShape& s) {
    Vec ax(x.size()), aw(w.size());
    for (size_t i = 0; i < x.size(); ++i) ax[i] = std::fabs(x[i]);
    for (size_t i = 0; i < w.size(); ++i) aw[i] = std::fabs(w[i]);
    return conv2d_forward(ax, aw, s);
}

// Scatters each output gradient back along the taps that produced it.
inline Vec conv2d_backward_input(const Vec& dy, const Vec& w, const ConvShape& s) {
    Vec dx(static_cast<size_t>(s.n * s.cin * s.h * s.w), 0.0);
    for (int64_t n = 0; n < s.n; ++n)
        for (int64_t co = 0; co < s.cout; ++co)
            for (int64_t oh = 0; oh < s.oh(); ++oh)
                for (int64_t ow = 0; ow < s.ow(); ++ow) {
                    const double g = dy[static_cast<size_t>(((n * s.cout + co) * s.oh() + oh) * s.ow() + ow)];
                    for (int64_t ci = 0; ci < s.cin; ++ci)
                        for (int64_t kh = 0; kh < s.k; ++kh)
                            for (int64_t kw = 0; kw < s.k; ++kw) {
                                const int64_t ih = oh * s.stride - s.pad + kh, iw = ow * s.stride - s.pad + kw;
                                if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w) continue;
                                dx[static_cast<size_t>(((n * s.cin + ci) * s.h + ih) * s.w + iw)] +=
                                    g * w[static_cast<size_t>(((co * s.cin + ci) * s.k + kh) * s.k + kw)];
                            }
                }
    return dx;
}

inline Vec conv2d_backward_weight(const Vec& x, const Vec& dy, const ConvShape& s) {
    Vec dw(static_cast<size_t>(s.cout * s.cin * s.k * s.k), 0.0);
    for (int64_t n = 0; n < s.n; ++n)
        for (int64_t co = 0; co < s.cout; ++co)
            for (int64_t oh = 0; oh < s.oh(); ++oh)
                for (int64_t ow = 0; ow < s.ow(); ++ow) {
                    const double g = dy[static_cast<size_t>(((n * s.cout + co) * s.oh() + oh) * s.ow() + ow)];
                    for (int64_t ci = 0; ci < s.cin; ++ci)
                        for (int64_t kh = 0; kh < s.k; ++kh)
                            for (int64_t kw = 0; kw < s.k; ++kw) {
                                const int64_t ih = oh * s.stride - s.pad + kh, iw = ow * s.stride - s.pad + kw;
                                if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w) continue;
                                dw[static_cast<size_t>(((co * s.cin + ci) * s.k + kh) * s.k + kw)] +=
                                    g * x[static_cast<size_t>(((n * s.cin + ci) * s.h + ih) * s.w + iw)];
                            }
                }
    return dw;
}

// Transposed convolution, PyTorch semantics: weight (cin, cout, k, k);
// y[n][co][ih*s - p + kh][iw*s - p + kw] += x[n][ci][ih][iw] * w[ci][co][kh][kw].
struct ConvTransposeShape {
    int64_t n, cin, h, w, cout, k, stride, pad, out_pad;
    int64_t oh() const { return (h - 1) * stride - 2 * pad + k + out_pad; }
    int64_t ow() const { return (w - 1) * stride - 2 * pad + k + out_pad; }
};

inline Vec conv_transpose2d_forward(const Vec& x, const Vec& w, const ConvTransposeShape& s) {
    Vec y(static_cast<size_t>(s.n * s.cout * s.oh() * s.ow()), 0.0);
    for (int64_t n = 0; n < s.n; ++n)
        for (int64_t ci = 0; ci < s.cin; ++ci)
            for (int64_t ih = 0; ih < s.h; ++ih)
                for (int64_t iw = 0; iw < s.w; ++iw) {
                    const double v = x[static_cast<size_t>(((n * s.cin + ci) * s.h + ih) * s.w + iw)];
                    for (int64_t co = 0; co < s.cout; ++co)
                        for (int64_t kh = 0; kh < s.k; ++kh)
                            for (int64_t kw = 0; kw < s.k; ++kw) {
                                const int64_t oh = ih * s.stride - s.pad + kh, ow = iw * s.stride - s.pad + kw;
                                if (oh < 0 || oh >= s.oh() || ow < 0 || ow >= s.ow()) continue;
                                y[static_cast<size_t>(((n * s.cout + co) * s.oh() + oh) * s.ow() + ow)] +=
                                    v * w[static_cast<size_t>(((ci * s.cout + co) * s.k + kh) * s.k + kw)];
                            }
                }
    return y;
}

inline Vec conv_transpose2d_backward_input(const Vec& dy, const Vec& w, const ConvTransposeShape& s) {
    Vec dx(static_cast<size_t>(s.n * s.cin * s.h * s.w), 0.0);
    for (int64_t n = 0; n < s.n; ++n)
        for (int64_t ci = 0; ci < s.cin; ++ci)
            for (int64_t ih = 0; ih < s.h; ++ih)
                for (int64_t iw = 0; iw < s.w; ++iw) {
                    double acc = 0.0;
                    for (int64_t co = 0; co < s.cout; ++co)
                        for (int64_t kh = 0; kh < s.k; ++kh)
                            for (int64_t kw = 0; kw < s.k; ++kw) {
                                const int64_t oh = ih * s.stride - s.pad + kh, ow = iw * s.stride - s.pad + kw;
                                if (oh < 0 || oh >= s.oh() || ow < 0 || ow >= s.ow()) continue;
                                acc += dy[static_cast<size_t>(((n * s.cout + co) * s.oh() + oh) * s.ow() + ow)] *
                                       w[static_cast<size_t>(((ci * s.cout + co) * s.k + kh) * s.k + kw)];
                            }
                    dx[static_cast<size_t>(((n * s.cin + ci) * s.h + ih) * s.w + iw)] = acc;
                }
    return dx;
}

inline Vec conv_transpose2d_backward_weight(const Vec& x, const Vec& dy, const ConvTransposeShape& s) {
    Vec dw(static_cast<size_t>(s.cin * s.cout * s.k * s.k), 0.0);
    for (int64_t n = 0; n < s.n; ++n)
        for (int64_t ci = 0; ci < s.cin; ++ci)
            for (int64_t ih = 0; ih < s.h; ++ih)
                for (int64_t iw = 0; iw < s.w; ++iw) {
                    const double v = x[static_cast<size_t>(((n * s.cin + ci) * s.h + ih) * s.w + iw)];
                    for (int64_t co = 0; co < s.cout; ++co)
                        for (int64_t kh = 0; kh < s.k; ++kh)
                            for (int64_t kw = 0; kw < s.k; ++kw) {
                                const int64_t oh = ih * s.stride - s.pad + kh, ow = iw * s.stride - s.pad + kw;
                                if (oh < 0 || oh >= s.oh() || ow < 0 || ow >= s.ow()) continue;
                                dw[static_cast<size_t>(((ci * s.cout + co) * s.k + kh) * s.k + kw)] +=
                                    v * dy[static_cast<size_t>(((n * s.cout + co) * s.oh() + oh) * s.ow() + ow)];
                            }
                }
    return dw;
}

// PReLU with per-channel slope on NCHW data of `channels` channels and `inner` elements per channel.
inline Vec prelu_forward(const Vec& x, const Vec& a, int64_t channels, int64_t inner) {
    Vec y(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
        const double s = a[static_cast<size_t>((static_cast<int64_t>(i) / inner) % channels)];
        y[i] = x[i] > 0 ? x[i] : s * x[i];
    }
    return y;
}
inline void prelu_backward(const Vec& x, const Vec& a, const Vec& dy, int64_t channels, int64_t inner, Vec& dx,
                           Vec& da) {
    dx.assign(x.size(), 0.0);
    da.assign(static_cast<size_t>(channels), 0.0);
    for (size_t i = 0; i < x.size(); ++i) {
        const size_t c = static_cast<size_t>((static_cast<int64_t>(i) / inner) % channels);
        dx[i] = x[i] > 0 ? dy[i] : a[c] * dy[i];
        if (x[i] <= 0) da[c] += dy[i] * x[i];
    }
}

// y = x W^T + b; x (batch, in), W (out, in).
inline Vec linear_forward(const Vec& x, const Vec& w, const Vec& b, int64_t batch, int64_t in, int64_t out) {
    Vec y(static_cast<size_t>(batch * out));
    for (int64_t n = 0; n < batch; ++n)
        for (int64_t o = 0; o < out; ++o) {
            double acc = b.empty() ? 0.0 : b[static_cast<size_t>(o)];
            for (int64_t i = 0; i < in; ++i) acc += x[static_cast<size_t>(n * in + i)] * w[static_cast<size_t>(o * in + i)];
            y[static_cast<size_t>(n * out + o)] = acc;
        }
    return y;
}

// dx = dy W, dW = dy^T x, db = sum over the batch of dy.
inline void linear_backward(const Vec& x, const Vec& w, const Vec& dy, int64_t batch, int64_t in, int64_t out, Vec& dx,
                            Vec& dw, Vec& db) {
    dx.assign(static_cast<size_t>(batch * in), 0.0);
    dw.assign(static_cast<size_t>(out * in), 0.0);
    db.assign(static_cast<size_t>(out), 0.0);
    for (int64_t n = 0; n < batch; ++n)
        for (int64_t o = 0; o < out; ++o) {
            const double g = dy[static_cast<size_t>(n * out + o)];
            db[static_cast<size_t>(o)] += g;
            for (int64_t i = 0; i < in; ++i) {
                dx[static_cast<size_t>(n * in + i)] += g * w[static_cast<size_t>(o * in + i)];
                dw[static_cast<size_t>(o * in + i)] += g * x[static_cast<size_t>(n * in + i)];
            }
        }
}

}  // namespace pin::reference
