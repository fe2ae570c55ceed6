// pin/cpu/activations.hpp - element-wise ops: PReLU (per-channel slope), tanh, sigmoid, add.
//
// Channel of element i: for channels-last rank-4 tensors and rank-2 (batch, features) tensors the
// channel is innermost, i % C; NCHW rank-4 tensors are handled too. Work is cut into fixed blocks
// of kElementBlock elements so reductions (the PReLU slope gradient) sum in an order that does not
// depend on the thread count.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "pin/core/parallel.hpp"
#include "pin/core/simd.hpp"
#include "pin/core/tensor.hpp"

namespace pin::cpu {

constexpr int64_t kElementBlock = 1 << 14;

namespace detail {
struct ChannelMap {
    int64_t channels = 1, inner = 1;  // channel(i) = (i / inner) % channels
    int64_t of(int64_t i) const { return (i / inner) % channels; }
};
inline ChannelMap channel_map(const Tensor& t) {
    PIN_CHECK(t.rank() >= 2, "per-channel op needs a tensor of rank >= 2, got ", shape_to_string(t.shape()));
    ChannelMap m;
    m.channels = t.dim(1);
    if (t.rank() == 4 && t.layout() == Layout::NCHW) m.inner = t.h() * t.w();
    else if (t.rank() == 3) m.inner = t.dim(2);
    return m;
}
template <typename F>
void for_blocks(int64_t n, F f) {
    const int64_t blocks = (n + kElementBlock - 1) / kElementBlock;
    parallel_for(blocks, [&](int64_t b) { f(b, b * kElementBlock, std::min(n, (b + 1) * kElementBlock)); });
}
inline void check_same(const Tensor& a, const Tensor& b, const char* op) {
    PIN_CHECK(a.shape() == b.shape() && a.layout() == b.layout(), op, ": shapes differ ", shape_to_string(a.shape()),
              " vs ", shape_to_string(b.shape()));
}
}  // namespace detail

// y = x > 0 ? x : slope[c] * x. y may alias x.
inline void prelu_forward(const Tensor& x, const Tensor& slope, Tensor& y) {
    detail::check_same(x, y, "prelu_forward");
    const detail::ChannelMap m = detail::channel_map(x);
    check_shape(slope, {m.channels}, "prelu_forward slope");
    const float* xd = x.data();
    const float* a = slope.data();
    float* yd = y.data();
    detail::for_blocks(x.numel(), [&](int64_t, int64_t i0, int64_t i1) {
        if (m.inner == 1 && m.channels % simd::VecF::kLanes == 0 && i0 % m.channels == 0) {
            constexpr int L = simd::VecF::kLanes;
            for (int64_t i = i0; i < i1; i += L) {
                const simd::VecF v = simd::VecF::load(xd + i);
                const simd::VecF s = simd::VecF::load(a + i % m.channels);
                (max(v, simd::VecF::zero()) + s * min(v, simd::VecF::zero())).store(yd + i);
            }
            return;
        }
        for (int64_t i = i0; i < i1; ++i) {
            const float v = xd[i];
            yd[i] = v > 0.0f ? v : a[m.of(i)] * v;
        }
    });
}

// dx = dy * (x > 0 ? 1 : slope[c]); dslope[c] = sum over elements of channel c of dy * min(x, 0).
// dx may alias dy. dslope is overwritten.
inline void prelu_backward(const Tensor& x, const Tensor& slope, const Tensor& dy, Tensor& dx, Tensor& dslope) {
    detail::check_same(x, dy, "prelu_backward");
    detail::check_same(x, dx, "prelu_backward");
    const detail::ChannelMap m = detail::channel_map(x);
    check_shape(slope, {m.channels}, "prelu_backward slope");
    check_shape(dslope, {m.channels}, "prelu_backward slope gradient");
    const int64_t n = x.numel();
    const int64_t blocks = (n + kElementBlock - 1) / kElementBlock;
    std::vector<double> partial(static_cast<size_t>(blocks * m.channels), 0.0);
    const float* xd = x.data();
    const float* a = slope.data();
    const float* g = dy.data();
    float* gx = dx.data();
    detail::for_blocks(n, [&](int64_t b, int64_t i0, int64_t i1) {
        double* acc = partial.data() + b * m.channels;
        if (m.inner == 1) {
            // Channels innermost: walk the block as runs of consecutive channels, so the channel index
            // is a counter rather than a division per element, and branch-free vectors replace the
            // data-dependent branch (x > 0 is a coin flip after PReLU's input, which the predictor
            // loses). Each channel's sum still adds its elements in index order as exact float ->
            // double products; an element with x > 0 adds a zero product, which leaves a sum that
            // started at +0 unchanged, so the slope gradient is the scalar loop's bit for bit.
            constexpr int L = simd::VecF::kLanes;
            const simd::VecF zero = simd::VecF::zero();
            int64_t c0 = i0 % m.channels;
            for (int64_t i = i0; i < i1;) {
                const int64_t run = std::min(m.channels - c0, i1 - i);
                int64_t j = 0;
                for (; j + L <= run; j += L) {
                    const simd::VecF v = simd::VecF::load(xd + i + j), gi = simd::VecF::load(g + i + j);
                    add_products_f64(acc + c0 + j, gi, min(zero, v));  // min(0, NaN) is NaN, as in the tail
                    select_positive(v, gi, simd::VecF::load(a + c0 + j) * gi).store(gx + i + j);
                }
                for (; j < run; ++j) {
                    const float v = xd[i + j], gi = g[i + j];
                    acc[c0 + j] += static_cast<double>(gi) * static_cast<double>(std::min(v, 0.0f));
                    gx[i + j] = v > 0.0f ? gi : a[c0 + j] * gi;
                }
                i += run;
                c0 = 0;
            }
            return;
        }
        for (int64_t i = i0; i < i1; ++i) {
            const float v = xd[i];
            const int64_t c = m.of(i);
            const float gi = g[i];
            if (v > 0.0f) {
                gx[i] = gi;
            } else {
                acc[c] += static_cast<double>(gi) * v;
                gx[i] = a[c] * gi;
            }
        }
    });
    float* ds = dslope.data();
    for (int64_t c = 0; c < m.channels; ++c) {
        double s = 0.0;
        for (int64_t b = 0; b < blocks; ++b) s += partial[static_cast<size_t>(b * m.channels + c)];
        ds[c] = static_cast<float>(s);
    }
}

inline void tanh_forward(const Tensor& x, Tensor& y) {
    detail::check_same(x, y, "tanh_forward");
    const float* xd = x.data();
    float* yd = y.data();
    detail::for_blocks(x.numel(), [&](int64_t, int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) yd[i] = std::tanh(xd[i]);
    });
}
// dx = dy * (1 - y^2), from the forward output y. dx may alias dy.
inline void tanh_backward(const Tensor& y, const Tensor& dy, Tensor& dx) {
    detail::check_same(y, dy, "tanh_backward");
    detail::check_same(y, dx, "tanh_backward");
    const float* yd = y.data();
    const float* g = dy.data();
    float* gx = dx.data();
    detail::for_blocks(y.numel(), [&](int64_t, int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) gx[i] = g[i] * (1.0f - yd[i] * yd[i]);
    });
}

// Numerically safe logistic: never evaluates exp of a large positive number.
inline float sigmoid(float z) {
    if (z >= 0.0f) return 1.0f / (1.0f + std::exp(-z));
    const float e = std::exp(z);
    return e / (1.0f + e);
}
inline void sigmoid_forward(const Tensor& x, Tensor& y) {
    detail::check_same(x, y, "sigmoid_forward");
    const float* xd = x.data();
    float* yd = y.data();
    detail::for_blocks(x.numel(), [&](int64_t, int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) yd[i] = sigmoid(xd[i]);
    });
}
// dx = dy * y (1 - y), from the forward output y.
inline void sigmoid_backward(const Tensor& y, const Tensor& dy, Tensor& dx) {
    detail::check_same(y, dy, "sigmoid_backward");
    detail::check_same(y, dx, "sigmoid_backward");
    const float* yd = y.data();
    const float* g = dy.data();
    float* gx = dx.data();
    detail::for_blocks(y.numel(), [&](int64_t, int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) gx[i] = g[i] * yd[i] * (1.0f - yd[i]);
    });
}

// y = a + b (residual connections). y may alias a or b. Its backward is the identity on both.
inline void add_forward(const Tensor& a, const Tensor& b, Tensor& y) {
    detail::check_same(a, b, "add_forward");
    detail::check_same(a, y, "add_forward");
    const float* ad = a.data();
    const float* bd = b.data();
    float* yd = y.data();
    detail::for_blocks(a.numel(), [&](int64_t, int64_t i0, int64_t i1) {
        constexpr int L = simd::VecF::kLanes;
        int64_t i = i0;
        for (; i + L <= i1; i += L) (simd::VecF::load(ad + i) + simd::VecF::load(bd + i)).store(yd + i);
        for (; i < i1; ++i) yd[i] = ad[i] + bd[i];
    });
}
// y += x
inline void add_inplace(Tensor& y, const Tensor& x) { add_forward(y, x, y); }

}  // namespace pin::cpu
