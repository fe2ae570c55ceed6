// Attacks and input-transformation defenses on toy systems whose answer is known: a linear objective
// w . x per face (so DeepFool's step, the budget, the patch and the black-box criterion can be checked
// exactly), the input-diversity map against its adjoint, JPEG / bit-depth properties, and the DAE's
// input gradient against finite differences.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include "helpers.hpp"
#include "pin/eval/attacks.hpp"
#include "pin/eval/blackbox_attacks.hpp"
#include "pin/model/agent.hpp"
#include "pin/model/dae.hpp"
#include "pin/model/defense.hpp"

using namespace pin;

namespace {

constexpr int64_t kD = 112 * 112;

// Faces: smooth random images in [-0.8, 0.8] (not zeros, not saturated).
Tensor random_faces(int64_t n, uint64_t seed) {
    Tensor x = Tensor::empty({n, 1, 112, 112}, Layout::NHWC);
    const PhiloxStream rng(seed, 1);
    for (int64_t b = 0; b < n; ++b) {
        const double fx = 0.02 + 0.1 * rng.uniform(static_cast<uint64_t>(10 * b)), fy = 0.02 + 0.1 * rng.uniform(static_cast<uint64_t>(10 * b + 1));
        for (int64_t i = 0; i < kD; ++i)
            x.data()[b * kD + i] = static_cast<float>(0.6 * std::sin(fx * static_cast<double>(i % 112)) * std::cos(fy * static_cast<double>(i / 112)) +
                                                      0.2 * (rng.uniform(static_cast<uint64_t>(1000 + b * kD + i)) - 0.5));
    }
    return x;
}

// objective_b(x) = w . x_b with one random w shared by all faces.
struct LinearSystem {
    std::vector<float> w;
    int calls = 0;
    explicit LinearSystem(uint64_t seed) : w(kD) {
        const PhiloxStream rng(seed, 2);
        for (int64_t i = 0; i < kD; ++i) w[static_cast<size_t>(i)] = rng.normal(static_cast<uint64_t>(i)) / 112.0f;
    }
    std::vector<double> objective(const Tensor& x) const {
        std::vector<double> out(static_cast<size_t>(x.n()));
        for (int64_t b = 0; b < x.n(); ++b) {
            double s = 0;
            for (int64_t i = 0; i < kD; ++i) s += static_cast<double>(w[static_cast<size_t>(i)]) * x.data()[b * kD + i];
            out[static_cast<size_t>(b)] = s;
        }
        return out;
    }
    eval::GradientOracle gradient() {
        return [this](const Tensor& x, Tensor& g) {
            ++calls;
            for (int64_t b = 0; b < x.n(); ++b) std::copy(w.begin(), w.end(), g.data() + b * kD);
            return objective(x);
        };
    }
    eval::QueryOracle query() {
        return [this](const Tensor& x) {
            ++calls;
            return objective(x);
        };
    }
};

double distance(const Tensor& a, const Tensor& b, int64_t image) {
    double s = 0;
    for (int64_t i = 0; i < kD; ++i) {
        const double d = static_cast<double>(a.data()[image * kD + i]) - b.data()[image * kD + i];
        s += d * d;
    }
    return std::sqrt(s);
}

double budget(const Tensor& x0, int64_t image, double intensity) { return intensity * eval::detail::l2(x0.data() + image * kD, kD); }

}  // namespace

TEST_CASE("input diversity: the backward map is the adjoint of the forward map", "[attacks][di2]") {
    const Tensor x = random_faces(1, 3), y = random_faces(1, 4);
    int active = 0;
    for (uint64_t s = 0; s < 12; ++s) {
        const eval::DiverseInput t = eval::DiverseInput::draw(PhiloxStream(9, s), 0, 0.5);
        active += t.active;
        REQUIRE(t.size >= 112);
        REQUIRE(t.size < 124);
        REQUIRE(t.top + t.size <= eval::DiverseInput::kCanvas);
        std::vector<float> tx(kD), ty(kD);
        t.apply(x.data(), tx.data());
        t.adjoint(y.data(), ty.data());
        double lhs = 0, rhs = 0, scale = 0;
        for (int64_t i = 0; i < kD; ++i) {
            lhs += static_cast<double>(tx[static_cast<size_t>(i)]) * y.data()[i];
            rhs += static_cast<double>(x.data()[i]) * ty[static_cast<size_t>(i)];
            scale += std::fabs(static_cast<double>(tx[static_cast<size_t>(i)]) * y.data()[i]);
        }
        REQUIRE(std::fabs(lhs - rhs) <= 1e-5 * scale);
        if (!t.active) REQUIRE(std::equal(tx.begin(), tx.end(), x.data()));
    }
    REQUIRE(active > 0);
    REQUIRE(active < 12);
}

TEST_CASE("DeepFool on a linear objective reaches the boundary in one step, with the overshoot", "[attacks][deepfool]") {
    LinearSystem sys(5);
    const Tensor x0 = random_faces(3, 6);
    const std::vector<double> clean = sys.objective(x0);
    // Goals a small distance away (reachable within the budget) and one far away (not reachable).
    std::vector<double> goal = {clean[0] + 0.05, clean[1] + 0.02, clean[2] + 1e3};
    eval::AttackOptions o;
    o.kind = eval::AttackKind::DeepFool;
    o.intensity = 0.04;
    o.iterations = 5;
    const Tensor xa = eval::deepfool_attack(x0, o, sys.gradient(), goal);
    const std::vector<double> after = sys.objective(xa);
    double wn = 0;
    for (float v : sys.w) wn += static_cast<double>(v) * v;
    wn = std::sqrt(wn);
    for (int64_t b = 0; b < 2; ++b) {
        REQUIRE(after[static_cast<size_t>(b)] > goal[static_cast<size_t>(b)]);
        // The minimal L2 step to the hyperplane is gap / ||w||; DeepFool takes (1 + overshoot) times it
        // (clipping to [-1, 1] can only be inactive here: the faces stay inside +-0.9).
        const double gap = goal[static_cast<size_t>(b)] - clean[static_cast<size_t>(b)];
        REQUIRE(distance(xa, x0, b) == Approx((1 + o.overshoot) * (gap + 1e-4) / wn).epsilon(1e-3));
    }
    REQUIRE(after[2] < goal[2]);
    REQUIRE(distance(xa, x0, 2) <= budget(x0, 2, o.intensity) * (1 + 1e-5));
    REQUIRE(distance(xa, x0, 2) >= budget(x0, 2, o.intensity) * 0.999);  // it used the whole budget
}

TEST_CASE("DI2-FGSM and random search stay in the budget; DI2-FGSM climbs, random search never loses", "[attacks][di2]") {
    LinearSystem sys(7);
    const Tensor x0 = random_faces(2, 8);
    eval::AttackOptions o;
    o.kind = eval::AttackKind::Di2Fgsm;
    o.iterations = 6;
    o.seed = 3;
    const Tensor xa = eval::run_attack(x0, o, sys.gradient(), 0);
    const std::vector<double> before = sys.objective(x0), after = sys.objective(xa);
    for (int64_t b = 0; b < 2; ++b) {
        REQUIRE(distance(xa, x0, b) <= budget(x0, b, o.intensity) * (1 + 1e-5));
        REQUIRE(after[static_cast<size_t>(b)] > before[static_cast<size_t>(b)]);
    }
    // Same seed and image numbers: the same result in another batch split.
    const Tensor second = eval::run_attack(x0.slice(1, 2), o, sys.gradient(), 1);
    REQUIRE(std::equal(second.data(), second.data() + kD, xa.data() + kD));

    o.kind = eval::AttackKind::RandomSearch;
    o.queries = 15;
    sys.calls = 0;
    const Tensor xr = eval::random_search_attack(x0, o, sys.query(), 0);
    REQUIRE(sys.calls == 16);
    const std::vector<double> found = sys.objective(xr);
    for (int64_t b = 0; b < 2; ++b) {
        REQUIRE(distance(xr, x0, b) <= budget(x0, b, o.intensity) * (1 + 1e-5));
        REQUIRE(distance(xr, x0, b) > 0);
        REQUIRE(found[static_cast<size_t>(b)] > before[static_cast<size_t>(b)]);
    }
}

TEST_CASE("the sticker changes only the 20 x 72 forehead patch and raises the objective", "[attacks][sticker]") {
    LinearSystem sys(11);
    const Tensor x0 = random_faces(2, 12);
    eval::AttackOptions o;
    o.kind = eval::AttackKind::Sticker;
    o.iterations = 8;
    const Tensor xs = eval::sticker_attack(x0, o, sys.gradient());
    const eval::PatchRegion patch;
    int64_t changed = 0;
    for (int64_t b = 0; b < 2; ++b)
        for (int64_t i = 0; i < kD; ++i) {
            const bool inside = patch.contains(i / 112, i % 112);
            if (!inside) REQUIRE(xs.data()[b * kD + i] == x0.data()[b * kD + i]);
            if (inside) {
                REQUIRE(std::fabs(xs.data()[b * kD + i]) <= 1.0f);
                changed += xs.data()[b * kD + i] != x0.data()[b * kD + i];
            }
        }
    REQUIRE(changed > 2 * 20 * 72 * 9 / 10);
    const std::vector<double> before = sys.objective(x0), after = sys.objective(xs);
    for (int64_t b = 0; b < 2; ++b) REQUIRE(after[static_cast<size_t>(b)] > before[static_cast<size_t>(b)]);
}

TEST_CASE("the evolutionary attack stays adversarial and its distortion only shrinks", "[attacks][evolutionary]") {
    LinearSystem sys(13);
    const Tensor x0 = random_faces(3, 14);
    const std::vector<double> clean = sys.objective(x0);
    // Adversarial: w . x above the clean value + 0.5. Starts: the original moved far along w for
    // images 0 and 1; image 2 starts on a non-adversarial face and must be reported as not started.
    std::vector<double> goal(3);
    Tensor start = Tensor::empty(x0.shape(), Layout::NHWC);
    double wn2 = 0;
    for (float v : sys.w) wn2 += static_cast<double>(v) * v;
    for (int64_t b = 0; b < 3; ++b) {
        goal[static_cast<size_t>(b)] = clean[static_cast<size_t>(b)] + 0.5;
        const double push = b < 2 ? 3.0 / wn2 : 0.0;
        for (int64_t i = 0; i < kD; ++i)
            start.data()[b * kD + i] = std::clamp(static_cast<float>(x0.data()[b * kD + i] + push * sys.w[static_cast<size_t>(i)]), -1.0f, 1.0f);
    }
    eval::AttackOptions o;
    o.kind = eval::AttackKind::Evolutionary;
    o.queries = 600;
    sys.calls = 0;
    const eval::EvolutionaryResult r = eval::evolutionary_attack(x0, start, goal, o, sys.query(), 0, {1, 100, 600});
    REQUIRE(sys.calls == 600);
    REQUIRE(r.started == std::vector<char>{1, 1, 0});
    const std::vector<double> final_obj = sys.objective(r.x);
    for (int64_t b = 0; b < 2; ++b) {
        REQUIRE(final_obj[static_cast<size_t>(b)] > goal[static_cast<size_t>(b)]);
        REQUIRE(r.mse[1][static_cast<size_t>(b)] <= r.mse[0][static_cast<size_t>(b)]);
        REQUIRE(r.mse[2][static_cast<size_t>(b)] <= r.mse[1][static_cast<size_t>(b)]);
        REQUIRE(r.mse[2][static_cast<size_t>(b)] < 0.5 * r.mse[0][static_cast<size_t>(b)]);  // it made real progress
        REQUIRE(r.mse[2][static_cast<size_t>(b)] == Approx(eval::face_mse01(r.x.data() + b * kD, x0.data() + b * kD, kD)));
    }
    REQUIRE(std::isnan(r.mse[2][2]));
}

TEST_CASE("JPEG and bit-depth defenses: quality orders the error, bits give 2^K levels", "[defense][transforms]") {
    const Tensor x = random_faces(2, 15);
    auto error = [&](const model::Defense& d) {
        const Tensor y = d.inactivate(x).defended;
        double e = 0;
        for (int64_t i = 0; i < x.numel(); ++i) {
            REQUIRE(y.data()[i] >= -1.0f);
            REQUIRE(y.data()[i] <= 1.0f);
            e += std::fabs(static_cast<double>(y.data()[i]) - x.data()[i]);
        }
        return e / static_cast<double>(x.numel());
    };
    const double e100 = error(model::Defense::jpeg(100)), e75 = error(model::Defense::jpeg(75)), e10 = error(model::Defense::jpeg(10));
    REQUIRE(e100 < 0.02);
    REQUIRE(e100 < e75);
    REQUIRE(e75 < e10);
    for (int bits : {1, 3, 5}) {
        const Tensor y = model::Defense::bit_depth(bits).inactivate(x).defended;
        std::set<float> levels(y.data(), y.data() + y.numel());
        REQUIRE(static_cast<int>(levels.size()) <= (1 << bits));
        REQUIRE(static_cast<int>(levels.size()) >= (1 << bits) / 2);
        const double step = 2.0 / ((1 << bits) - 1);
        for (int64_t i = 0; i < x.numel(); ++i) REQUIRE(std::fabs(y.data()[i] - x.data()[i]) <= step / 2 + 2.0 / 255);
    }
    REQUIRE_THROWS_WITH(model::Defense::jpeg(0), Catch::Contains("quality must be 1-100"));
    REQUIRE_THROWS_WITH(model::Defense::bit_depth(9), Catch::Contains("bits must be 1-8"));
}

TEST_CASE("DAE input gradient (both passes, recomputed) matches finite differences", "[defense][dae][gradient]") {
    // The shipped DAE: a randomly initialised one is so rough that finite differences do not settle.
    const std::string model = std::string(PIN_SOURCE_DIR) + "/weights/pin-default";
    if (!std::filesystem::exists(model + "/agent.safetensors")) {
        WARN("SKIPPED: " << model << " is missing");
        return;
    }
    const model::Defense defense = model::Defense::load_dae(model);
    model::DenoisingAutoencoder& dae = defense.agent()->dae();
    Tensor x = Tensor::empty({1, 1, 112, 112}, Layout::NHWC);
    for (int64_t i = 0; i < kD; ++i) x.data()[i] = static_cast<float>(0.6 * std::sin(0.05 * static_cast<double>(i % 112)) * std::cos(0.07 * static_cast<double>(i / 112)));
    const Tensor w = test::random_tensor({1, 1, 112, 112}, 23, 1.0f, Layout::NHWC);
    const Tensor v = test::random_tensor({1, 1, 112, 112}, 24, 1.0f, Layout::NHWC);
    const Tensor g = dae.input_gradient(x, w);
    REQUIRE_FALSE(dae.training());
    auto f = [&](double h) {
        Tensor xh = Tensor::empty(x.shape(), Layout::NHWC);
        for (int64_t i = 0; i < kD; ++i) xh.data()[i] = static_cast<float>(x.data()[i] + h * v.data()[i]);
        const Tensor y = dae.forward(xh);
        double s = 0;
        for (int64_t i = 0; i < kD; ++i) s += static_cast<double>(y.data()[i]) * w.data()[i];
        return s;
    };
    const double h = 3e-4, fd = (f(h) - f(-h)) / (2 * h);
    double analytic = 0;
    for (int64_t i = 0; i < kD; ++i) analytic += static_cast<double>(g.data()[i]) * v.data()[i];
    REQUIRE(analytic == Approx(fd).epsilon(3e-2));
    REQUIRE(std::fabs(analytic) > 1.0);
}

TEST_CASE("agent input gradient (head, ESN, recomputed DAE) matches finite differences", "[defense][agent][gradient][slow]") {
    // The shipped agent's sigmoids are saturated (dp/dx ~ 0); a freshly initialised ESN and head on
    // the shipped DAE give probabilities that move.
    const std::string model = std::string(PIN_SOURCE_DIR) + "/weights/pin-default";
    if (!std::filesystem::exists(model + "/agent.safetensors")) {
        WARN("SKIPPED: " << model << " is missing");
        return;
    }
    const model::Defense dae_only = model::Defense::load_dae(model);
    model::Agent agent(64);
    agent.reset_parameters(31);
    const auto from = dae_only.agent()->dae().parameters(), to = agent.dae().parameters();
    for (size_t i = 0; i < from.size(); ++i) to[i].param->value = from[i].param->value.clone();
    Tensor x = Tensor::empty({2, 1, 112, 112}, Layout::NHWC);
    for (int64_t i = 0; i < 2 * kD; ++i) x.data()[i] = static_cast<float>(0.5 * std::sin(0.03 * static_cast<double>(i % 112) + 0.4 * static_cast<double>(i / kD)) * std::cos(0.05 * static_cast<double>((i % kD) / 112)));
    const Tensor w = test::random_tensor({2, 64}, 33);
    const Tensor g = agent.input_gradient(x, w);
    // Along the gradient itself the directional derivative is largest (||g|| ||v||), far above the
    // float32 noise of p; it equals <true gradient, v> only if g has the true gradient's direction
    // and length.
    Tensor v = Tensor::empty(g.shape(), Layout::NHWC);
    double gn = 0;
    for (int64_t i = 0; i < g.numel(); ++i) gn += static_cast<double>(g.data()[i]) * g.data()[i];
    gn = std::sqrt(gn);
    REQUIRE(gn > 0);
    for (int64_t i = 0; i < g.numel(); ++i) v.data()[i] = static_cast<float>(g.data()[i] / gn * 112.0);
    REQUIRE_FALSE(agent.esn().training());
    auto f = [&](double h) {
        Tensor xh = Tensor::empty(x.shape(), Layout::NHWC);
        for (int64_t i = 0; i < x.numel(); ++i) xh.data()[i] = static_cast<float>(x.data()[i] + h * v.data()[i]);
        const Tensor p = agent.forward(xh);
        double s = 0;
        for (int64_t i = 0; i < p.numel(); ++i) s += static_cast<double>(p.data()[i]) * w.data()[i];
        return s;
    };
    const double h = 3e-4, fd = (f(h) - f(-h)) / (2 * h);
    double analytic = 0;
    for (int64_t i = 0; i < x.numel(); ++i) analytic += static_cast<double>(g.data()[i]) * v.data()[i];
    REQUIRE(analytic == Approx(fd).epsilon(3e-2));
}
