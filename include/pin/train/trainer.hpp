// pin/train/trainer.hpp - one policy-gradient training step of the PIN agent (spec, training).
//
//   x_n = x + eta, ||eta|| / ||x|| = noise (0.04) per image, eta Gaussian (Philox)
//   p = sigmoid(head(ESN(DAE(x_n))))   DAE frozen (inference mode), ESN + head in training mode
//   c = B^T (x_n - m), d = B^T (x - m): every mask's cost in O(N) (train/mask_cost.hpp)
//   d loss / d logits from the chosen estimator, back through head and ESN, SGD with momentum.
// The data pipeline, epochs, checkpoints and logs (the rest of `pin train`) build on this.
#pragma once
#include <cmath>
#include <memory>
#include <vector>

#include "pin/core/rng.hpp"
#include "pin/cpu/projection.hpp"
#include "pin/cpu/reduce.hpp"
#include "pin/model/agent.hpp"
#include "pin/model/eigenbasis.hpp"
#include "pin/nn/sgd.hpp"
#include "pin/train/estimators.hpp"
#include "pin/train/noise.hpp"

namespace pin::train {

struct TrainerOptions {
    int64_t masks = 30;                         // k masks per image
    Estimator estimator = Estimator::Reinforce;  // the released rule
    CostType cost = CostType::L2;                // the paper's cost
    double lambda = 0.015;
    double noise = 0.04;                         // ||eta|| / ||x||, per image
    float lr = 0.01f, momentum = 0.9f;
    // Rescale the gradient of all trained parameters to this L2 norm when it is larger (0: never).
    // The local estimator's gradients are large: unclipped, the first steps drive every logit to
    // saturation and the mask freezes (docs/training.md).
    double clip_norm = 0;
    // Learning-rate multiplier for every trained parameter except the selection head's output bias.
    // The bias alone sets an input-independent mask, one logit per eigenface with its own credit;
    // every other weight moves all 2,500 logits at once, through features of large norm.
    float features_lr_scale = 1.0f;
    uint64_t seed = 0;
};

struct StepStats {
    double mean_cost = 0, mean_kept = 0;
    double grad_norm = 0;  // before clipping
};

// The estimator's d loss / d z for a batch: x clean and xn noisy faces (B, 1, 112, 112), p (B, N)
// the agent's probabilities for xn. Mask costs in O(N) from c = B^T (xn - m), d = B^T (x - m).
inline BatchGradient batch_gradient(const model::EigenBasis& basis, const Tensor& x, const Tensor& xn, const std::vector<float>& p,
                                    const TrainerOptions& opt, uint64_t first_image) {
    const int64_t B = x.n(), D = basis.pixels(), N = basis.count();
    std::vector<float> c(static_cast<size_t>(B * N)), d(static_cast<size_t>(B * N));
    cpu::project_coefficients(basis.basis().data(), basis.mean().data(), D, N, xn.data(), B, c.data());
    cpu::project_coefficients(basis.basis().data(), basis.mean().data(), D, N, x.data(), B, d.data());
    std::vector<MaskCostTerms> terms;
    for (int64_t b = 0; b < B; ++b) {
        double y2 = 0;
        for (int64_t i = 0; i < D; ++i) {
            const double y = static_cast<double>(x.data()[b * D + i]) - basis.mean().data()[i];
            y2 += y * y;
        }
        terms.push_back(mask_cost_terms(c.data() + b * N, d.data() + b * N, N, y2, D));
    }
    return estimate_gradient(p, terms, opt.masks, opt.estimator, opt.cost, opt.lambda, opt.seed, first_image);
}

class PolicyGradientTrainer {
public:
    PolicyGradientTrainer(std::shared_ptr<model::Agent> agent, std::shared_ptr<const model::EigenBasis> basis,
                          const TrainerOptions& options)
        : agent_(std::move(agent)), basis_(std::move(basis)), opt_(options), params_(trainable(*agent_)), sgd_(params_, options.lr, options.momentum) {
        PIN_CHECK(basis_->pixels() == 112 * 112, "PolicyGradientTrainer: the eigenbasis must have 12544 pixels");
        bool found = false;
        for (size_t k = 0; k < params_.size(); ++k)
            if (params_[k].name != kOutputBias)
                sgd_.set_lr_scale(k, options.features_lr_scale);
            else
                found = true;
        PIN_CHECK(found, "PolicyGradientTrainer: no parameter named ", kOutputBias);
    }
    static constexpr const char* kOutputBias = "head.fc2.0.bias";

    // One step on a batch x (B, 1, 112, 112) in [-1, 1]; `first_image` numbers the batch's images
    // in the run (masks and noise are drawn from Philox streams keyed by it).
    StepStats step(const Tensor& x, uint64_t first_image) {
        const int64_t B = x.n(), N = basis_->count();
        check_shape(x, {B, 1, 112, 112}, "PolicyGradientTrainer::step input");
        const Tensor xn = noisy(x, first_image);
        // Agent forward: DAE frozen, ESN and head recording for backward.
        agent_->dae().set_training(false);
        agent_->esn().set_training(true);
        agent_->head().set_training(true);
        const Tensor features = agent_->esn().forward(agent_->dae().forward(xn));
        const Tensor logits = agent_->head().forward_logits(features);
        std::vector<float> p(static_cast<size_t>(B * N));
        for (int64_t i = 0; i < B * N; ++i) p[static_cast<size_t>(i)] = cpu::sigmoid(logits.data()[i]);
        const BatchGradient g = batch_gradient(*basis_, x, xn, p, opt_, first_image);
        // Backward and update.
        Tensor dz = Tensor::empty({B, N});
        for (int64_t i = 0; i < B * N; ++i) dz.data()[i] = static_cast<float>(g.dz[static_cast<size_t>(i)]);
        agent_->esn().zero_grad();
        agent_->head().zero_grad();
        agent_->esn().backward(agent_->head().backward_logits(dz));
        const double norm = clip_gradients();
        sgd_.step();
        agent_->esn().set_training(false);
        agent_->head().set_training(false);
        return {g.mean_cost, g.mean_kept, norm};
    }

    // x + eta with ||eta|| = noise ||x|| per image; image first_image + b always gets the same eta.
    Tensor noisy(const Tensor& x, uint64_t first_image) const {
        return add_relative_noise(x, opt_.noise, opt_.seed, first_image);
    }

    nn::SGD& optimizer() { return sgd_; }
    // The parameters SGD updates (ESN and head), in the optimizer's order.
    std::vector<nn::NamedParameter> trained_parameters() { return params_; }
    model::Agent& agent() { return *agent_; }
    const TrainerOptions& options() const { return opt_; }

private:
    // The global L2 norm of the trained parameters' gradients; scaled down to clip_norm if above it.
    double clip_gradients() {
        double sq = 0;
        for (const auto& p : params_) sq += cpu::reduce_sum_squares(p.param->grad);
        const double norm = std::sqrt(sq);
        if (opt_.clip_norm > 0 && norm > opt_.clip_norm) {
            const float scale = static_cast<float>(opt_.clip_norm / norm);
            for (const auto& p : params_) {
                float* g = p.param->grad.data();
                for (int64_t i = 0; i < p.param->grad.numel(); ++i) g[i] *= scale;
            }
        }
        return norm;
    }
    static std::vector<nn::NamedParameter> trainable(model::Agent& agent) {
        std::vector<nn::NamedParameter> params;
        agent.esn().collect_parameters("esn.", params);
        agent.head().collect_parameters("head.", params);
        return params;
    }
    std::shared_ptr<model::Agent> agent_;
    std::shared_ptr<const model::EigenBasis> basis_;
    TrainerOptions opt_;
    std::vector<nn::NamedParameter> params_;  // ESN and head, in the optimizer's order
    nn::SGD sgd_;
};

}  // namespace pin::train
