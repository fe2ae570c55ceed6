// pin/model/esn.hpp - the eigenvector selection network ("Encoder" in the released code).
//
// in_layer: Conv3x3(1->64) + PReLU                            112x112x64
// block1..8: ResBlock(64,64,2) (64,64,1) (64,128,2) (128,128,1) (128,256,2) (256,256,1)
//            (256,512,2) (512,512,1), all with 1x1 shortcuts    -> 7x7x512
#pragma once
#include <array>
#include <memory>
#include <string>

#include "pin/nn/res_block.hpp"
#include "pin/nn/sequential.hpp"

namespace pin::model {

class EigenvectorSelectionNetwork : public nn::Module {
public:
    EigenvectorSelectionNetwork() {
        in_conv_ = &in_layer_.add<nn::Conv2d>(1, 64, 3, 1, 1);
        in_layer_.add<nn::PReLU>(64);
        const std::array<std::array<int64_t, 3>, 8> spec{{{64, 64, 2}, {64, 64, 1}, {64, 128, 2}, {128, 128, 1},
                                                          {128, 256, 2}, {256, 256, 1}, {256, 512, 2}, {512, 512, 1}}};
        for (const auto& s : spec) blocks_.push_back(std::make_unique<nn::ResBlock>(s[0], s[1], s[2], true));
        register_children({&in_layer_});
        for (auto& b : blocks_) register_children({b.get()});
    }
    void reset_parameters(uint64_t seed) {
        in_conv_->reset_parameters(seed, 300);
        for (size_t i = 0; i < blocks_.size(); ++i) blocks_[i]->reset_parameters(seed, 310 + 10 * i);
    }
    Tensor forward(const Tensor& x) override {
        Tensor h = in_layer_.forward(x);
        for (auto& b : blocks_) h = b->forward(h);
        return h;
    }
    Tensor backward(const Tensor& dy) override {
        Tensor g = dy;
        for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) g = (*it)->backward(g);
        return in_layer_.backward(g);
    }
    void collect_parameters(const std::string& prefix, std::vector<nn::NamedParameter>& out) override {
        in_layer_.collect_parameters(prefix + "in_layer.", out);
        for (size_t i = 0; i < blocks_.size(); ++i)
            blocks_[i]->collect_parameters(prefix + "block" + std::to_string(i + 1) + ".", out);
    }

private:
    nn::Sequential in_layer_;
    nn::Conv2d* in_conv_ = nullptr;
    std::vector<std::unique_ptr<nn::ResBlock>> blocks_;
};

}  // namespace pin::model
