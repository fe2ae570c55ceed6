// The backend-generic training step (train/backend_trainer.hpp) against PolicyGradientTrainer, with
// the CPU backend: what the GPU trainer shares with it (layer order, caches, gradient routing to
// each parameter, clipping, per-parameter learning rates, momentum, resuming from an optimizer's
// state, copying back) is checked here on every run, without a GPU.
#include <cmath>
#include <memory>

#include "helpers.hpp"
#include "pin/train/cpu_training_backend.hpp"

using namespace pin;
using namespace pin::test;

namespace {
// max |a - b| / max |b| (0 when both are all zeros).
double max_relative_difference(const Tensor& a, const Tensor& b) {
    REQUIRE(a.numel() == b.numel());
    double diff = 0, scale = 0;
    for (int64_t i = 0; i < a.numel(); ++i) {
        diff = std::max(diff, std::fabs(static_cast<double>(a.data()[i]) - b.data()[i]));
        scale = std::max(scale, std::fabs(static_cast<double>(b.data()[i])));
    }
    return scale > 0 ? diff / scale : diff;
}
std::shared_ptr<model::EigenBasis> basis40() {
    return std::make_shared<model::EigenBasis>(model::EigenBasis::compute(random_tensor({50, 112 * 112}, 11, 0.3f), 40));
}
std::shared_ptr<model::Agent> agent40() {
    auto agent = std::make_shared<model::Agent>(40);
    agent->reset_parameters(5);
    agent->head().scale_output_layer(0.5f);  // p spread over (0, 1), not saturated
    return agent;
}
// Largest |a - b| over all trained parameters and momentum buffers, relative to each tensor's scale.
double worst_difference(train::PolicyGradientTrainer& a, train::PolicyGradientTrainer& b) {
    double worst = 0;
    const auto pa = a.trained_parameters(), pb = b.trained_parameters();
    for (size_t k = 0; k < pa.size(); ++k) {
        worst = std::max(worst, max_relative_difference(pa[k].param->value, pb[k].param->value));
        worst = std::max(worst, max_relative_difference(a.optimizer().velocity()[k], b.optimizer().velocity()[k]));
    }
    return worst;
}
}  // namespace

TEST_CASE("BackendTrainer on the CPU backend reproduces PolicyGradientTrainer", "[train][backend][slow]") {
    const auto basis = basis40();
    // Small batches: the test runs the whole ESN at 112 x 112, and again under the sanitizers in CI.
    const Tensor x0 = random_tensor({1, 1, 112, 112}, 21, 0.5f, Layout::NHWC);
    const Tensor x1 = random_tensor({2, 1, 112, 112}, 22, 0.5f, Layout::NHWC);  // batch sizes may change
    for (const train::Estimator estimator :
         {train::Estimator::Reinforce, train::Estimator::Rloo, train::Estimator::LocalExpectation}) {
        INFO("estimator " << train::estimator_name(estimator));
        train::TrainerOptions opt;
        opt.estimator = estimator;
        opt.masks = 5;
        opt.lr = 0.02f;
        opt.momentum = 0.9f;
        opt.features_lr_scale = 0.5f;
        opt.seed = 9;
        opt.clip_norm = 1e-3;  // below every gradient norm of these steps (checked below): the clip acts
        // The reference: two CPU steps.
        auto ref2_agent = agent40();
        train::PolicyGradientTrainer ref2(ref2_agent, basis, opt);
        const train::StepStats c0 = ref2.step(x0, 0);
        const train::StepStats c1 = ref2.step(x1, 2);

        // The same two steps on the backend, from a fresh optimizer; then copied back.
        auto agent = agent40();
        train::PolicyGradientTrainer holder(agent, basis, opt);  // owns the optimizer state to copy into
        train::CpuTrainingBackend backend(agent->dae(), basis, opt);
        train::BackendTrainer<train::CpuTrainingBackend> trainer(backend, *agent, holder.optimizer(), opt);
        const train::StepStats b0 = trainer.step(x0, 0);
        const train::StepStats b1 = trainer.step(x1, 2);
        for (const auto& [c, b] : {std::pair{c0, b0}, std::pair{c1, b1}}) {
            REQUIRE(b.mean_cost == Approx(c.mean_cost).epsilon(1e-6));
            REQUIRE(b.mean_kept == Approx(c.mean_kept).epsilon(1e-6));
            REQUIRE(b.grad_norm == Approx(c.grad_norm).epsilon(1e-5));
        }
        REQUIRE(c0.grad_norm > opt.clip_norm);  // the clip acted
        REQUIRE(c1.grad_norm > opt.clip_norm);
        // The last step's (clipped) gradients, parameter by parameter.
        for (const auto& p : ref2.trained_parameters()) {
            INFO("gradient of " << p.name);
            const std::vector<float> g = trainer.gradient(p.name);
            REQUIRE(max_relative_difference(Tensor::from(p.param->grad.shape(), g), p.param->grad.to_layout(Layout::NCHW)) <= 1e-5);
        }
        trainer.download(*agent, holder.optimizer());
        REQUIRE(holder.optimizer().steps() == 2);
        const double worst = worst_difference(holder, ref2);
        INFO("worst relative difference of parameters and momentum: " << worst);
        REQUIRE(worst <= 1e-5);
        // Every parameter received a gradient (the comparison is not between two untouched copies).
        const auto trained = holder.trained_parameters();
        for (size_t k = 0; k < trained.size(); ++k) {
            INFO(trained[k].name);
            const Tensor& v = holder.optimizer().velocity()[k];
            double largest = 0;
            for (int64_t i = 0; i < v.numel(); ++i) largest = std::max(largest, std::fabs(static_cast<double>(v.data()[i])));
            REQUIRE(largest > 0);
        }
    }
}

TEST_CASE("BackendTrainer resumes from an optimizer's momentum and step count", "[train][backend][slow]") {
    const auto basis = basis40();
    const Tensor x0 = random_tensor({1, 1, 112, 112}, 31, 0.5f, Layout::NHWC);
    const Tensor x1 = random_tensor({1, 1, 112, 112}, 32, 0.5f, Layout::NHWC);
    train::TrainerOptions opt;
    opt.estimator = train::Estimator::LocalExpectation;
    opt.masks = 3;
    opt.lr = 0.01f;
    opt.clip_norm = 1;
    auto ref_agent = agent40();
    train::PolicyGradientTrainer ref(ref_agent, basis, opt);
    ref.step(x0, 0);
    const train::StepStats r1 = ref.step(x1, 2);
    // One CPU step, then the second on the backend from that state.
    auto agent = agent40();
    train::PolicyGradientTrainer cpu(agent, basis, opt);
    cpu.step(x0, 0);
    train::CpuTrainingBackend backend(agent->dae(), basis, opt);
    train::BackendTrainer<train::CpuTrainingBackend> trainer(backend, *agent, cpu.optimizer(), opt);
    REQUIRE(trainer.steps() == 1);
    const train::StepStats b1 = trainer.step(x1, 2);
    REQUIRE(b1.grad_norm == Approx(r1.grad_norm).epsilon(1e-5));
    trainer.download(*agent, cpu.optimizer());
    REQUIRE(worst_difference(cpu, ref) <= 1e-5);
}

TEST_CASE("BackendTrainer rejects an optimizer over other parameters and a wrong batch shape", "[train][backend]") {
    const auto basis = basis40();
    auto agent = agent40();
    train::TrainerOptions opt;
    train::CpuTrainingBackend backend(agent->dae(), basis, opt);
    nn::SGD other(agent->dae().parameters(), 0.1f);
    REQUIRE_THROWS_WITH(train::BackendTrainer<train::CpuTrainingBackend>(backend, *agent, other, opt),
                        Catch::Contains("momentum buffers"));
    train::PolicyGradientTrainer cpu(agent, basis, opt);
    train::BackendTrainer<train::CpuTrainingBackend> trainer(backend, *agent, cpu.optimizer(), opt);
    REQUIRE_THROWS_WITH(trainer.step(random_tensor({2, 1, 64, 64}, 3, 0.5f, Layout::NHWC), 0), Catch::Contains("expected shape"));
}
