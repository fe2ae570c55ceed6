// PReLU, tanh, sigmoid, add and the reductions: reference values, finite differences, threads.
#include <algorithm>
#include <cmath>

#include "helpers.hpp"
#include "pin/core/parallel.hpp"
#include "pin/cpu/activations.hpp"
#include "pin/cpu/reduce.hpp"
#include "pin/cpu/reference.hpp"

using namespace pin;
using namespace pin::test;

TEST_CASE("PReLU forward/backward match the reference in both layouts and rank 2", "[elementwise][prelu]") {
    const Tensor slope = random_tensor({37}, 70, 0.5f);
    const DVec a = to_nchw_doubles(slope);
    for (const Layout layout : {Layout::NHWC, Layout::NCHW}) {
        const Tensor x = random_tensor({3, 37, 5, 7}, 71, 1.0f, layout);
        const Tensor dy = random_tensor(x.shape(), 72, 1.0f, layout);
        Tensor y = Tensor::empty(x.shape(), layout), dx = Tensor::empty(x.shape(), layout), da = Tensor::empty({37});
        cpu::prelu_forward(x, slope, y);
        cpu::prelu_backward(x, slope, dy, dx, da);
        const DVec xd = to_nchw_doubles(x), dyd = to_nchw_doubles(dy);
        DVec rdx, rda;
        reference::prelu_backward(xd, a, dyd, 37, 35, rdx, rda);
        const DVec ones(xd.size(), 1.0);
        require_close(y, reference::prelu_forward(xd, a, 37, 35), abs_of(xd), 1e-6, "prelu forward");
        require_close(dx, rdx, abs_of(dyd), 1e-6, "prelu dx");
        DVec scale(37, 0.0);
        for (size_t i = 0; i < xd.size(); ++i) scale[(i / 35) % 37] += std::fabs(xd[i] * dyd[i]);
        require_close(da, rda, scale, 1e-5, "prelu dslope");
    }
    // rank 2: (batch, features), the selection head's PReLU(512)
    const Tensor x2 = random_tensor({4, 37}, 73);
    Tensor y2 = Tensor::empty(x2.shape());
    cpu::prelu_forward(x2, slope, y2);
    for (int64_t i = 0; i < x2.numel(); ++i) {
        const float v = x2.data()[i];
        REQUIRE(y2.data()[i] == (v > 0 ? v : slope.data()[i % 37] * v));
    }
}

TEST_CASE("PReLU backward over several blocks, runs cut mid-pixel, in place, matches the reference",
          "[elementwise][prelu]") {
    // 2 x 23 x 19 pixels: several blocks of kElementBlock. With 37 channels a block starts 30
    // channels into a pixel (a scalar run of 7); with 100 channels 84, 68, 52 and 36 into one (runs
    // of 16 to 64 channels, whole vectors that start mid-pixel); 64 channels never cut a pixel.
    for (const int64_t channels : {37, 64, 100}) {
        const Tensor slope = random_tensor({channels}, 74, 0.5f);
        const Tensor x = random_tensor({2, channels, 23, 19}, 75, 1.0f, Layout::NHWC);
        const Tensor dy = random_tensor(x.shape(), 76, 1.0f, Layout::NHWC);
        REQUIRE(x.numel() > cpu::kElementBlock);
        Tensor dx = Tensor::empty(x.shape(), Layout::NHWC), da = Tensor::empty({channels});
        cpu::prelu_backward(x, slope, dy, dx, da);
        DVec rdx, rda;
        const DVec xd = to_nchw_doubles(x), dyd = to_nchw_doubles(dy);
        reference::prelu_backward(xd, to_nchw_doubles(slope), dyd, channels, 23 * 19, rdx, rda);
        require_close(dx, rdx, abs_of(dyd), 1e-6, "prelu dx");
        DVec scale(static_cast<size_t>(channels), 0.0);
        for (size_t i = 0; i < xd.size(); ++i) scale[(i / (23 * 19)) % channels] += std::fabs(xd[i] * dyd[i]);
        require_close(da, rda, scale, 1e-7, "prelu dslope");  // double sums, rounded to float once

        Tensor in_place = dy.clone(), da2 = Tensor::empty({channels});
        cpu::prelu_backward(x, slope, in_place, in_place, da2);
        REQUIRE(bitwise_equal(in_place, dx));
        REQUIRE(bitwise_equal(da2, da));
    }
    // A NaN input reaches both gradients, in a vector lane and in a scalar tail.
    const Tensor slope = random_tensor({37}, 77, 0.5f);
    for (const int64_t at : {3, 35}) {
        Tensor x = random_tensor({1, 37, 1, 1}, 78, 1.0f, Layout::NHWC);
        x.data()[at] = std::nanf("");
        const Tensor dy = random_tensor(x.shape(), 79, 1.0f, Layout::NHWC);
        Tensor dx = Tensor::empty(x.shape(), Layout::NHWC), da = Tensor::empty({37});
        cpu::prelu_backward(x, slope, dy, dx, da);
        REQUIRE(std::isnan(da.data()[at]));
        REQUIRE_FALSE(std::isnan(da.data()[(at + 1) % 37]));
    }
}

TEST_CASE("PReLU, tanh and sigmoid backward agree with finite differences", "[elementwise][gradcheck]") {
    Tensor x = random_tensor({2, 16, 6, 5}, 80, 1.0f, Layout::NHWC);
    Tensor slope = random_tensor({16}, 81, 0.5f);
    const Tensor dy = random_tensor(x.shape(), 82, 1.0f, Layout::NHWC);
    Tensor y = Tensor::empty(x.shape(), Layout::NHWC), dx = Tensor::empty(x.shape(), Layout::NHWC),
           da = Tensor::empty({16});
    cpu::prelu_backward(x, slope, dy, dx, da);
    auto prelu_loss = [&] {
        cpu::prelu_forward(x, slope, y);
        return dot_double(y, dy);
    };
    require_directional_derivative(x, dx, prelu_loss, 83, 2e-2, "prelu dx");
    require_directional_derivative(slope, da, prelu_loss, 84, 1e-3, "prelu dslope");

    cpu::tanh_forward(x, y);
    cpu::tanh_backward(y, dy, dx);
    auto tanh_loss = [&] {
        Tensor t = Tensor::empty(x.shape(), Layout::NHWC);
        cpu::tanh_forward(x, t);
        return dot_double(t, dy);
    };
    require_directional_derivative(x, dx, tanh_loss, 85, 1e-3, "tanh dx");

    cpu::sigmoid_forward(x, y);
    cpu::sigmoid_backward(y, dy, dx);
    auto sigmoid_loss = [&] {
        Tensor t = Tensor::empty(x.shape(), Layout::NHWC);
        cpu::sigmoid_forward(x, t);
        return dot_double(t, dy);
    };
    require_directional_derivative(x, dx, sigmoid_loss, 86, 1e-3, "sigmoid dx");
}

TEST_CASE("tanh and sigmoid match std:: in double and stay finite at extremes", "[elementwise]") {
    Tensor x = Tensor::from({1, 8}, {-1000.f, -88.f, -20.f, -1e-3f, 0.5f, 20.f, 88.f, 1000.f});
    Tensor t = Tensor::empty(x.shape()), s = Tensor::empty(x.shape());
    cpu::tanh_forward(x, t);
    cpu::sigmoid_forward(x, s);
    for (int64_t i = 0; i < 8; ++i) {
        const double v = x.data()[i];
        REQUIRE(std::isfinite(s.data()[i]));
        REQUIRE(t.data()[i] == Approx(std::tanh(v)).margin(1e-6));
        REQUIRE(s.data()[i] == Approx(1.0 / (1.0 + std::exp(-v))).margin(1e-6));
    }
}

TEST_CASE("add and reductions", "[elementwise][reduce]") {
    const Tensor a = random_tensor({3, 5, 7, 11}, 90), b = random_tensor({3, 5, 7, 11}, 91);
    Tensor y = Tensor::empty(a.shape());
    cpu::add_forward(a, b, y);
    double s = 0, s2 = 0, d2 = 0;
    for (int64_t i = 0; i < a.numel(); ++i) {
        REQUIRE(y.data()[i] == a.data()[i] + b.data()[i]);
        s += a.data()[i];
        s2 += static_cast<double>(a.data()[i]) * a.data()[i];
        d2 += (static_cast<double>(a.data()[i]) - b.data()[i]) * (static_cast<double>(a.data()[i]) - b.data()[i]);
    }
    REQUIRE(cpu::reduce_sum(a) == Approx(s).epsilon(1e-12));
    REQUIRE(cpu::reduce_mean(a) == Approx(s / a.numel()).epsilon(1e-12));
    REQUIRE(cpu::reduce_sum_squares(a) == Approx(s2).epsilon(1e-12));
    REQUIRE(cpu::reduce_squared_distance(a, b) == Approx(d2).epsilon(1e-12));
    const auto rows = cpu::reduce_rows_sum_squares(a);
    REQUIRE(rows.size() == 3);
    REQUIRE(rows[0] + rows[1] + rows[2] == Approx(s2).epsilon(1e-12));
    Tensor g = Tensor::empty(a.shape());
    const double mse = cpu::mse_forward_backward(a, b, &g);
    REQUIRE(mse == Approx(d2 / a.numel()).epsilon(1e-12));
    Tensor aa = a.clone();
    require_directional_derivative(aa, g, [&] { return cpu::mse_forward_backward(aa, b, nullptr); }, 92, 1e-3, "mse");
    REQUIRE_THROWS_WITH(cpu::add_forward(a, random_tensor({3, 5, 7, 10}, 1), y), Catch::Contains("shapes differ"));
}

TEST_CASE("sums of squares: 16 double accumulators in a fixed order on every SIMD path", "[elementwise][reduce]") {
    // Sizes around the 16-wide groups and the 16384-value blocks; values over several magnitudes so
    // that the order of the double additions shows in the last bits.
    for (int64_t n : {1, 7, 15, 16, 17, 33, 16383, 16384, 16385, 50001}) {
        Tensor x = random_tensor({n}, 300 + static_cast<uint64_t>(n));
        for (int64_t i = 0; i < n; i += 5) x.data()[i] *= 1e4f;
        // The documented order: element i into accumulator i % 16, accumulators summed in order,
        // blocks of 16384 summed in order.
        double blocks = 0, plain = 0;
        for (int64_t b0 = 0; b0 < n; b0 += 1 << 14) {
            double acc[16] = {};
            for (int64_t i = b0; i < std::min(n, b0 + (1 << 14)); ++i)
                acc[(i - b0) % 16] += static_cast<double>(x.data()[i]) * x.data()[i];
            double s = 0;
            for (double a : acc) s += a;
            blocks += s;
        }
        for (int64_t i = 0; i < n; ++i) plain += static_cast<double>(x.data()[i]) * x.data()[i];
        INFO("n = " << n);
        REQUIRE(cpu::reduce_sum_squares(x) == blocks);
        REQUIRE(cpu::reduce_sum_squares(x) == Approx(plain).epsilon(1e-13));
        if (n < (1 << 14)) REQUIRE(cpu::detail::sum_squares_f64(x.data(), n) == blocks);
        const auto rows = cpu::reduce_rows_sum_squares(x.reshape({1, n}));
        REQUIRE(rows[0] == Approx(plain).epsilon(1e-13));
    }
}

TEST_CASE("element-wise ops and reductions are identical for 1 and 2 threads", "[elementwise][threads]") {
    const Tensor x = random_tensor({4, 64, 33, 17}, 95, 1.0f, Layout::NHWC);
    const Tensor slope = random_tensor({64}, 96, 0.3f);
    const Tensor dy = random_tensor(x.shape(), 97, 1.0f, Layout::NHWC);
    Tensor dx[2], da[2];
    double sums[2];
    for (int t = 0; t < 2; ++t) {
        set_num_threads(t + 1);
        dx[t] = Tensor::empty(x.shape(), Layout::NHWC);
        da[t] = Tensor::empty({64});
        cpu::prelu_backward(x, slope, dy, dx[t], da[t]);
        sums[t] = cpu::reduce_sum_squares(x);
    }
    set_num_threads(2);
    REQUIRE(bitwise_equal(dx[0], dx[1]));
    REQUIRE(bitwise_equal(da[0], da[1]));
    REQUIRE(sums[0] == sums[1]);
}
