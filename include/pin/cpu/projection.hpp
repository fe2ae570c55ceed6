// pin/cpu/projection.hpp - batched eigenface projection x_rec = B diag(q) B^T (x - m) + m.
//
// Two GEMM-shaped passes over the whole batch, never forming B_q = B diag(q):
//   c = (x - m) B          (batch x N)     coefficients
//   x_rec = (q o c) B^T + m (batch x D)
// B is D x N row-major (column j = eigenvector j). At PIN's size B is 12544 x 2500 floats
// (125 MB), so both passes are bound by reading B; each reads it exactly once per batch, and the
// batch rows stay in cache (cpu/row_products.hpp: rows_times_matrix, row_dot_products). Every
// output is reduced by one task in an order fixed by the shape, so the result does not depend on
// the thread count.
#pragma once
#include <cstdint>
#include <vector>

#include "pin/cpu/row_products.hpp"

namespace pin::cpu {

// c (batch, N) = (x - m) B. x: (batch, D) contents (any rank, batch first), mean: D, basis: D x N.
inline void project_coefficients(const float* basis, const float* mean, int64_t D, int64_t N, const float* x,
                                 int64_t batch, float* c) {
    std::vector<float> centred(static_cast<size_t>(batch * D));
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t d = 0; d < D; ++d) centred[static_cast<size_t>(b * D + d)] = x[b * D + d] - mean[d];
    rows_times_matrix(centred.data(), batch, D, basis, N, c);
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
