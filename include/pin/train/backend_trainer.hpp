// pin/train/backend_trainer.hpp - PolicyGradientTrainer's step composed from a backend's kernels, so
// the same layer sequence, caches and update run on the CPU or on the GPU.
//
// PolicyGradientTrainer (train/trainer.hpp) is the CPU reference, built from nn::Module objects that
// own their tensors. This class holds the trained parameters (ESN and head), their gradients and the
// SGD momentum in buffers of a Backend and calls its kernels on raw pointers (NHWC activations,
// PyTorch weight layouts), the shape a GPU needs. The composition is tested on the CPU (with
// CpuTrainingBackend, train/cpu_training_backend.hpp) against PolicyGradientTrainer, and on a GPU
// with cuda::GpuTrainingBackend; a kernel that disagrees shows up in the per-op tests.
//
// A Backend provides (pointers in its memory; n counts floats):
//   using Buffer (movable, float* data()), Buffer alloc(n), upload(host, dst, n), download(src, host, n)
//   conv2d_forward(x, w, y, ConvGeometry)           (no activation: the caches keep pre-activations)
//   conv2d_backward(x, dy, w, dx, dw, ConvGeometry, accumulate)   both gradients of one convolution:
//                                     dw, and dx (= or += with accumulate; dx null: none)
//   prelu_forward(x, slope, y, n, C), prelu_backward(x, slope, dy, dx, dslope, n, C), add(a, b, y, n)
//   nhwc_to_nchw(x, y, B, C, H, W), nchw_to_nhwc(x, y, B, C, H, W)
//   linear_forward(x, w, b, y, B, in, out), linear_backward_input(dy, w, dx, B, in, out),
//   linear_backward_params(x, dy, dw, db, B, in, out), sigmoid_forward(x, y, n)
//   double sum_squares(x, n), scale(x, n, s), sgd_step(w, g, v, n, lr, momentum, first)
//   relative_noise(x, xn, B, D, intensity, seed, first_image)   the training noise (train/noise.hpp)
//   dae_forward(x, y, B)              the frozen DAE's inference pass, (B, 112, 112) -> (B, 112, 112)
//   EstimatorResult estimate(p, x, xn, dz, B, first_image)   d loss / d z for the batch (TrainerOptions)
#pragma once
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "pin/model/agent.hpp"
#include "pin/nn/sgd.hpp"
#include "pin/train/trainer.hpp"

namespace pin::train {

struct ConvGeometry {
    int64_t batch, in_h, in_w, in_c, out_c, kernel, stride, padding;
    int64_t out_h() const { return (in_h + 2 * padding - kernel) / stride + 1; }
    int64_t out_w() const { return (in_w + 2 * padding - kernel) / stride + 1; }
};

struct EstimatorResult {
    double mean_cost = 0, mean_kept = 0;
};

template <class Backend>
class BackendTrainer {
public:
    using Buffer = typename Backend::Buffer;

    // Copies the ESN's and head's parameters of `agent` to the backend; the momentum starts from
    // `sgd` (its velocity and step count: a resumed run's), which must be over the same parameters
    // as PolicyGradientTrainer::trained_parameters(). The DAE is the backend's (dae_forward).
    BackendTrainer(Backend& backend, model::Agent& agent, const nn::SGD& sgd, const TrainerOptions& options)
        : be_(backend), opt_(options), steps_(sgd.steps()) {
        std::vector<nn::NamedParameter> named;
        agent.esn().collect_parameters("esn.", named);
        agent.head().collect_parameters("head.", named);
        const std::vector<Tensor>& velocity = sgd.velocity();
        PIN_CHECK(velocity.size() == named.size(), "BackendTrainer: the optimizer has ", velocity.size(),
                  " momentum buffers for ", named.size(), " trained parameters");
        bool found = false;
        for (size_t k = 0; k < named.size(); ++k) {
            const Tensor& v = named[k].param->value;
            PIN_CHECK(velocity[k].numel() == v.numel(), "BackendTrainer: momentum buffer ", k, " has ", velocity[k].numel(),
                      " values, parameter ", named[k].name, " has ", v.numel());
            Param p{named[k].name, v.numel(), be_.alloc(v.numel()), be_.alloc(v.numel()), be_.alloc(v.numel()), 1.0f};
            // PyTorch order (conv weights (cout, cin, k, k), linear (out, in)) is the backends' layout.
            be_.upload(v.to_layout(Layout::NCHW).data(), p.value.data(), p.numel);
            be_.upload(velocity[k].data(), p.velocity.data(), p.numel);
            if (p.name == PolicyGradientTrainer::kOutputBias)
                found = true;
            else
                p.lr_scale = options.features_lr_scale;
            index_[p.name] = params_.size();
            params_.push_back(std::move(p));
        }
        PIN_CHECK(found, "BackendTrainer: no parameter named ", PolicyGradientTrainer::kOutputBias);
        eigenvectors_ = agent.head().parameters().back().param->value.numel();
    }

    // One step on x (B, 112, 112) in [-1, 1], host memory, as PolicyGradientTrainer::step.
    StepStats step(const Tensor& x, uint64_t first_image) {
        const int64_t B = x.n();
        check_shape(x, {B, 1, 112, 112}, "BackendTrainer::step input");
        Buffer gx = be_.alloc(B * kPixels), gxn = be_.alloc(B * kPixels), dae = be_.alloc(B * kPixels);
        be_.upload(x.data(), gx.data(), B * kPixels);
        be_.relative_noise(gx.data(), gxn.data(), B, kPixels, opt_.noise, opt_.seed, first_image);  // on the backend: no upload
        be_.dae_forward(gxn.data(), dae.data(), B);

        Forward f = forward(dae.data(), B);
        Buffer dz = be_.alloc(B * eigenvectors_);
        const EstimatorResult est = be_.estimate(f.p.data(), gx.data(), gxn.data(), dz.data(), B, first_image);
        backward(f, dz.data(), B);
        const double norm = clip_gradients();
        for (Param& p : params_)
            be_.sgd_step(p.value.data(), p.grad.data(), p.velocity.data(), p.numel, opt_.lr * p.lr_scale, opt_.momentum,
                         steps_ == 0);
        ++steps_;
        return {est.mean_cost, est.mean_kept, norm};
    }

    // Copies the parameters back into `agent` and the momentum and step count into `sgd` (for
    // checkpoints, and to run the trained agent anywhere).
    void download(model::Agent& agent, nn::SGD& sgd) {
        std::vector<nn::NamedParameter> named;
        agent.esn().collect_parameters("esn.", named);
        agent.head().collect_parameters("head.", named);
        PIN_CHECK(named.size() == params_.size() && sgd.velocity().size() == params_.size(),
                  "BackendTrainer::download: a different agent or optimizer");
        for (size_t k = 0; k < params_.size(); ++k) {
            Tensor& v = named[k].param->value;
            PIN_CHECK(v.numel() == params_[k].numel, "BackendTrainer::download: parameter ", named[k].name, " differs in size");
            Tensor host = Tensor::empty(v.shape());
            be_.download(params_[k].value.data(), host.data(), params_[k].numel);
            v.copy_from(host.to_layout(v.layout()));
            be_.download(params_[k].velocity.data(), sgd.velocity()[k].data(), params_[k].numel);
        }
        sgd.set_steps(steps_);
    }
    // The gradient of the last step (after clipping), host copy, for tests.
    std::vector<float> gradient(const std::string& name) {
        const Param& p = param(name);
        std::vector<float> g(static_cast<size_t>(p.numel));
        be_.download(p.grad.data(), g.data(), p.numel);
        return g;
    }
    void set_lr(float lr) { opt_.lr = lr; }
    int64_t steps() const { return steps_; }

private:
    static constexpr int64_t kPixels = 112 * 112;
    struct Param {
        std::string name;
        int64_t numel;
        Buffer value, grad, velocity;
        float lr_scale;
    };
    // A residual block's cache: input h, pre-activations a1, a2 and conv1's activation y1.
    struct BlockCache {
        ConvGeometry g1, g2, gs;
        std::string prefix;
        const float* in;  // the block's input (the previous output buffer, kept alive in Forward)
        Buffer a1, y1, a2, out;
    };
    struct Forward {
        ConvGeometry g0;
        const float* x;
        Buffer a0, h0;
        std::vector<BlockCache> blocks;
        Buffer flat, z1, u, p;  // head: flattened features, fc1 pre-activation, PReLU output, p
    };

    Param& param(const std::string& name) {
        auto it = index_.find(name);
        PIN_CHECK(it != index_.end(), "BackendTrainer: no trained parameter '", name, "'");
        return params_[it->second];
    }
    const float* w(const std::string& name) { return param(name).value.data(); }
    float* grad(const std::string& name) { return param(name).grad.data(); }

    // The ESN and head in training mode: every convolution's output is kept before its PReLU.
    Forward forward(const float* x, int64_t B) {
        Forward f;
        f.x = x;
        f.g0 = {B, 112, 112, 1, 64, 3, 1, 1};
        f.a0 = be_.alloc(B * kPixels * 64);
        f.h0 = be_.alloc(B * kPixels * 64);
        be_.conv2d_forward(x, w("esn.in_layer.0.weight"), f.a0.data(), f.g0);
        be_.prelu_forward(f.a0.data(), w("esn.in_layer.1.weight"), f.h0.data(), B * kPixels * 64, 64);
        const int64_t spec[8][3] = {{64, 64, 2}, {64, 64, 1}, {64, 128, 2}, {128, 128, 1},
                                    {128, 256, 2}, {256, 256, 1}, {256, 512, 2}, {512, 512, 1}};
        const float* h = f.h0.data();
        int64_t H = 112, W = 112;
        f.blocks.reserve(8);
        for (int i = 0; i < 8; ++i) {
            const int64_t cin = spec[i][0], cout = spec[i][1], s = spec[i][2];
            BlockCache c;
            c.prefix = "esn.block" + std::to_string(i + 1) + ".";
            c.in = h;
            c.g1 = {B, H, W, cin, cout, 3, 1, 1};
            c.g2 = {B, H, W, cout, cout, 3, s, 1};
            c.gs = {B, H, W, cin, cout, 1, s, 0};
            const int64_t Ho = c.g2.out_h(), Wo = c.g2.out_w();
            c.a1 = be_.alloc(B * H * W * cout);
            c.y1 = be_.alloc(B * H * W * cout);
            c.a2 = be_.alloc(B * Ho * Wo * cout);
            c.out = be_.alloc(B * Ho * Wo * cout);
            be_.conv2d_forward(h, w(c.prefix + "conv1.weight"), c.a1.data(), c.g1);
            be_.prelu_forward(c.a1.data(), w(c.prefix + "nolinear1.weight"), c.y1.data(), B * H * W * cout, cout);
            be_.conv2d_forward(c.y1.data(), w(c.prefix + "conv2.weight"), c.a2.data(), c.g2);
            Buffer y2 = be_.alloc(B * Ho * Wo * cout);
            be_.prelu_forward(c.a2.data(), w(c.prefix + "nolinear2.weight"), y2.data(), B * Ho * Wo * cout, cout);
            be_.conv2d_forward(h, w(c.prefix + "shortcut_layer.0.weight"), c.out.data(), c.gs);
            be_.add(y2.data(), c.out.data(), c.out.data(), B * Ho * Wo * cout);
            f.blocks.push_back(std::move(c));
            h = f.blocks.back().out.data();
            H = Ho;
            W = Wo;
        }
        const int64_t features = 512 * H * W, hidden = 512, N = eigenvectors_;
        f.flat = be_.alloc(B * features);
        f.z1 = be_.alloc(B * hidden);
        f.u = be_.alloc(B * hidden);
        f.p = be_.alloc(B * N);
        be_.nhwc_to_nchw(h, f.flat.data(), B, 512, H, W);
        be_.linear_forward(f.flat.data(), w("head.fc1.1.weight"), w("head.fc1.1.bias"), f.z1.data(), B, features, hidden);
        be_.prelu_forward(f.z1.data(), w("head.fc1.2.weight"), f.u.data(), B * hidden, hidden);
        Buffer z = be_.alloc(B * N);
        be_.linear_forward(f.u.data(), w("head.fc2.0.weight"), w("head.fc2.0.bias"), z.data(), B, hidden, N);
        be_.sigmoid_forward(z.data(), f.p.data(), B * N);
        return f;
    }

    // d loss / d parameters from dz, written into every Param::grad (each parameter is used once).
    void backward(Forward& f, const float* dz, int64_t B) {
        const int64_t hidden = 512, N = eigenvectors_, features = 512 * 7 * 7;
        Buffer du = be_.alloc(B * hidden), dz1 = be_.alloc(B * hidden), dflat = be_.alloc(B * features);
        be_.linear_backward_params(f.u.data(), dz, grad("head.fc2.0.weight"), grad("head.fc2.0.bias"), B, hidden, N);
        be_.linear_backward_input(dz, w("head.fc2.0.weight"), du.data(), B, hidden, N);
        be_.prelu_backward(f.z1.data(), w("head.fc1.2.weight"), du.data(), dz1.data(), grad("head.fc1.2.weight"), B * hidden,
                           hidden);
        be_.linear_backward_params(f.flat.data(), dz1.data(), grad("head.fc1.1.weight"), grad("head.fc1.1.bias"), B, features,
                                   hidden);
        be_.linear_backward_input(dz1.data(), w("head.fc1.1.weight"), dflat.data(), B, features, hidden);
        Buffer dout = be_.alloc(B * features);
        be_.nchw_to_nhwc(dflat.data(), dout.data(), B, 512, 7, 7);
        for (auto it = f.blocks.rbegin(); it != f.blocks.rend(); ++it) {
            BlockCache& c = *it;
            const int64_t cout = c.g1.out_c, n1 = B * c.g1.in_h * c.g1.in_w * cout, n2 = B * c.g2.out_h() * c.g2.out_w() * cout;
            Buffer da2 = be_.alloc(n2), dy1 = be_.alloc(n1), da1 = be_.alloc(n1), dh = be_.alloc(B * c.g1.in_h * c.g1.in_w * c.g1.in_c);
            be_.prelu_backward(c.a2.data(), w(c.prefix + "nolinear2.weight"), dout.data(), da2.data(),
                               grad(c.prefix + "nolinear2.weight"), n2, cout);
            be_.conv2d_backward(c.y1.data(), da2.data(), w(c.prefix + "conv2.weight"), dy1.data(), grad(c.prefix + "conv2.weight"), c.g2,
                                false);
            be_.prelu_backward(c.a1.data(), w(c.prefix + "nolinear1.weight"), dy1.data(), da1.data(),
                               grad(c.prefix + "nolinear1.weight"), n1, cout);
            be_.conv2d_backward(c.in, da1.data(), w(c.prefix + "conv1.weight"), dh.data(), grad(c.prefix + "conv1.weight"), c.g1, false);
            // The shortcut sees the block's output gradient directly.
            be_.conv2d_backward(c.in, dout.data(), w(c.prefix + "shortcut_layer.0.weight"), dh.data(),
                                grad(c.prefix + "shortcut_layer.0.weight"), c.gs, true);
            dout = std::move(dh);
            // This block's caches are no longer needed: free them early (the largest are the first blocks').
            c.a1 = Buffer();
            c.y1 = Buffer();
            c.a2 = Buffer();
            c.out = Buffer();
        }
        // The input layer: the DAE is frozen, so no input gradient.
        const int64_t n0 = B * kPixels * 64;
        Buffer da0 = be_.alloc(n0);
        be_.prelu_backward(f.a0.data(), w("esn.in_layer.1.weight"), dout.data(), da0.data(), grad("esn.in_layer.1.weight"), n0, 64);
        be_.conv2d_backward(f.x, da0.data(), w("esn.in_layer.0.weight"), nullptr, grad("esn.in_layer.0.weight"), f.g0, false);
    }

    // Global L2 norm of the gradients (double), clipped to clip_norm as PolicyGradientTrainer does.
    double clip_gradients() {
        double sq = 0;
        for (Param& p : params_) sq += be_.sum_squares(p.grad.data(), p.numel);
        const double norm = std::sqrt(sq);
        if (opt_.clip_norm > 0 && norm > opt_.clip_norm) {
            const float s = static_cast<float>(opt_.clip_norm / norm);
            for (Param& p : params_) be_.scale(p.grad.data(), p.numel, s);
        }
        return norm;
    }

    Backend& be_;
    TrainerOptions opt_;
    std::vector<Param> params_;
    std::map<std::string, size_t> index_;
    int64_t eigenvectors_ = 0;
    int64_t steps_ = 0;
};

}  // namespace pin::train
