// pin/cpu/row_products.hpp - products of a few rows with a large matrix, bound by reading it.
//
// The eigenface projection (B is 12544 x 2500, 125 MB) and the selection head's first layer (W is
// 512 x 25088, 51 MB) multiply a batch of up to a few dozen rows with a matrix that only memory
// holds. Both forms read the large matrix once per call, in an order the hardware prefetchers and
// the TLB follow, and keep the rows in cache:
//   row_dot_products   out = A B^T with A the large one: dot products of its rows with the batch's
//                      (the reconstruction from coefficients, linear_forward);
//   rows_times_matrix  out = X M with M the large one: every output a chain of FMAs down M's rows
//                      in order (the coefficients, linear_backward_input and _params).
// Every output is summed by one task in an order fixed by the shape: results do not depend on the
// thread count.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "pin/core/parallel.hpp"
#include "pin/core/simd.hpp"
#include "pin/cpu/conv_kernels.hpp"

namespace pin::cpu {

namespace detail {
// out[i][0, kBlockCo) (+)= sum over d in [d0, d0 + dlen) of rows[i][d] * cols[d * N + 0..kBlockCo)
// for MR rows: the convolutions' register tile with M's rows in the place of input channels. The
// sum starts from zero when d0 is 0 and from out's partial sums after that: one FMA chain per
// output however D is cut.
template <int MR>
void rows_matrix_tile(const float* const* rows, int64_t d0, int64_t dlen, const float* cols, int64_t N,
                      float* const* out) {
    constexpr int NV = kMaxNV, L = VecF::kLanes;
    VecF acc[MR][NV];
    for (int i = 0; i < MR; ++i)
        for (int v = 0; v < NV; ++v) acc[i][v] = d0 == 0 ? VecF::zero() : VecF::load(out[i] + v * L);
    const float* shifted[MR];
    for (int i = 0; i < MR; ++i) shifted[i] = rows[i] + d0;
    gather_tile<MR, NV>(acc, shifted, 1, dlen, cols + d0 * N, 0, N);
    for (int i = 0; i < MR; ++i)
        for (int v = 0; v < NV; ++v) acc[i][v].store(out[i] + v * L);
}

// out[j][r] = sum over i of a[r][i] * b[j][i] (+ add[r]) for RA rows of a and RB of b: RA * RB
// accumulators, each vector of a and of b loaded once per step.
template <int RA, int RB>
void dot_tile(const float* const* a, const float* const* b, int64_t n, const float* add, float* const* out) {
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

// out (m x N) = x (m x D) M (D x N), overwritten; rows of x, M and out contiguous. Register tiles
// of (up to) 6 rows of x by kBlockCo columns sum down D, every output in the order of d (one FMA
// chain, the partial sums stored and reloaded between chunks of M's rows), so the grouping below
// does not change a bit of the result.
inline void rows_times_matrix(const float* x, int64_t m, int64_t D, const float* M, int64_t N, float* out) {
    using namespace detail;
    constexpr int64_t kCols = kBlockCo;
    constexpr int MR = mr_for_nv(kMaxNV);
    // o[i - i_begin][0, kCols) (+)= sum over d in [d0, d0 + dlen) of x[i][d] * cols[d * ld + 0..kCols)
    // for the rows i in [i_begin, i_end) of x, o's rows ldo apart.
    auto column_rows = [&](int64_t i_begin, int64_t i_end, const float* cols, int64_t ld, float* o, int64_t ldo,
                           int64_t d0, int64_t dlen) {
        for (int64_t i0 = i_begin; i0 < i_end; i0 += MR) {
            const float* rows[MR];
            float* outs[MR];
            const int mr = static_cast<int>(std::min<int64_t>(MR, i_end - i0));
            for (int i = 0; i < mr; ++i) {
                rows[i] = x + (i0 + i) * D;
                outs[i] = o + (i0 - i_begin + i) * ldo;
            }
            switch (mr) {
                case 6: rows_matrix_tile<6>(rows, d0, dlen, cols, ld, outs); break;
                case 5: rows_matrix_tile<5>(rows, d0, dlen, cols, ld, outs); break;
                case 4: rows_matrix_tile<4>(rows, d0, dlen, cols, ld, outs); break;
                case 3: rows_matrix_tile<3>(rows, d0, dlen, cols, ld, outs); break;
                case 2: rows_matrix_tile<2>(rows, d0, dlen, cols, ld, outs); break;
                default: rows_matrix_tile<1>(rows, d0, dlen, cols, ld, outs); break;
            }
        }
    };
    if (D == 0) {  // no terms: every sum is zero (the column cut below never writes then)
        std::fill(out, out + m * N, 0.0f);
        return;
    }
    const int64_t full_blocks = N / kCols, tail = N - full_blocks * kCols;
    // Columns past the last full block (N = 2500 leaves 4 on AVX2, 4 of 64 on AVX-512) go through a
    // D x kCols copy of them, zero-padded, that the same tiles read. A scalar loop down those
    // columns took a sixth of the projection's time: each value its own cache line, read again per
    // row of x. tail_rows does rows [i_begin, i_end) of them.
    auto tail_panel = [&] {
        std::vector<float> panel(static_cast<size_t>(D * kCols), 0.0f);
        for (int64_t d = 0; d < D; ++d)
            std::copy(M + d * N + full_blocks * kCols, M + d * N + N, panel.data() + d * kCols);
        return panel;
    };
    auto tail_rows = [&](const std::vector<float>& panel, int64_t i_begin, int64_t i_end) {
        std::vector<float> o(static_cast<size_t>((i_end - i_begin) * kCols));
        column_rows(i_begin, i_end, panel.data(), kCols, o.data(), kCols, 0, D);
        for (int64_t i = i_begin; i < i_end; ++i)
            std::copy_n(o.data() + (i - i_begin) * kCols, tail, out + i * N + full_blocks * kCols);
    };

    // A task's outputs stay in L2 up to this many bytes (both cuts below).
    constexpr int64_t kTaskOutputBytes = 256 << 10;
    // Many rows of x, few of M (a weight gradient: dy^T times the layer's input, D = the batch):
    // tasks own panels of 8 tiles of rows by a run of columns whose outputs (<= 256 KiB) and run of
    // M (D x run) stay in L2, and write their outputs row by row. Cut by columns as below, the
    // head's 512 -> 2500 weight gradient (5 MB of outputs) gave each task one or two blocks of
    // columns down all 2500 rows, 2 KB apart: 1.17x the time of a loop over output rows.
    if (D <= 256 && m >= 4 * 8 * MR) {
        constexpr int64_t kPanelRows = 8 * MR;
        const int64_t panels = (m + kPanelRows - 1) / kPanelRows;
        const int64_t runs = std::min<int64_t>(std::max<int64_t>(full_blocks, 1),
                                               (kPanelRows * N * 4 + kTaskOutputBytes - 1) / kTaskOutputBytes);
        const std::vector<float> panel = tail > 0 ? tail_panel() : std::vector<float>();
        parallel_for(panels * runs, [&](int64_t task) {
            const int64_t p = task / runs, r = task % runs;
            const int64_t i_begin = p * kPanelRows, i_end = std::min(m, i_begin + kPanelRows);
            const int64_t blk0 = full_blocks * r / runs, blk1 = full_blocks * (r + 1) / runs;
            for (int64_t i0 = i_begin; i0 < i_end; i0 += MR)
                for (int64_t blk = blk0; blk < blk1; ++blk)
                    column_rows(i0, std::min(i_end, i0 + MR), M + blk * kCols, N, out + i0 * N + blk * kCols, N, 0, D);
            if (r == runs - 1 && tail > 0) tail_rows(panel, i_begin, i_end);
        });
        return;
    }

    // Few rows of x (a batch) and a large M: tasks own runs of whole column blocks (one per thread,
    // more when a run's outputs would not stay in L2: the head's input-layer weight gradient has
    // 51 MB of them) and walk D in chunks of rows whose run of M (~192 KiB) stays in L2 while every
    // block and row of x uses it; each block prefetches its lines of the next chunk. With one
    // 64-byte block per task, the rows of the eigenbasis lay 10 KB apart (a new page and a
    // hardware-prefetch miss each, 12544 per block): 33 ms at batch 16 for 125 MB that memory
    // delivers in 4 (now 12).
    const int64_t out_runs = (m * N * 4 + kTaskOutputBytes - 1) / kTaskOutputBytes;
    const int64_t groups = std::min<int64_t>(full_blocks, std::max<int64_t>(num_threads(), out_runs));
    parallel_for(groups + (tail > 0 ? 1 : 0), [&](int64_t g) {
        if (g == groups) {
            tail_rows(tail_panel(), 0, m);
            return;
        }
        const int64_t blk0 = full_blocks * g / groups, blk1 = full_blocks * (g + 1) / groups;
        const int64_t width = (blk1 - blk0) * kCols;
        const int64_t chunk = std::min(D, std::clamp<int64_t>((192 << 10) / (width * 4), 8, 1024));
        for (int64_t d0 = 0; d0 < D; d0 += chunk) {
            const int64_t dlen = std::min(chunk, D - d0), next_end = std::min(D, d0 + 2 * chunk);
            for (int64_t blk = blk0; blk < blk1; ++blk) {
                const float* cols = M + blk * kCols;
                for (int64_t d = d0 + chunk; d < next_end; ++d)
                    for (int64_t k = 0; k < kCols; k += 16) prefetch_l2(cols + d * N + k);
                column_rows(0, m, cols, N, out + blk * kCols, N, d0, dlen);
            }
        }
    });
}

}  // namespace pin::cpu
