// Symmetric eigensolver against Jacobi rotations; residuals and orthonormality, clusters too.
#include <cmath>

#include "helpers.hpp"
#include "pin/core/parallel.hpp"
#include "pin/linalg/symmetric_eigen.hpp"

using namespace pin;

namespace {
// Q diag(values) Q^T with Q from Householder products of random vectors.
std::vector<double> matrix_with_spectrum(const std::vector<double>& values, uint64_t seed) {
    const int64_t n = static_cast<int64_t>(values.size());
    std::vector<double> Q(static_cast<size_t>(n * n), 0.0);
    for (int64_t i = 0; i < n; ++i) Q[static_cast<size_t>(i * n + i)] = 1.0;
    const PhiloxStream rng(seed, 1);
    for (int r = 0; r < 3; ++r) {
        std::vector<double> v(static_cast<size_t>(n));
        double norm = 0;
        for (int64_t i = 0; i < n; ++i) {
            v[static_cast<size_t>(i)] = rng.normal(static_cast<uint64_t>(r * n + i));
            norm += v[static_cast<size_t>(i)] * v[static_cast<size_t>(i)];
        }
        for (int64_t row = 0; row < n; ++row) {  // Q := Q (I - 2 v v^T / |v|^2)
            double s = 0;
            for (int64_t i = 0; i < n; ++i) s += Q[static_cast<size_t>(row * n + i)] * v[static_cast<size_t>(i)];
            for (int64_t i = 0; i < n; ++i) Q[static_cast<size_t>(row * n + i)] -= 2 * s / norm * v[static_cast<size_t>(i)];
        }
    }
    std::vector<double> A(static_cast<size_t>(n * n), 0.0);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) {
            double s = 0;
            for (int64_t l = 0; l < n; ++l)
                s += Q[static_cast<size_t>(i * n + l)] * values[static_cast<size_t>(l)] * Q[static_cast<size_t>(j * n + l)];
            A[static_cast<size_t>(i * n + j)] = s;
        }
    for (int64_t i = 0; i < n; ++i)  // exactly symmetric
        for (int64_t j = 0; j < i; ++j) A[static_cast<size_t>(j * n + i)] = A[static_cast<size_t>(i * n + j)];
    return A;
}

void check_eigenpairs(const std::vector<double>& A, int64_t n, int64_t k, const char* what) {
    INFO(what << " n=" << n << " k=" << k);
    const linalg::EigenResult got = linalg::symmetric_eigen_largest(A, n, k);
    const linalg::EigenResult ref = linalg::jacobi_eigen(A, n);
    double norm = 0;
    for (double v : ref.values) norm = std::max(norm, std::fabs(v));
    for (int64_t j = 0; j < k; ++j) {
        REQUIRE(std::fabs(got.values[static_cast<size_t>(j)] - ref.values[static_cast<size_t>(j)]) <= 1e-11 * norm + 1e-300);
        if (j > 0) REQUIRE(got.values[static_cast<size_t>(j)] <= got.values[static_cast<size_t>(j - 1)]);
        double res = 0;  // ||A v - lambda v||
        for (int64_t i = 0; i < n; ++i) {
            double s = 0;
            for (int64_t l = 0; l < n; ++l) s += A[static_cast<size_t>(i * n + l)] * got.vectors[static_cast<size_t>(l * k + j)];
            s -= got.values[static_cast<size_t>(j)] * got.vectors[static_cast<size_t>(i * k + j)];
            res += s * s;
        }
        REQUIRE(std::sqrt(res) <= 1e-10 * norm + 1e-300);
    }
    for (int64_t a = 0; a < k; ++a)
        for (int64_t b = 0; b <= a; ++b) {
            double s = 0;
            for (int64_t i = 0; i < n; ++i) s += got.vectors[static_cast<size_t>(i * k + a)] * got.vectors[static_cast<size_t>(i * k + b)];
            REQUIRE(std::fabs(s - (a == b ? 1.0 : 0.0)) < 1e-10);
        }
}
}  // namespace

TEST_CASE("largest eigenpairs of random symmetric matrices match Jacobi", "[linalg]") {
    for (const int64_t n : {1, 2, 3, 7, 33, 70, 101}) {
        std::vector<double> A(static_cast<size_t>(n * n));
        const PhiloxStream rng(static_cast<uint64_t>(n), 2);
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j <= i; ++j)
                A[static_cast<size_t>(i * n + j)] = A[static_cast<size_t>(j * n + i)] = rng.normal(static_cast<uint64_t>(i * n + j));
        check_eigenpairs(A, n, std::max<int64_t>(1, n / 2), "random");
        check_eigenpairs(A, n, n, "random, all");
    }
}

TEST_CASE("eigenvectors stay orthonormal for repeated and tiny eigenvalues", "[linalg]") {
    // A Gram-like spectrum: fast decay, a repeated pair, a repeated triple, exact zeros.
    std::vector<double> spectrum;
    for (int i = 0; i < 40; ++i) spectrum.push_back(1000.0 * std::pow(0.7, i));
    spectrum[5] = spectrum[6];
    spectrum[20] = spectrum[21] = spectrum[22];
    for (int i = 0; i < 8; ++i) spectrum.push_back(0.0);
    const std::vector<double> A = matrix_with_spectrum(spectrum, 9);
    check_eigenpairs(A, static_cast<int64_t>(spectrum.size()), 30, "decaying spectrum with clusters");
}

TEST_CASE("eigensolver results are identical for 1 and 2 threads and reject bad input", "[linalg][threads]") {
    const int64_t n = 90;
    std::vector<double> A(static_cast<size_t>(n * n));
    const PhiloxStream rng(4, 4);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j <= i; ++j)
            A[static_cast<size_t>(i * n + j)] = A[static_cast<size_t>(j * n + i)] = rng.normal(static_cast<uint64_t>(i * n + j));
    set_num_threads(1);
    const auto one = linalg::symmetric_eigen_largest(A, n, 40);
    set_num_threads(2);
    const auto two = linalg::symmetric_eigen_largest(A, n, 40);
    REQUIRE(one.values == two.values);
    REQUIRE(one.vectors == two.vectors);
    REQUIRE_THROWS_WITH(linalg::symmetric_eigen_largest(A, n, n + 1), Catch::Contains("cannot take 91 eigenpairs"));
    A[5] = std::nan("");
    REQUIRE_THROWS_WITH(linalg::symmetric_eigen_largest(A, n, 3), Catch::Contains("non-finite"));
}
