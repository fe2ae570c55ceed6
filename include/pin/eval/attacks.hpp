// pin/eval/attacks.hpp - white-box attacks on verification pairs (spec, evaluation protocol).
//
// One image of each pair is attacked, the other stays clean. The objective is the cosine similarity
// between the attacked image's embedding and the clean partner's: pushed down for same-person pairs
// (dodging), up for different-person pairs (impersonation). The budget is relative, as in the paper:
// ||eta||_2 <= intensity * ||x||_2 per image (x in [-1, 1], the engine's face range); the attacked face
// is kept in [-1, 1].
//   fgsm       one step eta = budget * sign(g) / ||sign(g)||
//   ifgsm      `iterations` sign steps of budget / iterations * 2.5, projected onto the L2 ball
//   pgd        L2 PGD: random start in the ball, normalised-gradient steps of 2.5 budget / iterations,
//              projection onto the ball (Madry et al.)
//   pgd-linf   Linf PGD with eps chosen so that the full-sign vector has the same L2 norm as the budget
// The gradient comes from a `GradientOracle`: the bare recognizer (offline) or the recognizer after a
// defense (online, see verification.hpp).
#pragma once
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "pin/core/error.hpp"
#include "pin/core/rng.hpp"
#include "pin/core/tensor.hpp"

namespace pin::eval {

enum class AttackKind { None, Fgsm, IFgsm, PgdL2, PgdLinf };

inline AttackKind parse_attack(const std::string& s) {
    if (s == "none") return AttackKind::None;
    if (s == "fgsm") return AttackKind::Fgsm;
    if (s == "ifgsm") return AttackKind::IFgsm;
    if (s == "pgd") return AttackKind::PgdL2;
    if (s == "pgd-linf") return AttackKind::PgdLinf;
    throw Error("unknown attack '" + s + "' (expected none, fgsm, ifgsm, pgd or pgd-linf)");
}

struct AttackOptions {
    AttackKind kind = AttackKind::None;
    double intensity = 0.04;  // ||eta|| / ||x||
    int iterations = 10;
    uint64_t seed = 0;
};

// For a batch of attacked faces x (B, 1, 112, 112): the objective per image (to be *increased* by
// the attack) and its gradient with respect to x.
using GradientOracle = std::function<std::vector<double>(const Tensor& x, Tensor& grad)>;

namespace detail {
inline double l2(const float* v, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += static_cast<double>(v[i]) * v[i];
    return std::sqrt(s);
}
// Projects x0 + eta onto {||eta|| <= radius} and onto [-1, 1].
inline void project(const float* x0, float* x, int64_t n, double radius) {
    for (int64_t i = 0; i < n; ++i) x[i] = std::clamp(x[i], -1.0f, 1.0f);
    double norm = 0;
    for (int64_t i = 0; i < n; ++i) norm += (static_cast<double>(x[i]) - x0[i]) * (static_cast<double>(x[i]) - x0[i]);
    norm = std::sqrt(norm);
    if (norm > radius && norm > 0) {
        const double s = radius / norm;
        for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(x0[i] + (x[i] - x0[i]) * s);
    }
}
}  // namespace detail

// The attack objective for embeddings e (B, dim) against targets t (B, dim): sign_i cos(e_i, t_i)
// (sign -1 dodging, +1 impersonation), and its gradient with respect to e, written to de (B, dim).
inline std::vector<double> signed_cosine_and_gradient(const Tensor& e, const float* target, const std::vector<double>& sign, Tensor& de) {
    const int64_t B = e.dim(0), dim = e.dim(1);
    std::vector<double> objective(static_cast<size_t>(B));
    for (int64_t i = 0; i < B; ++i) {
        const float* ei = e.data() + i * dim;
        const float* ti = target + i * dim;
        double en = 0, tn = 0, dot = 0;
        for (int64_t j = 0; j < dim; ++j) {
            en += static_cast<double>(ei[j]) * ei[j];
            tn += static_cast<double>(ti[j]) * ti[j];
            dot += static_cast<double>(ei[j]) * ti[j];
        }
        en = std::sqrt(en);
        tn = std::sqrt(tn);
        const double cosv = dot / (en * tn), s = sign[static_cast<size_t>(i)];
        objective[static_cast<size_t>(i)] = s * cosv;
        for (int64_t j = 0; j < dim; ++j) de.data()[i * dim + j] = static_cast<float>(s * (ti[j] / (en * tn) - cosv * ei[j] / (en * en)));
    }
    return objective;
}

// Returns the attacked faces. `first_image` keys the random start (PGD) so results do not depend on
// batching.
inline Tensor run_attack(const Tensor& x0, const AttackOptions& o, const GradientOracle& oracle, uint64_t first_image = 0) {
    Tensor x = Tensor::empty(x0.shape(), x0.layout());
    std::copy(x0.data(), x0.data() + x0.numel(), x.data());
    if (o.kind == AttackKind::None) return x;
    const int64_t B = x0.n(), D = x0.numel() / B;
    std::vector<double> radius(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) radius[static_cast<size_t>(b)] = o.intensity * detail::l2(x0.data() + b * D, D);
    Tensor g = Tensor::empty(x0.shape(), x0.layout());
    const int steps = o.kind == AttackKind::Fgsm ? 1 : std::max(1, o.iterations);
    if (o.kind == AttackKind::PgdL2 || o.kind == AttackKind::PgdLinf) {  // random start inside the ball
        for (int64_t b = 0; b < B; ++b) {
            const PhiloxStream rng(o.seed ^ 0x706764ull, first_image + static_cast<uint64_t>(b));
            float* xb = x.data() + b * D;
            std::vector<float> u(static_cast<size_t>(D));
            for (int64_t i = 0; i < D; ++i) u[static_cast<size_t>(i)] = rng.normal(static_cast<uint64_t>(i));
            const double r = radius[static_cast<size_t>(b)] * rng.uniform(static_cast<uint64_t>(D)) / detail::l2(u.data(), D);
            for (int64_t i = 0; i < D; ++i) xb[i] += static_cast<float>(r * u[static_cast<size_t>(i)]);
            detail::project(x0.data() + b * D, xb, D, radius[static_cast<size_t>(b)]);
        }
    }
    for (int s = 0; s < steps; ++s) {
        oracle(x, g);
        for (int64_t b = 0; b < B; ++b) {
            float* xb = x.data() + b * D;
            const float* gb = g.data() + b * D;
            const double rad = radius[static_cast<size_t>(b)];
            const double sign_norm = std::sqrt(static_cast<double>(D));
            if (o.kind == AttackKind::Fgsm) {
                for (int64_t i = 0; i < D; ++i) xb[i] += static_cast<float>(rad * ((gb[i] > 0) - (gb[i] < 0)) / sign_norm);
            } else if (o.kind == AttackKind::IFgsm || o.kind == AttackKind::PgdLinf) {
                const double step = 2.5 * rad / steps / sign_norm;
                for (int64_t i = 0; i < D; ++i) xb[i] += static_cast<float>(step * ((gb[i] > 0) - (gb[i] < 0)));
                if (o.kind == AttackKind::PgdLinf) {  // the Linf box whose corner has the budget's L2 norm
                    const float eps = static_cast<float>(rad / sign_norm);
                    const float* x0b = x0.data() + b * D;
                    for (int64_t i = 0; i < D; ++i) xb[i] = std::clamp(xb[i], x0b[i] - eps, x0b[i] + eps);
                }
            } else {
                const double gn = detail::l2(gb, D);
                if (gn > 0) {
                    const double step = 2.5 * rad / steps / gn;
                    for (int64_t i = 0; i < D; ++i) xb[i] += static_cast<float>(step * gb[i]);
                }
            }
            detail::project(x0.data() + b * D, xb, D, rad);
        }
    }
    return x;
}

}  // namespace pin::eval
