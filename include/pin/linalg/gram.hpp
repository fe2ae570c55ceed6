// pin/linalg/gram.hpp - the Gram matrix G = X X^T of n rows of length d, in double.
//
// Register tiles of 4 x 4 rows accumulate 16 dot products with vector FMAs over a chunk of 512
// columns; a block of 64 "i" rows (256 KiB per chunk) stays in L2 while the "j" rows stream, and
// each chunk's sums are added to G in a fixed order (deterministic for any thread count).
// (GEMM-style packing would go further; this is within a few times of the FMA peak.)
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "pin/core/parallel.hpp"

namespace pin::linalg {

namespace detail {
// 16 dot products of 4 rows a with 4 rows b over len elements. The AVX-512 path keeps the 16
// partial sums in registers explicitly (the generic loop below left GCC spilling them: 4 GMAC/s).
template <int R>
inline void gram_tile(const double* const* a, const double* const* b, int64_t len, double (&out)[R][R]) {
#if defined(__AVX512F__)
    static_assert(R == 4, "the AVX-512 tile is 4 x 4");
    // Sixteen named accumulators and eight named operands: with arrays GCC 12 re-loaded every
    // operand for every FMA (load-bound at a quarter of the peak).
    __m512d c00 = _mm512_setzero_pd(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00, c13 = c00,
            c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;
    const double *pa0 = a[0], *pa1 = a[1], *pa2 = a[2], *pa3 = a[3];
    const double *pb0 = b[0], *pb1 = b[1], *pb2 = b[2], *pb3 = b[3];
    int64_t k = 0;
    for (; k + 8 <= len; k += 8) {
        const __m512d a0 = _mm512_loadu_pd(pa0 + k), a1 = _mm512_loadu_pd(pa1 + k), a2 = _mm512_loadu_pd(pa2 + k),
                      a3 = _mm512_loadu_pd(pa3 + k);
        const __m512d b0 = _mm512_loadu_pd(pb0 + k), b1 = _mm512_loadu_pd(pb1 + k), b2 = _mm512_loadu_pd(pb2 + k),
                      b3 = _mm512_loadu_pd(pb3 + k);
        c00 = _mm512_fmadd_pd(a0, b0, c00); c01 = _mm512_fmadd_pd(a0, b1, c01);
        c02 = _mm512_fmadd_pd(a0, b2, c02); c03 = _mm512_fmadd_pd(a0, b3, c03);
        c10 = _mm512_fmadd_pd(a1, b0, c10); c11 = _mm512_fmadd_pd(a1, b1, c11);
        c12 = _mm512_fmadd_pd(a1, b2, c12); c13 = _mm512_fmadd_pd(a1, b3, c13);
        c20 = _mm512_fmadd_pd(a2, b0, c20); c21 = _mm512_fmadd_pd(a2, b1, c21);
        c22 = _mm512_fmadd_pd(a2, b2, c22); c23 = _mm512_fmadd_pd(a2, b3, c23);
        c30 = _mm512_fmadd_pd(a3, b0, c30); c31 = _mm512_fmadd_pd(a3, b1, c31);
        c32 = _mm512_fmadd_pd(a3, b2, c32); c33 = _mm512_fmadd_pd(a3, b3, c33);
    }
    const __m512d acc[4][4] = {{c00, c01, c02, c03}, {c10, c11, c12, c13}, {c20, c21, c22, c23}, {c30, c31, c32, c33}};
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
            double s = _mm512_reduce_add_pd(acc[i][j]);
            for (int64_t t = k; t < len; ++t) s += a[i][t] * b[j][t];
            out[i][j] = s;
        }
#else
    double acc[R][R][4] = {};
    int64_t k = 0;
    for (; k + 4 <= len; k += 4)
        for (int i = 0; i < R; ++i)
            for (int j = 0; j < R; ++j)
                for (int v = 0; v < 4; ++v) acc[i][j][v] += a[i][k + v] * b[j][k + v];
    for (int i = 0; i < R; ++i)
        for (int j = 0; j < R; ++j) {
            double s = (acc[i][j][0] + acc[i][j][1]) + (acc[i][j][2] + acc[i][j][3]);
            for (int64_t t = k; t < len; ++t) s += a[i][t] * b[j][t];
            out[i][j] = s;
        }
#endif
}
}  // namespace detail

// G (n x n, row-major, both triangles) = X X^T, X n x d row-major.
inline std::vector<double> gram_matrix(const std::vector<double>& X, int64_t n, int64_t d) {
    std::vector<double> G(static_cast<size_t>(n * n), 0.0);
    constexpr int R = 4;
    constexpr int64_t kChunk = 512, kBlock = 64;
    const int64_t tiles = (n + R - 1) / R;
    const double* base = X.data();
    for (int64_t k0 = 0; k0 < d; k0 += kChunk) {
        const int64_t len = std::min(kChunk, d - k0);
        // Tasks: blocks of 64 rows i; each computes its tiles (i, j <= i).
        parallel_for((n + kBlock - 1) / kBlock, [&](int64_t blk) {
            const int64_t ti0 = blk * kBlock / R, ti1 = std::min(tiles, (blk + 1) * kBlock / R);
            for (int64_t tj = 0; tj < ti1; ++tj)
                for (int64_t ti = std::max(ti0, tj); ti < ti1; ++ti) {
                    const double* a[R];
                    const double* b[R];
                    for (int r = 0; r < R; ++r) {
                        a[r] = base + std::min(ti * R + r, n - 1) * d + k0;
                        b[r] = base + std::min(tj * R + r, n - 1) * d + k0;
                    }
                    double out[R][R];
                    detail::gram_tile<R>(a, b, len, out);
                    for (int i = 0; i < R; ++i)
                        for (int j = 0; j < R; ++j) {
                            const int64_t gi = ti * R + i, gj = tj * R + j;
                            if (gi < n && gj < n && gj <= gi) G[static_cast<size_t>(gi * n + gj)] += out[i][j];
                        }
                }
        });
    }
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < i; ++j) G[static_cast<size_t>(j * n + i)] = G[static_cast<size_t>(i * n + j)];
    return G;
}

}  // namespace pin::linalg
