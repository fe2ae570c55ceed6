// pin/model/eigenbasis.hpp - the eigenfaces: mean face m and the N leading orthonormal
// eigenvectors B (D x N) of the training faces' covariance, with their eigenvalues.
//
// Computed exactly through the Gram matrix (n faces < D pixels): G = Xc Xc^T in double, its
// largest eigenpairs (linalg::symmetric_eigen_largest), then B = Xc^T V Lambda^(-1/2) (float, on
// the convolution engine: a 1 x 1 convolution over D "pixels" with n channels). Eigenvalues are
// those of the covariance Xc^T Xc / n. Stored as safetensors with the released code's keys:
// eig_vec (D x N, columns), avg_face (D), and eig_val (N).
#pragma once
#include <chrono>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "pin/core/parallel.hpp"
#include "pin/core/tensor.hpp"
#include "pin/cpu/conv_kernels.hpp"
#include "pin/cpu/projection.hpp"
#include "pin/io/safetensors.hpp"
#include "pin/linalg/gram.hpp"
#include "pin/linalg/symmetric_eigen.hpp"

namespace pin::model {

namespace detail {
// A matrix product as a 1 x 1 gather convolution: `rows` pixels with `inner` channels in, `cols`
// channels out (out = src (rows x inner) * W^T with W given as weight(col, inner)).
inline cpu::GatherConvGeometry matrix_product_geometry(int64_t rows, int64_t inner, int64_t cols) {
    cpu::GatherConvGeometry g;
    g.batch = 1;
    g.src_h = g.grid_h = g.dst_h = 1;
    g.src_w = g.grid_w = g.dst_w = rows;
    g.src_channels = inner;
    g.dst_channels = cols;
    g.tap_dh = {0};
    g.tap_dw = {0};
    return g;
}
}  // namespace detail

struct EigenBasisTimings {
    double gram_s = 0, eigen_s = 0, backproject_s = 0;
};

class EigenBasis {
public:
    EigenBasis() = default;

    // faces: (n, D) row-major float (any values; centred here). keep <= n - 1.
    static EigenBasis compute(const Tensor& faces, int64_t keep, EigenBasisTimings* timings = nullptr,
                              const std::function<void(const char*, double)>& progress = {}) {
        PIN_CHECK(faces.rank() == 2, "EigenBasis::compute: faces must be (n, D), got ", shape_to_string(faces.shape()));
        const int64_t n = faces.dim(0), D = faces.dim(1);
        PIN_CHECK(n >= 2, "EigenBasis::compute: need at least 2 faces, got ", n);
        PIN_CHECK(keep >= 1 && keep <= n - 1, "EigenBasis::compute: cannot keep ", keep, " eigenfaces from ", n,
                  " faces (at most n - 1 = ", n - 1, ")");
        using Clock = std::chrono::steady_clock;
        auto t0 = Clock::now();
        EigenBasis eb;
        eb.mean_ = Tensor::zeros({D});
        std::vector<double> mean(static_cast<size_t>(D), 0.0);
        for (int64_t i = 0; i < n; ++i)
            for (int64_t d = 0; d < D; ++d) mean[static_cast<size_t>(d)] += faces.data()[i * D + d];
        for (int64_t d = 0; d < D; ++d) {
            mean[static_cast<size_t>(d)] /= static_cast<double>(n);
            eb.mean_.data()[d] = static_cast<float>(mean[static_cast<size_t>(d)]);
        }
        std::vector<double> Xc(static_cast<size_t>(n * D));
        parallel_for(n, [&](int64_t i) {
            for (int64_t d = 0; d < D; ++d)
                Xc[static_cast<size_t>(i * D + d)] = static_cast<double>(faces.data()[i * D + d]) - mean[static_cast<size_t>(d)];
        });
        std::vector<double> G = linalg::gram_matrix(Xc, n, D);
        if (progress) progress("gram", 1.0);
        auto t1 = Clock::now();
        const linalg::EigenResult er = linalg::symmetric_eigen_largest(std::move(G), n, keep, progress);
        auto t2 = Clock::now();
        const double lambda_max = er.values[0];
        for (int64_t j = 0; j < keep; ++j)
            PIN_CHECK(er.values[static_cast<size_t>(j)] > 1e-10 * lambda_max, "EigenBasis::compute: the faces span only ",
                      j, " dimensions; cannot keep ", keep, " eigenfaces");
        // B (D x keep) = Xc^T V Lambda^-1/2, as a 1 x 1 gather convolution: D "pixels" with n channels.
        Tensor xt = Tensor::empty({D, n});
        parallel_for(D, [&](int64_t d) {
            for (int64_t i = 0; i < n; ++i) xt.data()[d * n + i] = static_cast<float>(Xc[static_cast<size_t>(i * D + d)]);
        });
        Xc.clear();
        Xc.shrink_to_fit();
        std::vector<float> scale(static_cast<size_t>(keep));
        for (int64_t j = 0; j < keep; ++j) scale[static_cast<size_t>(j)] = static_cast<float>(1.0 / std::sqrt(er.values[static_cast<size_t>(j)]));
        eb.basis_ = Tensor::empty({D, keep});
        cpu::gather_conv(
            xt.data(), detail::matrix_product_geometry(D, n, keep),
            [&](int64_t co, int64_t ci, int64_t) {
                return static_cast<float>(er.vectors[static_cast<size_t>(ci * keep + co)]) * scale[static_cast<size_t>(co)];
            },
            eb.basis_.data());
        auto t3 = Clock::now();
        eb.eigenvalues_ = Tensor::empty({keep});
        for (int64_t j = 0; j < keep; ++j) eb.eigenvalues_.data()[j] = static_cast<float>(er.values[static_cast<size_t>(j)] / n);
        if (timings) {
            timings->gram_s = std::chrono::duration<double>(t1 - t0).count();
            timings->eigen_s = std::chrono::duration<double>(t2 - t1).count();
            timings->backproject_s = std::chrono::duration<double>(t3 - t2).count();
        }
        return eb;
    }

    // From tensors already in memory: basis (D, N), mean (D), eigenvalues (N) or undefined.
    static EigenBasis from_tensors(const Tensor& basis, const Tensor& mean, const Tensor& eigenvalues = Tensor()) {
        PIN_CHECK(basis.rank() == 2 && mean.rank() == 1 && basis.dim(0) == mean.dim(0), "EigenBasis::from_tensors: basis ",
                  shape_to_string(basis.shape()), " and mean ", shape_to_string(mean.shape()), " do not fit together");
        EigenBasis eb;
        eb.basis_ = basis;
        eb.mean_ = mean;
        eb.eigenvalues_ = eigenvalues;
        return eb;
    }

    static EigenBasis load(const std::string& path) {
        const io::SafetensorsContents c = io::read_safetensors(path);
        EigenBasis eb;
        eb.basis_ = c.at("eig_vec", path);
        eb.mean_ = c.at("avg_face", path);
        PIN_CHECK(eb.basis_.rank() == 2 && eb.mean_.rank() == 1 && eb.basis_.dim(0) == eb.mean_.dim(0), path,
                  ": eig_vec ", shape_to_string(eb.basis_.shape()), " and avg_face ", shape_to_string(eb.mean_.shape()),
                  " do not fit together (expected (D, N) and (D))");
        if (c.tensors.count("eig_val")) {
            eb.eigenvalues_ = c.at("eig_val", path);
            PIN_CHECK(eb.eigenvalues_.rank() == 1 && eb.eigenvalues_.dim(0) == eb.basis_.dim(1), path,
                      ": eig_val has shape ", shape_to_string(eb.eigenvalues_.shape()), ", expected (", eb.basis_.dim(1), ")");
        }
        for (const Tensor* t : {&eb.basis_, &eb.mean_})
            for (int64_t i = 0; i < t->numel(); ++i)
                PIN_CHECK(std::isfinite(t->data()[i]), path, ": non-finite value in the eigenbasis");
        return eb;
    }
    void save(const std::string& path, bool half_precision_basis = false) const {
        std::vector<io::SafetensorsEntry> e{{"eig_vec", basis_, half_precision_basis ? io::StoredType::F16 : io::StoredType::F32},
                                            {"avg_face", mean_}};
        if (eigenvalues_.defined()) e.push_back({"eig_val", eigenvalues_});
        io::write_safetensors(path, e, {{"format", "pin-eigenbasis"}});
    }

    // max |B^T B - I| over all entries (B^T B on the convolution engine: a 1 x 1 convolution over
    // the N eigenfaces with D channels), the orthonormality check of the whole basis.
    double orthonormality_error() const {
        const int64_t D = pixels(), N = count();
        Tensor bt = Tensor::empty({N, D});
        parallel_for(N, [&](int64_t j) {
            for (int64_t d = 0; d < D; ++d) bt.data()[j * D + d] = basis_.data()[d * N + j];
        });
        Tensor gram = Tensor::empty({N, N});
        cpu::gather_conv(bt.data(), detail::matrix_product_geometry(N, D, N), [&](int64_t co, int64_t ci, int64_t) { return bt.data()[co * D + ci]; },
                         gram.data());
        double worst = 0;
        for (int64_t i = 0; i < N; ++i)
            for (int64_t j = 0; j < N; ++j)
                worst = std::max(worst, std::fabs(static_cast<double>(gram.data()[i * N + j]) - (i == j ? 1.0 : 0.0)));
        return worst;
    }

    // The first k eigenfaces only (classical PCA-k).
    EigenBasis truncated(int64_t k) const {
        PIN_CHECK(k >= 1 && k <= count(), "EigenBasis::truncated: ", k, " of ", count(), " eigenfaces");
        EigenBasis eb;
        eb.mean_ = mean_;
        eb.basis_ = Tensor::empty({pixels(), k});
        for (int64_t d = 0; d < pixels(); ++d)
            std::copy(basis_.data() + d * count(), basis_.data() + d * count() + k, eb.basis_.data() + d * k);
        if (eigenvalues_.defined()) eb.eigenvalues_ = Tensor::from({k}, std::vector<float>(eigenvalues_.data(), eigenvalues_.data() + k));
        return eb;
    }

    // out = B diag(q) B^T (x - m) + m for a batch (x, out: batch x D; q: batch x N or nullptr = all ones).
    void project(const float* x, const float* q, int64_t batch, float* out) const {
        cpu::project_masked(basis_.data(), mean_.data(), pixels(), count(), x, q, batch, out);
    }

    // out = B^T v for a batch (v: batch x D, out: batch x N): coefficients of v in the eigenfaces.
    void coefficients(const float* v, int64_t batch, float* out) const {
        const int64_t D = pixels(), N = count();
        parallel_for(batch, [&](int64_t b) {
            std::vector<double> acc(static_cast<size_t>(N), 0.0);
            for (int64_t d = 0; d < D; ++d) {
                const double vd = v[b * D + d];
                const float* row = basis_.data() + d * N;
                for (int64_t j = 0; j < N; ++j) acc[static_cast<size_t>(j)] += vd * row[j];
            }
            for (int64_t j = 0; j < N; ++j) out[b * N + j] = static_cast<float>(acc[static_cast<size_t>(j)]);
        });
    }

    int64_t pixels() const { return basis_.defined() ? basis_.dim(0) : 0; }
    int64_t count() const { return basis_.defined() ? basis_.dim(1) : 0; }
    const Tensor& basis() const { return basis_; }
    const Tensor& mean() const { return mean_; }
    const Tensor& eigenvalues() const { return eigenvalues_; }

private:
    Tensor basis_, mean_, eigenvalues_;
};

}  // namespace pin::model
