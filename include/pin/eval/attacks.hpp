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
//   deepfool   DeepFool for the verification decision (Moosavi-Dezfooli et al. 2016): linearise the
//              objective, step to the decision threshold, repeat; (1 + overshoot) times the summed
//              steps, projected onto the same L2 ball. Stops per image once the decision flips.
//   di2-fgsm   M-DI2-FGSM (Xie et al. 2019): I-FGSM steps with momentum, the gradient taken at a
//              randomly resized-and-padded copy of the face with probability 0.5 per step; a
//              transfer attack (run offline, it is crafted on the bare recognizer)
//   sticker    AdvHat-style: a 20 x 72 patch on the forehead, any values in [-1, 1], momentum sign
//              steps; nothing else of the face changes (no L2 budget)
// Black-box attacks (random search, the evolutionary attack) are in blackbox_attacks.hpp.
// The gradient comes from a `GradientOracle`: the bare recognizer (offline) or the recognizer after a
// defense (online, see verification.hpp).
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "pin/core/error.hpp"
#include "pin/core/rng.hpp"
#include "pin/core/tensor.hpp"

namespace pin::eval {

enum class AttackKind { None, Fgsm, IFgsm, PgdL2, PgdLinf, DeepFool, Di2Fgsm, Sticker, RandomSearch, Evolutionary };

inline AttackKind parse_attack(const std::string& s) {
    if (s == "none") return AttackKind::None;
    if (s == "fgsm") return AttackKind::Fgsm;
    if (s == "ifgsm") return AttackKind::IFgsm;
    if (s == "pgd") return AttackKind::PgdL2;
    if (s == "pgd-linf") return AttackKind::PgdLinf;
    if (s == "deepfool") return AttackKind::DeepFool;
    if (s == "di2-fgsm") return AttackKind::Di2Fgsm;
    if (s == "sticker") return AttackKind::Sticker;
    if (s == "random-search") return AttackKind::RandomSearch;
    if (s == "evolutionary") return AttackKind::Evolutionary;
    throw Error("unknown attack '" + s +
                "' (expected none, fgsm, ifgsm, pgd, pgd-linf, deepfool, di2-fgsm, sticker, random-search or evolutionary)");
}

// Attacks that need the decision threshold (they stop, or are judged, at the decision boundary).
inline bool attack_needs_threshold(AttackKind k) {
    return k == AttackKind::DeepFool || k == AttackKind::RandomSearch || k == AttackKind::Evolutionary;
}

struct AttackOptions {
    AttackKind kind = AttackKind::None;
    double intensity = 0.04;  // ||eta|| / ||x||
    int iterations = 10;
    uint64_t seed = 0;
    double overshoot = 0.02;       // DeepFool
    double momentum = 1.0;         // DI2-FGSM and sticker (decay of the accumulated gradient)
    double diversity = 0.5;        // DI2-FGSM: probability of the random resize-and-pad at a step
    double sticker_step = 0.04;    // sticker: sign step per iteration (x in [-1, 1])
    int queries = 10000;           // black-box budget per image
};

// The 20 x 72 forehead patch of the sticker attack on the lfw112 template (eyes at y = 34.8, so the
// patch ends 7 rows above them; x centred on the eyes' midpoint 55.3).
struct PatchRegion {
    int64_t top = 8, left = 19, height = 20, width = 72;
    bool contains(int64_t y, int64_t x) const { return y >= top && y < top + height && x >= left && x < left + width; }
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

// Input diversity of DI2-FGSM for a 112 x 112 face: resize to r x r (r uniform in [112, 124)), put it
// at a random offset on a 124 x 124 gray canvas (value 0), resize the canvas back to 112 x 112 (our
// recognizer's input size). One bilinear map from output to source pixels, so the adjoint
// (diverse_input_adjoint) scatters with the same weights.
struct DiverseInput {
    bool active = false;
    double size = 112, top = 0, left = 0;  // resized size and offset on the canvas
    static constexpr double kCanvas = 124;
    static DiverseInput draw(const PhiloxStream& rng, uint64_t index, double probability) {
        DiverseInput t;
        t.active = rng.uniform(index) < probability;
        t.size = std::floor(112 + 12 * rng.uniform(index + 1));
        t.top = std::floor((kCanvas - t.size + 1) * rng.uniform(index + 2));
        t.left = std::floor((kCanvas - t.size + 1) * rng.uniform(index + 3));
        t.top = std::min(t.top, kCanvas - t.size);
        t.left = std::min(t.left, kCanvas - t.size);
        return t;
    }
    // Source coordinate (pixel centres at integers) of output coordinate i along one axis, or
    // outside [-0.5, 111.5] when i falls on the canvas padding.
    double source(int64_t i, double offset) const {
        const double canvas = (static_cast<double>(i) + 0.5) * kCanvas / 112.0 - 0.5;
        const double u = canvas - offset;
        if (u < -0.5 || u > size - 0.5) return -1e9;
        return std::clamp((u + 0.5) * 112.0 / size - 0.5, 0.0, 111.0);
    }
    template <class F>
    void for_each_tap(F f) const {  // f(output index, source index, weight)
        for (int64_t y = 0; y < 112; ++y) {
            const double sy = source(y, top);
            if (sy < -1) continue;
            const int64_t y0 = static_cast<int64_t>(std::floor(sy)), y1 = std::min<int64_t>(y0 + 1, 111);
            const double wy = sy - static_cast<double>(y0);
            for (int64_t x = 0; x < 112; ++x) {
                const double sx = source(x, left);
                if (sx < -1) continue;
                const int64_t x0 = static_cast<int64_t>(std::floor(sx)), x1 = std::min<int64_t>(x0 + 1, 111);
                const double wx = sx - static_cast<double>(x0);
                const int64_t o = y * 112 + x;
                f(o, y0 * 112 + x0, (1 - wy) * (1 - wx));
                f(o, y0 * 112 + x1, (1 - wy) * wx);
                f(o, y1 * 112 + x0, wy * (1 - wx));
                f(o, y1 * 112 + x1, wy * wx);
            }
        }
    }
    void apply(const float* src, float* dst) const {
        if (!active) return void(std::copy(src, src + 12544, dst));
        std::vector<double> acc(12544, 0.0);
        for_each_tap([&](int64_t o, int64_t s, double w) { acc[static_cast<size_t>(o)] += w * src[s]; });
        for (int64_t i = 0; i < 12544; ++i) dst[i] = static_cast<float>(acc[static_cast<size_t>(i)]);
    }
    void adjoint(const float* dy, float* dx) const {
        if (!active) return void(std::copy(dy, dy + 12544, dx));
        std::vector<double> acc(12544, 0.0);
        for_each_tap([&](int64_t o, int64_t s, double w) { acc[static_cast<size_t>(s)] += w * dy[o]; });
        for (int64_t i = 0; i < 12544; ++i) dx[i] = static_cast<float>(acc[static_cast<size_t>(i)]);
    }
};

// DeepFool for verification: `goal[i]` is the objective value at the decision threshold (the attack
// has succeeded once objective > goal). The steps are accumulated unprojected, as in the original; the
// face handed to the oracle is x0 + (1 + overshoot) * sum, projected onto the budget ball and [-1, 1].
inline Tensor deepfool_attack(const Tensor& x0, const AttackOptions& o, const GradientOracle& oracle, const std::vector<double>& goal) {
    const int64_t B = x0.n(), D = x0.numel() / B;
    PIN_CHECK(static_cast<int64_t>(goal.size()) == B, "deepfool_attack: one goal per image expected");
    Tensor x = Tensor::empty(x0.shape(), x0.layout()), g = Tensor::empty(x0.shape(), x0.layout());
    std::copy(x0.data(), x0.data() + x0.numel(), x.data());
    std::vector<double> total(static_cast<size_t>(x0.numel()), 0.0);
    std::vector<char> done(static_cast<size_t>(B), 0);
    for (int it = 0; it < std::max(1, o.iterations); ++it) {
        const std::vector<double> obj = oracle(x, g);
        bool all_done = true;
        for (int64_t b = 0; b < B; ++b) {
            const size_t bi = static_cast<size_t>(b);
            if (done[bi] || obj[bi] > goal[bi]) {
                done[bi] = 1;
                continue;
            }
            all_done = false;
            const float* gb = g.data() + b * D;
            double gg = 0;
            for (int64_t i = 0; i < D; ++i) gg += static_cast<double>(gb[i]) * gb[i];
            if (gg <= 0) continue;
            const double scale = (goal[bi] - obj[bi] + 1e-4) / gg;
            float* xb = x.data() + b * D;
            const float* x0b = x0.data() + b * D;
            for (int64_t i = 0; i < D; ++i) {
                total[static_cast<size_t>(b * D + i)] += scale * gb[i];
                xb[i] = static_cast<float>(x0b[i] + (1 + o.overshoot) * total[static_cast<size_t>(b * D + i)]);
            }
            detail::project(x0b, xb, D, o.intensity * detail::l2(x0b, D));
        }
        if (all_done) break;
    }
    return x;
}

// The forehead sticker: only the patch changes, momentum sign steps, values kept in [-1, 1]; the
// patch starts gray (0).
inline Tensor sticker_attack(const Tensor& x0, const AttackOptions& o, const GradientOracle& oracle, const PatchRegion& patch = {}) {
    const int64_t B = x0.n(), D = x0.numel() / B;
    PIN_CHECK(D == 12544, "sticker_attack: expects 112 x 112 faces, got ", shape_to_string(x0.shape()));
    Tensor x = Tensor::empty(x0.shape(), x0.layout()), g = Tensor::empty(x0.shape(), x0.layout());
    std::copy(x0.data(), x0.data() + x0.numel(), x.data());
    for (int64_t b = 0; b < B; ++b)
        for (int64_t y = patch.top; y < patch.top + patch.height; ++y)
            for (int64_t c = patch.left; c < patch.left + patch.width; ++c) x.data()[b * D + y * 112 + c] = 0.0f;
    std::vector<double> velocity(static_cast<size_t>(x0.numel()), 0.0);
    for (int it = 0; it < std::max(1, o.iterations); ++it) {
        oracle(x, g);
        for (int64_t b = 0; b < B; ++b) {
            double l1 = 0;
            for (int64_t y = patch.top; y < patch.top + patch.height; ++y)
                for (int64_t c = patch.left; c < patch.left + patch.width; ++c) l1 += std::fabs(g.data()[b * D + y * 112 + c]);
            if (l1 <= 0) continue;
            for (int64_t y = patch.top; y < patch.top + patch.height; ++y)
                for (int64_t c = patch.left; c < patch.left + patch.width; ++c) {
                    const int64_t i = b * D + y * 112 + c;
                    double& v = velocity[static_cast<size_t>(i)];
                    v = o.momentum * v + g.data()[i] / l1;
                    x.data()[i] = std::clamp(x.data()[i] + static_cast<float>(o.sticker_step * ((v > 0) - (v < 0))), -1.0f, 1.0f);
                }
        }
    }
    return x;
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
    PIN_CHECK(o.kind == AttackKind::Fgsm || o.kind == AttackKind::IFgsm || o.kind == AttackKind::PgdL2 ||
                  o.kind == AttackKind::PgdLinf || o.kind == AttackKind::Di2Fgsm,
              "run_attack: DeepFool, the sticker and the black-box attacks have their own entry points");
    const int steps = o.kind == AttackKind::Fgsm ? 1 : std::max(1, o.iterations);
    const bool diverse = o.kind == AttackKind::Di2Fgsm;
    std::vector<double> velocity(diverse ? static_cast<size_t>(x0.numel()) : 0, 0.0);
    Tensor xt = diverse ? Tensor::empty(x0.shape(), x0.layout()) : Tensor(), gt = diverse ? Tensor::empty(x0.shape(), x0.layout()) : Tensor();
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
        if (diverse) {  // the gradient at a randomly resized-and-padded copy, pulled back; then momentum
            std::vector<DiverseInput> t(static_cast<size_t>(B));
            for (int64_t b = 0; b < B; ++b) {
                const PhiloxStream rng(o.seed ^ 0x646932ull, first_image + static_cast<uint64_t>(b));
                t[static_cast<size_t>(b)] = DiverseInput::draw(rng, 4 * static_cast<uint64_t>(s), o.diversity);
                t[static_cast<size_t>(b)].apply(x.data() + b * D, xt.data() + b * D);
            }
            oracle(xt, gt);
            for (int64_t b = 0; b < B; ++b) {
                t[static_cast<size_t>(b)].adjoint(gt.data() + b * D, g.data() + b * D);
                double l1 = 0;
                for (int64_t i = 0; i < D; ++i) l1 += std::fabs(g.data()[b * D + i]);
                for (int64_t i = 0; i < D; ++i) {
                    double& v = velocity[static_cast<size_t>(b * D + i)];
                    v = o.momentum * v + (l1 > 0 ? g.data()[b * D + i] / l1 : 0.0);
                    g.data()[b * D + i] = static_cast<float>(v);
                }
            }
        } else {
            oracle(x, g);
        }
        for (int64_t b = 0; b < B; ++b) {
            float* xb = x.data() + b * D;
            const float* gb = g.data() + b * D;
            const double rad = radius[static_cast<size_t>(b)];
            const double sign_norm = std::sqrt(static_cast<double>(D));
            if (o.kind == AttackKind::Fgsm) {
                for (int64_t i = 0; i < D; ++i) xb[i] += static_cast<float>(rad * ((gb[i] > 0) - (gb[i] < 0)) / sign_norm);
            } else if (o.kind == AttackKind::IFgsm || o.kind == AttackKind::PgdLinf || o.kind == AttackKind::Di2Fgsm) {
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
