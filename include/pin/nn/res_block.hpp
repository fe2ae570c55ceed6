// pin/nn/res_block.hpp - the residual block of PIN's encoders (spec: ResBlock(cin, cout, stride, shortcut)).
//
//   y   = PReLU(Conv3x3(cin -> cout, stride 1, pad 1)(x))
//   y   = PReLU(Conv3x3(cout -> cout, stride s, pad 1)(y))
//   out = y + Conv1x1(cin -> cout, stride s)(x)     with shortcut, else y
// Parameter names follow the released PyTorch class: conv1, nolinear1, conv2, nolinear2,
// shortcut_layer.0.
// Inference fuses each PReLU into its convolution's epilogue and the residual add into conv2's
// (the shortcut is computed first, conv2 then adds to it), so no separate element-wise pass runs.
#pragma once
#include <memory>
#include <string>

#include "pin/nn/layers.hpp"

namespace pin::nn {

class ResBlock : public Module {
public:
    ResBlock(int64_t in_channels, int64_t out_channels, int64_t stride, bool shortcut = true)
        : conv1_(in_channels, out_channels, 3, 1, 1), prelu1_(out_channels),
          conv2_(out_channels, out_channels, 3, stride, 1), prelu2_(out_channels) {
        if (shortcut) shortcut_ = std::make_unique<Conv2d>(in_channels, out_channels, 1, stride, 0);
        register_children({&conv1_, &prelu1_, &conv2_, &prelu2_, shortcut_.get()});
    }

    void reset_parameters(uint64_t seed, uint64_t stream) {
        conv1_.reset_parameters(seed, stream);
        conv2_.reset_parameters(seed, stream + 1);
        if (shortcut_) shortcut_->reset_parameters(seed, stream + 2);
    }

    Tensor forward(const Tensor& x) override {
        if (!training_) {
            Tensor y1 = conv1_.forward_fused(x, {prelu1_.slope().value.data(), false}, nullptr);
            if (!shortcut_) return conv2_.forward_fused(y1, {prelu2_.slope().value.data(), false}, nullptr);
            Tensor out = shortcut_->forward(x);
            conv2_.forward_fused(y1, {prelu2_.slope().value.data(), true}, &out);
            return out;
        }
        Tensor y = prelu2_.forward(conv2_.forward(prelu1_.forward(conv1_.forward(x))));
        if (!shortcut_) return y;
        cpu::add_inplace(y, shortcut_->forward(x));
        return y;
    }

    Tensor backward(const Tensor& dy) override {
        Tensor dx = conv1_.backward(prelu1_.backward(conv2_.backward(prelu2_.backward(dy))));
        if (shortcut_) shortcut_->backward_into(dy, dx, true);
        return dx;
    }

    void collect_parameters(const std::string& prefix, std::vector<NamedParameter>& out) override {
        if (shortcut_) shortcut_->collect_parameters(prefix + "shortcut_layer.0.", out);
        conv1_.collect_parameters(prefix + "conv1.", out);
        prelu1_.collect_parameters(prefix + "nolinear1.", out);
        conv2_.collect_parameters(prefix + "conv2.", out);
        prelu2_.collect_parameters(prefix + "nolinear2.", out);
    }

private:
    Conv2d conv1_;
    PReLU prelu1_;
    Conv2d conv2_;
    PReLU prelu2_;
    std::unique_ptr<Conv2d> shortcut_;
};

}  // namespace pin::nn
