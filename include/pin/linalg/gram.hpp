// pin/linalg/gram.hpp - the Gram matrix G = X X^T of n rows of length d, in double.
//
// Register tiles of 4 x 4 rows accumulate 16 dot products with vector FMAs over a chunk of 512
// columns; a block of 64 "i" rows (256 KiB per chunk) stays in L2 while the "j" rows stream, and
// each chunk's sums are added to G in a fixed order (deterministic for any thread count).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "pin/core/parallel.hpp"

namespace pin::linalg {

namespace detail {
template <int R>
inline void gram_tile(const double* const* a, const double* const* b, int64_t len, double (&out)[R][R]) {
    double acc[R][R][8] = {};
    int64_t k = 0;
    for (; k + 8 <= len; k += 8)
        for (int i = 0; i < R; ++i)
            for (int j = 0; j < R; ++j)
                for (int v = 0; v < 8; ++v) acc[i][j][v] += a[i][k + v] * b[j][k + v];
    for (int i = 0; i < R; ++i)
        for (int j = 0; j < R; ++j) {
            double s = ((acc[i][j][0] + acc[i][j][1]) + (acc[i][j][2] + acc[i][j][3])) +
                       ((acc[i][j][4] + acc[i][j][5]) + (acc[i][j][6] + acc[i][j][7]));
            for (int64_t t = k; t < len; ++t) s += a[i][t] * b[j][t];
            out[i][j] = s;
        }
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
