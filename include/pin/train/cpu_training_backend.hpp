// pin/train/cpu_training_backend.hpp - the CPU engine's kernels behind BackendTrainer's backend
// interface (train/backend_trainer.hpp), on host buffers.
//
// Its purpose is checking the backend-generic training step where no GPU is: BackendTrainer with
// this backend must reproduce PolicyGradientTrainer (tests/test_backend_trainer.cpp), so the layer
// order, caches, gradient routing, clipping and update that the GPU shares are verified on every CI
// run. For training on the CPU, use PolicyGradientTrainer (the same kernels, through nn::Module).
#pragma once
#include <memory>
#include <vector>

#include "pin/cpu/activations.hpp"
#include "pin/cpu/conv2d.hpp"
#include "pin/cpu/linear.hpp"
#include "pin/cpu/reduce.hpp"
#include "pin/model/dae.hpp"
#include "pin/model/eigenbasis.hpp"
#include "pin/train/backend_trainer.hpp"
#include "pin/train/noise.hpp"

namespace pin::train {

class CpuTrainingBackend {
public:
    class Buffer {
    public:
        Buffer() = default;
        explicit Buffer(int64_t n) : t_(Tensor::empty({n})) {}
        float* data() const { return const_cast<float*>(t_.data()); }

    private:
        Tensor t_;
    };

    // `dae` runs in inference mode; `basis` and `options` define the estimator (as PolicyGradientTrainer).
    CpuTrainingBackend(model::DenoisingAutoencoder& dae, std::shared_ptr<const model::EigenBasis> basis, const TrainerOptions& options)
        : dae_(dae), basis_(std::move(basis)), opt_(options) {}

    Buffer alloc(int64_t n) { return Buffer(n); }
    void upload(const float* host, float* dst, int64_t n) { std::copy(host, host + n, dst); }
    void download(const float* src, float* host, int64_t n) { std::copy(src, src + n, host); }

    void relative_noise(const float* x, float* xn, int64_t B, int64_t D, double intensity, uint64_t seed, uint64_t first_image) {
        add_relative_noise(x, xn, B, D, intensity, seed, first_image);
    }
    void conv2d_forward(const float* x, const float* w, float* y, const ConvGeometry& g) {
        Tensor tx = image(x, g.batch, g.in_c, g.in_h, g.in_w), ty = image(y, g.batch, g.out_c, g.out_h(), g.out_w());
        cpu::conv2d_forward(tx, weight(w, g), ty, params(g), {});
    }
    // Both gradients of one convolution: dw, then dx (= or += with `accumulate`; none when null).
    void conv2d_backward(const float* x, const float* dy, const float* w, float* dx, float* dw, const ConvGeometry& g, bool accumulate) {
        const Tensor tdy = image(dy, g.batch, g.out_c, g.out_h(), g.out_w());
        Tensor tdw = weight(dw, g);
        cpu::conv2d_backward_weight(image(x, g.batch, g.in_c, g.in_h, g.in_w), tdy, tdw, params(g));
        if (!dx) return;
        Tensor tdx = image(dx, g.batch, g.in_c, g.in_h, g.in_w);
        cpu::conv2d_backward_input(tdy, weight(w, g), tdx, params(g), accumulate);
    }
    void prelu_forward(const float* x, const float* slope, float* y, int64_t n, int64_t channels) {
        Tensor ty = rows(y, n, channels);
        cpu::prelu_forward(rows(x, n, channels), vec(slope, channels), ty);
    }
    void prelu_backward(const float* x, const float* slope, const float* dy, float* dx, float* dslope, int64_t n, int64_t channels) {
        Tensor tdx = rows(dx, n, channels), tds = vec(dslope, channels);
        cpu::prelu_backward(rows(x, n, channels), vec(slope, channels), rows(dy, n, channels), tdx, tds);
    }
    void add(const float* a, const float* b, float* y, int64_t n) {
        Tensor ty = vec(y, n);
        cpu::add_forward(vec(a, n), vec(b, n), ty);
    }
    void nhwc_to_nchw(const float* x, float* y, int64_t B, int64_t C, int64_t H, int64_t W) {
        image(y, B, C, H, W, Layout::NCHW).copy_from(image(x, B, C, H, W).to_layout(Layout::NCHW));
    }
    void nchw_to_nhwc(const float* x, float* y, int64_t B, int64_t C, int64_t H, int64_t W) {
        image(y, B, C, H, W).copy_from(image(x, B, C, H, W, Layout::NCHW).to_layout(Layout::NHWC));
    }
    void linear_forward(const float* x, const float* w, const float* b, float* y, int64_t B, int64_t in, int64_t out) {
        Tensor ty = rows(y, B * out, out);
        cpu::linear_forward(rows(x, B * in, in), rows(w, out * in, in), vec(b, out), ty);
    }
    void linear_backward_input(const float* dy, const float* w, float* dx, int64_t B, int64_t in, int64_t out) {
        Tensor tdx = rows(dx, B * in, in);
        cpu::linear_backward_input(rows(dy, B * out, out), rows(w, out * in, in), tdx);
    }
    void linear_backward_params(const float* x, const float* dy, float* dw, float* db, int64_t B, int64_t in, int64_t out) {
        Tensor tdw = rows(dw, out * in, in), tdb = vec(db, out);
        cpu::linear_backward_params(rows(x, B * in, in), rows(dy, B * out, out), tdw, tdb);
    }
    void sigmoid_forward(const float* x, float* y, int64_t n) {
        for (int64_t i = 0; i < n; ++i) y[i] = cpu::sigmoid(x[i]);
    }
    double sum_squares(const float* x, int64_t n) { return cpu::sum_squares(x, n); }
    void scale(float* x, int64_t n, float s) {
        for (int64_t i = 0; i < n; ++i) x[i] *= s;
    }
    void sgd_step(float* w, const float* g, float* v, int64_t n, float lr, float momentum, bool first) {
        for (int64_t i = 0; i < n; ++i) {
            v[i] = first ? g[i] : momentum * v[i] + g[i];
            w[i] -= lr * v[i];
        }
    }
    void dae_forward(const float* x, float* y, int64_t B) {
        dae_.set_training(false);
        const Tensor out = dae_.forward(image(const_cast<float*>(x), B, 1, 112, 112));
        std::copy(out.data(), out.data() + out.numel(), y);
    }
    EstimatorResult estimate(const float* p, const float* x, const float* xn, float* dz, int64_t B, uint64_t first_image) {
        const int64_t N = basis_->count();
        const std::vector<float> pv(p, p + B * N);
        const BatchGradient g = batch_gradient(*basis_, image(x, B, 1, 112, 112), image(xn, B, 1, 112, 112), pv, opt_, first_image);
        for (int64_t i = 0; i < B * N; ++i) dz[i] = static_cast<float>(g.dz[static_cast<size_t>(i)]);
        return {g.mean_cost, g.mean_kept};
    }

private:
    static Tensor image(const float* p, int64_t B, int64_t C, int64_t H, int64_t W, Layout layout = Layout::NHWC) {
        return Tensor::borrow(const_cast<float*>(p), {B, C, H, W}, layout);
    }
    static Tensor rows(const float* p, int64_t n, int64_t cols) { return Tensor::borrow(const_cast<float*>(p), {n / cols, cols}); }
    static Tensor vec(const float* p, int64_t n) { return Tensor::borrow(const_cast<float*>(p), {n}); }
    static Tensor weight(const float* p, const ConvGeometry& g) {
        return Tensor::borrow(const_cast<float*>(p), {g.out_c, g.in_c, g.kernel, g.kernel});
    }
    static cpu::Conv2dParams params(const ConvGeometry& g) { return {g.kernel, g.stride, g.padding}; }

    model::DenoisingAutoencoder& dae_;
    std::shared_ptr<const model::EigenBasis> basis_;
    TrainerOptions opt_;
};

}  // namespace pin::train
