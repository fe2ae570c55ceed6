// cuda/gpu_trainer.hpp - the policy-gradient training step on the GPU: BackendTrainer
// (pin/train/backend_trainer.hpp, the composition the CPU backend checks against
// PolicyGradientTrainer in every CI run) over the kernels of cuda/ops.cuh.
//
// The frozen DAE runs as in GpuDefense; the estimator runs on the device: projections and the O(N)
// cost terms, then the fused local-expectation kernel, or the k masks' costs, their advantages
// (train::advantages, on the host: B k numbers) and the score-function kernel. The batch is uploaded
// each step and its noise drawn on the device (relative_noise: the CPU trainer's normals,
// train::add_relative_noise). With MathMode::BF16 and GatherMode::Vector the 3 x 3 convolutions'
// GEMMs (forward, input and weight gradients) take their operands converted to bfloat16, for the
// asynchronous-copy kernel (gpu_trainer.cpp); the caches and gradients stay fp32.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "gpu_defense.hpp"
#include "op_profiler.hpp"
#include "ops.cuh"
#include "pin/train/backend_trainer.hpp"

namespace pin::cuda {

class GpuTrainingBackend {
public:
    using Buffer = DeviceBuffer;
    // Copies the DAE's weights and the eigenbasis to the device (the agent's ESN and head are
    // BackendTrainer's to copy).
    GpuTrainingBackend(model::Agent& agent, const model::EigenBasis& basis, const train::TrainerOptions& options);

    Buffer alloc(int64_t n) { return Buffer(static_cast<size_t>(n)); }
    void upload(const float* host, float* dst, int64_t n) {
        timed("upload", [&] { copy_to_device(host, dst, n); });
    }
    void download(const float* src, float* host, int64_t n) {
        timed("download", [&] { copy_to_host(src, host, n); });
    }
    void conv2d_forward(const float* x, const float* w, float* y, const train::ConvGeometry& g);
    void conv2d_backward(const float* x, const float* dy, const float* w, float* dx, float* dw, const train::ConvGeometry& g,
                         bool accumulate);
    void prelu_forward(const float* x, const float* slope, float* y, int64_t n, int64_t c) {
        timed("prelu_forward", [&] { cuda::prelu_forward(x, slope, y, n, c); });
    }
    void prelu_backward(const float* x, const float* slope, const float* dy, float* dx, float* ds, int64_t n, int64_t c) {
        timed("prelu_backward", [&] { cuda::prelu_backward(x, slope, dy, dx, ds, n, c); });
    }
    void add(const float* a, const float* b, float* y, int64_t n) {
        timed("add", [&] { cuda::add(a, b, y, n); });
    }
    void nhwc_to_nchw(const float* x, float* y, int64_t B, int64_t C, int64_t H, int64_t W) {
        timed("layout", [&] { cuda::nhwc_to_nchw(x, y, B, C, H, W); });
    }
    void nchw_to_nhwc(const float* x, float* y, int64_t B, int64_t C, int64_t H, int64_t W) {
        timed("layout", [&] { cuda::nchw_to_nhwc(x, y, B, C, H, W); });
    }
    void linear_forward(const float* x, const float* w, const float* b, float* y, int64_t B, int64_t in, int64_t out) {
        timed("linear_forward", [&] { cuda::linear_forward(x, w, b, y, B, in, out); });
    }
    void linear_backward_input(const float* dy, const float* w, float* dx, int64_t B, int64_t in, int64_t out) {
        timed("linear_backward_input", [&] { cuda::linear_backward_input(dy, w, dx, B, in, out); });
    }
    void linear_backward_params(const float* x, const float* dy, float* dw, float* db, int64_t B, int64_t in, int64_t out) {
        timed("linear_backward_params", [&] { cuda::linear_backward_params(x, dy, dw, db, B, in, out); });
    }
    void sigmoid_forward(const float* x, float* y, int64_t n) {
        timed("sigmoid_forward", [&] { cuda::sigmoid_forward(x, y, n); });
    }
    double sum_squares(const float* x, int64_t n) {
        double s = 0;
        timed("clip (sum_squares, scale)", [&] { s = cuda::sum_squares(x, n); });
        return s;
    }
    void scale(float* x, int64_t n, float s) {
        timed("clip (sum_squares, scale)", [&] { cuda::scale(x, n, s); });
    }
    void sgd_step(float* w, const float* g, float* v, int64_t n, float lr, float momentum, bool first) {
        timed("sgd_step", [&] { cuda::sgd_step(w, g, v, n, lr, momentum, first); });
    }
    void relative_noise(const float* x, float* xn, int64_t B, int64_t D, double intensity, uint64_t seed, uint64_t first_image) {
        timed("noise", [&] { cuda::relative_noise(x, xn, B, D, intensity, seed, first_image); });
    }
    void dae_forward(const float* x, float* y, int64_t B) {
        timed("dae_forward", [&] { defense_->dae_forward(x, B, y); });
    }
    train::EstimatorResult estimate(const float* p, const float* x, const float* xn, float* dz, int64_t B, uint64_t first_image);

    // Profiling: when on, every op synchronizes the device before and after it and adds its wall
    // time to a per-op total (for pin-bench-gpu's breakdown of a step; slower, off by default).
    void set_profiling(bool on) { profiler_.set_enabled(on); }
    const std::map<std::string, double>& profile_ms() const { return profiler_.totals_ms(); }
    void clear_profile() { profiler_.clear(); }

private:
    // Whether a convolution's GEMMs take their operands converted to bfloat16 (see gpu_trainer.cpp).
    bool bf16_operands(const train::ConvGeometry& g) const;
    template <class F>
    void timed(const char* op, F&& f) {
        profiler_.time(op, std::forward<F>(f));
    }
    std::unique_ptr<GpuDefense> defense_;  // the DAE's weights and the eigenbasis, on the device
    train::TrainerOptions opt_;
    int64_t n_ = 0, d_ = 0;
    OpProfiler profiler_;
};

using GpuTrainer = train::BackendTrainer<GpuTrainingBackend>;

}  // namespace pin::cuda
