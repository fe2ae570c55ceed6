// One policy-gradient step of the whole agent: with the exact (MSE, local-expectation) gradient a
// small step lowers the exact expected cost of the batch; the step is thread-count independent.
#include <cmath>

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
}  // namespace

TEST_CASE("a training step lowers the exact expected cost and is thread-count independent", "[train][trainer]") {
    auto basis = std::make_shared<model::EigenBasis>(model::EigenBasis::compute(random_tensor({50, 112 * 112}, 1, 0.3f), 40));
    const Tensor x = random_tensor({2, 1, 112, 112}, 2, 0.5f, Layout::NHWC);
    train::TrainerOptions opt;
    opt.estimator = train::Estimator::LocalExpectation;
    opt.cost = train::CostType::MSE;
    opt.lambda = 0.01;
    opt.lr = 0.05f;
    opt.momentum = 0.0f;
    opt.masks = 4;
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
