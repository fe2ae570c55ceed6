// pin/train/estimators.hpp - gradients of the expected mask cost with respect to the logits z
// (p = sigmoid(z)), for one batch.
//
//   REINFORCE (released code): k masks per image, baseline = mean cost over all masks of the
//     batch; dL/dz_j = (1/B) sum over the image's masks of (cost - baseline) (q_j - p_j). The sum
//     (not mean) over masks is the released loss: k times the gradient of the expected cost.
//   RLOO: REINFORCE with a leave-one-out baseline per image: mask s of image b is compared with
//     the mean cost of the image's other k - 1 masks, which makes the estimate unbiased;
//     dL/dz_j = (1/B) (1/k) sum_s (cost_s - baseline_s) (q_j - p_j) (averaged: the gradient of the
//     expected cost itself). Needs k >= 2.
//   Local expectation (spec, "Training in practice"): the cost is a function of independent bits,
//     so dE[f]/dp_j = E_q[Delta_j(q)] exactly, estimated by the mean of Delta_j over the k masks;
//     dL/dz_j = (1/B) p_j (1 - p_j) mean_s Delta_j(q_s). With the MSE cost Delta_j does not depend
//     on q, and the gradient is exact without sampling.
// Masks come from the Philox stream (seed, stream = image index in the run * k + mask), so a
// batch's gradient does not depend on the thread count.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "pin/core/parallel.hpp"
#include "pin/core/rng.hpp"
#include "pin/train/mask_cost.hpp"

namespace pin::train {

enum class Estimator { Reinforce, Rloo, LocalExpectation };

inline Estimator parse_estimator(const std::string& s) {
    if (s == "reinforce") return Estimator::Reinforce;
    if (s == "rloo") return Estimator::Rloo;
    if (s == "local") return Estimator::LocalExpectation;
    throw Error("unknown estimator '" + s + "' (expected reinforce, rloo or local)");
}
inline const char* estimator_name(Estimator e) {
    return e == Estimator::Reinforce ? "reinforce" : e == Estimator::Rloo ? "rloo" : "local";
}

struct BatchGradient {
    std::vector<double> dz;          // (B, N) d loss / d logits
    double mean_cost = 0;            // over all masks of the batch
    double mean_kept = 0;            // mean ||q||_0
};

// The weight of mask s of image b in the score-function estimators, costs (B * k) in mask order:
// dL/dz_j = sum_s adv[b k + s] (q_j - p_j). REINFORCE: (cost - batch mean) / B; RLOO: (cost - mean
// of the image's other masks) / (B k). (The GPU trainer computes these on the host too.)
inline std::vector<double> advantages(const std::vector<double>& costs, int64_t B, int64_t k, Estimator estimator) {
    PIN_CHECK(estimator != Estimator::LocalExpectation, "advantages: the local-expectation estimator has none");
    PIN_CHECK(static_cast<int64_t>(costs.size()) == B * k, "advantages: ", costs.size(), " costs for ", B, " x ", k, " masks");
    std::vector<double> adv(costs.size());
    if (estimator == Estimator::Reinforce) {
        double total = 0;
        for (double c : costs) total += c;
        const double baseline = total / static_cast<double>(costs.size());
        for (size_t i = 0; i < costs.size(); ++i) adv[i] = (costs[i] - baseline) / static_cast<double>(B);
        return adv;
    }
    for (int64_t b = 0; b < B; ++b) {
        double sum = 0;
        for (int64_t s = 0; s < k; ++s) sum += costs[static_cast<size_t>(b * k + s)];
        for (int64_t s = 0; s < k; ++s) {
            const double cost = costs[static_cast<size_t>(b * k + s)];
            adv[static_cast<size_t>(b * k + s)] = (cost - (sum - cost) / static_cast<double>(k - 1)) / static_cast<double>(B * k);
        }
    }
    return adv;
}

// p: (B, N) probabilities; terms: per image. Draws k masks per image.
inline BatchGradient estimate_gradient(const std::vector<float>& p, const std::vector<MaskCostTerms>& terms, int64_t k,
                                       Estimator estimator, CostType type, double lambda, uint64_t seed,
                                       uint64_t first_image) {
    const int64_t B = static_cast<int64_t>(terms.size());
    PIN_CHECK(B > 0 && k > 0, "estimate_gradient: empty batch or no masks");
    PIN_CHECK(estimator != Estimator::Rloo || k >= 2, "estimate_gradient: the leave-one-out baseline needs k >= 2 masks");
    const int64_t N = static_cast<int64_t>(terms[0].g.size());
    PIN_CHECK(static_cast<int64_t>(p.size()) == B * N, "estimate_gradient: p has ", p.size(), " values, expected ", B * N);
    BatchGradient out;
    out.dz.assign(static_cast<size_t>(B * N), 0.0);
    std::vector<double> costs(static_cast<size_t>(B * k)), kept(static_cast<size_t>(B * k));
    std::vector<float> masks(static_cast<size_t>(B * k * N));
    parallel_for(B, [&](int64_t b) {
        const float* pb = p.data() + b * N;
        std::vector<double> delta(static_cast<size_t>(N));
        for (int64_t s = 0; s < k; ++s) {
            float* q = masks.data() + (b * k + s) * N;
            const PhiloxStream rng(seed, (first_image + static_cast<uint64_t>(b)) * static_cast<uint64_t>(k) + static_cast<uint64_t>(s));
            double nq = 0;
            for (int64_t j = 0; j < N; ++j) {
                q[j] = rng.bernoulli(static_cast<uint64_t>(j), pb[j]);
                nq += q[j];
            }
            kept[static_cast<size_t>(b * k + s)] = nq;
            costs[static_cast<size_t>(b * k + s)] = mask_cost(terms[static_cast<size_t>(b)], q, type, lambda);
            if (estimator == Estimator::LocalExpectation) {
                mask_cost_differences(terms[static_cast<size_t>(b)], q, type, lambda, delta.data());
                for (int64_t j = 0; j < N; ++j) out.dz[static_cast<size_t>(b * N + j)] += delta[static_cast<size_t>(j)];
            }
        }
        if (estimator == Estimator::LocalExpectation)
            for (int64_t j = 0; j < N; ++j) {
                const double pj = pb[j];
                out.dz[static_cast<size_t>(b * N + j)] *= pj * (1.0 - pj) / static_cast<double>(k * B);
            }
    });
    double total = 0, total_kept = 0;
    for (size_t i = 0; i < costs.size(); ++i) {
        total += costs[i];
        total_kept += kept[i];
    }
    out.mean_cost = total / static_cast<double>(costs.size());
    out.mean_kept = total_kept / static_cast<double>(costs.size());
    if (estimator != Estimator::LocalExpectation) {
        const std::vector<double> adv = advantages(costs, B, k, estimator);
        parallel_for(B, [&](int64_t b) {
            const float* pb = p.data() + b * N;
            for (int64_t s = 0; s < k; ++s) {
                const double a = adv[static_cast<size_t>(b * k + s)];
                const float* q = masks.data() + (b * k + s) * N;
                for (int64_t j = 0; j < N; ++j) out.dz[static_cast<size_t>(b * N + j)] += a * (q[j] - pb[j]);
            }
        });
    }
    return out;
}

}  // namespace pin::train
