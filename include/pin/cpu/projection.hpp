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
#include "pin/cpu/linear.hpp"

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
// Register tiles of (up to) 6 images x kBlockCo coefficients sum down D, every output in the
// order of d (one FMA chain, the partial sums stored and reloaded between chunks of rows), so the
// grouping below does not change a bit of the result.
inline void project_coefficients(const float* basis, const float* mean, int64_t D, int64_t N, const float* x,
                                 int64_t batch, float* c) {
    using namespace detail;
    std::vector<float> centred(static_cast<size_t>(batch * D));
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t d = 0; d < D; ++d) centred[static_cast<size_t>(b * D + d)] = x[b * D + d] - mean[d];
    constexpr int64_t kCols = kBlockCo;
    constexpr int MR = mr_for_nv(kMaxNV);
    // out[b][0, kCols) += sum over d in [d0, d0 + dlen) of centred[b][d] * cols[d * ld + 0..kCols),
    // out rows ldc apart.
    auto column_rows = [&](const float* cols, int64_t ld, float* out, int64_t ldc, int64_t d0, int64_t dlen) {
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
    };
    // Tasks own runs of whole column blocks (one per thread) and walk D in chunks of rows whose
    // run of B (~192 KiB) stays in L2 while every block and image of the task uses it; each block
    // prefetches its lines of the next chunk. With one 64-byte block per task, the rows of B lay
    // 10 KB apart (a new page and a hardware-prefetch miss each, 12544 per block): 33 ms at batch
    // 16 for 125 MB that memory delivers in 4.
    const int64_t full_blocks = N / kCols, tail = N - full_blocks * kCols;
    const int64_t groups = std::min<int64_t>(full_blocks, std::max(1, num_threads()));
    parallel_for(groups + (tail > 0 ? 1 : 0), [&](int64_t g) {
        if (g < groups) {
            const int64_t blk0 = full_blocks * g / groups, blk1 = full_blocks * (g + 1) / groups;
            const int64_t width = (blk1 - blk0) * kCols;
            const int64_t chunk = std::clamp<int64_t>((192 << 10) / (width * 4), 8, 1024);
            for (int64_t b = 0; b < batch; ++b) std::fill(c + b * N + blk0 * kCols, c + b * N + blk1 * kCols, 0.0f);
            for (int64_t d0 = 0; d0 < D; d0 += chunk) {
                const int64_t dlen = std::min(chunk, D - d0), next_end = std::min(D, d0 + 2 * chunk);
                for (int64_t blk = blk0; blk < blk1; ++blk) {
                    const float* cols = basis + blk * kCols;
                    for (int64_t d = d0 + chunk; d < next_end; ++d)
                        for (int64_t k = 0; k < kCols; k += 16) prefetch_l2(cols + d * N + k);
                    column_rows(cols, N, c + blk * kCols, N, d0, dlen);
                }
            }
            return;
        }
        // Columns past the last full block (N = 2500 leaves 4 on AVX2, 4 of 64 on AVX-512) are
        // copied, zero-padded, into a D x kCols panel that the same tiles read. A scalar loop down
        // those columns took a sixth of the projection's time: each value its own cache line, read
        // again per image.
        const int64_t j0 = full_blocks * kCols;
        std::vector<float> panel(static_cast<size_t>(D * kCols), 0.0f), out(static_cast<size_t>(batch * kCols), 0.0f);
        for (int64_t d = 0; d < D; ++d) std::copy(basis + d * N + j0, basis + d * N + N, panel.data() + d * kCols);
        column_rows(panel.data(), kCols, out.data(), kCols, 0, D);
        for (int64_t b = 0; b < batch; ++b) std::copy(out.data() + b * kCols, out.data() + b * kCols + tail, c + b * N + j0);
    });
}

// out (batch, D) = (weights o c) B^T + m; weights (batch, N) is the mask q (or p, or nullptr for 1).
inline void reconstruct_from_coefficients(const float* basis, const float* mean, int64_t D, int64_t N, const float* c,
                                          const float* weights, int64_t batch, float* out) {
    std::vector<float> wc(static_cast<size_t>(batch * N));
    for (int64_t i = 0; i < batch * N; ++i) wc[static_cast<size_t>(i)] = weights ? weights[i] * c[i] : c[i];
    row_dot_products(basis, D, wc.data(), batch, N, mean, out, D);
}

// x_rec = B diag(q) B^T (x - m) + m for a whole batch.
inline void project_masked(const float* basis, const float* mean, int64_t D, int64_t N, const float* x,
                           const float* q, int64_t batch, float* out) {
    std::vector<float> c(static_cast<size_t>(batch * N));
    project_coefficients(basis, mean, D, N, x, batch, c.data());
    reconstruct_from_coefficients(basis, mean, D, N, c.data(), q, batch, out);
}

}  // namespace pin::cpu
