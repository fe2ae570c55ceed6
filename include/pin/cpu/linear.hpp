// pin/cpu/linear.hpp - fully connected layer y = x W^T + b, forward and backward, on the CPU.
//
// x: (batch, in), W: (out, in) as in PyTorch, b: (out), y: (batch, out), all row-major.
// The selection head's first layer has a 25088 x 512 weight (51 MB): at small batch the layer is
// bound by reading W, so every loop here streams W exactly once per call and keeps the batch rows
// (at most a few MB) in cache. Outputs are split into fixed blocks, each reduced in one task.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "pin/core/parallel.hpp"
#include "pin/core/simd.hpp"
#include "pin/core/tensor.hpp"

namespace pin::cpu {

namespace detail {
inline void check_linear(const Tensor& x, const Tensor& w, const char* op) {
    PIN_CHECK(x.rank() == 2 && w.rank() == 2, op, ": x and W must be rank 2, got ", shape_to_string(x.shape()), " and ",
              shape_to_string(w.shape()));
    PIN_CHECK(x.dim(1) == w.dim(1), op, ": x has ", x.dim(1), " features, W expects ", w.dim(1));
}
}  // namespace detail

namespace detail {
// out[j][r] = sum over i of a[r][i] * b[j][i] (+ add[r]) for RA rows of a and RB of b: RA * RB
// accumulators, each vector of a and of b loaded once per step.
template <int RA, int RB>
void dot_tile(const float* const* a, const float* const* b, int64_t n, const float* add,
                              float* const* out) {
    using simd::VecF;
    constexpr int L = VecF::kLanes;
    VecF acc[RA][RB];
    for (int r = 0; r < RA; ++r)
        for (int j = 0; j < RB; ++j) acc[r][j] = VecF::zero();
    int64_t i = 0;
    auto step = [&](auto load) {
        VecF av[RA];
        for (int r = 0; r < RA; ++r) av[r] = load(a[r] + i);
        for (int j = 0; j < RB; ++j) {
            const VecF bv = load(b[j] + i);
            for (int r = 0; r < RA; ++r) acc[r][j] = fma(av[r], bv, acc[r][j]);
        }
    };
    for (; i + L <= n; i += L) step([](const float* p) { return VecF::load(p); });
    if (i < n) {
        const int rest = static_cast<int>(n - i);
        step([rest](const float* p) { return VecF::load_partial(p, rest); });
    }
    for (int r = 0; r < RA; ++r)
        for (int j = 0; j < RB; ++j) out[j][r] = acc[r][j].sum() + (add ? add[r] : 0.0f);
}

template <int RA>
inline void dot_tile_rb(int rb, const float* const* a, const float* const* b, int64_t n, const float* add,
                                 float* const* out) {
    switch (rb) {
        case 4: dot_tile<RA, 4>(a, b, n, add, out); break;
        case 3: dot_tile<RA, 3>(a, b, n, add, out); break;
        case 2: dot_tile<RA, 2>(a, b, n, add, out); break;
        default: dot_tile<RA, 1>(a, b, n, add, out); break;
    }
}
}  // namespace detail

// out[j * out_stride + r] = dot(a row r, b row j) (+ add[r]) for every row r of a (a_rows x n,
// row-major) and j of b (b_rows x n): the reconstruction from eigenface coefficients and the fully
// connected forward. Tasks own blocks of 64 rows of a, each read from memory once; register tiles
// of 3 (AVX2) or 4 (AVX-512) rows of a by 4 rows of b, so each vector loaded serves 3-4 FMAs (one
// dot product at a time loaded two vectors per FMA: 18.5 ms for the 16-face reconstruction
// against 10.2, 2x4 tiles 11.5; the head's 25088 -> 512 layer at batch 16 10.3 ms against 3.9).
// dot_tile is a function of its own: force-inlined, all eight forms in one loop body ran 12 %
// slower.
inline void row_dot_products(const float* a, int64_t a_rows, const float* b, int64_t b_rows, int64_t n,
                             const float* add, float* out, int64_t out_stride) {
    using namespace detail;
    constexpr int RA = simd::VecF::kLanes == 16 ? 4 : 3, RB = 4;
    constexpr int64_t kRows = 64;
    parallel_for((a_rows + kRows - 1) / kRows, [&](int64_t blk) {
        const int64_t r_end = std::min(a_rows, (blk + 1) * kRows);
        for (int64_t r0 = blk * kRows; r0 < r_end; r0 += RA) {
            const int ra = static_cast<int>(std::min<int64_t>(RA, r_end - r0));
            for (int64_t j0 = 0; j0 < b_rows; j0 += RB) {
                const int rb = static_cast<int>(std::min<int64_t>(RB, b_rows - j0));
                const float* bj[RB];
                float* o[RB];
                for (int j = 0; j < rb; ++j) {
                    bj[j] = b + (j0 + j) * n;
                    o[j] = out + (j0 + j) * out_stride + r0;
                }
                if (ra == RA) {
                    const float* ar[RA];
                    for (int r = 0; r < RA; ++r) ar[r] = a + (r0 + r) * n;
                    dot_tile_rb<RA>(rb, ar, bj, n, add ? add + r0 : nullptr, o);
                    continue;
                }
                for (int r = 0; r < ra; ++r) {  // the block's last rows, one at a time
                    const float* ar[1] = {a + (r0 + r) * n};
                    float* orow[RB];
                    for (int j = 0; j < rb; ++j) orow[j] = o[j] + r;
                    dot_tile_rb<1>(rb, ar, bj, n, add ? add + r0 + r : nullptr, orow);
                }
            }
        }
    });
}

inline void linear_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y) {
    detail::check_linear(x, w, "linear_forward");
    const int64_t B = x.dim(0), in = x.dim(1), out = w.dim(0);
    if (b.defined()) check_shape(b, {out}, "linear_forward bias");
    check_shape(y, {B, out}, "linear_forward output");
    const float* xd = x.data();
    const float* wd = w.data();
    const float* bd = b.defined() ? b.data() : nullptr;
    row_dot_products(wd, out, xd, B, in, bd, y.data(), out);
}

// dx = dy W (overwritten). Split over blocks of input features; W is read once.
inline void linear_backward_input(const Tensor& dy, const Tensor& w, Tensor& dx) {
    detail::check_linear(dx, w, "linear_backward_input");
    const int64_t B = dx.dim(0), in = dx.dim(1), out = w.dim(0);
    check_shape(dy, {B, out}, "linear_backward_input output gradient");
    const float* g = dy.data();
    const float* wd = w.data();
    float* gx = dx.data();
    constexpr int64_t kCols = 1024;
    parallel_for((in + kCols - 1) / kCols, [&](int64_t blk) {
        const int64_t c0 = blk * kCols, len = std::min(in, c0 + kCols) - c0;
        for (int64_t n = 0; n < B; ++n) std::fill(gx + n * in + c0, gx + n * in + c0 + len, 0.0f);
        for (int64_t o = 0; o < out; ++o)
            for (int64_t n = 0; n < B; ++n) simd::axpy(g[n * out + o], wd + o * in + c0, gx + n * in + c0, len);
    });
}

// dW = dy^T x and db = sum over the batch of dy (both overwritten; db may be undefined).
inline void linear_backward_params(const Tensor& x, const Tensor& dy, Tensor& dw, Tensor& db) {
    detail::check_linear(x, dw, "linear_backward_params");
    const int64_t B = x.dim(0), in = x.dim(1), out = dw.dim(0);
    check_shape(dy, {B, out}, "linear_backward_params output gradient");
    const float* xd = x.data();
    const float* g = dy.data();
    float* gw = dw.data();
    constexpr int64_t kRows = 8;
    parallel_for((out + kRows - 1) / kRows, [&](int64_t blk) {
        for (int64_t o = blk * kRows; o < std::min(out, (blk + 1) * kRows); ++o) {
            float* row = gw + o * in;
            std::fill(row, row + in, 0.0f);
            for (int64_t n = 0; n < B; ++n) simd::axpy(g[n * out + o], xd + n * in, row, in);
        }
    });
    if (db.defined()) {
        check_shape(db, {out}, "linear_backward_params bias gradient");
        float* gb = db.data();
        for (int64_t o = 0; o < out; ++o) {
            float s = 0.0f;
            for (int64_t n = 0; n < B; ++n) s += g[n * out + o];
            gb[o] = s;
        }
    }
}

}  // namespace pin::cpu
