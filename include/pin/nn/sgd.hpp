// pin/nn/sgd.hpp - stochastic gradient descent with momentum and weight decay (PyTorch's rule).
//
//   g = grad + weight_decay * w;   v = momentum * v + g  (v = g on the first step);   w -= lr * v
#pragma once
#include <vector>

#include "pin/core/parallel.hpp"
#include "pin/nn/module.hpp"

namespace pin::nn {

class SGD {
public:
    SGD(std::vector<NamedParameter> params, float lr, float momentum = 0.9f, float weight_decay = 0.0f)
        : params_(std::move(params)), lr_(lr), momentum_(momentum), weight_decay_(weight_decay) {
        for (auto& p : params_) velocity_.push_back(Tensor::zeros(p.param->value.shape()));
        lr_scale_.assign(params_.size(), 1.0f);
    }
    // Per-parameter learning-rate multiplier (parameter k steps with lr * scale).
    void set_lr_scale(size_t k, float scale) { lr_scale_.at(k) = scale; }
    void step() {
        for (size_t k = 0; k < params_.size(); ++k) {
            float* w = params_[k].param->value.data();
            const float* g = params_[k].param->grad.data();
            float* v = velocity_[k].data();
            const int64_t n = params_[k].param->value.numel();
            const bool first = steps_ == 0;
            const float lr = lr_ * lr_scale_[k];
            parallel_for((n + 16383) / 16384, [&](int64_t b) {
                for (int64_t i = b * 16384; i < std::min(n, (b + 1) * 16384); ++i) {
                    const float gi = g[i] + weight_decay_ * w[i];
                    v[i] = first ? gi : momentum_ * v[i] + gi;
                    w[i] -= lr * v[i];
                }
            });
        }
        ++steps_;
    }
    void set_lr(float lr) { lr_ = lr; }
    float lr() const { return lr_; }
    int64_t steps() const { return steps_; }
    // Momentum buffers, in parameter order (checkpoints save and restore them).
    std::vector<Tensor>& velocity() { return velocity_; }
    const std::vector<Tensor>& velocity() const { return velocity_; }
    void set_steps(int64_t steps) { steps_ = steps; }

private:
    std::vector<NamedParameter> params_;
    std::vector<Tensor> velocity_;
    std::vector<float> lr_scale_;
    float lr_, momentum_, weight_decay_;
    int64_t steps_ = 0;
};

}  // namespace pin::nn
