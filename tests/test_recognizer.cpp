// The recognizer's pieces: pooling and resizing kernels against naive float64 code and their
// adjoints, the conv bias epilogue, the tfjs weights parser (values and every error), verification
// metrics against brute force, and - when setup.sh fetched the face-api weights - the dlib ResNet's
// input gradient against directional finite differences.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "pin/cpu/conv2d.hpp"
#include "pin/cpu/pooling.hpp"
#include "pin/eval/metrics.hpp"
#include "pin/io/half.hpp"
#include "pin/io/tfjs_weights.hpp"
#include "pin/recognizer/dlib_resnet.hpp"

using namespace pin;
using pin::test::random_tensor;

namespace {
double dot(const Tensor& a, const Tensor& b) {
    double s = 0;
    for (int64_t i = 0; i < a.numel(); ++i) s += static_cast<double>(a.data()[i]) * b.data()[i];
    return s;
}
Tensor nhwc(const Shape& s, uint64_t seed) { return random_tensor(s, seed, 1.0f, Layout::NHWC); }
}  // namespace

TEST_CASE("max and average pooling match naive loops; backward passes are their adjoints", "[recognizer][pooling]") {
    const Tensor x = nhwc({2, 5, 11, 9}, 1);  // odd sizes: "valid" windows drop the last row/column
    const int64_t Ho = cpu::pool_output_size(11, 3, 2), Wo = cpu::pool_output_size(9, 3, 2);
    Tensor y = Tensor::empty({2, 5, Ho, Wo}, Layout::NHWC);
    std::vector<int64_t> arg;
    cpu::maxpool2d_forward(x, 3, 2, y, &arg);
    Tensor ya = Tensor::empty({2, 5, cpu::pool_output_size(11, 2, 2), cpu::pool_output_size(9, 2, 2)}, Layout::NHWC);
    cpu::avgpool2d_forward(x, 2, 2, ya);
    auto at = [&](const Tensor& t, int64_t n, int64_t c, int64_t h, int64_t w) { return t.data()[((n * t.h() + h) * t.w() + w) * t.c() + c]; };
    for (int64_t n = 0; n < 2; ++n)
        for (int64_t c = 0; c < 5; ++c) {
            for (int64_t h = 0; h < Ho; ++h)
                for (int64_t w = 0; w < Wo; ++w) {
                    double m = -1e30;
                    for (int64_t i = 0; i < 3; ++i)
                        for (int64_t j = 0; j < 3; ++j) m = std::max<double>(m, at(x, n, c, 2 * h + i, 2 * w + j));
                    REQUIRE(at(y, n, c, h, w) == m);
                }
            for (int64_t h = 0; h < ya.h(); ++h)
                for (int64_t w = 0; w < ya.w(); ++w) {
                    double s = 0;
                    for (int64_t i = 0; i < 2; ++i)
                        for (int64_t j = 0; j < 2; ++j) s += at(x, n, c, 2 * h + i, 2 * w + j);
                    REQUIRE(at(ya, n, c, h, w) == Approx(s / 4).margin(1e-6));
                }
        }
    // Adjoint identities <A x, d> = <x, A^T d> (max pooling is linear for a fixed argmax).
    const Tensor d = nhwc(y.shape(), 2), da = nhwc(ya.shape(), 3);
    Tensor dx = Tensor::empty(x.shape(), Layout::NHWC);
    cpu::maxpool2d_backward(d, arg, dx);
    REQUIRE(dot(y, d) == Approx(dot(x, dx)).epsilon(1e-5));
    cpu::avgpool2d_backward(da, 2, 2, dx);
    REQUIRE(dot(ya, da) == Approx(dot(x, dx)).epsilon(1e-5));
}

TEST_CASE("bilinear resize matches PyTorch's half-pixel rule and its backward is the adjoint", "[recognizer][resize]") {
    const Tensor x = nhwc({2, 1, 13, 7}, 4);
    Tensor y = Tensor::empty({2, 1, 17, 10}, Layout::NHWC);
    cpu::resize_bilinear_forward(x, y);
    // Naive: source coordinate (i + 0.5) * in / out - 0.5, clamped below at 0, neighbours clamped above.
    for (int64_t n = 0; n < 2; ++n)
        for (int64_t i = 0; i < 17; ++i)
            for (int64_t j = 0; j < 10; ++j) {
                const double sy = std::max(0.0, (i + 0.5) * 13 / 17 - 0.5), sx = std::max(0.0, (j + 0.5) * 7 / 10 - 0.5);
                const int64_t y0 = static_cast<int64_t>(sy), x0 = static_cast<int64_t>(sx);
                const int64_t y1 = std::min<int64_t>(y0 + 1, 12), x1 = std::min<int64_t>(x0 + 1, 6);
                const double fy = sy - y0, fx = sx - x0;
                auto v = [&](int64_t a, int64_t b) { return static_cast<double>(x.data()[(n * 13 + a) * 7 + b]); };
                const double want = (v(y0, x0) * (1 - fx) + v(y0, x1) * fx) * (1 - fy) + (v(y1, x0) * (1 - fx) + v(y1, x1) * fx) * fy;
                REQUIRE(y.data()[(n * 17 + i) * 10 + j] == Approx(want).margin(1e-5));
            }
    const Tensor d = nhwc(y.shape(), 5);
    Tensor dx = Tensor::empty(x.shape(), Layout::NHWC);
    cpu::resize_bilinear_backward(d, dx);
    REQUIRE(dot(y, d) == Approx(dot(x, dx)).epsilon(1e-5));
}

TEST_CASE("the conv epilogue's bias is added before the activation", "[recognizer][conv]") {
    for (const int64_t cout : {3, 37}) {  // the narrow (few channels) and the vector path
        const Tensor x = nhwc({2, 6, 9, 8}, 6);
        const Tensor w = random_tensor({cout, 6, 3, 3}, 7, 0.3f);
        std::vector<float> bias(static_cast<size_t>(cout)), zero(static_cast<size_t>(cout), 0.0f);
        for (int64_t c = 0; c < cout; ++c) bias[static_cast<size_t>(c)] = 0.5f * std::sin(1.7f * c + 0.3f);
        const cpu::Conv2dParams p{3, 2, 1};
        Tensor plain = Tensor::empty({2, cout, 5, 4}, Layout::NHWC), fused = Tensor::empty({2, cout, 5, 4}, Layout::NHWC);
        cpu::conv2d_forward(x, w, plain, p);
        cpu::ConvEpilogue ep;
        ep.bias = bias.data();
        ep.prelu_slope = zero.data();
        cpu::conv2d_forward(x, w, fused, p, ep);
        for (int64_t i = 0; i < plain.numel(); ++i)
            REQUIRE(fused.data()[i] == Approx(std::max(0.0f, plain.data()[i] + bias[static_cast<size_t>(i % cout)])).margin(1e-5));
    }
}

namespace {
std::vector<unsigned char> bytes_of(const std::vector<float>& v) {
    std::vector<unsigned char> b(v.size() * 4);
    std::memcpy(b.data(), v.data(), b.size());
    return b;
}
io::TfjsWeights parse(const std::string& manifest, const std::map<std::string, std::vector<unsigned char>>& files) {
    return io::parse_tfjs_weights(manifest, "m.json", [&](const std::string& name) {
        auto it = files.find(name);
        if (it == files.end()) throw Error(name + ": cannot open");
        return it->second;
    });
}
}  // namespace

TEST_CASE("tfjs weights: quantized and plain tensors decode; every malformed manifest is named", "[recognizer][tfjs]") {
    // a: 2x2 uint8 (scale 0.5, min -1), b: 3 float32, c: 2 float16, d: 1 uint16 - split over two bins.
    std::vector<unsigned char> bin = {0, 1, 2, 200};
    const std::vector<unsigned char> f = bytes_of({1.5f, -2.25f, 1e-3f});
    bin.insert(bin.end(), f.begin(), f.end());
    for (const float h : {0.5f, -3.0f}) {
        const uint16_t v = io::float_to_half(h);
        bin.push_back(static_cast<unsigned char>(v & 0xff));
        bin.push_back(static_cast<unsigned char>(v >> 8));
    }
    bin.push_back(0x34);
    bin.push_back(0x12);
    const std::vector<unsigned char> bin1(bin.begin(), bin.begin() + 9), bin2(bin.begin() + 9, bin.end());
    const std::string manifest = R"([{"paths": ["w1.bin", "w2.bin"], "weights": [
        {"name": "a", "shape": [2, 2], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1}},
        {"name": "b", "shape": [3], "dtype": "float32"},
        {"name": "c", "shape": [2], "dtype": "float32", "quantization": {"dtype": "float16"}},
        {"name": "d", "shape": [1], "dtype": "float32", "quantization": {"dtype": "uint16", "scale": 0.001, "min": 0}}]}])";
    const io::TfjsWeights w = parse(manifest, {{"w1.bin", bin1}, {"w2.bin", bin2}});
    REQUIRE(w.at("a", "m").shape() == Shape({2, 2}));
    REQUIRE(w.at("a", "m").data()[3] == Approx(99.0));
    REQUIRE(w.at("a", "m").data()[1] == Approx(-0.5));
    REQUIRE(w.at("b", "m").data()[1] == -2.25f);
    REQUIRE(w.at("c", "m").data()[1] == -3.0f);
    REQUIRE(w.at("d", "m").data()[0] == Approx(0x1234 * 0.001));
    REQUIRE_THROWS_WITH(w.at("e", "m.json"), Catch::Contains("m.json: no weight named 'e'"));

    const std::map<std::string, std::vector<unsigned char>> files = {{"w1.bin", bin1}, {"w2.bin", bin2}};
    REQUIRE_THROWS_WITH(parse("[{", files), Catch::Contains("m.json: not valid JSON"));
    REQUIRE_THROWS_WITH(parse("{}", files), Catch::Contains("non-empty JSON array"));
    REQUIRE_THROWS_WITH(parse(R"([{"paths": ["w1.bin"], "weights": [{"name": "a", "shape": [4], "dtype": "float32"}]}])", files),
                        Catch::Contains("weight 'a': the bin files end after 9 bytes") && Catch::Contains("truncated"));
    REQUIRE_THROWS_WITH(parse(R"([{"paths": ["w1.bin"], "weights": [{"name": "a", "shape": [2], "dtype": "float32"}]}])", files),
                        Catch::Contains("hold 9 bytes but the weights use 8"));
    REQUIRE_THROWS_WITH(parse(R"([{"paths": ["w1.bin"], "weights": [{"name": "a", "shape": [2], "dtype": "bool"}]}])", files),
                        Catch::Contains("weight 'a': dtype 'bool' is not supported"));
    REQUIRE_THROWS_WITH(parse(R"([{"paths": ["w1.bin"], "weights": [{"name": "a", "shape": [1], "dtype": "float32",
                               "quantization": {"dtype": "uint8"}}]}])", files),
                        Catch::Contains("needs numeric 'scale' and 'min'"));
    REQUIRE_THROWS_WITH(parse(R"([{"paths": ["w3.bin"], "weights": []}])", files), Catch::Contains("w3.bin: cannot open"));
    REQUIRE_THROWS_WITH(parse(R"([{"paths": ["../x.bin"], "weights": []}])", files), Catch::Contains("bad bin file name"));
    REQUIRE_THROWS_WITH(parse(R"([{"paths": ["w1.bin", "w2.bin"], "weights": [
        {"name": "a", "shape": [4], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 1, "min": 0}},
        {"name": "a", "shape": [4], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 1, "min": 0}}]}])", files),
                        Catch::Contains("weight 'a' appears twice"));
    REQUIRE_THROWS_WITH(parse(R"([{"paths": ["w1.bin"], "weights": [{"name": "a", "shape": [-1], "dtype": "float32"}]}])", files),
                        Catch::Contains("bad shape entry"));
}

TEST_CASE("verification metrics agree with brute force", "[eval][metrics]") {
    const PhiloxStream rng(9, 9);
    std::vector<double> scores;
    std::vector<int> same;
    for (int i = 0; i < 301; ++i) {
        same.push_back(i % 3 != 0);
        scores.push_back(rng.normal(static_cast<uint64_t>(i)) + (same.back() ? 1.2 : 0.0));
    }
    const auto roc = eval::roc_curve(scores, same);
    // AUC = P(score of a same pair > score of a different pair) (Mann-Whitney).
    double wins = 0, total = 0;
    for (size_t i = 0; i < scores.size(); ++i)
        for (size_t j = 0; j < scores.size(); ++j)
            if (same[i] && !same[j]) {
                wins += scores[i] > scores[j] ? 1 : scores[i] == scores[j] ? 0.5 : 0;
                total += 1;
            }
    REQUIRE(eval::area_under_curve(roc) == Approx(wins / total).epsilon(1e-9));
    // EER: FAR and FRR cross between two neighbouring thresholds.
    double best = 1;
    for (double t : scores) {
        double fa = 0, fr = 0, n = 0, p = 0;
        for (size_t i = 0; i < scores.size(); ++i) {
            if (same[i]) {
                p += 1;
                fr += scores[i] < t;
            } else {
                n += 1;
                fa += scores[i] >= t;
            }
        }
        best = std::min(best, std::max(fa / n, fr / p));
    }
    const double eer = eval::equal_error_rate(roc);
    REQUIRE(eer <= best + 1e-12);
    REQUIRE(eer >= best - 1.0 / 100);  // within one step of the ROC
    REQUIRE(eval::tar_at_far(roc, 1.0) == 1.0);
    const auto perfect = eval::roc_curve({0.9, 0.8, 0.1, 0.2}, {1, 1, 0, 0});
    REQUIRE(eval::equal_error_rate(perfect) == 0.0);
    REQUIRE(eval::area_under_curve(perfect) == 1.0);
    REQUIRE(eval::accuracy_at({0.9, 0.8, 0.1, 0.2}, {1, 1, 0, 0}, eval::eer_threshold(perfect)) == 1.0);
    const eval::Interval iv = eval::fold_interval({0.1, 0.2, 0.3, 0.2});
    REQUIRE(iv.mean == Approx(0.2));
    REQUIRE(iv.half_width == Approx(3.182 * std::sqrt(0.02 / 3 / 4)).epsilon(1e-3));
}

TEST_CASE("dlib ResNet: the input gradient matches directional finite differences", "[recognizer][gradient]") {
    const std::string manifest = std::string(PIN_SOURCE_DIR) + "/weights/face-api/face_recognition_model-weights_manifest.json";
    if (!std::filesystem::exists(manifest)) {
        WARN("SKIPPED: " << manifest << " missing (./setup.sh fetches it with npm)");
        return;
    }
    recognizer::DlibResNet net(manifest);
    // Smooth face-like inputs: low-frequency patterns in [-1, 1].
    Tensor x = Tensor::empty({2, 1, 112, 112}, Layout::NHWC);
    for (int64_t n = 0; n < 2; ++n)
        for (int64_t i = 0; i < 112; ++i)
            for (int64_t j = 0; j < 112; ++j)
                x.data()[(n * 112 + i) * 112 + j] = 0.6f * std::sin(0.05f * i * (n + 1) + 0.3f) * std::cos(0.07f * j + n);
    const Tensor e = net.embed_for_gradient(x);
    REQUIRE(e.shape() == Shape({2, 128}));
    Tensor bad = Tensor::empty(x.shape(), Layout::NHWC);
    std::copy(x.data(), x.data() + x.numel(), bad.data());
    bad.data()[12544 + 77] = std::nanf("");
    REQUIRE_THROWS_WITH(net.embed(bad), Catch::Contains("face 1 holds a non-finite value at pixel 77"));
    const Tensor plain = net.embed(x);
    REQUIRE(pin::test::bitwise_equal(e, plain));
    const Tensor de = random_tensor({2, 128}, 11);
    const Tensor g = net.input_gradient(de);
    for (uint64_t trial = 0; trial < 3; ++trial) {
        // A smooth direction: the ReLU / max-pool kinks a random one crosses make finite differences
        // of this deep net wander by several percent even at small steps.
        Tensor v = Tensor::empty(x.shape(), Layout::NHWC);
        for (int64_t n = 0; n < 2; ++n)
            for (int64_t i = 0; i < 112; ++i)
                for (int64_t j = 0; j < 112; ++j)
                    v.data()[(n * 112 + i) * 112 + j] = std::cos((0.11f + 0.05f * trial) * i + 0.5f * n) * std::sin(0.13f * j + trial);
        const float h = 1e-4f;
        Tensor xp = Tensor::empty(x.shape(), Layout::NHWC), xm = Tensor::empty(x.shape(), Layout::NHWC);
        for (int64_t i = 0; i < x.numel(); ++i) {
            xp.data()[i] = x.data()[i] + h * v.data()[i];
            xm.data()[i] = x.data()[i] - h * v.data()[i];
        }
        const double fd = (dot(net.embed(xp), de) - dot(net.embed(xm), de)) / (2 * h);
        const double analytic = dot(g, v);
        INFO("trial " << trial << ": analytic " << analytic << " finite difference " << fd);
        // The absolute term is the forward's rounding over 2h: the F(4, 3) Winograd convolutions
        // round the embedding's dot product to about 1.5e-6 (F(2, 3) and the direct form to a few
        // 1e-7), ~0.008 here; the kinks add 1-2 % at this step (2-5 % at 1e-3).
        REQUIRE(std::fabs(analytic - fd) <= 0.03 * std::fabs(fd) + 1e-2);
    }
}
