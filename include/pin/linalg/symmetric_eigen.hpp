// pin/linalg/symmetric_eigen.hpp - the largest eigenpairs of a dense symmetric matrix, in double,
// with our own kernels (no LAPACK): the eigenfaces come from a 5000 x 5000 Gram matrix.
//
//   1. Householder tridiagonalisation, blocked as LAPACK's dsytrd/dlatrd: within a panel of nb
//      columns the trailing matrix is not touched; the panel's reflectors V and their images W
//      correct each new column and matrix-vector product; after the panel one rank-2nb update
//      A -= V W^T + W V^T. Only the lower triangle is read and kept up to date.
//   2. The wanted eigenvalues of the tridiagonal T by bisection on Sturm counts (each one
//      independent: parallel, and exact to a few ulps of ||T||).
//   3. Their eigenvectors by inverse iteration with a partially pivoted tridiagonal LU, and
//      Gram-Schmidt only against eigenvalues closer than 1e-7 ||T|| (farther ones come out
//      orthogonal to eps ||T|| / gap by themselves).
//   4. Back-transformation Z := H_0 H_1 ... H_{n-3} Z in blocks of nb reflectors (compact WY:
//      I - V T V^T), each block two passes over Z.
// Reference for the tests: classical Jacobi rotations (jacobi_eigen), slow and simple.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "pin/core/error.hpp"
#include "pin/core/parallel.hpp"
#include "pin/core/rng.hpp"

namespace pin::linalg {

struct EigenResult {
    std::vector<double> values;   // descending
    std::vector<double> vectors;  // n x k row-major: column j is the eigenvector of values[j]
    int64_t n = 0, k = 0;
};

namespace detail {

// Eight independent partial sums: the compiler turns them into vector FMAs without
// reassociating anything, and the order (so the result) is fixed.
inline double dot(const double* a, const double* b, int64_t n) {
    double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; ++k) s[k] += a[i + k] * b[i + k];
    for (; i < n; ++i) s[0] += a[i] * b[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}
inline void axpy(double a, const double* x, double* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// Tridiagonalises the symmetric n x n matrix A (row-major; the lower triangle is used and
// overwritten). On return d (n) is
// the diagonal, e (n-1) the off-diagonal of T = Q^T A Q, Q = H_0 ... H_{n-3},
// H_c = I - tau[c] v_c v_c^T, with v_c stored in reflectors (row c: entries c+1..n-1, v_c[c+1] = 1).
inline void tridiagonalize(std::vector<double>& A, int64_t n, std::vector<double>& d, std::vector<double>& e,
                           std::vector<double>& tau, std::vector<double>& reflectors, int64_t nb = 32,
                           const std::function<void(double)>& progress = {}) {
    d.assign(static_cast<size_t>(n), 0.0);
    e.assign(static_cast<size_t>(std::max<int64_t>(n - 1, 0)), 0.0);
    tau.assign(static_cast<size_t>(n), 0.0);
    reflectors.assign(static_cast<size_t>(n * n), 0.0);
    auto a = [&](int64_t i, int64_t j) -> double& { return A[static_cast<size_t>(i * n + j)]; };
    // The panel's reflectors and their images, one contiguous row per panel column (nb x n):
    // the trailing update then streams them with unit stride.
    std::vector<double> Vt(static_cast<size_t>(nb * n)), Wt(static_cast<size_t>(nb * n));
    auto V = [&](int64_t row, int64_t l) { return Vt[static_cast<size_t>(l * n + row)]; };
    auto W = [&](int64_t row, int64_t l) { return Wt[static_cast<size_t>(l * n + row)]; };
    std::vector<double> col(static_cast<size_t>(n)), w(static_cast<size_t>(n)), vw(static_cast<size_t>(nb)),
        ww(static_cast<size_t>(nb)), ypart;
    int64_t k0 = 0;
    for (; k0 < n - 2; k0 += nb) {
        const int64_t jb = std::min(nb, n - 2 - k0);
        std::fill(Vt.begin(), Vt.end(), 0.0);
        std::fill(Wt.begin(), Wt.end(), 0.0);
        for (int64_t j = 0; j < jb; ++j) {
            const int64_t c = k0 + j;
            // Column c, rows c..n-1, brought up to date with this panel's earlier reflectors.
            for (int64_t i = c; i < n; ++i) col[static_cast<size_t>(i)] = a(i, c);
            for (int64_t l = 0; l < j; ++l) {
                const double wc = W(c, l), vc = V(c, l);
                const double* vl = &Vt[static_cast<size_t>(l * n)];
                const double* wl = &Wt[static_cast<size_t>(l * n)];
                for (int64_t i = c; i < n; ++i) col[static_cast<size_t>(i)] -= vl[i] * wc + wl[i] * vc;
            }
            d[static_cast<size_t>(c)] = col[static_cast<size_t>(c)];
            // Householder reflector that maps col[c+1..] onto beta e_1.
            const int64_t m = n - c - 1;
            double* x = col.data() + c + 1;
            const double alpha = x[0];
            double sigma = 0;
            for (int64_t i = 1; i < m; ++i) sigma += x[i] * x[i];
            double t = 0, beta = alpha;
            double* v = reflectors.data() + c * n + c + 1;
            v[0] = 1.0;
            if (sigma > 0.0) {
                beta = -std::copysign(std::sqrt(alpha * alpha + sigma), alpha);
                t = (beta - alpha) / beta;
                const double scale = 1.0 / (alpha - beta);
                for (int64_t i = 1; i < m; ++i) v[i] = x[i] * scale;
            }
            tau[static_cast<size_t>(c)] = t;
            e[static_cast<size_t>(c)] = beta;
            std::copy(v, v + m, &Vt[static_cast<size_t>(j * n + c + 1)]);
            // w = tau (A22 v - V (W^T v) - W (V^T v)); then w -= tau/2 (w.v) v.
            for (int64_t l = 0; l < j; ++l) {
                vw[static_cast<size_t>(l)] = dot(&Wt[static_cast<size_t>(l * n + c + 1)], v, m);  // (W^T v)_l
                ww[static_cast<size_t>(l)] = dot(&Vt[static_cast<size_t>(l * n + c + 1)], v, m);  // (V^T v)_l
            }
            // A22 v from the lower triangle only: each stored element is read once and used twice
            // (row i: a dot product for y_i and an axpy into y_j, j < i), halving the memory
            // traffic that bounds this step. Rows are cut into kParts pieces of equal area, each
            // with its own partial y, summed in order: the result is independent of the threads.
            constexpr int64_t kParts = 8;
            int64_t bounds[kParts + 1];
            for (int64_t q = 0; q <= kParts; ++q)
                bounds[q] = static_cast<int64_t>(std::llround(m * std::sqrt(static_cast<double>(q) / kParts)));
            ypart.assign(static_cast<size_t>(kParts * m), 0.0);
            parallel_for(kParts, [&](int64_t q) {
                double* y = ypart.data() + q * m;
                for (int64_t i = bounds[q]; i < bounds[q + 1]; ++i) {
                    const double* row = &A[static_cast<size_t>((c + 1 + i) * n + c + 1)];
                    y[i] += dot(row, v, i) + row[i] * v[i];
                    axpy(v[i], row, y, i);
                }
            });
            for (int64_t i = 0; i < m; ++i) {
                double sum = 0;
                for (int64_t q = 0; q < kParts; ++q) sum += ypart[static_cast<size_t>(q * m + i)];
                const int64_t r = c + 1 + i;
                for (int64_t l = 0; l < j; ++l) sum -= V(r, l) * vw[static_cast<size_t>(l)] + W(r, l) * ww[static_cast<size_t>(l)];
                w[static_cast<size_t>(i)] = t * sum;
            }
            const double half = -0.5 * t * dot(w.data(), v, m);
            for (int64_t i = 0; i < m; ++i) Wt[static_cast<size_t>(j * n + c + 1 + i)] = w[static_cast<size_t>(i)] + half * v[i];
        }
        // Trailing update of rows/columns >= k0 + jb, lower triangle: A -= V W^T + W V^T.
        const int64_t s0 = k0 + jb, ms = n - s0;
        parallel_for(ms, [&](int64_t ri) {
            const int64_t r = s0 + ri;
            double* row = &A[static_cast<size_t>(r * n + s0)];
            for (int64_t l = 0; l < jb; ++l) {
                const double vr = V(r, l), wr = W(r, l);
                const double* wl = &Wt[static_cast<size_t>(l * n + s0)];
                const double* vl = &Vt[static_cast<size_t>(l * n + s0)];
                for (int64_t s = 0; s <= ri; ++s) row[s] -= vr * wl[s] + wr * vl[s];
            }
        });
        if (progress) progress(static_cast<double>(k0 + jb) / static_cast<double>(std::max<int64_t>(n - 2, 1)));
    }
    // The last 2 x 2 (or 1 x 1) block is already reduced.
    if (n >= 2) {
        d[static_cast<size_t>(n - 2)] = a(n - 2, n - 2);
        e[static_cast<size_t>(n - 2)] = a(n - 1, n - 2);
    }
    if (n >= 1) d[static_cast<size_t>(n - 1)] = a(n - 1, n - 1);
}

// Number of eigenvalues of T (diagonal d, off-diagonal e) smaller than x.
inline int64_t sturm_count(const std::vector<double>& d, const std::vector<double>& e, double x, double pivmin) {
    int64_t count = 0;
    double q = d[0] - x;
    if (std::fabs(q) < pivmin) q = -pivmin;
    if (q < 0) ++count;
    for (size_t i = 1; i < d.size(); ++i) {
        q = d[i] - x - e[i - 1] * e[i - 1] / q;
        if (std::fabs(q) < pivmin) q = -pivmin;
        if (q < 0) ++count;
    }
    return count;
}

// Solves (T - lambda I) z = b in place with a partially pivoted LU (LAPACK dlagtf/dlagts style).
inline void tridiagonal_shifted_solve(const std::vector<double>& d, const std::vector<double>& e, double lambda,
                                      std::vector<double>& z, double tiny) {
    const int64_t n = static_cast<int64_t>(d.size());
    // LU with row interchanges: U has up to two superdiagonals.
    std::vector<double> u0(static_cast<size_t>(n)), u1(static_cast<size_t>(n), 0.0), u2(static_cast<size_t>(n), 0.0),
        l(static_cast<size_t>(n), 0.0);
    std::vector<char> swapped(static_cast<size_t>(n), 0);
    double diag = d[0] - lambda, upper = n > 1 ? e[0] : 0.0;
    for (int64_t i = 0; i < n - 1; ++i) {
        const double sub = e[static_cast<size_t>(i)];
        const double next_diag = d[static_cast<size_t>(i + 1)] - lambda;
        const double next_upper = i + 2 < n ? e[static_cast<size_t>(i + 1)] : 0.0;
        if (std::fabs(diag) >= std::fabs(sub)) {
            const double piv = std::fabs(diag) < tiny ? std::copysign(tiny, diag == 0 ? 1.0 : diag) : diag;
            u0[static_cast<size_t>(i)] = piv;
            u1[static_cast<size_t>(i)] = upper;
            u2[static_cast<size_t>(i)] = 0.0;
            const double m = sub / piv;
            l[static_cast<size_t>(i)] = m;
            diag = next_diag - m * upper;
            upper = next_upper;
        } else {
            swapped[static_cast<size_t>(i)] = 1;
            u0[static_cast<size_t>(i)] = sub;
            u1[static_cast<size_t>(i)] = next_diag;
            u2[static_cast<size_t>(i)] = next_upper;
            const double m = diag / sub;
            l[static_cast<size_t>(i)] = m;
            diag = upper - m * next_diag;
            upper = -m * next_upper;
        }
    }
    u0[static_cast<size_t>(n - 1)] = std::fabs(diag) < tiny ? std::copysign(tiny, diag == 0 ? 1.0 : diag) : diag;
    // Forward: apply the interchanges and L.
    for (int64_t i = 0; i < n - 1; ++i) {
        if (swapped[static_cast<size_t>(i)]) std::swap(z[static_cast<size_t>(i)], z[static_cast<size_t>(i + 1)]);
        z[static_cast<size_t>(i + 1)] -= l[static_cast<size_t>(i)] * z[static_cast<size_t>(i)];
    }
    // Back substitution with U.
    for (int64_t i = n - 1; i >= 0; --i) {
        double s = z[static_cast<size_t>(i)];
        if (i + 1 < n) s -= u1[static_cast<size_t>(i)] * z[static_cast<size_t>(i + 1)];
        if (i + 2 < n) s -= u2[static_cast<size_t>(i)] * z[static_cast<size_t>(i + 2)];
        z[static_cast<size_t>(i)] = s / u0[static_cast<size_t>(i)];
    }
}

}  // namespace detail

// The k largest eigenpairs of the symmetric n x n matrix A (row-major; only the lower triangle
// is read; destroyed).
inline EigenResult symmetric_eigen_largest(std::vector<double> A, int64_t n, int64_t k,
                                           const std::function<void(const char*, double)>& progress = {}) {
    PIN_CHECK(n >= 1 && static_cast<int64_t>(A.size()) == n * n, "symmetric_eigen_largest: matrix is not ", n, " x ", n);
    PIN_CHECK(k >= 1 && k <= n, "symmetric_eigen_largest: cannot take ", k, " eigenpairs of a ", n, " x ", n, " matrix");
    for (double v : A) PIN_CHECK(std::isfinite(v), "symmetric_eigen_largest: matrix holds a non-finite value");
    std::vector<double> d, e, tau, refl;
    detail::tridiagonalize(A, n, d, e, tau, refl, 32, [&](double f) {
        if (progress) progress("tridiagonalise", f);
    });
    A.clear();
    A.shrink_to_fit();

    // Eigenvalues by bisection: Gershgorin interval, then each wanted index on its own.
    double lo = std::numeric_limits<double>::max(), hi = -lo, tnorm = 0;
    for (int64_t i = 0; i < n; ++i) {
        const double r = (i > 0 ? std::fabs(e[static_cast<size_t>(i - 1)]) : 0.0) + (i + 1 < n ? std::fabs(e[static_cast<size_t>(i)]) : 0.0);
        lo = std::min(lo, d[static_cast<size_t>(i)] - r);
        hi = std::max(hi, d[static_cast<size_t>(i)] + r);
        tnorm = std::max(tnorm, std::fabs(d[static_cast<size_t>(i)]) + r);
    }
    tnorm = std::max(tnorm, std::numeric_limits<double>::min());
    const double eps = std::numeric_limits<double>::epsilon();
    const double pivmin = std::numeric_limits<double>::min() * std::max(1.0, tnorm * tnorm);
    EigenResult out;
    out.n = n;
    out.k = k;
    out.values.resize(static_cast<size_t>(k));
    parallel_for(k, [&](int64_t j) {
        // values[j] is the (n - 1 - j)-th smallest: the x where the count passes n - 1 - j.
        const int64_t index = n - 1 - j;
        double a = lo - eps * tnorm, b = hi + eps * tnorm;
        for (int it = 0; it < 200 && b - a > 2 * eps * std::max(std::fabs(a), std::fabs(b)) + pivmin; ++it) {
            const double mid = 0.5 * (a + b);
            if (detail::sturm_count(d, e, mid, pivmin) > index) b = mid;
            else a = mid;
        }
        out.values[static_cast<size_t>(j)] = 0.5 * (a + b);
    });
    if (progress) progress("eigenvalues", 1.0);

    // Eigenvectors of T by inverse iteration, then back to A's basis. A vector computed this way
    // is orthogonal to the others up to about eps ||T|| / gap, so Gram-Schmidt is needed only
    // against eigenvalues closer than 1e-10 ||T|| (angles below ~1e-6); such runs are handled by
    // one task, in order. Vectors are kept as contiguous rows while they are computed.
    std::vector<double> Zt(static_cast<size_t>(k * n), 0.0);  // k x n
    const double cluster = 1e-10 * tnorm;
    const double tiny = eps * tnorm;
    std::vector<int64_t> starts{0};
    for (int64_t j = 1; j < k; ++j)
        if (out.values[static_cast<size_t>(j - 1)] - out.values[static_cast<size_t>(j)] > cluster) starts.push_back(j);
    starts.push_back(k);
    parallel_for(static_cast<int64_t>(starts.size()) - 1, [&](int64_t g) {
        for (int64_t j = starts[static_cast<size_t>(g)]; j < starts[static_cast<size_t>(g + 1)]; ++j) {
            std::vector<double> z(static_cast<size_t>(n));
            const PhiloxStream rng(12345, static_cast<uint64_t>(j));
            for (int64_t i = 0; i < n; ++i) z[static_cast<size_t>(i)] = rng.uniform(static_cast<uint64_t>(i)) - 0.5;
            for (int iter = 0; iter < 3; ++iter) {
                detail::tridiagonal_shifted_solve(d, e, out.values[static_cast<size_t>(j)], z, tiny);
                for (int64_t p = starts[static_cast<size_t>(g)]; p < j; ++p) {  // clustered predecessors
                    const double* zp = &Zt[static_cast<size_t>(p * n)];
                    detail::axpy(-detail::dot(zp, z.data(), n), zp, z.data(), n);
                }
                const double norm = std::sqrt(detail::dot(z.data(), z.data(), n));
                PIN_CHECK(norm > 0 && std::isfinite(norm), "symmetric_eigen_largest: inverse iteration failed");
                for (double& v : z) v /= norm;
            }
            std::copy(z.begin(), z.end(), &Zt[static_cast<size_t>(j * n)]);
        }
    });
    std::vector<double> Z(static_cast<size_t>(n * k));  // n x k
    parallel_for(n, [&](int64_t i) {
        for (int64_t j = 0; j < k; ++j) Z[static_cast<size_t>(i * k + j)] = Zt[static_cast<size_t>(j * n + i)];
    });
    Zt.clear();
    Zt.shrink_to_fit();
    if (progress) progress("eigenvectors", 1.0);

    // Back-transformation Z := H_0 ... H_{n-3} Z, blocks of nb reflectors applied last-first as
    // I - V T V^T (T upper triangular, LAPACK's dlarft "forward, columnwise").
    constexpr int64_t nb = 32;  // the register tiles below assume 32
    const int64_t reflector_count = std::max<int64_t>(n - 2, 0);
    std::vector<double> T(static_cast<size_t>(nb * nb)), Vb;
    for (int64_t b0 = ((reflector_count - 1) / nb) * nb; b0 >= 0 && reflector_count > 0; b0 -= nb) {
        const int64_t bs = std::min(nb, reflector_count - b0);
        auto vat = [&](int64_t row, int64_t l) -> double {  // V[row][l], reflector b0 + l
            const int64_t c = b0 + l;
            return row <= c ? 0.0 : refl[static_cast<size_t>(c * n + row)];
        };
        // T
        std::fill(T.begin(), T.end(), 0.0);
        for (int64_t i = 0; i < bs; ++i) {
            const double ti = tau[static_cast<size_t>(b0 + i)];
            T[static_cast<size_t>(i * nb + i)] = ti;
            for (int64_t p = 0; p < i; ++p) {  // y_p = V[:, p]^T v_i
                double s = 0;
                for (int64_t r = b0 + i + 1; r < n; ++r) s += vat(r, p) * vat(r, i);
                T[static_cast<size_t>(p * nb + i)] = s;
            }
            // T[0:i, i] = -ti * T[0:i, 0:i] * y
            std::vector<double> y(static_cast<size_t>(i));
            for (int64_t p = 0; p < i; ++p) y[static_cast<size_t>(p)] = T[static_cast<size_t>(p * nb + i)];
            for (int64_t p = 0; p < i; ++p) {
                double s = 0;
                for (int64_t q = p; q < i; ++q) s += T[static_cast<size_t>(p * nb + q)] * y[static_cast<size_t>(q)];
                T[static_cast<size_t>(p * nb + i)] = -ti * s;
            }
        }
        // Dense copy of the block's reflectors, rows b0+1..n-1 (zeros above each unit entry).
        const int64_t rows = n - b0 - 1;
        Vb.assign(static_cast<size_t>(rows * nb), 0.0);
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t l = 0; l < bs; ++l) Vb[static_cast<size_t>(r * nb + l)] = vat(b0 + 1 + r, l);
        // Per column block of Z: M = V^T Z, M := T M, Z -= V M. Register tiles of 8 reflectors x
        // 16 columns keep the sums in registers while the rows stream by.
        constexpr int64_t kCols = 16;
        const int64_t col_blocks = (k + kCols - 1) / kCols;
        parallel_for(col_blocks, [&](int64_t cb) {
            const int64_t c0 = cb * kCols, cn = std::min(k, c0 + kCols) - c0;
            double m[32][kCols];
            for (int64_t l0 = 0; l0 < bs; l0 += 8) {
                double acc[8][kCols] = {};
                for (int64_t r = 0; r < rows; ++r) {
                    const double* zr = &Z[static_cast<size_t>((b0 + 1 + r) * k + c0)];
                    double z[kCols];
                    for (int64_t c = 0; c < kCols; ++c) z[c] = c < cn ? zr[c] : 0.0;
                    const double* vr = &Vb[static_cast<size_t>(r * nb + l0)];
                    for (int l = 0; l < 8; ++l)
                        for (int64_t c = 0; c < kCols; ++c) acc[l][c] += vr[l] * z[c];
                }
                for (int l = 0; l < 8 && l0 + l < 32; ++l)
                    for (int64_t c = 0; c < kCols; ++c) m[l0 + l][c] = acc[l][c];
            }
            double tm[32][kCols];
            for (int64_t p = 0; p < bs; ++p)
                for (int64_t c = 0; c < kCols; ++c) {
                    double sum = 0;
                    for (int64_t q = p; q < bs; ++q) sum += T[static_cast<size_t>(p * nb + q)] * m[q][c];
                    tm[p][c] = sum;
                }
            for (int64_t p = bs; p < 32; ++p)
                for (int64_t c = 0; c < kCols; ++c) tm[p][c] = 0.0;
            for (int64_t r = 0; r < rows; ++r) {
                double* zr = &Z[static_cast<size_t>((b0 + 1 + r) * k + c0)];
                const double* vr = &Vb[static_cast<size_t>(r * nb)];
                double upd[kCols] = {};
                for (int64_t l = 0; l < 32; ++l)
                    for (int64_t c = 0; c < kCols; ++c) upd[c] += vr[l] * tm[l][c];
                for (int64_t c = 0; c < cn; ++c) zr[c] -= upd[c];
            }
        });
        if (progress) progress("back-transform", 1.0 - static_cast<double>(b0) / static_cast<double>(reflector_count));
    }
    out.vectors = std::move(Z);
    return out;
}

// Reference: all eigenpairs by cyclic Jacobi rotations, descending (tests only; O(n^3) per sweep).
inline EigenResult jacobi_eigen(std::vector<double> A, int64_t n) {
    std::vector<double> V(static_cast<size_t>(n * n), 0.0);
    for (int64_t i = 0; i < n; ++i) V[static_cast<size_t>(i * n + i)] = 1.0;
    auto a = [&](int64_t i, int64_t j) -> double& { return A[static_cast<size_t>(i * n + j)]; };
    for (int sweep = 0; sweep < 100; ++sweep) {
        double off = 0;
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < n; ++j)
                if (i != j) off += a(i, j) * a(i, j);
        if (off < 1e-30) break;
        for (int64_t p = 0; p < n; ++p)
            for (int64_t q = p + 1; q < n; ++q) {
                if (std::fabs(a(p, q)) < 1e-300) continue;
                const double theta = (a(q, q) - a(p, p)) / (2 * a(p, q));
                const double t = std::copysign(1.0, theta) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
                const double c = 1 / std::sqrt(t * t + 1), s = t * c;
                for (int64_t r = 0; r < n; ++r) {  // A := A J
                    const double arp = a(r, p), arq = a(r, q);
                    a(r, p) = c * arp - s * arq;
                    a(r, q) = s * arp + c * arq;
                }
                for (int64_t r = 0; r < n; ++r) {  // A := J^T A
                    const double apr = a(p, r), aqr = a(q, r);
                    a(p, r) = c * apr - s * aqr;
                    a(q, r) = s * apr + c * aqr;
                }
                for (int64_t r = 0; r < n; ++r) {
                    const double vrp = V[static_cast<size_t>(r * n + p)], vrq = V[static_cast<size_t>(r * n + q)];
                    V[static_cast<size_t>(r * n + p)] = c * vrp - s * vrq;
                    V[static_cast<size_t>(r * n + q)] = s * vrp + c * vrq;
                }
            }
    }
    std::vector<int64_t> order(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
    std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return a(x, x) > a(y, y); });
    EigenResult r;
    r.n = r.k = n;
    r.values.resize(static_cast<size_t>(n));
    r.vectors.resize(static_cast<size_t>(n * n));
    for (int64_t j = 0; j < n; ++j) {
        r.values[static_cast<size_t>(j)] = a(order[static_cast<size_t>(j)], order[static_cast<size_t>(j)]);
        for (int64_t i = 0; i < n; ++i) r.vectors[static_cast<size_t>(i * n + j)] = V[static_cast<size_t>(i * n + order[static_cast<size_t>(j)])];
    }
    return r;
}

}  // namespace pin::linalg
