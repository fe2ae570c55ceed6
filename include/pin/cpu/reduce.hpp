// pin/cpu/reduce.hpp - reductions: sums, sums of squares, per-row versions, mean squared error.
//
// Accumulated in double over fixed blocks, blocks combined in order: the result does not depend
// on the thread count and does not drift with the tensor size.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "pin/core/parallel.hpp"
#include "pin/core/simd.hpp"
#include "pin/core/tensor.hpp"

namespace pin::cpu {

namespace detail {
// The sum of block_sum(begin, end) over fixed blocks of 16384 elements of [0, n), the blocks on
// all threads and their sums added in order.
template <typename BlockSum>
double sum_over_blocks(int64_t n, BlockSum block_sum) {
    constexpr int64_t kBlock = 1 << 14;
    const int64_t blocks = (n + kBlock - 1) / kBlock;
    if (blocks <= 1) return block_sum(int64_t{0}, n);
    std::vector<double> partial(static_cast<size_t>(blocks));
    parallel_for(blocks, [&](int64_t b) {
        partial[static_cast<size_t>(b)] = block_sum(b * kBlock, std::min(n, (b + 1) * kBlock));
    });
    double s = 0.0;
    for (double p : partial) s += p;
    return s;
}

// sum over [0, n) of term(i), one double chain per block.
template <typename Term>
double blocked_sum(int64_t n, Term term) {
    return sum_over_blocks(n, [&](int64_t begin, int64_t end) {
        double s = 0.0;
        for (int64_t i = begin; i < end; ++i) s += term(i);
        return s;
    });
}

// sum of x[i]^2 over [0, n), in double, on one thread. Element i goes to accumulator i % 16 and the
// 16 are added in order at the end: products of floats are exact in double, so every SIMD path
// (16 is a multiple of each one's lanes) gives the same bits, and the loop is vectorised where a
// single double chain waits on the add latency (25.6 M gradient values took ~30 ms a step that way).
inline double sum_squares_f64(const float* x, int64_t n) {
    using simd::VecF;
    constexpr int kAcc = 16, L = VecF::kLanes;
    static_assert(kAcc % L == 0, "whole vectors per accumulator group");
    alignas(64) double acc[kAcc] = {};
    int64_t i = 0;
    for (; i + kAcc <= n; i += kAcc)
        for (int v = 0; v < kAcc / L; ++v) {
            const VecF a = VecF::load(x + i + v * L);
            add_products_f64(acc + v * L, a, a);
        }
    for (; i < n; ++i) acc[i % kAcc] += static_cast<double>(x[i]) * x[i];
    double s = 0.0;
    for (double a : acc) s += a;
    return s;
}
}  // namespace detail

// sum of x[i]^2 over [0, n) in double (gradient clipping's norm, noise scaled to a norm).
inline double sum_squares(const float* x, int64_t n) {
    return detail::sum_over_blocks(n, [x](int64_t begin, int64_t end) {
        return detail::sum_squares_f64(x + begin, end - begin);
    });
}

inline double reduce_sum(const Tensor& x) {
    const float* d = x.data();
    return detail::blocked_sum(x.numel(), [&](int64_t i) { return static_cast<double>(d[i]); });
}
inline double reduce_mean(const Tensor& x) {
    PIN_CHECK(x.numel() > 0, "reduce_mean of an empty tensor");
    return reduce_sum(x) / static_cast<double>(x.numel());
}
inline double reduce_sum_squares(const Tensor& x) { return sum_squares(x.data(), x.numel()); }
// sum over all elements of (a - b)^2
inline double reduce_squared_distance(const Tensor& a, const Tensor& b) {
    PIN_CHECK(a.shape() == b.shape(), "reduce_squared_distance: shapes differ ", shape_to_string(a.shape()), " vs ",
              shape_to_string(b.shape()));
    const float* x = a.data();
    const float* y = b.data();
    return detail::blocked_sum(a.numel(), [&](int64_t i) {
        const double d = static_cast<double>(x[i]) - y[i];
        return d * d;
    });
}

// Per-sample (first dimension) sums of squares, e.g. ||x_n||^2 for noise scaled per image.
inline std::vector<double> reduce_rows_sum_squares(const Tensor& x) {
    PIN_CHECK(x.rank() >= 1 && x.dim(0) > 0, "reduce_rows_sum_squares: empty tensor");
    const int64_t rows = x.dim(0), len = x.numel() / rows;
    std::vector<double> out(static_cast<size_t>(rows));
    const float* d = x.data();
    parallel_for(rows, [&](int64_t r) { out[static_cast<size_t>(r)] = detail::sum_squares_f64(d + r * len, len); });
    return out;
}

// Mean squared error mean((a - b)^2) and its gradient 2 (a - b) / numel with respect to a.
inline double mse_forward_backward(const Tensor& a, const Tensor& b, Tensor* grad_a) {
    const double loss = reduce_squared_distance(a, b) / static_cast<double>(a.numel());
    if (grad_a) {
        PIN_CHECK(grad_a->shape() == a.shape(), "mse gradient shape mismatch");
        const float scale = 2.0f / static_cast<float>(a.numel());
        const float* x = a.data();
        const float* y = b.data();
        float* g = grad_a->data();
        parallel_for((a.numel() + 16383) / 16384, [&](int64_t blk) {
            for (int64_t i = blk * 16384; i < std::min(a.numel(), (blk + 1) * 16384); ++i) g[i] = scale * (x[i] - y[i]);
        });
    }
    return loss;
}

}  // namespace pin::cpu
