// pin/eval/blackbox_attacks.hpp - attacks that only query the system under attack: the objective of
// a batch of faces, no gradient (spec, evaluation protocol).
//
//   random search   `queries` random points on the sphere of the L2 budget around each face; keeps
//                   the one with the highest objective. A sanity check (Carlini et al. 2019): it
//                   should find nothing that PGD with the same budget does not.
//   evolutionary    the decision-based attack of Dong et al. (CVPR 2019) for face recognition: start
//                   from a face that is already adversarial and walk towards the original while
//                   staying adversarial, with a (1+1) evolution strategy in a 45 x 45 search space
//                   (bilinearly upsampled), a diagonal covariance adapted along the successful steps,
//                   k = m / 20 coordinates perturbed per query chosen by their variance, and the step
//                   towards the original adapted by the 1/5 success rule. Each candidate is a step of
//                   mu towards the original plus a random step of 0.03 times the current distance, put
//                   back on the sphere of the stepped distance, so every accepted candidate is closer
//                   (the rule of the authors' group's reference implementation, ARES). The score is the distortion
//                   left after a number of queries: mean squared error per pixel on the [0, 1] scale at
//                   1,000 / 5,000 / 10,000 queries (higher = the defense makes the attack work harder).
// Both run a whole batch in lockstep (one query = one face per image of the batch) and key their
// randomness by image number, so results do not depend on batching.
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "pin/cpu/pooling.hpp"
#include "pin/eval/attacks.hpp"

namespace pin::eval {

// The objective of each face of a batch (to be increased by the attack); no gradient.
using QueryOracle = std::function<std::vector<double>(const Tensor& x)>;

inline Tensor random_search_attack(const Tensor& x0, const AttackOptions& o, const QueryOracle& query, uint64_t first_image = 0) {
    const int64_t B = x0.n(), D = x0.numel() / B;
    Tensor best = Tensor::empty(x0.shape(), x0.layout()), x = Tensor::empty(x0.shape(), x0.layout());
    std::copy(x0.data(), x0.data() + x0.numel(), best.data());
    std::vector<double> best_obj = query(x0);
    for (int q = 0; q < std::max(1, o.queries); ++q) {
        for (int64_t b = 0; b < B; ++b) {
            const PhiloxStream rng(o.seed ^ 0x72736561ull, (first_image + static_cast<uint64_t>(b)) * 1000003ull + static_cast<uint64_t>(q));
            const float* x0b = x0.data() + b * D;
            float* xb = x.data() + b * D;
            std::vector<float> u(static_cast<size_t>(D));
            for (int64_t i = 0; i < D; ++i) u[static_cast<size_t>(i)] = rng.normal(static_cast<uint64_t>(i));
            const double r = o.intensity * detail::l2(x0b, D) / detail::l2(u.data(), D);
            for (int64_t i = 0; i < D; ++i) xb[i] = static_cast<float>(x0b[i] + r * u[static_cast<size_t>(i)]);
            detail::project(x0b, xb, D, o.intensity * detail::l2(x0b, D));
        }
        const std::vector<double> obj = query(x);
        for (int64_t b = 0; b < B; ++b)
            if (obj[static_cast<size_t>(b)] > best_obj[static_cast<size_t>(b)]) {
                best_obj[static_cast<size_t>(b)] = obj[static_cast<size_t>(b)];
                std::copy(x.data() + b * D, x.data() + (b + 1) * D, best.data() + b * D);
            }
    }
    return best;
}

struct EvolutionaryResult {
    Tensor x;                                // the adversarial faces after the last query
    std::vector<int> checkpoints;            // query counts
    std::vector<std::vector<double>> mse;    // [checkpoint][image], [0, 1] pixel scale; NaN: no start
    std::vector<char> started;               // the starting face was adversarial
};

// Mean squared error per pixel between two faces in [-1, 1], on the [0, 1] scale.
inline double face_mse01(const float* a, const float* b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += 0.25 * (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    return s / static_cast<double>(n);
}

// `start`: one face per image that should already be adversarial (objective > goal); images whose
// start is not are left out of the scores (started = 0, MSE NaN).
inline EvolutionaryResult evolutionary_attack(const Tensor& x0, const Tensor& start, const std::vector<double>& goal,
                                              const AttackOptions& o, const QueryOracle& query, uint64_t first_image = 0,
                                              std::vector<int> checkpoints = {1000, 5000, 10000},
                                              const std::function<void(int)>& on_query = nullptr) {
    constexpr int64_t kSide = 45, kM = kSide * kSide, kSelect = kM / 20;
    constexpr double kSigma = 0.03, kPathDecay = 0.99, kCcov = 0.001;
    constexpr int kWindow = 30;
    const int64_t B = x0.n(), D = x0.numel() / B;
    PIN_CHECK(D == 12544 && start.numel() == x0.numel() && static_cast<int64_t>(goal.size()) == B,
              "evolutionary_attack: 112 x 112 faces, one start and one goal per image");
    EvolutionaryResult r;
    r.x = Tensor::empty(x0.shape(), x0.layout());
    std::copy(start.data(), start.data() + start.numel(), r.x.data());
    std::sort(checkpoints.begin(), checkpoints.end());
    checkpoints.erase(std::remove_if(checkpoints.begin(), checkpoints.end(), [&](int c) { return c > o.queries; }), checkpoints.end());
    r.checkpoints = checkpoints;
    r.mse.assign(checkpoints.size(), std::vector<double>(static_cast<size_t>(B), std::numeric_limits<double>::quiet_NaN()));
    const std::vector<double> first = query(r.x);
    r.started.resize(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) r.started[static_cast<size_t>(b)] = first[static_cast<size_t>(b)] > goal[static_cast<size_t>(b)];
    std::vector<std::vector<double>> cov(static_cast<size_t>(B), std::vector<double>(kM, 1.0)), path(static_cast<size_t>(B), std::vector<double>(kM, 0.0));
    std::vector<std::vector<double>> z(static_cast<size_t>(B), std::vector<double>(kM));
    std::vector<double> mu(static_cast<size_t>(B), 0.01);
    std::vector<int> successes(static_cast<size_t>(B), 0);
    Tensor cand = Tensor::empty(x0.shape(), x0.layout());
    const cpu::BilinearAxis axis = cpu::bilinear_axis(kSide, 112);
    int used = 1;
    size_t next_checkpoint = 0;
    auto record = [&]() {
        while (next_checkpoint < checkpoints.size() && used >= checkpoints[next_checkpoint]) {
            for (int64_t b = 0; b < B; ++b)
                if (r.started[static_cast<size_t>(b)])
                    r.mse[next_checkpoint][static_cast<size_t>(b)] = face_mse01(r.x.data() + b * D, x0.data() + b * D, D);
            ++next_checkpoint;
        }
    };
    record();
    std::vector<double> up(static_cast<size_t>(D));
    for (; used < std::max(1, o.queries);) {
        for (int64_t b = 0; b < B; ++b) {
            const size_t bi = static_cast<size_t>(b);
            float* cb = cand.data() + b * D;
            const float* xb = r.x.data() + b * D;
            const float* x0b = x0.data() + b * D;
            if (!r.started[bi]) {
                std::copy(xb, xb + D, cb);
                continue;
            }
            const PhiloxStream rng(o.seed ^ 0x65766full, (first_image + static_cast<uint64_t>(b)) * 1000003ull + static_cast<uint64_t>(used));
            // k coordinates of the 45 x 45 search space, drawn with probability proportional to their
            // variance (with replacement: a coordinate drawn twice is perturbed once).
            std::vector<double> cum(kM);
            double total = 0;
            for (int64_t j = 0; j < kM; ++j) cum[static_cast<size_t>(j)] = (total += cov[bi][static_cast<size_t>(j)]);
            std::fill(z[bi].begin(), z[bi].end(), 0.0);
            for (int64_t s = 0; s < kSelect; ++s) {
                const double u = rng.uniform(static_cast<uint64_t>(2 * s)) * total;
                const int64_t j = std::min<int64_t>(kM - 1, std::upper_bound(cum.begin(), cum.end(), u) - cum.begin());
                z[bi][static_cast<size_t>(j)] = std::sqrt(cov[bi][static_cast<size_t>(j)]) * rng.normal(static_cast<uint64_t>(2 * s + 1));
            }
            // Upsampled to 112 x 112 (half-pixel bilinear).
            double up_norm = 0, dist = 0;
            for (int64_t y = 0; y < 112; ++y) {
                const int64_t y0 = axis.i0[static_cast<size_t>(y)], y1 = axis.i1[static_cast<size_t>(y)];
                const double wy = axis.f[static_cast<size_t>(y)];
                for (int64_t xx = 0; xx < 112; ++xx) {
                    const int64_t a0 = axis.i0[static_cast<size_t>(xx)], a1 = axis.i1[static_cast<size_t>(xx)];
                    const double wx = axis.f[static_cast<size_t>(xx)];
                    const std::vector<double>& zb = z[bi];
                    const double v = (1 - wy) * ((1 - wx) * zb[static_cast<size_t>(y0 * kSide + a0)] + wx * zb[static_cast<size_t>(y0 * kSide + a1)]) +
                                     wy * ((1 - wx) * zb[static_cast<size_t>(y1 * kSide + a0)] + wx * zb[static_cast<size_t>(y1 * kSide + a1)]);
                    up[static_cast<size_t>(y * 112 + xx)] = v;
                    up_norm += v * v;
                }
            }
            for (int64_t i = 0; i < D; ++i) dist += (static_cast<double>(x0b[i]) - xb[i]) * (static_cast<double>(x0b[i]) - xb[i]);
            dist = std::sqrt(dist);
            up_norm = std::sqrt(up_norm);
            // A step of mu towards the original, a random step of sigma * dist, then back onto the
            // sphere of the stepped distance: an accepted candidate is always closer.
            const double radius = (1 - mu[bi]) * dist, noise = up_norm > 0 ? kSigma * dist / up_norm : 0.0;
            double cand_dist = 0;
            for (int64_t i = 0; i < D; ++i) {
                const double c = xb[i] + mu[bi] * (x0b[i] - xb[i]) + noise * up[static_cast<size_t>(i)];
                cb[i] = static_cast<float>(c);
                cand_dist += (c - x0b[i]) * (c - x0b[i]);
            }
            cand_dist = std::sqrt(cand_dist);
            for (int64_t i = 0; i < D; ++i) {
                const double c = cand_dist > 0 ? x0b[i] + (cb[i] - x0b[i]) * radius / cand_dist : cb[i];
                cb[i] = std::clamp(static_cast<float>(c), -1.0f, 1.0f);
            }
        }
        const std::vector<double> obj = query(cand);
        ++used;
        for (int64_t b = 0; b < B; ++b) {
            const size_t bi = static_cast<size_t>(b);
            if (!r.started[bi]) continue;
            if (obj[bi] > goal[bi]) {
                std::copy(cand.data() + b * D, cand.data() + (b + 1) * D, r.x.data() + b * D);
                for (int64_t j = 0; j < kM; ++j) {
                    double& pc = path[bi][static_cast<size_t>(j)];
                    pc = kPathDecay * pc + std::sqrt(1 - kPathDecay * kPathDecay) * z[bi][static_cast<size_t>(j)];
                    cov[bi][static_cast<size_t>(j)] = (1 - kCcov) * cov[bi][static_cast<size_t>(j)] + kCcov * pc * pc;
                }
                ++successes[bi];
            }
            if ((used - 1) % kWindow == 0) {  // 1/5 success rule over the last window of queries
                mu[bi] *= std::exp(static_cast<double>(successes[bi]) / kWindow - 0.2);
                successes[bi] = 0;
            }
        }
        record();
        if (on_query) on_query(used);
    }
    return r;
}

}  // namespace pin::eval
