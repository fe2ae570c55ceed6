// Eigenfaces: orthonormal basis, descending eigenvalues equal to a float64 reference, exact
// projection identities, PCA truncation, file round trip and load errors.
#include <cmath>
#include <cstdio>
#include <unistd.h>

#include "helpers.hpp"
#include "pin/linalg/gram.hpp"
#include "pin/model/eigenbasis.hpp"

using namespace pin;
using namespace pin::test;

namespace {
// n faces of D pixels with a decaying spectrum: sum_k s_k a_ik u_k + noise.
Tensor synthetic_faces(int64_t n, int64_t D, uint64_t seed) {
    Tensor f = Tensor::empty({n, D});
    const PhiloxStream rng(seed, 1);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t d = 0; d < D; ++d) {
            double v = 0.3 * std::sin(0.01 * d);
            for (int k = 0; k < 12; ++k)
                v += std::pow(0.6, k) * rng.normal(static_cast<uint64_t>(i * 64 + k)) * std::cos(0.05 * (k + 1) * d + k);
            f.data()[i * D + d] = static_cast<float>(v + 0.01 * rng.normal(static_cast<uint64_t>(1000000 + i * D + d)));
        }
    return f;
}
}  // namespace

TEST_CASE("Gram matrix matches a plain double loop", "[eigen][gram]") {
    const int64_t n = 23, d = 1037;
    std::vector<double> X(static_cast<size_t>(n * d));
    const PhiloxStream rng(2, 2);
    for (size_t i = 0; i < X.size(); ++i) X[i] = rng.normal(i);
    const std::vector<double> G = linalg::gram_matrix(X, n, d);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) {
            double s = 0, scale = 0;
            for (int64_t k = 0; k < d; ++k) {
                s += X[static_cast<size_t>(i * d + k)] * X[static_cast<size_t>(j * d + k)];
                scale += std::fabs(X[static_cast<size_t>(i * d + k)] * X[static_cast<size_t>(j * d + k)]);
            }
            REQUIRE(std::fabs(G[static_cast<size_t>(i * n + j)] - s) <= 1e-13 * scale);
        }
}

TEST_CASE("eigenfaces are orthonormal eigenvectors of the covariance, eigenvalues descending", "[eigen]") {
    const int64_t n = 60, D = 200, keep = 25;  // D > n: the Gram route; the Jacobi reference costs D^3
    const Tensor faces = synthetic_faces(n, D, 5);
    const model::EigenBasis eb = model::EigenBasis::compute(faces, keep);
    REQUIRE(eb.pixels() == D);
    REQUIRE(eb.count() == keep);
    const float* B = eb.basis().data();
    for (int64_t a = 0; a < keep; ++a)
        for (int64_t b = 0; b <= a; ++b) {
            double s = 0;
            for (int64_t d = 0; d < D; ++d) s += static_cast<double>(B[d * keep + a]) * B[d * keep + b];
            REQUIRE(std::fabs(s - (a == b ? 1.0 : 0.0)) < 1e-4);
        }
    REQUIRE(eb.orthonormality_error() < 1e-4);
    // Float64 reference: covariance C = Xc^T Xc / n (D x D) by Jacobi; compare eigenvalues, and
    // check C b = lambda b for every eigenface.
    std::vector<double> mean(D, 0.0), C(static_cast<size_t>(D * D), 0.0);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t d = 0; d < D; ++d) mean[static_cast<size_t>(d)] += faces.data()[i * D + d] / static_cast<double>(n);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t a = 0; a < D; ++a) {
            const double xa = faces.data()[i * D + a] - mean[static_cast<size_t>(a)];
            for (int64_t b = 0; b < D; ++b) C[static_cast<size_t>(a * D + b)] += xa * (faces.data()[i * D + b] - mean[static_cast<size_t>(b)]) / n;
        }
    for (int64_t d = 0; d < D; ++d) REQUIRE(eb.mean().data()[d] == Approx(mean[static_cast<size_t>(d)]).margin(1e-6));
    const linalg::EigenResult ref = linalg::jacobi_eigen(C, D);
    for (int64_t j = 0; j < keep; ++j) {
        REQUIRE(eb.eigenvalues().data()[j] == Approx(ref.values[static_cast<size_t>(j)]).epsilon(1e-5));
        if (j) REQUIRE(eb.eigenvalues().data()[j] <= eb.eigenvalues().data()[j - 1]);
        double res = 0;
        for (int64_t a = 0; a < D; ++a) {
            double s = 0;
            for (int64_t b = 0; b < D; ++b) s += C[static_cast<size_t>(a * D + b)] * B[b * keep + j];
            s -= ref.values[static_cast<size_t>(j)] * B[a * keep + j];
            res += s * s;
        }
        REQUIRE(std::sqrt(res) < 1e-4 * ref.values[0]);
    }
}

TEST_CASE("projection equals the explicit B_q B_q^T product; PCA truncation; file round trip", "[eigen][projection]") {
    const int64_t n = 40, D = 211, keep = 30;
    const model::EigenBasis eb = model::EigenBasis::compute(synthetic_faces(n, D, 7), keep);
    const Tensor x = random_tensor({3, D}, 8);
    Tensor q = Tensor::empty({3, keep});
    const PhiloxStream rng(9, 9);
    for (int64_t i = 0; i < q.numel(); ++i) q.data()[i] = rng.uniform(static_cast<uint64_t>(i)) < 0.5f ? 1.0f : 0.0f;
    std::vector<float> out(static_cast<size_t>(3 * D));
    eb.project(x.data(), q.data(), 3, out.data());
    const float* B = eb.basis().data();
    const float* m = eb.mean().data();
    for (int64_t b = 0; b < 3; ++b)
        for (int64_t d = 0; d < D; ++d) {
            double s = m[d];  // sum_e (B_q B_q^T)[d][e] (x - m)[e] + m[d]
            for (int64_t e = 0; e < D; ++e) {
                double bq = 0;
                for (int64_t j = 0; j < keep; ++j) bq += static_cast<double>(B[d * keep + j]) * q.data()[b * keep + j] * B[e * keep + j];
                s += bq * (x.data()[b * D + e] - m[e]);
            }
            REQUIRE(out[static_cast<size_t>(b * D + d)] == Approx(s).margin(1e-5));
        }
    // PCA-k = the projection with the first k bits on.
    const model::EigenBasis pca = eb.truncated(10);
    std::vector<float> o1(static_cast<size_t>(D)), o2(static_cast<size_t>(D));
    std::vector<float> first10(static_cast<size_t>(keep), 0.0f);
    std::fill(first10.begin(), first10.begin() + 10, 1.0f);
    pca.project(x.data(), nullptr, 1, o1.data());
    eb.project(x.data(), first10.data(), 1, o2.data());
    for (int64_t d = 0; d < D; ++d) REQUIRE(o1[static_cast<size_t>(d)] == Approx(o2[static_cast<size_t>(d)]).margin(1e-5));
    // File round trip and errors.
    const std::string path = "/tmp/pin_eb_" + std::to_string(::getpid()) + ".safetensors";
    eb.save(path);
    const model::EigenBasis back = model::EigenBasis::load(path);
    REQUIRE(bitwise_equal(back.basis(), eb.basis()));
    REQUIRE(bitwise_equal(back.mean(), eb.mean()));
    REQUIRE(bitwise_equal(back.eigenvalues(), eb.eigenvalues()));
    io::write_safetensors(path, {{"eig_vec", eb.basis()}});
    REQUIRE_THROWS_WITH(model::EigenBasis::load(path), Catch::Contains("no tensor named 'avg_face'"));
    io::write_safetensors(path, {{"eig_vec", eb.basis()}, {"avg_face", random_tensor({D + 1}, 1)}});
    REQUIRE_THROWS_WITH(model::EigenBasis::load(path), Catch::Contains("do not fit together"));
    std::remove(path.c_str());
    REQUIRE_THROWS_WITH(model::EigenBasis::compute(synthetic_faces(5, 20, 1), 5), Catch::Contains("at most n - 1 = 4"));
}
