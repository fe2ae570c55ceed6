// Mask costs in O(N) and the policy-gradient estimators against the exact gradient of the
// expected cost (all 2^N masks enumerated), within Monte Carlo error.
#include <cmath>
#include <cstdio>
#include <vector>

#include "helpers.hpp"
#include "pin/train/estimators.hpp"

using namespace pin;
using namespace pin::train;

namespace {
struct Problem {
    int64_t D, N;
    std::vector<double> B, m, x, xn;  // B: D x N orthonormal columns
    std::vector<float> c, d;
    double y2 = 0;
};

Problem make_problem(int64_t D, int64_t N, uint64_t seed) {
    Problem pr{D, N, std::vector<double>(static_cast<size_t>(D * N)), {}, {}, {}, {}, {}, 0};
    const PhiloxStream rng(seed, 1);
    uint64_t idx = 0;
    for (auto& v : pr.B) v = rng.normal(idx++);
    for (int64_t j = 0; j < N; ++j) {  // Gram-Schmidt on the columns
        for (int64_t l = 0; l < j; ++l) {
            double s = 0;
            for (int64_t i = 0; i < D; ++i) s += pr.B[static_cast<size_t>(i * N + j)] * pr.B[static_cast<size_t>(i * N + l)];
            for (int64_t i = 0; i < D; ++i) pr.B[static_cast<size_t>(i * N + j)] -= s * pr.B[static_cast<size_t>(i * N + l)];
        }
        double norm = 0;
        for (int64_t i = 0; i < D; ++i) norm += pr.B[static_cast<size_t>(i * N + j)] * pr.B[static_cast<size_t>(i * N + j)];
        for (int64_t i = 0; i < D; ++i) pr.B[static_cast<size_t>(i * N + j)] /= std::sqrt(norm);
    }
    for (int64_t i = 0; i < D; ++i) {
        pr.m.push_back(0.1 * rng.normal(idx++));
        pr.x.push_back(rng.normal(idx++));
        pr.xn.push_back(pr.x.back() + 0.3 * rng.normal(idx++));
        pr.y2 += (pr.x.back() - pr.m.back()) * (pr.x.back() - pr.m.back());
    }
    for (int64_t j = 0; j < N; ++j) {
        double cj = 0, dj = 0;
        for (int64_t i = 0; i < D; ++i) {
            cj += pr.B[static_cast<size_t>(i * N + j)] * (pr.xn[static_cast<size_t>(i)] - pr.m[static_cast<size_t>(i)]);
            dj += pr.B[static_cast<size_t>(i * N + j)] * (pr.x[static_cast<size_t>(i)] - pr.m[static_cast<size_t>(i)]);
        }
        pr.c.push_back(static_cast<float>(cj));
        pr.d.push_back(static_cast<float>(dj));
    }
    return pr;
}

double explicit_cost(const Problem& pr, const std::vector<float>& q, CostType type, double lambda) {
    double err = 0, kept = 0;
    for (int64_t i = 0; i < pr.D; ++i) {
        double r = 0;
        for (int64_t j = 0; j < pr.N; ++j) {
            double cj = 0;
            for (int64_t l = 0; l < pr.D; ++l)
                cj += pr.B[static_cast<size_t>(l * pr.N + j)] * (pr.xn[static_cast<size_t>(l)] - pr.m[static_cast<size_t>(l)]);
            r += pr.B[static_cast<size_t>(i * pr.N + j)] * q[static_cast<size_t>(j)] * cj;
        }
        const double e = r - (pr.x[static_cast<size_t>(i)] - pr.m[static_cast<size_t>(i)]);
        err += e * e;
    }
    for (float v : q) kept += v;
    return (type == CostType::L2 ? std::sqrt(err) : err / pr.D) + lambda * kept;
}
}  // namespace

TEST_CASE("the O(N) mask cost equals the explicit reconstruction cost", "[train][cost]") {
    const Problem pr = make_problem(40, 9, 3);
    const MaskCostTerms t = mask_cost_terms(pr.c.data(), pr.d.data(), pr.N, pr.y2, pr.D);
    const PhiloxStream rng(4, 4);
    for (int trial = 0; trial < 50; ++trial) {
        std::vector<float> q(static_cast<size_t>(pr.N));
        for (int64_t j = 0; j < pr.N; ++j) q[static_cast<size_t>(j)] = rng.bernoulli(static_cast<uint64_t>(trial * 100 + j), 0.5f);
        for (const CostType type : {CostType::L2, CostType::MSE}) {
            const double fast = mask_cost(t, q.data(), type, 0.015), slow = explicit_cost(pr, q, type, 0.015);
            REQUIRE(std::fabs(fast - slow) <= 1e-5 * std::max(1.0, std::fabs(slow)));
        }
        std::vector<double> delta(static_cast<size_t>(pr.N));
        mask_cost_differences(t, q.data(), CostType::L2, 0.015, delta.data());
        for (int64_t j = 0; j < pr.N; ++j) {
            std::vector<float> on = q, off = q;
            on[static_cast<size_t>(j)] = 1.0f;
            off[static_cast<size_t>(j)] = 0.0f;
            REQUIRE(delta[static_cast<size_t>(j)] ==
                    Approx(explicit_cost(pr, on, CostType::L2, 0.015) - explicit_cost(pr, off, CostType::L2, 0.015)).margin(1e-5));
        }
    }
}

TEST_CASE("policy-gradient estimators match the exact gradient of the expected cost", "[train][estimator]") {
    const Problem pr = make_problem(30, 8, 5);
    const int64_t N = pr.N;
    const MaskCostTerms t = mask_cost_terms(pr.c.data(), pr.d.data(), N, pr.y2, pr.D);
    std::vector<float> p(static_cast<size_t>(N));
    const PhiloxStream rng(6, 6);
    for (int64_t j = 0; j < N; ++j) p[static_cast<size_t>(j)] = 0.15f + 0.7f * rng.uniform(static_cast<uint64_t>(j));
    const double lambda = 0.05;
    for (const CostType type : {CostType::L2, CostType::MSE}) {
        // Exact: dE/dz_j = sum_q P(q) f(q) (q_j - p_j), all 2^N masks.
        std::vector<double> exact(static_cast<size_t>(N), 0.0);
        for (uint32_t bits = 0; bits < (1u << N); ++bits) {
            std::vector<float> q(static_cast<size_t>(N));
            double prob = 1;
            for (int64_t j = 0; j < N; ++j) {
                q[static_cast<size_t>(j)] = (bits >> j) & 1u ? 1.0f : 0.0f;
                prob *= q[static_cast<size_t>(j)] ? p[static_cast<size_t>(j)] : 1.0 - p[static_cast<size_t>(j)];
            }
            const double f = mask_cost(t, q.data(), type, lambda);
            for (int64_t j = 0; j < N; ++j) exact[static_cast<size_t>(j)] += prob * f * (q[static_cast<size_t>(j)] - p[static_cast<size_t>(j)]);
        }
        // Monte Carlo error of each estimator from independent repetitions.
        const int64_t k = 4000, reps = 12;
        for (const Estimator est : {Estimator::LocalExpectation, Estimator::Rloo, Estimator::Reinforce}) {
            std::vector<double> mean(static_cast<size_t>(N), 0.0), sq(static_cast<size_t>(N), 0.0);
            for (int r = 0; r < reps; ++r) {
                const BatchGradient g = estimate_gradient(p, {t}, k, est, type, lambda, 100 + r, 0);
                // REINFORCE's loss sums over the k masks (released code), so its gradient is k times
                // that of the expected cost; the local estimator averages.
                const double scale = est == Estimator::Reinforce ? 1.0 / k : 1.0;
                for (int64_t j = 0; j < N; ++j) {
                    const double gj = g.dz[static_cast<size_t>(j)] * scale;
                    mean[static_cast<size_t>(j)] += gj / reps;
                    sq[static_cast<size_t>(j)] += gj * gj / reps;
                }
            }
            for (int64_t j = 0; j < N; ++j) {
                const double var = std::max(0.0, sq[static_cast<size_t>(j)] - mean[static_cast<size_t>(j)] * mean[static_cast<size_t>(j)]);
                const double se = std::sqrt(var / reps);  // standard error of the mean of reps estimates
                INFO(estimator_name(est) << " cost " << (type == CostType::L2 ? "L2" : "MSE")
                                                                           << " j=" << j << " exact " << exact[static_cast<size_t>(j)]
                                                                           << " estimate " << mean[static_cast<size_t>(j)] << " se " << se);
                // Within 5 standard errors (plus the O(1/k) bias of a baseline taken from the same masks).
                REQUIRE(std::fabs(mean[static_cast<size_t>(j)] - exact[static_cast<size_t>(j)]) <=
                        5 * se + std::fabs(exact[static_cast<size_t>(j)]) * 2.0 / k + 1e-12);
                if (est == Estimator::LocalExpectation && type == CostType::MSE)  // exact: no sampling noise, only rounding
                    REQUIRE(se <= 1e-6 * std::fabs(exact[static_cast<size_t>(j)]) + 1e-12);
            }
        }
    }
}

TEST_CASE("the leave-one-out baseline needs two masks", "[train][estimator]") {
    const std::vector<float> c{1.0f, 2.0f}, d{1.0f, 1.5f}, p{0.5f, 0.5f};
    const MaskCostTerms t = mask_cost_terms(c.data(), d.data(), 2, 4.0, 4);
    REQUIRE_THROWS_WITH(estimate_gradient(p, {t}, 1, Estimator::Rloo, CostType::L2, 0.01, 0, 0), Catch::Contains("k >= 2"));
    REQUIRE_THROWS_WITH(parse_estimator("reinforcement"), Catch::Contains("reinforce, rloo or local"));
    REQUIRE(parse_estimator("rloo") == Estimator::Rloo);
}

TEST_CASE("the local estimator has far lower variance than REINFORCE at PIN's size", "[train][estimator]") {
    // N = 2500 bits, cost L2 + lambda ||q||: the spec's argument for the local estimator.
    const int64_t N = 2500;
    std::vector<float> c(N), d(N), p(N, 0.5f);
    const PhiloxStream rng(7, 7);
    double y2 = 0;
    for (int64_t j = 0; j < N; ++j) {
        const double scale = 20.0 / (1.0 + j / 10.0);
        d[j] = static_cast<float>(scale * rng.normal(static_cast<uint64_t>(j)));
        c[j] = static_cast<float>(d[j] + 0.5 * rng.normal(static_cast<uint64_t>(N + j)));
        y2 += static_cast<double>(d[j]) * d[j];
    }
    const MaskCostTerms t = mask_cost_terms(c.data(), d.data(), N, y2 * 1.01, 12544);
    double var_local = 0, var_rf = 0, var_rloo = 0;
    std::vector<BatchGradient> gl, gr, go;
    for (int r = 0; r < 8; ++r) {
        gl.push_back(estimate_gradient(p, {t}, 30, Estimator::LocalExpectation, CostType::L2, 0.015, 200 + r, 0));
        gr.push_back(estimate_gradient(p, {t}, 30, Estimator::Reinforce, CostType::L2, 0.015, 200 + r, 0));
        go.push_back(estimate_gradient(p, {t}, 30, Estimator::Rloo, CostType::L2, 0.015, 200 + r, 0));
    }
    for (int64_t j = 0; j < N; ++j) {
        for (int r = 0; r < 8; ++r) gr[r].dz[j] /= 30;  // REINFORCE sums over its 30 masks (see above)
        double ml = 0, mr = 0, mo = 0;
        for (int r = 0; r < 8; ++r) {
            ml += gl[r].dz[j] / 8;
            mr += gr[r].dz[j] / 8;
            mo += go[r].dz[j] / 8;
        }
        for (int r = 0; r < 8; ++r) {
            var_local += (gl[r].dz[j] - ml) * (gl[r].dz[j] - ml);
            var_rf += (gr[r].dz[j] - mr) * (gr[r].dz[j] - mr);
            var_rloo += (go[r].dz[j] - mo) * (go[r].dz[j] - mo);
        }
    }
    // Printed so the figure can be quoted (docs/training.md).
    std::printf("estimator variance at N=2500, k=30, summed over the bits: reinforce %.3g, rloo %.3g, local %.3g\n",
                var_rf / 7, var_rloo / 7, var_local / 7);
    INFO("variance REINFORCE / local = " << var_rf / var_local << ", RLOO / local = " << var_rloo / var_local);
    REQUIRE(var_local * 10 < var_rf);
    REQUIRE(var_local * 10 < var_rloo);
    REQUIRE(gl[0].mean_kept == Approx(1250).margin(100));
}
