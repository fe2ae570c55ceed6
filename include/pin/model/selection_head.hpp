// pin/model/selection_head.hpp - the selection head ("PCASelection" in the released code).
//
// fc1 = Flatten (C,H,W order, 25088) -> Linear(25088, 512) -> PReLU(512)
// fc2 = Linear(512, N) -> Sigmoid, N = 2500 eigenvectors by default.
// forward() returns p; forward_logits()/backward_logits() expose the pre-sigmoid z for training,
// where the policy gradient arrives as d(loss)/dz.
#pragma once
#include <string>

#include "pin/nn/layers.hpp"
#include "pin/nn/sequential.hpp"

namespace pin::model {

class SelectionHead : public nn::Module {
public:
    explicit SelectionHead(int64_t features = 512 * 7 * 7, int64_t hidden = 512, int64_t eigenvectors = 2500) {
        fc1_.add<nn::Flatten>();
        linear1_ = &fc1_.add<nn::Linear>(features, hidden);
        fc1_.add<nn::PReLU>(hidden);
        linear2_ = &fc2_.add<nn::Linear>(hidden, eigenvectors);
        fc2_.add<nn::Sigmoid>();
        register_children({&fc1_, &fc2_});
    }
    void reset_parameters(uint64_t seed) {
        linear1_->reset_parameters(seed, 400);
        linear2_->reset_parameters(seed, 402);
    }
    // Multiplies the output layer's weights by `scale` and zeroes its bias: with PyTorch's default
    // initialisation the ESN's features are large enough that most initial logits are far from 0, the
    // sigmoid is saturated (p(1 - p) ~ 0) before training starts, and those bits never learn. A small
    // output layer starts every p near 0.5 (the usual small policy-output initialisation in RL).
    void scale_output_layer(float scale) {
        for (auto& p : linear2_->parameters()) {
            Tensor& v = p.param->value;
            const bool is_bias = v.rank() == 1;
            for (int64_t i = 0; i < v.numel(); ++i) v.data()[i] = is_bias ? 0.0f : v.data()[i] * scale;
        }
    }
    Tensor forward(const Tensor& x) override { return fc2_.forward(fc1_.forward(x)); }
    Tensor backward(const Tensor& dp) override { return fc1_.backward(fc2_.backward(dp)); }
    Tensor forward_logits(const Tensor& x) { return linear2_->forward(fc1_.forward(x)); }
    Tensor backward_logits(const Tensor& dz) { return fc1_.backward(linear2_->backward(dz)); }
    void collect_parameters(const std::string& prefix, std::vector<nn::NamedParameter>& out) override {
        fc1_.collect_parameters(prefix + "fc1.", out);
        fc2_.collect_parameters(prefix + "fc2.", out);
    }

private:
    nn::Sequential fc1_, fc2_;
    nn::Linear* linear1_ = nullptr;
    nn::Linear* linear2_ = nullptr;
};

}  // namespace pin::model
