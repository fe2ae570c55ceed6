// Model-level checks: the full ESN forward on one image against the composition of the float64
// reference kernels; the agent's output; thread-count independence of the whole agent.
#include <cmath>
#include <map>

#include "helpers.hpp"
#include "pin/core/parallel.hpp"
#include "pin/cpu/reference.hpp"
#include "pin/model/agent.hpp"

using namespace pin;
using namespace pin::test;
using reference::Vec;

namespace {
struct RefNet {
    std::map<std::string, DVec> p;
    Vec conv(const Vec& x, const std::string& name, int64_t cin, int64_t h, int64_t cout, int64_t k, int64_t s) const {
        return reference::conv2d_forward(x, p.at(name), {1, cin, h, h, cout, k, s, k / 2});
    }
    Vec prelu(const Vec& x, const std::string& name, int64_t c, int64_t hw) const {
        return reference::prelu_forward(x, p.at(name), c, hw);
    }
    // ResBlock with shortcut, one image: spatial h -> h / s.
    Vec res_block(const Vec& x, const std::string& b, int64_t cin, int64_t cout, int64_t h, int64_t s) const {
        const int64_t o = (h + 2 - 3) / s + 1;
        Vec y = prelu(conv(x, b + "conv1.weight", cin, h, cout, 3, 1), b + "nolinear1.weight", cout, h * h);
        y = prelu(conv(y, b + "conv2.weight", cout, h, cout, 3, s), b + "nolinear2.weight", cout, o * o);
        const Vec sc = conv(x, b + "shortcut_layer.0.weight", cin, h, cout, 1, s);
        for (size_t i = 0; i < y.size(); ++i) y[i] += sc[i];
        return y;
    }
};
}  // namespace

TEST_CASE("the full ESN forward on one image matches the float64 reference composition", "[model][esn][slow]") {
    model::EigenvectorSelectionNetwork esn;
    esn.reset_parameters(7);
    RefNet ref;
    uint64_t seed = 500;
    for (auto& np : esn.parameters()) {
        if (np.name.find("nolinear") != std::string::npos || np.name == "in_layer.1.weight") {
            // Distinct slopes per channel so a channel mix-up would show.
            const Tensor r = random_tensor(np.param->value.shape(), seed++, 0.1f);
            for (int64_t i = 0; i < r.numel(); ++i) np.param->value.data()[i] = 0.25f + r.data()[i];
        }
        ref.p[np.name] = to_nchw_doubles(np.param->value);
    }
    Tensor x = random_tensor({1, 1, 112, 112}, 600, 0.5f, Layout::NHWC);
    esn.set_training(false);
    const Tensor y = esn.forward(x);
    REQUIRE(y.shape() == Shape{1, 512, 7, 7});

    Vec h = ref.prelu(ref.conv(to_nchw_doubles(x), "in_layer.0.weight", 1, 112, 64, 3, 1), "in_layer.1.weight", 64,
                      112 * 112);
    const int64_t spec[8][3] = {{64, 64, 2}, {64, 64, 1}, {64, 128, 2}, {128, 128, 1},
                                {128, 256, 2}, {256, 256, 1}, {256, 512, 2}, {512, 512, 1}};
    int64_t size = 112;
    for (int b = 0; b < 8; ++b) {
        h = ref.res_block(h, "block" + std::to_string(b + 1) + ".", spec[b][0], spec[b][1], size, spec[b][2]);
        size /= spec[b][2];
    }
    double rms = 0;
    for (double v : h) rms += v * v;
    rms = std::sqrt(rms / static_cast<double>(h.size()));
    REQUIRE(rms > 1e-3);  // a signal, not zeros
    const DVec got = to_nchw_doubles(y);
    double worst = 0;
    for (size_t i = 0; i < h.size(); ++i) worst = std::max(worst, std::fabs(got[i] - h[i]) / (std::fabs(h[i]) + rms));
    INFO("worst relative error " << worst << " (rms " << rms << ")");
    REQUIRE(worst < 1e-4);
}

TEST_CASE("the agent maps faces to probabilities, identically for 1 and 2 threads", "[model][threads]") {
    model::Agent agent(2500);
    agent.reset_parameters(11);
    const Tensor x = random_tensor({2, 1, 112, 112}, 700, 0.5f, Layout::NHWC);
    Tensor p[2];
    for (int t = 0; t < 2; ++t) {
        set_num_threads(t + 1);
        p[t] = agent.forward(x);
    }
    set_num_threads(2);
    REQUIRE(p[0].shape() == Shape{2, 2500});
    REQUIRE(bitwise_equal(p[0], p[1]));
    // Probabilities (the float sigmoid may round to exactly 0 or 1 for large logits).
    for (int64_t i = 0; i < p[0].numel(); ++i) {
        REQUIRE(p[0].data()[i] >= 0.0f);
        REQUIRE(p[0].data()[i] <= 1.0f);
    }
    // The two images differ, so must their probabilities.
    double diff = 0;
    for (int64_t j = 0; j < 2500; ++j) diff += std::fabs(p[0].data()[j] - p[0].data()[2500 + j]);
    REQUIRE(diff > 0.0);
}

TEST_CASE("scale_output_layer shrinks the head's logits and centres them at p = 0.5", "[model]") {
    model::Agent agent(300);
    agent.reset_parameters(11);
    const Tensor x = random_tensor({2, 1, 112, 112}, 701, 0.5f, Layout::NHWC);
    const Tensor p1 = agent.forward(x);
    agent.head().scale_output_layer(0.01f);
    const Tensor p2 = agent.forward(x);
    agent.head().scale_output_layer(0.0f);
    const Tensor p3 = agent.forward(x);
    double far1 = 0, far2 = 0;
    for (int64_t i = 0; i < p1.numel(); ++i) {
        far1 = std::max(far1, std::fabs(p1.data()[i] - 0.5));
        far2 = std::max(far2, std::fabs(p2.data()[i] - 0.5));
        REQUIRE(p3.data()[i] == 0.5f);  // zero weights and bias: logit 0 for every input
    }
    INFO("max |p - 0.5|: default init " << far1 << ", scaled 0.01: " << far2);
    REQUIRE(far2 < far1);
    REQUIRE(far2 > 0.0);  // still input dependent
}
