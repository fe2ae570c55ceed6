// The CPU training step with bfloat16 GEMM operands (train/bf16_operands_backend.hpp, `pin train
// --emulate-gpu-bf16`): the rounding itself, that each op rounds exactly its GEMM operands (the
// result equals the CPU op on rounded copies, bit for bit) and nothing else, and that a whole step
// stays near the fp32 step without being it.
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include "helpers.hpp"
#include "pin/io/half.hpp"
#include "pin/train/bf16_operands_backend.hpp"

using namespace pin;
using namespace pin::test;

namespace {
uint32_t bits_of(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
Tensor rounded_copy(const Tensor& t) {
    Tensor r = t.clone();
    for (int64_t i = 0; i < r.numel(); ++i) r.data()[i] = io::round_to_bfloat16(r.data()[i]);
    return r;
}
double max_abs_difference(const Tensor& a, const Tensor& b) {
    REQUIRE(a.numel() == b.numel());
    double d = 0;
    for (int64_t i = 0; i < a.numel(); ++i) d = std::max(d, std::fabs(static_cast<double>(a.data()[i]) - b.data()[i]));
    return d;
}
std::shared_ptr<model::EigenBasis> basis(int64_t n) {
    return std::make_shared<model::EigenBasis>(model::EigenBasis::compute(random_tensor({50, 112 * 112}, 31, 0.3f), n));
}
// One BackendTrainer step of `agent` on Backend: its statistics and every trained parameter's gradient.
template <class Backend>
std::pair<train::StepStats, std::vector<std::vector<float>>> one_step(std::shared_ptr<model::Agent> agent,
                                                                      std::shared_ptr<model::EigenBasis> eig,
                                                                      const train::TrainerOptions& opt, const Tensor& x) {
    train::PolicyGradientTrainer holder(agent, eig, opt);  // owns the optimizer state
    Backend backend(agent->dae(), eig, opt);
    train::BackendTrainer<Backend> trainer(backend, *agent, holder.optimizer(), opt);
    const train::StepStats s = trainer.step(x, 0);
    std::vector<nn::NamedParameter> named;
    agent->esn().collect_parameters("esn.", named);
    agent->head().collect_parameters("head.", named);
    std::vector<std::vector<float>> grads;
    for (const nn::NamedParameter& p : named) grads.push_back(trainer.gradient(p.name));
    return {s, grads};
}
}  // namespace

TEST_CASE("round_to_bfloat16 rounds to the nearest bfloat16, ties to even", "[bf16]") {
    // bfloat16 keeps 8 significant bits: next to 1 the spacing is 2^-7.
    REQUIRE(io::round_to_bfloat16(1.0f + std::ldexp(1.0f, -8)) == 1.0f);  // halfway, to the even 1.0
    REQUIRE(io::round_to_bfloat16(1.0f + std::ldexp(3.0f, -8)) == 1.0f + std::ldexp(1.0f, -6));  // halfway, to even
    REQUIRE(io::round_to_bfloat16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)) == 1.0f + std::ldexp(1.0f, -7));
    REQUIRE(io::round_to_bfloat16(-3.0f) == -3.0f);
    REQUIRE(std::isinf(io::round_to_bfloat16(std::numeric_limits<float>::max())));
    REQUIRE(std::isnan(io::round_to_bfloat16(std::numeric_limits<float>::quiet_NaN())));
    const Tensor x = random_tensor({10000}, 41, 100.0f);
    for (int64_t i = 0; i < x.numel(); ++i) {
        const float v = x.data()[i], r = io::round_to_bfloat16(v);
        REQUIRE((bits_of(r) & 0xffffu) == 0u);                                         // a bfloat16 value
        REQUIRE(std::fabs(r - v) <= std::ldexp(std::fabs(v), -8) * (1 + 1e-6));       // within half a unit
    }
}

TEST_CASE("Bf16OperandsCpuBackend rounds exactly the GEMM operands", "[bf16][train]") {
    train::TrainerOptions opt;
    model::DenoisingAutoencoder dae;
    const auto eig = basis(8);
    train::CpuTrainingBackend fp32(dae, eig, opt);
    train::Bf16OperandsCpuBackend bf16(dae, eig, opt);
    // Odd sizes, stride 2; values off the bfloat16 grid.
    const train::ConvGeometry g{2, 9, 7, 6, 5, 3, 2, 1};
    const Tensor x = random_tensor({g.batch * g.in_h * g.in_w * g.in_c}, 51, 1.0f);
    const Tensor w = random_tensor({g.out_c * g.in_c * 9}, 52, 0.5f);
    const Tensor dy = random_tensor({g.batch * g.out_h() * g.out_w() * g.out_c}, 53, 1.0f);
    const Tensor xr = rounded_copy(x), wr = rounded_copy(w), dyr = rounded_copy(dy);
    const int64_t ny = dy.numel(), nx = x.numel(), nw = w.numel();

    SECTION("convolution forward") {
        Tensor y = Tensor::empty({ny}), expected = Tensor::empty({ny}), unrounded = Tensor::empty({ny});
        bf16.conv2d_forward(x.data(), w.data(), y.data(), g);
        fp32.conv2d_forward(xr.data(), wr.data(), expected.data(), g);
        fp32.conv2d_forward(x.data(), w.data(), unrounded.data(), g);
        REQUIRE(bitwise_equal(y, expected));
        REQUIRE(max_abs_difference(y, unrounded) > 1e-4);  // the rounding is there
    }
    SECTION("the 1-channel stem stays fp32 (the GPU's per-pixel kernel)") {
        const train::ConvGeometry s{2, 9, 7, 1, 4, 3, 1, 1};
        const Tensor xs = random_tensor({2 * 9 * 7}, 54, 1.0f), ws = random_tensor({4 * 9}, 55, 0.5f);
        Tensor y = Tensor::empty({2 * 9 * 7 * 4}), expected = Tensor::empty({2 * 9 * 7 * 4});
        bf16.conv2d_forward(xs.data(), ws.data(), y.data(), s);
        fp32.conv2d_forward(xs.data(), ws.data(), expected.data(), s);
        REQUIRE(bitwise_equal(y, expected));
    }
    SECTION("convolution backward, plain and accumulating") {
        for (const bool accumulate : {false, true}) {
            INFO("accumulate " << accumulate);
            const Tensor start = random_tensor({nx}, 56, 1.0f);  // what accumulating adds onto
            Tensor dx = start.clone(), dw = Tensor::empty({nw}), edx = start.clone(), edw = Tensor::empty({nw});
            bf16.conv2d_backward(x.data(), dy.data(), w.data(), dx.data(), dw.data(), g, accumulate);
            fp32.conv2d_backward(xr.data(), dyr.data(), wr.data(), edx.data(), edw.data(), g, accumulate);
            REQUIRE(bitwise_equal(dx, edx));
            REQUIRE(bitwise_equal(dw, edw));
            Tensor udx = start.clone(), udw = Tensor::empty({nw});
            fp32.conv2d_backward(x.data(), dy.data(), w.data(), udx.data(), udw.data(), g, accumulate);
            REQUIRE(max_abs_difference(dx, udx) > 1e-4);
            REQUIRE(max_abs_difference(dw, udw) > 1e-4);
        }
    }
    SECTION("linear layers; the bias gradient from the fp32 dy") {
        const int64_t B = 3, in = 37, out = 11;
        const Tensor lx = random_tensor({B * in}, 61, 1.0f), lw = random_tensor({out * in}, 62, 0.3f);
        const Tensor lb = random_tensor({out}, 63, 0.3f), ldy = random_tensor({B * out}, 64, 1.0f);
        const Tensor lxr = rounded_copy(lx), lwr = rounded_copy(lw), ldyr = rounded_copy(ldy);
        Tensor y = Tensor::empty({B * out}), ey = Tensor::empty({B * out});
        bf16.linear_forward(lx.data(), lw.data(), lb.data(), y.data(), B, in, out);
        fp32.linear_forward(lxr.data(), lwr.data(), lb.data(), ey.data(), B, in, out);  // the bias is not rounded
        REQUIRE(bitwise_equal(y, ey));
        Tensor dx = Tensor::empty({B * in}), edx = Tensor::empty({B * in});
        bf16.linear_backward_input(ldy.data(), lw.data(), dx.data(), B, in, out);
        fp32.linear_backward_input(ldyr.data(), lwr.data(), edx.data(), B, in, out);
        REQUIRE(bitwise_equal(dx, edx));
        Tensor dw = Tensor::empty({out * in}), db = Tensor::empty({out}), edw = Tensor::empty({out * in}), edb = Tensor::empty({out});
        bf16.linear_backward_params(lx.data(), ldy.data(), dw.data(), db.data(), B, in, out);
        fp32.linear_backward_params(lxr.data(), ldyr.data(), edw.data(), edb.data(), B, in, out);
        REQUIRE(bitwise_equal(dw, edw));
        for (int64_t j = 0; j < out; ++j) {
            double s = 0;
            for (int64_t b = 0; b < B; ++b) s += ldy.data()[b * out + j];
            REQUIRE(db.data()[j] == Approx(s).epsilon(1e-6));
        }
    }
}

TEST_CASE("A training step with bfloat16 operands stays near the fp32 step", "[bf16][train][slow]") {
    const auto eig = basis(40);
    const Tensor x = random_tensor({1, 1, 112, 112}, 71, 0.5f, Layout::NHWC);
    train::TrainerOptions opt;
    opt.estimator = train::Estimator::LocalExpectation;
    opt.masks = 5;
    opt.seed = 3;
    opt.clip_norm = 0;  // the raw gradients are compared
    auto make_agent = [] {
        auto agent = std::make_shared<model::Agent>(40);
        agent->reset_parameters(5);
        agent->head().scale_output_layer(0.5f);  // p spread over (0, 1)
        return agent;
    };
    const auto [s32, g32] = one_step<train::CpuTrainingBackend>(make_agent(), eig, opt, x);
    const auto [s16, g16] = one_step<train::Bf16OperandsCpuBackend>(make_agent(), eig, opt, x);
    REQUIRE(s16.mean_cost == Approx(s32.mean_cost).epsilon(1e-3));
    REQUIRE(s16.grad_norm == Approx(s32.grad_norm).epsilon(5e-2));
    double worst = 0;
    bool any_different = false;
    for (size_t k = 0; k < g32.size(); ++k) {
        double diff = 0, norm = 0;
        for (size_t i = 0; i < g32[k].size(); ++i) {
            diff += (static_cast<double>(g16[k][i]) - g32[k][i]) * (static_cast<double>(g16[k][i]) - g32[k][i]);
            norm += static_cast<double>(g32[k][i]) * g32[k][i];
        }
        if (norm > 0) worst = std::max(worst, std::sqrt(diff / norm));
        any_different = any_different || diff > 0;
    }
    INFO("largest per-tensor L2 difference from fp32: " << worst);
    REQUIRE(any_different);
    REQUIRE(worst < 0.3);  // the GPU test's bound for bfloat16 gradients (tests/test_cuda_network.cpp)
}
