// pin/cpu/projection.hpp - batched eigenface projection x_rec = B diag(q) B^T (x - m) + m.
//
// Two GEMM-shaped passes over the whole batch, never forming B_q = B diag(q):
//   c = (x - m) B          (batch x N)     coefficients
//   x_rec = (q o c) B^T + m (batch x D)
// B is D x N row-major (column j = eigenvector j). At PIN's size B is 12544 x 2500 floats
// (125 MB), so both passes are bound by reading B; each reads it exactly once per batch, and the
// batch rows stay in cache. Tasks own fixed column (pass 1) or row (pass 2) blocks, so the result
// does not depend on the thread count.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "pin/core/parallel.hpp"
#include "pin/core/simd.hpp"
#include "pin/core/tensor.hpp"
#include "pin/cpu/conv_kernels.hpp"

namespace pin::cpu {

namespace detail {
template <int MR>
void coefficient_tile(const float* const* rows, int64_t d0, int64_t dlen, const float* basis_cols, int64_t N,
                      float* const* out) {
    constexpr int NV = kMaxNV, L = VecF::kLanes;
    VecF acc[MR][NV];
    for (int i = 0; i < MR; ++i)
        for (int v = 0; v < NV; ++v) acc[i][v] = VecF::load(out[i] + v * L);
    const float* shifted[MR];
    for (int i = 0; i < MR; ++i) shifted[i] = rows[i] + d0;
    gather_tile<MR, NV>(acc, shifted, 1, dlen, basis_cols + d0 * N, 0, N);
    for (int i = 0; i < MR; ++i)
        for (int v = 0; v < NV; ++v) acc[i][v].store(out[i] + v * L);
}
}  // namespace detail

// c (batch, N) = (x - m) B. x: (batch, D) contents (any rank, batch first), mean: D, basis: D x N.
// Register tiles of (up to) 6 images x kBlockCo coefficients walk down D in chunks that keep a slab
// of B in L2 while every image of the batch uses it: B is read from memory once.
inline void project_coefficients(const float* basis, const float* mean, int64_t D, int64_t N, const float* x,
                                 int64_t batch, float* c) {
    using namespace detail;
    std::vector<float> centred(static_cast<size_t>(batch * D));
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t d = 0; d < D; ++d) centred[static_cast<size_t>(b * D + d)] = x[b * D + d] - mean[d];
    constexpr int64_t kCols = kBlockCo;
    constexpr int MR = mr_for_nv(kMaxNV);
    constexpr int64_t kRowsChunk = 1024;
    // out[b][0, kCols) = sum over d of centred[b][d] * cols[d * ld + 0..kCols), out rows ldc apart.
    auto column_block = [&](const float* cols, int64_t ld, float* out, int64_t ldc) {
        for (int64_t b = 0; b < batch; ++b) std::fill(out + b * ldc, out + b * ldc + kCols, 0.0f);
        for (int64_t d0 = 0; d0 < D; d0 += kRowsChunk) {
            const int64_t dlen = std::min(kRowsChunk, D - d0);
            for (int64_t b0 = 0; b0 < batch; b0 += MR) {
                const float* rows[MR];
                float* outs[MR];
                const int mr = static_cast<int>(std::min<int64_t>(MR, batch - b0));
                for (int i = 0; i < mr; ++i) {
                    rows[i] = centred.data() + (b0 + i) * D;
                    outs[i] = out + (b0 + i) * ldc;
                }
                switch (mr) {
                    case 6: coefficient_tile<6>(rows, d0, dlen, cols, ld, outs); break;
                    case 5: coefficient_tile<5>(rows, d0, dlen, cols, ld, outs); break;
                    case 4: coefficient_tile<4>(rows, d0, dlen, cols, ld, outs); break;
                    case 3: coefficient_tile<3>(rows, d0, dlen, cols, ld, outs); break;
                    case 2: coefficient_tile<2>(rows, d0, dlen, cols, ld, outs); break;
                    default: coefficient_tile<1>(rows, d0, dlen, cols, ld, outs); break;
                }
            }
        }
    };
    // Columns past the last full block (N = 2500 leaves 4 on AVX2, 4 of 64 on AVX-512) are copied,
    // zero-padded, into a D x kCols panel that the same tiles read. A scalar loop down those columns
    // took a sixth of the projection's time: each value its own cache line, read again per image.
    const int64_t full_blocks = N / kCols, tail = N - full_blocks * kCols;
    parallel_for(full_blocks + (tail > 0 ? 1 : 0), [&](int64_t blk) {
        const int64_t j0 = blk * kCols;
        if (blk < full_blocks) return column_block(basis + j0, N, c + j0, N);
        std::vector<float> panel(static_cast<size_t>(D * kCols), 0.0f), out(static_cast<size_t>(batch * kCols));
        for (int64_t d = 0; d < D; ++d)
            std::copy(basis + d * N + j0, basis + d * N + N, panel.data() + d * kCols);
        column_block(panel.data(), kCols, out.data(), kCols);
        for (int64_t b = 0; b < batch; ++b) std::copy(out.data() + b * kCols, out.data() + b * kCols + tail, c + b * N + j0);
    });
}

// out (batch, D) = (weights o c) B^T + m; weights (batch, N) is the mask q (or p, or nullptr for 1).
inline void reconstruct_from_coefficients(const float* basis, const float* mean, int64_t D, int64_t N, const float* c,
                                          const float* weights, int64_t batch, float* out) {
    std::vector<float> wc(static_cast<size_t>(batch * N));
    for (int64_t i = 0; i < batch * N; ++i) wc[static_cast<size_t>(i)] = weights ? weights[i] * c[i] : c[i];
    constexpr int64_t kRows = 64;
    parallel_for((D + kRows - 1) / kRows, [&](int64_t blk) {
        for (int64_t d = blk * kRows; d < std::min(D, (blk + 1) * kRows); ++d)
            for (int64_t b = 0; b < batch; ++b)
                out[b * D + d] = simd::dot(basis + d * N, wc.data() + b * N, N) + mean[d];
    });
}

// x_rec = B diag(q) B^T (x - m) + m for a whole batch.
inline void project_masked(const float* basis, const float* mean, int64_t D, int64_t N, const float* x,
                           const float* q, int64_t batch, float* out) {
    std::vector<float> c(static_cast<size_t>(batch * N));
    project_coefficients(basis, mean, D, N, x, batch, c.data());
    reconstruct_from_coefficients(basis, mean, D, N, c.data(), q, batch, out);
}

}  // namespace pin::cpu
