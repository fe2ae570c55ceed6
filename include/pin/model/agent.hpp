// pin/model/agent.hpp - the PIN agent A(x) -> p in (0,1)^N: head(ESN(DAE(x))).
//
// The DAE is frozen (always in inference mode); the ESN and the head are the trained part.
#pragma once
#include <string>

#include "pin/model/dae.hpp"
#include "pin/model/esn.hpp"
#include "pin/model/selection_head.hpp"

namespace pin::model {

class Agent {
public:
    explicit Agent(int64_t eigenvectors = 2500) : head_(512 * 7 * 7, 512, eigenvectors) {}

    void reset_parameters(uint64_t seed) {
        dae_.reset_parameters(seed);
        esn_.reset_parameters(seed);
        head_.reset_parameters(seed);
    }
    // p for a batch x (N, 1, 112, 112) NHWC in [-1, 1]: (N, eigenvectors).
    Tensor forward(const Tensor& x) { return head_.forward(esn_.forward(dae_.forward(x))); }

    // d loss / d x given d loss / d p for the batch x (the attacks that differentiate through the
    // agent). The ESN and head run once more in training mode for their caches; the DAE runs each
    // pass once more in training mode before its backward (DenoisingAutoencoder::input_gradient).
    // Parameter gradients accumulate as a side effect.
    Tensor input_gradient(const Tensor& x, const Tensor& dp) {
        const bool was_training = esn_.training();
        const std::vector<Tensor> passes = dae_.forward_passes(x);
        const Tensor& features = passes.back();
        esn_.set_training(true);
        head_.set_training(true);
        head_.forward(esn_.forward(features));
        const Tensor d_features = esn_.backward(head_.backward(dp));
        esn_.set_training(was_training);
        head_.set_training(was_training);
        return dae_.input_gradient(x, d_features, &passes);
    }

    DenoisingAutoencoder& dae() { return dae_; }
    EigenvectorSelectionNetwork& esn() { return esn_; }
    SelectionHead& head() { return head_; }

    // Every parameter with its state_dict key: "dae.", "esn." and "head." prefixes.
    std::vector<nn::NamedParameter> parameters() {
        std::vector<nn::NamedParameter> out;
        dae_.collect_parameters("dae.", out);
        esn_.collect_parameters("esn.", out);
        head_.collect_parameters("head.", out);
        return out;
    }

private:
    DenoisingAutoencoder dae_;
    EigenvectorSelectionNetwork esn_;
    SelectionHead head_;
};

}  // namespace pin::model
