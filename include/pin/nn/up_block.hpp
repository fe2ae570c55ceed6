// pin/nn/up_block.hpp - the decoder block of PIN's denoising autoencoder (spec: UpBlock(cin, cout, last)).
//
//   y   = PReLU(ConvTranspose3x3(cin -> cin, stride 2, pad 1, output_pad 1)(x))    doubles H and W
//   out = Tanh(Conv3x3(cin -> cout, pad 1)(y))   if last, else PReLU(Conv3x3(...)(y))
// Parameter names: conv1 (the transposed convolution), nolinear1, conv2, nolinear2.
#pragma once
#include <memory>
#include <string>

#include "pin/nn/layers.hpp"

namespace pin::nn {

class UpBlock : public Module {
public:
    UpBlock(int64_t in_channels, int64_t out_channels, bool last)
        : up_(in_channels, in_channels, 3, 2, 1, 1), prelu1_(in_channels), conv_(in_channels, out_channels, 3, 1, 1),
          last_(last) {
        if (!last) prelu2_ = std::make_unique<PReLU>(out_channels);
        register_children({&up_, &prelu1_, &conv_, &tanh_, prelu2_.get()});
    }
    void reset_parameters(uint64_t seed, uint64_t stream) {
        up_.reset_parameters(seed, stream);
        conv_.reset_parameters(seed, stream + 1);
    }
    Tensor forward(const Tensor& x) override {
        if (!training_) {
            Tensor y = up_.forward_fused(x, {prelu1_.slope().value.data(), false});
            if (last_) return tanh_.forward(conv_.forward(y));
            return conv_.forward_fused(y, {prelu2_->slope().value.data(), false}, nullptr);
        }
        Tensor y = conv_.forward(prelu1_.forward(up_.forward(x)));
        return last_ ? tanh_.forward(y) : prelu2_->forward(y);
    }
    Tensor backward(const Tensor& dy) override {
        Tensor g = last_ ? tanh_.backward(dy) : prelu2_->backward(dy);
        return up_.backward(prelu1_.backward(conv_.backward(g)));
    }
    void collect_parameters(const std::string& prefix, std::vector<NamedParameter>& out) override {
        up_.collect_parameters(prefix + "conv1.", out);
        prelu1_.collect_parameters(prefix + "nolinear1.", out);
        conv_.collect_parameters(prefix + "conv2.", out);
        if (prelu2_) prelu2_->collect_parameters(prefix + "nolinear2.", out);
    }

private:
    ConvTranspose2d up_;
    PReLU prelu1_;
    Conv2d conv_;
    std::unique_ptr<PReLU> prelu2_;
    Tanh tanh_;
    bool last_;
};

}  // namespace pin::nn
