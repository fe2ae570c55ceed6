// pin/model/dae.hpp - PIN's denoising autoencoder (frozen after pretraining).
//
// enc = ResBlock(1,64,2) ResBlock(64,128,2) ResBlock(128,256,2), no shortcuts      112 -> 14
// dec = UpBlock(256,128) UpBlock(128,64) UpBlock(64,1,last)                         14 -> 112
// DAE(x) = dec(enc(dec(enc(x)))): the released code applies the same encoder/decoder twice.
// Names: encoder1.<i>.*, decoder1.<i>.* as in the released state_dict.
#pragma once
#include "pin/nn/res_block.hpp"
#include "pin/nn/sequential.hpp"
#include "pin/nn/up_block.hpp"

namespace pin::model {

class DenoisingAutoencoder : public nn::Module {
public:
    explicit DenoisingAutoencoder(int passes = 2) : passes_(passes) {
        encoder_.add<nn::ResBlock>(1, 64, 2, false);
        encoder_.add<nn::ResBlock>(64, 128, 2, false);
        encoder_.add<nn::ResBlock>(128, 256, 2, false);
        decoder_.add<nn::UpBlock>(256, 128, false);
        decoder_.add<nn::UpBlock>(128, 64, false);
        decoder_.add<nn::UpBlock>(64, 1, true);
        register_children({&encoder_, &decoder_});
    }
    void reset_parameters(uint64_t seed) {
        for (size_t i = 0; i < 3; ++i) {
            static_cast<nn::ResBlock&>(encoder_[i]).reset_parameters(seed, 100 + 10 * i);
            static_cast<nn::UpBlock&>(decoder_[i]).reset_parameters(seed, 200 + 10 * i);
        }
    }
    // x: (N, 1, 112, 112). Training through two passes caches both; backward undoes them in order.
    Tensor forward(const Tensor& x) override {
        PIN_CHECK(!training_ || passes_ == 1, "DenoisingAutoencoder: training runs one pass (pretraining)");
        Tensor h = x;
        for (int p = 0; p < passes_; ++p) h = decoder_.forward(encoder_.forward(h));
        return h;
    }
    Tensor backward(const Tensor& dy) override { return encoder_.backward(decoder_.backward(dy)); }
    // The input of every pass and the output (passes + 1 tensors), in inference mode: what
    // input_gradient needs besides the output, so a caller that also wants DAE(x) runs the passes once.
    std::vector<Tensor> forward_passes(const Tensor& x) {
        std::vector<Tensor> h{x};
        for (int p = 0; p < passes_; ++p) h.push_back(decoder_.forward(encoder_.forward(h.back())));
        return h;
    }
    // d loss / d x of the frozen (inference-mode) DAE given d loss / d DAE(x): each pass is run again
    // in training mode right before its backward, so only one pass's activations are held at a time
    // (the attacks need this; parameter gradients accumulate as a side effect and are not used).
    // `passes`: forward_passes(x) when the caller has it (the inputs of passes 2.. are not recomputed).
    Tensor input_gradient(const Tensor& x, const Tensor& dy, const std::vector<Tensor>* passes = nullptr) {
        PIN_CHECK(!training_, "DenoisingAutoencoder::input_gradient: for the frozen (inference-mode) DAE");
        PIN_CHECK(!passes || static_cast<int>(passes->size()) >= passes_,
                  "DenoisingAutoencoder::input_gradient: ", passes_, " pass inputs expected, got ", passes ? passes->size() : 0);
        std::vector<Tensor> inputs{x};
        for (int p = 1; p < passes_; ++p)
            inputs.push_back(passes ? (*passes)[static_cast<size_t>(p)] : decoder_.forward(encoder_.forward(inputs.back())));
        encoder_.set_training(true);
        decoder_.set_training(true);
        Tensor d = dy;
        for (int p = passes_ - 1; p >= 0; --p) {
            decoder_.forward(encoder_.forward(inputs[static_cast<size_t>(p)]));
            d = encoder_.backward(decoder_.backward(d));
        }
        encoder_.set_training(false);
        decoder_.set_training(false);
        return d;
    }
    void collect_parameters(const std::string& prefix, std::vector<nn::NamedParameter>& out) override {
        encoder_.collect_parameters(prefix + "encoder1.", out);
        decoder_.collect_parameters(prefix + "decoder1.", out);
    }
    void set_passes(int passes) { passes_ = passes; }

private:
    nn::Sequential encoder_, decoder_;
    int passes_;
};

}  // namespace pin::model
