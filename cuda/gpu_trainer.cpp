// cuda/gpu_trainer.cpp - see gpu_trainer.hpp.
#include "gpu_trainer.hpp"

#include <vector>

#include "pin/core/error.hpp"
#include "pin/train/estimators.hpp"

namespace pin::cuda {

namespace {
ConvShape shape_of(const train::ConvGeometry& g) {
    return {g.batch, g.in_h, g.in_w, g.in_c, g.out_c, g.kernel, g.stride, g.padding, 0};
}
std::vector<double> download_doubles(const DeviceBuffer& b, int64_t n) {
    std::vector<double> v(static_cast<size_t>(n));
    b.download(reinterpret_cast<float*>(v.data()), static_cast<size_t>(2 * n));
    return v;
}
}  // namespace

GpuTrainingBackend::GpuTrainingBackend(model::Agent& agent, const model::EigenBasis& basis, const train::TrainerOptions& options)
    : defense_(std::make_unique<GpuDefense>(agent, basis)), opt_(options), n_(basis.count()), d_(basis.pixels()) {
    PIN_CHECK(options.estimator != train::Estimator::Rloo || options.masks >= 2,
              "GpuTrainingBackend: the leave-one-out baseline needs k >= 2 masks");
}

// With MathMode::BF16 and GatherMode::Vector the tensor cores round every convolution operand to
// bfloat16 anyway; converting a 3 x 3 convolution's operands to bfloat16 first (one pass over each)
// lets its GEMMs copy both operands into shared memory as they are, on the asynchronous-copy kernel
// (about 13 PTX instructions per tensor-core product against 30-51 on the wide kernel, which
// converts in registers; docs/gpu.md): the forward pass from a bfloat16 x, and the backward pass's
// weight gradient from bfloat16 x and dy and input gradient from the same bfloat16 dy (converted
// once for both). The same operands, summed in another order. The 1 x 1 shortcuts keep the wide
// kernel: two or three K slices, and at stride 2 they read a quarter of their input, so a
// conversion pass would cost more than it saves.
bool GpuTrainingBackend::bf16_operands(const train::ConvGeometry& g) const {
    return math_mode() == MathMode::BF16 && gather_mode() == GatherMode::Vector && g.kernel > 1 && g.in_c % 32 == 0 && g.out_c % 32 == 0;
}

void GpuTrainingBackend::conv2d_forward(const float* x, const float* w, float* y, const train::ConvGeometry& g) {
    timed("conv2d_forward", [&] {
        const ConvShape s = shape_of(g);
        if (!bf16_operands(g)) return cuda::conv2d_forward(x, w, y, s);
        const DeviceBuffer xb = pack_bf16(x, g.batch * g.in_h * g.in_w * g.in_c), wp = pack_conv2d_forward_weight(w, s);
        const int64_t K = g.kernel * g.kernel * g.in_c;
        const DeviceBuffer wb = pack_bf16(wp.data(), K * g.out_c);
        // And K-major for the warpgroup-MMA kernel, where it is asked for and can run (ops.cuh AsyncTileShape).
        const bool kmajor = async_tile() == AsyncTileShape::Wgmma && wgmma_supported();
        const DeviceBuffer wk = kmajor ? pack_bf16_kmajor(wp.data(), K, g.out_c) : DeviceBuffer();
        cuda::conv2d_forward(bf16_data(xb), w, y, s, nullptr, nullptr, false,
                             PackedWeight(wp.data(), bf16_data(wb), kmajor ? bf16_data(wk) : nullptr));
    });
}
void GpuTrainingBackend::conv2d_backward(const float* x, const float* dy, const float* w, float* dx, float* dw,
                                         const train::ConvGeometry& g, bool accumulate) {
    const ConvShape s = shape_of(g);
    if (!bf16_operands(g)) {
        timed("conv2d_backward_weight", [&] { cuda::conv2d_backward_weight(x, dy, dw, s); });
        if (dx) timed("conv2d_backward_input", [&] { cuda::conv2d_backward_input(dy, w, dx, s, accumulate); });
        return;
    }
    DeviceBuffer dyb;
    timed("conv2d_backward_weight", [&] {  // with both conversions
        const DeviceBuffer xb = pack_bf16(x, g.batch * g.in_h * g.in_w * g.in_c);
        dyb = pack_bf16(dy, g.batch * g.out_h() * g.out_w() * g.out_c);
        cuda::conv2d_backward_weight(bf16_data(xb), bf16_data(dyb), dw, s);
    });
    if (dx) timed("conv2d_backward_input", [&] { cuda::conv2d_backward_input(bf16_data(dyb), w, dx, s, accumulate); });
}

train::EstimatorResult GpuTrainingBackend::estimate(const float* p, const float* x, const float* xn, float* dz, int64_t B,
                                                    uint64_t first_image) {
    train::EstimatorResult r;
    timed("estimator", [&] {
        const int64_t N = n_, D = d_, k = opt_.masks;
        DeviceBuffer c(static_cast<size_t>(B * N)), d(static_cast<size_t>(B * N)), g(static_cast<size_t>(B * N)),
            y2(static_cast<size_t>(2 * B)), cost(static_cast<size_t>(2 * B * k)), kept(static_cast<size_t>(2 * B * k));
        project_coefficients(defense_->basis(), defense_->mean(), xn, c.data(), B, D, N);
        project_coefficients(defense_->basis(), defense_->mean(), x, d.data(), B, D, N);
        double* y2d = reinterpret_cast<double*>(y2.data());
        double* costd = reinterpret_cast<double*>(cost.data());
        double* keptd = reinterpret_cast<double*>(kept.data());
        mask_cost_terms(c.data(), d.data(), x, defense_->mean(), g.data(), y2d, B, N, D);
        const bool l2 = opt_.cost == train::CostType::L2;
        if (opt_.estimator == train::Estimator::LocalExpectation) {
            DeviceBuffer dzd(static_cast<size_t>(2 * B * N));
            local_gradient(p, g.data(), y2d, reinterpret_cast<double*>(dzd.data()), costd, keptd, B, N, k, l2, opt_.lambda, D, opt_.seed,
                           first_image);
            to_float(reinterpret_cast<const double*>(dzd.data()), dz, B * N);
        } else {
            mask_costs(p, g.data(), y2d, costd, keptd, B, N, k, l2, opt_.lambda, D, opt_.seed, first_image);
        }
        const std::vector<double> costs = download_doubles(cost, B * k), kepts = download_doubles(kept, B * k);
        if (opt_.estimator != train::Estimator::LocalExpectation) {
            const std::vector<double> adv = train::advantages(costs, B, k, opt_.estimator);
            DeviceBuffer a(static_cast<size_t>(2 * B * k));
            a.upload(reinterpret_cast<const float*>(adv.data()), static_cast<size_t>(2 * B * k));
            policy_gradient(p, reinterpret_cast<const double*>(a.data()), dz, B, N, k, opt_.seed, first_image);
        }
        for (size_t i = 0; i < costs.size(); ++i) {
            r.mean_cost += costs[i];
            r.mean_kept += kepts[i];
        }
        r.mean_cost /= static_cast<double>(costs.size());
        r.mean_kept /= static_cast<double>(costs.size());
    });
    return r;
}

}  // namespace pin::cuda
