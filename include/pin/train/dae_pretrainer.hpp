// pin/train/dae_pretrainer.hpp - one step of denoising-autoencoder pretraining (spec, training):
// x_n = x + eta (||eta|| / ||x|| = 0.04 per image), loss = mean over pixels and images of
// (DAE(x_n) - x)^2, SGD with momentum. Training runs the encoder/decoder once (the released model
// applies it twice at inference).
#pragma once
#include <memory>
#include <vector>

#include "pin/model/dae.hpp"
#include "pin/nn/sgd.hpp"
#include "pin/train/noise.hpp"

namespace pin::train {

struct DaePretrainOptions {
    double noise = 0.04;
    float lr = 0.01f, momentum = 0.9f;
    uint64_t seed = 0;
};

struct DaeStepStats {
    double mse = 0;        // DAE(x_n) against x
    double input_mse = 0;  // x_n against x: what the DAE has to beat
};

class DaePretrainer {
public:
    DaePretrainer(std::shared_ptr<model::DenoisingAutoencoder> dae, const DaePretrainOptions& options)
        : dae_(std::move(dae)), opt_(options), sgd_(parameters(*dae_), options.lr, options.momentum) {}

    DaeStepStats step(const Tensor& x, uint64_t first_image) {
        check_shape(x, {x.n(), 1, 112, 112}, "DaePretrainer::step input");
        const Tensor xn = add_relative_noise(x, opt_.noise, opt_.seed, first_image);
        dae_->set_passes(1);
        dae_->set_training(true);
        const Tensor y = dae_->forward(xn);
        const int64_t n = x.numel();
        Tensor dy = Tensor::empty(y.shape(), y.layout());
        const Tensor xs = x.to_layout(y.layout()), xns = xn.to_layout(y.layout());
        double se = 0, se_in = 0;
        for (int64_t i = 0; i < n; ++i) {
            const double e = static_cast<double>(y.data()[i]) - xs.data()[i];
            const double e_in = static_cast<double>(xns.data()[i]) - xs.data()[i];
            se += e * e;
            se_in += e_in * e_in;
            dy.data()[i] = static_cast<float>(2.0 * e / static_cast<double>(n));
        }
        dae_->zero_grad();
        dae_->backward(dy);
        sgd_.step();
        dae_->set_training(false);
        dae_->set_passes(2);
        return {se / static_cast<double>(n), se_in / static_cast<double>(n)};
    }

    nn::SGD& optimizer() { return sgd_; }
    std::vector<nn::NamedParameter> trained_parameters() { return parameters(*dae_); }
    model::DenoisingAutoencoder& dae() { return *dae_; }

private:
    static std::vector<nn::NamedParameter> parameters(model::DenoisingAutoencoder& dae) {
        std::vector<nn::NamedParameter> out;
        dae.collect_parameters("dae.", out);
        return out;
    }
    std::shared_ptr<model::DenoisingAutoencoder> dae_;
    DaePretrainOptions opt_;
    nn::SGD sgd_;
};

}  // namespace pin::train
