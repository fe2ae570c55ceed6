// conv_transpose2d forward/backward against the float64 reference, plus finite differences.
#include "helpers.hpp"
#include "pin/core/parallel.hpp"
#include "pin/cpu/conv_transpose2d.hpp"
#include "pin/cpu/reference.hpp"

using namespace pin;
using namespace pin::test;

namespace {
const reference::ConvTransposeShape kCases[] = {
    {1, 8, 5, 5, 8, 3, 2, 1, 1},     // the DAE's up-sampling geometry, batch 1
    {2, 3, 7, 6, 5, 3, 2, 1, 1},     // odd sizes and channel counts
    {2, 70, 4, 3, 66, 3, 2, 1, 1},   // channels crossing a vector and a weight block
    {1, 4, 5, 4, 3, 3, 1, 1, 0},     // stride 1 (a plain "same" transposed conv)
    {2, 5, 3, 4, 2, 4, 2, 1, 0},     // 4x4 kernel, stride 2
    {1, 3, 4, 5, 4, 3, 3, 0, 2},     // stride 3, output padding 2
    {2, 130, 9, 8, 70, 3, 2, 1, 1},  // weight gradient's direct path (36 channel-block units), 2 chunks
    {1, 70, 20, 21, 20, 3, 2, 1, 1}, // weight gradient in two pixel slices (420 pixels, 8 units)
};
cpu::ConvTranspose2dParams params_of(const reference::ConvTransposeShape& s) {
    return {s.k, s.stride, s.pad, s.out_pad};
}
}  // namespace

namespace {
bool winograd_covers(const reference::ConvTransposeShape& s) { return s.k == 3 && s.stride == 2 && s.pad == 1; }

void run_case(const reference::ConvTransposeShape& s, uint64_t seed, cpu::ConvAlgorithm algorithm) {
        INFO("case n=" << s.n << " cin=" << s.cin << " " << s.h << "x" << s.w << " cout=" << s.cout << " k=" << s.k
                       << " s=" << s.stride << " p=" << s.pad << " op=" << s.out_pad);
        auto p = params_of(s);
        p.algorithm = algorithm;
        const Tensor x = random_tensor({s.n, s.cin, s.h, s.w}, seed, 1.0f, Layout::NHWC);
        const Tensor w = random_tensor({s.cin, s.cout, s.k, s.k}, seed + 1, 0.3f);
        const Tensor dy = random_tensor({s.n, s.cout, s.oh(), s.ow()}, seed + 2, 1.0f, Layout::NHWC);
        const DVec xd = to_nchw_doubles(x), wd = to_nchw_doubles(w), dyd = to_nchw_doubles(dy);

        Tensor y = Tensor::empty(dy.shape(), Layout::NHWC);
        cpu::conv_transpose2d_forward(x, w, y, p);
        require_close(y, reference::conv_transpose2d_forward(xd, wd, s),
                      reference::conv_transpose2d_forward(abs_of(xd), abs_of(wd), s), 2e-5, "forward");
        Tensor dx = Tensor::empty(x.shape(), Layout::NHWC);
        cpu::conv_transpose2d_backward_input(dy, w, dx, p);
        require_close(dx, reference::conv_transpose2d_backward_input(dyd, wd, s),
                      reference::conv_transpose2d_backward_input(abs_of(dyd), abs_of(wd), s), 2e-5, "backward_input");
        Tensor dw = Tensor::empty(w.shape());
        cpu::conv_transpose2d_backward_weight(x, dy, dw, p);
        require_close(dw, reference::conv_transpose2d_backward_weight(xd, dyd, s),
                      reference::conv_transpose2d_backward_weight(abs_of(xd), abs_of(dyd), s), 2e-5, "backward_weight");
}
}  // namespace

TEST_CASE("conv_transpose2d matches the float64 reference on odd shapes", "[conv_transpose2d]") {
    uint64_t seed = 300;
    for (const auto& s : kCases) {
        run_case(s, seed, cpu::ConvAlgorithm::automatic);
        run_case(s, seed, cpu::ConvAlgorithm::direct);
        if (winograd_covers(s)) run_case(s, seed, cpu::ConvAlgorithm::winograd);
        seed += 10;
    }
}

TEST_CASE("conv_transpose2d Winograd form on odd sizes and both weight-gradient schedules", "[conv_transpose2d][winograd]") {
    const reference::ConvTransposeShape cases[] = {
        {1, 5, 1, 1, 7, 3, 2, 1, 1},      // one input pixel
        {2, 19, 5, 3, 33, 3, 2, 1, 0},    // no output padding: odd output sizes, partial tiles
        {1, 24, 17, 16, 20, 3, 2, 1, 1},  // 272 input pixels -> 136 tiles: the sliced weight gradient
        {1, 150, 3, 4, 210, 3, 2, 1, 1},  // large gradient: the chunked schedule
    };
    uint64_t seed = 700;
    for (const auto& s : cases) {
        run_case(s, seed, cpu::ConvAlgorithm::winograd);
        seed += 10;
    }
}

TEST_CASE("conv_transpose2d backward passes agree with finite differences", "[conv_transpose2d][gradcheck]") {
    const reference::ConvTransposeShape s{2, 6, 5, 4, 7, 3, 2, 1, 1};
    auto p = params_of(s);
    p.algorithm = GENERATE(cpu::ConvAlgorithm::direct, cpu::ConvAlgorithm::winograd);
    Tensor x = random_tensor({s.n, s.cin, s.h, s.w}, 41, 1.0f, Layout::NHWC);
    Tensor w = random_tensor({s.cin, s.cout, 3, 3}, 42, 0.3f);
    const Tensor dy = random_tensor({s.n, s.cout, s.oh(), s.ow()}, 43, 1.0f, Layout::NHWC);
    Tensor y = Tensor::empty(dy.shape(), Layout::NHWC), dx = Tensor::empty(x.shape(), Layout::NHWC),
           dw = Tensor::empty(w.shape());
    cpu::conv_transpose2d_backward_input(dy, w, dx, p);
    cpu::conv_transpose2d_backward_weight(x, dy, dw, p);
    auto loss = [&] {
        cpu::conv_transpose2d_forward(x, w, y, p);
        return dot_double(y, dy);
    };
    require_directional_derivative(x, dx, loss, 44, 1e-3, "dx");
    require_directional_derivative(w, dw, loss, 45, 1e-3, "dw");
}

TEST_CASE("conv_transpose2d is identical for 1 and 2 threads", "[conv_transpose2d][threads]") {
    const reference::ConvTransposeShape s{2, 64, 9, 9, 64, 3, 2, 1, 1};
    auto p = params_of(s);
    p.algorithm = GENERATE(cpu::ConvAlgorithm::direct, cpu::ConvAlgorithm::winograd);
    const Tensor x = random_tensor({s.n, s.cin, s.h, s.w}, 51, 1.0f, Layout::NHWC);
    const Tensor w = random_tensor({s.cin, s.cout, 3, 3}, 52, 0.1f);
    const Tensor dy = random_tensor({s.n, s.cout, s.oh(), s.ow()}, 53, 1.0f, Layout::NHWC);
    Tensor y[2], dx[2], dw[2];
    for (int t = 0; t < 2; ++t) {
        set_num_threads(t + 1);
        y[t] = Tensor::empty(dy.shape(), Layout::NHWC);
        dx[t] = Tensor::empty(x.shape(), Layout::NHWC);
        dw[t] = Tensor::empty(w.shape());
        cpu::conv_transpose2d_forward(x, w, y[t], p);
        cpu::conv_transpose2d_backward_input(dy, w, dx[t], p);
        cpu::conv_transpose2d_backward_weight(x, dy, dw[t], p);
    }
    set_num_threads(2);
    REQUIRE(bitwise_equal(y[0], y[1]));
    REQUIRE(bitwise_equal(dx[0], dx[1]));
    REQUIRE(bitwise_equal(dw[0], dw[1]));
}

TEST_CASE("conv_transpose2d rejects bad arguments with a message", "[conv_transpose2d][errors]") {
    const Tensor x = random_tensor({1, 4, 5, 5}, 1, 1.0f, Layout::NHWC);
    const Tensor w = random_tensor({4, 3, 3, 3}, 2);
    Tensor y = Tensor::empty({1, 3, 9, 9}, Layout::NHWC);  // should be 10x10
    REQUIRE_THROWS_WITH(cpu::conv_transpose2d_forward(x, w, y, {3, 2, 1, 1}), Catch::Contains("expected shape (1, 3, 10, 10)"));
    Tensor y2 = Tensor::empty({1, 3, 10, 10}, Layout::NHWC);
    REQUIRE_THROWS_WITH(cpu::conv_transpose2d_forward(x, w, y2, {3, 2, 1, 2}), Catch::Contains("output_padding"));
}

TEST_CASE("conv_transpose2d refuses a forced Winograd form off stride 2", "[conv_transpose2d][winograd][errors]") {
    const reference::ConvTransposeShape s{1, 4, 5, 4, 3, 3, 1, 1, 0};
    auto p = params_of(s);
    p.algorithm = cpu::ConvAlgorithm::winograd;
    const Tensor x = random_tensor({s.n, s.cin, s.h, s.w}, 81, 1.0f, Layout::NHWC);
    const Tensor w = random_tensor({s.cin, s.cout, 3, 3}, 82);
    Tensor y = Tensor::empty({s.n, s.cout, s.oh(), s.ow()}, Layout::NHWC);
    REQUIRE_THROWS_WITH(cpu::conv_transpose2d_forward(x, w, y, p), Catch::Contains("stride 2 and padding 1"));
}
