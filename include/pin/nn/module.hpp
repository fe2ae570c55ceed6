// pin/nn/module.hpp - the layer interface: forward, backward, named parameters with gradients.
//
// Conventions: activations are rank-4 NHWC tensors (shapes in NCHW order) or rank-2
// (batch, features). forward() caches what backward() needs only in training mode, so inference
// keeps no intermediate tensors alive. backward() takes d(loss)/d(output), returns
// d(loss)/d(input) and *adds* the parameter gradients into Parameter::grad (zero them with
// zero_grad() between steps), as PyTorch does.
#pragma once
#include <cmath>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "pin/core/error.hpp"
#include "pin/core/rng.hpp"
#include "pin/core/tensor.hpp"

namespace pin::nn {

struct Parameter {
    Tensor value;
    Tensor grad;
};

// A parameter with its full name, the PyTorch state_dict key (e.g. "block1.conv1.weight").
struct NamedParameter {
    std::string name;
    Parameter* param;
};

class Module {
public:
    Module() = default;
    virtual ~Module() = default;
    // Registered children are pointers into the module itself: copying or moving would dangle.
    Module(const Module&) = delete;
    Module& operator=(const Module&) = delete;
    virtual Tensor forward(const Tensor& x) = 0;
    virtual Tensor backward(const Tensor& dy) = 0;
    // Appends pointers to this module's parameters, names prefixed by `prefix`.
    virtual void collect_parameters(const std::string& prefix, std::vector<NamedParameter>& out) {
        (void)prefix, (void)out;
    }
    // Leaving training mode drops every cached tensor (a later backward() then reports the misuse).
    // The mode reaches every registered child module.
    void set_training(bool training) {
        training_ = training;
        if (!training) release_cache();
        for (Module* child : children_) child->set_training(training);
    }
    bool training() const { return training_; }

    std::vector<NamedParameter> parameters() {
        std::vector<NamedParameter> out;
        collect_parameters("", out);
        return out;
    }
    void zero_grad() {
        for (NamedParameter& p : parameters()) p.param->grad.fill(0.0f);
    }
    int64_t parameter_count() {
        int64_t n = 0;
        for (NamedParameter& p : parameters()) n += p.param->value.numel();
        return n;
    }

protected:
    // Composite modules register their sub-modules once, so set_training reaches them all.
    void register_children(std::initializer_list<Module*> children) {
        for (Module* c : children)
            if (c) children_.push_back(c);
    }
    virtual void release_cache() {}
    // Drops a cached tensor when not training, so inference holds nothing.
    void cache(Tensor& slot, const Tensor& value) const { slot = training_ ? value : Tensor(); }
    static void require_cached(const Tensor& t, const char* layer) {
        PIN_CHECK(t.defined(), layer, ": backward() called without a training-mode forward()");
    }
    bool training_ = false;

private:
    std::vector<Module*> children_;
};

inline Parameter make_parameter(const Shape& shape) { return {Tensor::zeros(shape), Tensor::zeros(shape)}; }

// Fills `value` with uniform(-bound, bound) from a Philox stream.
inline void init_uniform(Tensor& value, float bound, uint64_t seed, uint64_t stream) {
    const PhiloxStream rng(seed, stream);
    for (int64_t i = 0; i < value.numel(); ++i)
        value.data()[i] = bound * (2.0f * rng.uniform(static_cast<uint64_t>(i)) - 1.0f);
}

// He (Kaiming) uniform bound for a layer followed by PReLU with slope `a`: keeps the activation
// variance constant through depth. PyTorch's default (1 / sqrt(fan_in)) shrinks it by ~2.4x per
// layer, and through the DAE's 24 convolutions (two passes) a face would shrink to ~1e-9 of its
// size, so the agent would see nothing of it.
inline float he_uniform_bound(int64_t fan_in, float a = 0.25f) {
    return std::sqrt(6.0f / ((1.0f + a * a) * static_cast<float>(fan_in)));
}

}  // namespace pin::nn
