// pin/nn/layers.hpp - the parameterised layers: Conv2d, ConvTranspose2d, PReLU, Linear, and the
// parameter-free Tanh, Sigmoid and Flatten.
#pragma once
#include <cmath>
#include <string>

#include "pin/cpu/activations.hpp"
#include "pin/cpu/conv2d.hpp"
#include "pin/cpu/conv_transpose2d.hpp"
#include "pin/cpu/linear.hpp"
#include "pin/nn/module.hpp"

namespace pin::nn {

// Convolution without bias (every convolution of PIN has none). Input/output NHWC.
class Conv2d : public Module {
public:
    Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel, int64_t stride, int64_t padding)
        : params_{kernel, stride, padding}, weight_(make_parameter({out_channels, in_channels, kernel, kernel})) {}

    void reset_parameters(uint64_t seed, uint64_t stream) {
        const int64_t fan_in = weight_.value.dim(1) * params_.kernel * params_.kernel;
        init_uniform(weight_.value, he_uniform_bound(fan_in), seed, stream);
    }
    Tensor forward(const Tensor& x) override { return forward_fused(x, {}, nullptr); }

    // Inference fast path: y = activation(conv(x)) (+ existing y when epilogue.accumulate).
    Tensor forward_fused(const Tensor& x, const cpu::ConvEpilogue& epilogue, Tensor* into) {
        cache(input_, x);
        Tensor y = into ? *into : Tensor::empty(output_shape(x), Layout::NHWC);
        cpu::conv2d_forward(x, weight_.value, y, params_, epilogue);
        return y;
    }
    Tensor backward(const Tensor& dy) override {
        require_cached(input_, "Conv2d");
        Tensor dx = Tensor::empty(input_.shape(), Layout::NHWC);
        backward_into(dy, dx, false);
        return dx;
    }
    // backward() writing the input gradient into dx, or adding it there (accumulate): a residual
    // block's shortcut adds its share straight into the block's input gradient, and with stride 2
    // touches only the positions it reads (a quarter of them) instead of writing a full tensor of
    // mostly zeros and adding that.
    void backward_into(const Tensor& dy, Tensor& dx, bool accumulate) {
        require_cached(input_, "Conv2d");
        check_shape(dx, input_.shape(), "Conv2d::backward_into dx");
        Tensor dw = Tensor::empty(weight_.value.shape());
        cpu::conv2d_backward_weight(input_, dy, dw, params_);
        cpu::add_inplace(weight_.grad, dw);
        cpu::conv2d_backward_input(dy, weight_.value, dx, params_, accumulate);
    }
    void collect_parameters(const std::string& prefix, std::vector<NamedParameter>& out) override {
        out.push_back({prefix + "weight", &weight_});
    }
    Shape output_shape(const Tensor& x) const {
        return {x.n(), weight_.value.dim(0), cpu::conv2d_output_size(x.h(), params_), cpu::conv2d_output_size(x.w(), params_)};
    }
    Parameter& weight() { return weight_; }
    const cpu::Conv2dParams& params() const { return params_; }

protected:
    void release_cache() override { input_ = Tensor(); }

private:
    cpu::Conv2dParams params_;
    Parameter weight_;
    Tensor input_;
};

// Transposed convolution without bias; weight (in, out, k, k) as PyTorch's ConvTranspose2d.
class ConvTranspose2d : public Module {
public:
    ConvTranspose2d(int64_t in_channels, int64_t out_channels, int64_t kernel, int64_t stride, int64_t padding,
                    int64_t output_padding)
        : params_{kernel, stride, padding, output_padding},
          weight_(make_parameter({in_channels, out_channels, kernel, kernel})) {}

    void reset_parameters(uint64_t seed, uint64_t stream) {
        // Each output pixel of a stride-s transposed convolution receives in * k^2 / s^2 terms on average.
        const int64_t fan_in = std::max<int64_t>(
            1, weight_.value.dim(0) * params_.kernel * params_.kernel / (params_.stride * params_.stride));
        init_uniform(weight_.value, he_uniform_bound(fan_in), seed, stream);
    }
    Tensor forward(const Tensor& x) override { return forward_fused(x, {}); }
    Tensor forward_fused(const Tensor& x, const cpu::ConvEpilogue& epilogue) {
        cache(input_, x);
        Tensor y = Tensor::empty({x.n(), weight_.value.dim(1), cpu::conv_transpose2d_output_size(x.h(), params_),
                                  cpu::conv_transpose2d_output_size(x.w(), params_)},
                                 Layout::NHWC);
        cpu::conv_transpose2d_forward(x, weight_.value, y, params_, epilogue);
        return y;
    }
    Tensor backward(const Tensor& dy) override {
        require_cached(input_, "ConvTranspose2d");
        Tensor dw = Tensor::empty(weight_.value.shape());
        cpu::conv_transpose2d_backward_weight(input_, dy, dw, params_);
        cpu::add_inplace(weight_.grad, dw);
        Tensor dx = Tensor::empty(input_.shape(), Layout::NHWC);
        cpu::conv_transpose2d_backward_input(dy, weight_.value, dx, params_);
        return dx;
    }
    void collect_parameters(const std::string& prefix, std::vector<NamedParameter>& out) override {
        out.push_back({prefix + "weight", &weight_});
    }
    Parameter& weight() { return weight_; }

protected:
    void release_cache() override { input_ = Tensor(); }

private:
    cpu::ConvTranspose2dParams params_;
    Parameter weight_;
    Tensor input_;
};

// PReLU with one learnable slope per channel, initialised to 0.25 as in PyTorch.
class PReLU : public Module {
public:
    explicit PReLU(int64_t channels) : slope_(make_parameter({channels})) { slope_.value.fill(0.25f); }
    Tensor forward(const Tensor& x) override {
        cache(input_, x);
        Tensor y = Tensor::empty(x.shape(), x.layout());
        cpu::prelu_forward(x, slope_.value, y);
        return y;
    }
    Tensor backward(const Tensor& dy) override {
        require_cached(input_, "PReLU");
        Tensor dx = Tensor::empty(dy.shape(), dy.layout());
        Tensor ds = Tensor::empty(slope_.value.shape());
        cpu::prelu_backward(input_, slope_.value, dy, dx, ds);
        cpu::add_inplace(slope_.grad, ds);
        return dx;
    }
    void collect_parameters(const std::string& prefix, std::vector<NamedParameter>& out) override {
        out.push_back({prefix + "weight", &slope_});
    }
    Parameter& slope() { return slope_; }

protected:
    void release_cache() override { input_ = Tensor(); }

private:
    Parameter slope_;
    Tensor input_;
};

// An activation whose backward needs only its own output (tanh, sigmoid).
template <void (*Forward)(const Tensor&, Tensor&), void (*Backward)(const Tensor&, const Tensor&, Tensor&)>
class OutputCachedActivation : public Module {
public:
    explicit OutputCachedActivation(const char* name) : name_(name) {}
    Tensor forward(const Tensor& x) override {
        Tensor y = Tensor::empty(x.shape(), x.layout());
        Forward(x, y);
        cache(output_, y);
        return y;
    }
    Tensor backward(const Tensor& dy) override {
        require_cached(output_, name_);
        Tensor dx = Tensor::empty(dy.shape(), dy.layout());
        Backward(output_, dy, dx);
        return dx;
    }

protected:
    void release_cache() override { output_ = Tensor(); }

private:
    const char* name_;
    Tensor output_;
};

class Tanh : public OutputCachedActivation<cpu::tanh_forward, cpu::tanh_backward> {
public:
    Tanh() : OutputCachedActivation("Tanh") {}
};

class Sigmoid : public OutputCachedActivation<cpu::sigmoid_forward, cpu::sigmoid_backward> {
public:
    Sigmoid() : OutputCachedActivation("Sigmoid") {}
};

// (N, C, H, W) -> (N, C*H*W) in PyTorch's (C, H, W) order, so Linear weights keep PyTorch's layout.
class Flatten : public Module {
public:
    Tensor forward(const Tensor& x) override {
        PIN_CHECK(x.rank() == 4, "Flatten: expects rank 4, got ", shape_to_string(x.shape()));
        shape_ = x.shape();
        layout_ = x.layout();
        return x.to_layout(Layout::NCHW).reshape({x.n(), x.c() * x.h() * x.w()});
    }
    Tensor backward(const Tensor& dy) override {
        PIN_CHECK(!shape_.empty(), "Flatten: backward() before forward()");
        return dy.reshape(shape_, Layout::NCHW).to_layout(layout_);
    }

private:
    Shape shape_;
    Layout layout_ = Layout::NHWC;
};

// y = x W^T + b with W (out, in).
class Linear : public Module {
public:
    Linear(int64_t in_features, int64_t out_features)
        : weight_(make_parameter({out_features, in_features})), bias_(make_parameter({out_features})) {}
    void reset_parameters(uint64_t seed, uint64_t stream) {
        const float bound = 1.0f / std::sqrt(static_cast<float>(weight_.value.dim(1)));
        init_uniform(weight_.value, bound, seed, stream);
        init_uniform(bias_.value, bound, seed, stream + 1);
    }
    Tensor forward(const Tensor& x) override {
        cache(input_, x);
        Tensor y = Tensor::empty({x.dim(0), weight_.value.dim(0)});
        cpu::linear_forward(x, weight_.value, bias_.value, y);
        return y;
    }
    Tensor backward(const Tensor& dy) override {
        require_cached(input_, "Linear");
        Tensor dw = Tensor::empty(weight_.value.shape()), db = Tensor::empty(bias_.value.shape());
        cpu::linear_backward_params(input_, dy, dw, db);
        cpu::add_inplace(weight_.grad, dw);
        cpu::add_inplace(bias_.grad, db);
        Tensor dx = Tensor::empty(input_.shape());
        cpu::linear_backward_input(dy, weight_.value, dx);
        return dx;
    }
    void collect_parameters(const std::string& prefix, std::vector<NamedParameter>& out) override {
        out.push_back({prefix + "weight", &weight_});
        out.push_back({prefix + "bias", &bias_});
    }
    Parameter& weight() { return weight_; }
    Parameter& bias() { return bias_; }

protected:
    void release_cache() override { input_ = Tensor(); }

private:
    Parameter weight_, bias_;
    Tensor input_;
};

}  // namespace pin::nn
