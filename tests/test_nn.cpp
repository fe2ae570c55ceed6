// Layers and blocks: gradient checks through whole blocks, fused inference == training forward,
// SGD, parameter names.
#include <map>

#include "helpers.hpp"
#include "pin/model/agent.hpp"
#include "pin/nn/res_block.hpp"
#include "pin/nn/sgd.hpp"
#include "pin/nn/up_block.hpp"

using namespace pin;
using namespace pin::test;

namespace {
// Checks d(<module(x), dy>)/d(x) and /d(every parameter) by finite differences.
void gradcheck_module(nn::Module& m, Tensor x, uint64_t seed, double tol, const char* what) {
    m.set_training(true);
    const Tensor y0 = m.forward(x);
    const Tensor dy = random_tensor(y0.shape(), seed, 1.0f, y0.layout());
    m.zero_grad();
    const Tensor dx = m.backward(dy);
    auto loss = [&] { return dot_double(m.forward(x), dy); };
    require_directional_derivative(x, dx, loss, seed + 1, tol, std::string(what) + " input");
    uint64_t s = seed + 2;
    for (nn::NamedParameter& p : m.parameters())
        require_directional_derivative(p.param->value, p.param->grad, loss, s++, tol, std::string(what) + " " + p.name);
}

void randomise_slopes(nn::Module& m, uint64_t seed) {
    for (nn::NamedParameter& p : m.parameters())
        if (p.name.find("nolinear") != std::string::npos || p.name == "in_layer.1.weight" || p.name == "fc1.2.weight") {
            const Tensor r = random_tensor(p.param->value.shape(), seed++, 0.2f);
            for (int64_t i = 0; i < r.numel(); ++i) p.param->value.data()[i] = 0.25f + r.data()[i];
        }
}
}  // namespace

TEST_CASE("ResBlock gradients agree with finite differences", "[nn][gradcheck]") {
    for (const bool shortcut : {true, false}) {
        nn::ResBlock block(5, 7, 2, shortcut);
        block.reset_parameters(1, 10);
        randomise_slopes(block, 20);
        gradcheck_module(block, random_tensor({2, 5, 9, 8}, 30, 1.0f, Layout::NHWC), 40, 2e-2,
                         shortcut ? "ResBlock" : "ResBlock(no shortcut)");
    }
}

TEST_CASE("UpBlock gradients agree with finite differences", "[nn][gradcheck]") {
    for (const bool last : {false, true}) {
        nn::UpBlock block(6, last ? 1 : 4, last);
        block.reset_parameters(2, 10);
        randomise_slopes(block, 50);
        gradcheck_module(block, random_tensor({2, 6, 5, 4}, 60, 1.0f, Layout::NHWC), 70, 2e-2,
                         last ? "UpBlock(last)" : "UpBlock");
    }
}

TEST_CASE("SelectionHead gradients agree with finite differences", "[nn][gradcheck]") {
    model::SelectionHead head(4 * 3 * 3, 8, 5);
    head.reset_parameters(3);
    randomise_slopes(head, 80);
    gradcheck_module(head, random_tensor({2, 4, 3, 3}, 90, 1.0f, Layout::NHWC), 100, 2e-2, "SelectionHead");
}

TEST_CASE("fused inference forward equals the training forward", "[nn]") {
    nn::ResBlock res(16, 32, 2, true);
    res.reset_parameters(4, 10);
    randomise_slopes(res, 110);
    nn::UpBlock up(32, 16, false);
    up.reset_parameters(5, 10);
    randomise_slopes(up, 120);
    const Tensor x = random_tensor({2, 16, 10, 10}, 130, 1.0f, Layout::NHWC);
    for (nn::Module* m : std::initializer_list<nn::Module*>{&res, &up}) {
        const Tensor in = m == &res ? x : random_tensor({2, 32, 5, 5}, 131, 1.0f, Layout::NHWC);
        m->set_training(true);
        const Tensor a = m->forward(in);
        m->set_training(false);
        const Tensor b = m->forward(in);
        REQUIRE(a.shape() == b.shape());
        for (int64_t i = 0; i < a.numel(); ++i) REQUIRE(b.data()[i] == Approx(a.data()[i]).margin(1e-6));
    }
    REQUIRE_THROWS_WITH(res.backward(x), Catch::Contains("without a training-mode forward"));
}

TEST_CASE("SGD with momentum follows PyTorch's update rule", "[nn][sgd]") {
    nn::Linear layer(3, 2);
    layer.reset_parameters(6, 0);
    auto params = layer.parameters();
    const Tensor w0 = layer.weight().value.clone();
    nn::SGD sgd(params, 0.1f, 0.9f, 0.01f);
    const Tensor g1 = random_tensor(w0.shape(), 140), g2 = random_tensor(w0.shape(), 141);
    layer.weight().grad.copy_from(g1);
    sgd.step();
    layer.weight().grad.copy_from(g2);
    sgd.step();
    for (int64_t i = 0; i < w0.numel(); ++i) {
        const double w = w0.data()[i];
        const double v1 = g1.data()[i] + 0.01 * w;
        const double w1 = w - 0.1 * v1;
        const double v2 = 0.9 * v1 + g2.data()[i] + 0.01 * w1;
        REQUIRE(layer.weight().value.data()[i] == Approx(w1 - 0.1 * v2).margin(1e-6));
    }
}

TEST_CASE("parameter names and shapes follow the released PyTorch state_dict", "[nn][model]") {
    model::Agent agent(2500);
    std::map<std::string, Shape> shapes;
    for (auto& p : agent.parameters()) shapes[p.name] = p.param->value.shape();
    REQUIRE(shapes.at("esn.in_layer.0.weight") == Shape{64, 1, 3, 3});
    REQUIRE(shapes.at("esn.in_layer.1.weight") == Shape{64});
    REQUIRE(shapes.at("esn.block1.shortcut_layer.0.weight") == Shape{64, 64, 1, 1});
    REQUIRE(shapes.at("esn.block1.conv1.weight") == Shape{64, 64, 3, 3});
    REQUIRE(shapes.at("esn.block1.nolinear1.weight") == Shape{64});
    REQUIRE(shapes.at("esn.block8.conv2.weight") == Shape{512, 512, 3, 3});
    REQUIRE(shapes.at("head.fc1.1.weight") == Shape{512, 25088});
    REQUIRE(shapes.at("head.fc1.1.bias") == Shape{512});
    REQUIRE(shapes.at("head.fc1.2.weight") == Shape{512});
    REQUIRE(shapes.at("head.fc2.0.weight") == Shape{2500, 512});
    REQUIRE(shapes.at("head.fc2.0.bias") == Shape{2500});
    REQUIRE(shapes.at("dae.encoder1.0.conv1.weight") == Shape{64, 1, 3, 3});
    REQUIRE(shapes.at("dae.decoder1.0.conv1.weight") == Shape{256, 256, 3, 3});  // ConvTranspose (in, out, k, k)
    REQUIRE(shapes.at("dae.decoder1.2.conv2.weight") == Shape{1, 64, 3, 3});
    REQUIRE(shapes.count("dae.encoder1.0.shortcut_layer.0.weight") == 0);  // the DAE's blocks have no shortcut
    int64_t total = 0;
    for (auto& p : agent.parameters()) total += p.param->value.numel();
    REQUIRE(total == agent.dae().parameter_count() + agent.esn().parameter_count() + agent.head().parameter_count());
}
