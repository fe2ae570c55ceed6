// One policy-gradient step of the whole agent: with the exact (MSE, local-expectation) gradient a
// small step lowers the exact expected cost of the batch; the step is thread-count independent.
#include <cmath>
#include <memory>

#include "helpers.hpp"
#include "pin/core/parallel.hpp"
#include "pin/train/trainer.hpp"

using namespace pin;
using namespace pin::test;

namespace {
// E_q[f(q)] for q ~ Bernoulli(p) with the MSE cost: (sum_j p_j g_j + ||y||^2) / D + lambda sum_j p_j.
double expected_mse_cost(model::Agent& agent, const model::EigenBasis& basis, const Tensor& x, const Tensor& xn,
                         double lambda) {
    const int64_t B = x.n(), D = basis.pixels(), N = basis.count();
    const Tensor p = agent.forward(xn);
    std::vector<float> c(static_cast<size_t>(B * N)), d(static_cast<size_t>(B * N));
    cpu::project_coefficients(basis.basis().data(), basis.mean().data(), D, N, xn.data(), B, c.data());
    cpu::project_coefficients(basis.basis().data(), basis.mean().data(), D, N, x.data(), B, d.data());
    double total = 0;
    for (int64_t b = 0; b < B; ++b) {
        double y2 = 0;
        for (int64_t i = 0; i < D; ++i) {
            const double y = static_cast<double>(x.data()[b * D + i]) - basis.mean().data()[i];
            y2 += y * y;
        }
        const train::MaskCostTerms t = train::mask_cost_terms(c.data() + b * N, d.data() + b * N, N, y2, D);
        double s = t.y2, kept = 0;
        for (int64_t j = 0; j < N; ++j) {
            s += p.data()[b * N + j] * t.g[static_cast<size_t>(j)];
            kept += p.data()[b * N + j];
        }
        total += s / D + lambda * kept;
    }
    return total / B;
}
// A 40-eigenface basis from 50 random faces and a batch of two faces: the trainer tests' problem.
std::shared_ptr<model::EigenBasis> small_basis() {
    return std::make_shared<model::EigenBasis>(model::EigenBasis::compute(random_tensor({50, 112 * 112}, 1, 0.3f), 40));
}
Tensor small_batch() { return random_tensor({2, 1, 112, 112}, 2, 0.5f, Layout::NHWC); }
train::TrainerOptions local_options(float lr, float momentum) {
    train::TrainerOptions opt;
    opt.estimator = train::Estimator::LocalExpectation;
    opt.lr = lr;
    opt.momentum = momentum;
    opt.masks = 4;
    return opt;
}
std::vector<Tensor> snapshot(train::PolicyGradientTrainer& trainer) {
    std::vector<Tensor> out;
    for (const auto& p : trainer.trained_parameters()) out.push_back(p.param->value.clone());
    return out;
}
}  // namespace

TEST_CASE("a training step lowers the exact expected cost and is thread-count independent", "[train][trainer][slow]") {
    const auto basis = small_basis();
    const Tensor x = small_batch();
    train::TrainerOptions opt = local_options(0.05f, 0.0f);
    opt.cost = train::CostType::MSE;
    opt.lambda = 0.01;
    Tensor weights[2];
    for (int t = 0; t < 2; ++t) {
        set_num_threads(t + 1);
        auto agent = std::make_shared<model::Agent>(40);
        agent->reset_parameters(3);
        train::PolicyGradientTrainer trainer(agent, basis, opt);
        const Tensor xn = trainer.noisy(x, 0);
        const double before = expected_mse_cost(*agent, *basis, x, xn, opt.lambda);
        const train::StepStats stats = trainer.step(x, 0);
        const double after = expected_mse_cost(*agent, *basis, x, xn, opt.lambda);
        INFO("expected cost " << before << " -> " << after << " (sampled mean cost " << stats.mean_cost << ")");
        REQUIRE(std::isfinite(stats.mean_cost));
        REQUIRE(after < before);
        weights[t] = agent->head().parameters()[0].param->value.clone();
    }
    set_num_threads(2);
    REQUIRE(bitwise_equal(weights[0], weights[1]));
}

TEST_CASE("gradient clipping rescales the whole update to the stated norm", "[train][trainer][slow]") {
    const auto basis = small_basis();
    const Tensor x = small_batch();
    train::TrainerOptions opt = local_options(0.01f, 0.0f);
    // Weight changes of one step (momentum 0: the change is -lr * gradient), unclipped and clipped.
    auto step_delta = [&](double clip, double& norm) {
        auto agent = std::make_shared<model::Agent>(40);
        agent->reset_parameters(3);
        opt.clip_norm = clip;
        train::PolicyGradientTrainer trainer(agent, basis, opt);
        const std::vector<Tensor> before = snapshot(trainer);
        norm = trainer.step(x, 0).grad_norm;
        std::vector<double> delta;
        size_t k = 0;
        for (const auto& p : trainer.trained_parameters()) {
            for (int64_t i = 0; i < p.param->value.numel(); ++i)
                delta.push_back(static_cast<double>(p.param->value.data()[i]) - before[k].data()[i]);
            ++k;
        }
        return delta;
    };
    double norm_free = 0, norm_clipped = 0;
    const std::vector<double> free = step_delta(0, norm_free);
    REQUIRE(norm_free > 0);
    const double clip = norm_free / 8;
    const std::vector<double> clipped = step_delta(clip, norm_clipped);
    REQUIRE(norm_clipped == Approx(norm_free).epsilon(1e-9));  // reported before clipping
    double applied = 0, worst = 0, scale = 0;
    for (size_t i = 0; i < free.size(); ++i) {
        applied += clipped[i] * clipped[i];
        worst = std::max(worst, std::fabs(clipped[i] - free[i] / 8));
        scale = std::max(scale, std::fabs(free[i]));
    }
    // The applied step is lr * clip long and points the same way as the unclipped one.
    REQUIRE(std::sqrt(applied) == Approx(opt.lr * clip).epsilon(1e-3));
    REQUIRE(worst <= 1e-4 * scale);
    // A clip above the norm changes nothing.
    double norm_big = 0;
    const std::vector<double> same = step_delta(norm_free * 2, norm_big);
    size_t differ = 0;
    for (size_t i = 0; i < free.size(); ++i) differ += same[i] != free[i];
    REQUIRE(differ == 0);
}

TEST_CASE("features_lr_scale 0 trains the output bias alone", "[train][trainer]") {
    train::TrainerOptions opt = local_options(0.01f, 0.9f);
    opt.features_lr_scale = 0.0f;
    auto agent = std::make_shared<model::Agent>(40);
    agent->reset_parameters(3);
    train::PolicyGradientTrainer trainer(agent, small_basis(), opt);
    const Tensor x = small_batch();
    const std::vector<Tensor> before = snapshot(trainer);
    trainer.step(x, 0);
    size_t k = 0;
    for (const auto& p : trainer.trained_parameters()) {
        INFO(p.name);
        REQUIRE(bitwise_equal(p.param->value, before[k++]) == (p.name != train::PolicyGradientTrainer::kOutputBias));
    }
}
