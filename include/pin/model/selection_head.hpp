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
