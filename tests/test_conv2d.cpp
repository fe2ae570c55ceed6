// conv2d forward/backward against the float64 reference, odd shapes, batch 1, strides, thread counts.
#include <algorithm>
#include <tuple>

#include "helpers.hpp"
#include "pin/core/parallel.hpp"
#include "pin/cpu/conv2d.hpp"
#include "pin/cpu/reference.hpp"

using namespace pin;
using namespace pin::test;

namespace {
struct Case {
    int64_t n, cin, h, w, cout, k, stride, pad;
};
const Case kCases[] = {
    {1, 1, 7, 9, 64, 3, 1, 1},     // first layer shape (cin 1), batch 1
    // One input channel (the one-channel gather path): stride 2 and output channels that end in a
    // partial block; one output channel, whose input gradient reads a one-channel gradient.
    {2, 1, 13, 11, 37, 3, 2, 1},
    {2, 1, 10, 9, 100, 3, 1, 1},
    {1, 20, 9, 8, 1, 3, 1, 1},
    // The narrow weight gradients (one input channel, or at most 4 outputs), over more than one
    // slice of 1024 pixels, with vector tails.
    {2, 1, 30, 29, 20, 3, 1, 1},
    {2, 37, 23, 25, 3, 3, 1, 1},
    {2, 24, 31, 27, 2, 3, 2, 1},
    {2, 3, 11, 13, 5, 3, 1, 1},    // odd everything, cout below one vector
    {2, 64, 9, 10, 64, 3, 2, 1},   // 3x3 stride 2
    {1, 17, 8, 7, 33, 1, 2, 0},    // 1x1 stride 2 shortcut, odd channels
    {3, 20, 6, 6, 70, 3, 1, 1},    // cout crossing a weight block
    {1, 5, 12, 11, 3, 5, 2, 2},    // 5x5, stride 2
    {2, 200, 5, 5, 16, 3, 1, 1},   // cin above one L2 chunk? (chunking exercised below too)
    {1, 600, 4, 4, 20, 3, 1, 1},   // several input-channel chunks
    {1, 8, 6, 7, 8, 3, 3, 0},      // stride 3, no padding
    // The weight gradient's direct path (>= 32 input x output channel blocks at 2 threads: the
    // result goes straight into the (co, ci, k, k) layout), partial blocks both ways:
    {2, 70, 9, 8, 130, 3, 2, 1},   // stride 2, one pixel chunk
    {2, 70, 13, 12, 150, 3, 1, 1}, // three pixel chunks of 128
    // Few channel blocks over many pixels: the weight gradient sums two pixel slices apart.
    {2, 20, 20, 22, 70, 3, 1, 1},  // 880 pixels, 8 units
};

bool winograd_covers(const Case& c) { return c.k == 3 && c.pad == 1 && (c.stride == 1 || c.stride == 2); }

void run_case(const Case& c, uint64_t seed, cpu::ConvAlgorithm algorithm = cpu::ConvAlgorithm::automatic) {
    const cpu::Conv2dParams p{c.k, c.stride, c.pad, algorithm};
    const reference::ConvShape rs{c.n, c.cin, c.h, c.w, c.cout, c.k, c.stride, c.pad};
    const Tensor x = random_tensor({c.n, c.cin, c.h, c.w}, seed, 1.0f, Layout::NHWC);
    const Tensor w = random_tensor({c.cout, c.cin, c.k, c.k}, seed + 1, 0.3f);
    const Tensor dy = random_tensor({c.n, c.cout, rs.oh(), rs.ow()}, seed + 2, 1.0f, Layout::NHWC);
    const DVec xd = to_nchw_doubles(x), wd = to_nchw_doubles(w), dyd = to_nchw_doubles(dy);

    Tensor y = Tensor::empty({c.n, c.cout, rs.oh(), rs.ow()}, Layout::NHWC);
    cpu::conv2d_forward(x, w, y, p);
    require_close(y, reference::conv2d_forward(xd, wd, rs), reference::conv2d_forward(abs_of(xd), abs_of(wd), rs), 2e-5,
                  "conv2d_forward");

    Tensor dx = Tensor::empty(x.shape(), Layout::NHWC);
    cpu::conv2d_backward_input(dy, w, dx, p);
    const DVec dx_ref = reference::conv2d_backward_input(dyd, wd, rs);
    const DVec dx_scale = reference::conv2d_backward_input(abs_of(dyd), abs_of(wd), rs);
    require_close(dx, dx_ref, dx_scale, 2e-5, "conv2d_backward_input");
    // Accumulating into a gradient already there (a residual block's shortcut): base + dx, with the
    // sub-pixel classes no tap reaches (1x1 and stride 3 cases) left as they were.
    const Tensor base = random_tensor(x.shape(), seed + 3, 1.0f, Layout::NHWC);
    Tensor dx_acc = base.clone();
    cpu::conv2d_backward_input(dy, w, dx_acc, p, true);
    DVec expected = dx_ref, scale = dx_scale;
    const DVec based = to_nchw_doubles(base);
    for (size_t i = 0; i < expected.size(); ++i) {
        expected[i] += based[i];
        scale[i] += std::abs(based[i]);
    }
    require_close(dx_acc, expected, scale, 2e-5, "conv2d_backward_input (accumulate)");

    Tensor dw = Tensor::empty(w.shape());
    cpu::conv2d_backward_weight(x, dy, dw, p);
    require_close(dw, reference::conv2d_backward_weight(xd, dyd, rs),
                  reference::conv2d_backward_weight(abs_of(xd), abs_of(dyd), rs), 2e-5, "conv2d_backward_weight");
}
}  // namespace

TEST_CASE("conv2d matches the float64 reference on odd shapes", "[conv2d]") {
    uint64_t seed = 100;
    for (const Case& c : kCases) {
        INFO("case n=" << c.n << " cin=" << c.cin << " " << c.h << "x" << c.w << " cout=" << c.cout << " k=" << c.k
                       << " s=" << c.stride << " p=" << c.pad);
        run_case(c, seed);
        seed += 10;
    }
}


TEST_CASE("conv2d's direct and Winograd forms each match the float64 reference", "[conv2d][winograd]") {
    // Every case above through both kernels, whatever the automatic choice would be.
    uint64_t seed = 300;
    for (const Case& c : kCases) {
        INFO("case n=" << c.n << " cin=" << c.cin << " " << c.h << "x" << c.w << " cout=" << c.cout << " k=" << c.k
                       << " s=" << c.stride << " p=" << c.pad);
        {
            INFO("direct");
            run_case(c, seed, cpu::ConvAlgorithm::direct);
        }
        if (winograd_covers(c)) {
            INFO("winograd");
            run_case(c, seed, cpu::ConvAlgorithm::winograd);
        }
        seed += 10;
    }
}

TEST_CASE("conv2d Winograd forms on tile edges, channel tails and both weight-gradient schedules", "[conv2d][winograd]") {
    const Case cases[] = {
        {1, 7, 1, 1, 5, 3, 1, 1},       // one pixel: a single tile, mostly padding
        {1, 33, 1, 2, 65, 3, 2, 1},     // stride 2 on a 1 x 2 input
        {2, 40, 5, 7, 48, 3, 1, 1},     // odd sizes: half-empty border tiles
        {1, 40, 7, 5, 48, 3, 2, 1},     // stride 2, odd sizes
        {3, 17, 11, 9, 19, 3, 2, 1},    // channel counts off the vector width
        {2, 24, 31, 29, 36, 3, 1, 1},   // 240 tiles: the sliced weight gradient (several slices)
        {2, 24, 33, 30, 20, 3, 2, 1},   // 136 tiles at stride 2: sliced, two slices
        {1, 260, 3, 5, 260, 3, 1, 1},   // large gradient: the chunked schedule, co blocks past 256
        {2, 200, 6, 5, 150, 3, 2, 1},   // large gradient at stride 2, partial output block
    };
    uint64_t seed = 500;
    for (const Case& c : cases) {
        INFO("case n=" << c.n << " cin=" << c.cin << " " << c.h << "x" << c.w << " cout=" << c.cout
                       << " s=" << c.stride);
        run_case(c, seed, cpu::ConvAlgorithm::winograd);
        seed += 10;
    }
}

TEST_CASE("conv2d refuses a forced Winograd form on a geometry it does not cover", "[conv2d][winograd][errors]") {
    const Tensor x = random_tensor({1, 4, 8, 8}, 1, 1.0f, Layout::NHWC);
    const Tensor w = random_tensor({4, 4, 5, 5}, 2);
    Tensor y = Tensor::empty({1, 4, 8, 8}, Layout::NHWC);
    REQUIRE_THROWS_WITH(cpu::conv2d_forward(x, w, y, {5, 1, 2, cpu::ConvAlgorithm::winograd}),
                        Catch::Contains("Winograd form covers 3x3"));
}

TEST_CASE("conv2d fused PReLU and accumulate epilogue", "[conv2d]") {
    // 16 input channels (the register-tiled path) and 1 (the one-channel path, 37 outputs: a
    // partial last block).
    const Case c = GENERATE(Case{2, 16, 9, 9, 32, 3, 1, 1}, Case{2, 1, 9, 9, 37, 3, 1, 1});
    const cpu::Conv2dParams p{c.k, c.stride, c.pad};
    const Tensor x = random_tensor({c.n, c.cin, c.h, c.w}, 5, 1.0f, Layout::NHWC);
    const Tensor w = random_tensor({c.cout, c.cin, 3, 3}, 6, 0.3f);
    const Tensor slope = random_tensor({c.cout}, 7, 0.5f);
    const Tensor base = random_tensor({c.n, c.cout, c.h, c.w}, 8, 1.0f, Layout::NHWC);
    Tensor plain = Tensor::empty(base.shape(), Layout::NHWC);
    cpu::conv2d_forward(x, w, plain, p);
    Tensor fused = base.clone();
    cpu::conv2d_forward(x, w, fused, p, {slope.data(), true});
    for (int64_t i = 0; i < plain.numel(); ++i) {
        const float v = plain.data()[i];
        const float a = slope.data()[i % c.cout];
        REQUIRE(fused.data()[i] == Approx((v > 0 ? v : a * v) + base.data()[i]).margin(1e-6));
    }
}

TEST_CASE("conv2d writes a destination larger than the caches as it writes a small one", "[conv2d]") {
    // Over 32 MiB of output the kernels store with non-temporal stores; every output is the same
    // sums either way, so the batch of two equals each image run alone, bit for bit. One input
    // channel (the first layers' shape) and 16 (the register-tiled path).
    const int64_t cin = GENERATE(1, 16);
    const cpu::Conv2dParams p{3, 1, 1};
    const Tensor x = random_tensor({2, cin, 258, 258}, 9, 1.0f, Layout::NHWC);
    const Tensor w = random_tensor({64, cin, 3, 3}, 10, 0.3f);
    Tensor y = Tensor::empty({2, 64, 258, 258}, Layout::NHWC);
    REQUIRE(y.numel() * static_cast<int64_t>(sizeof(float)) > (32 << 20));
    cpu::conv2d_forward(x, w, y, p);
    const int64_t image = x.numel() / 2, out_image = y.numel() / 2;
    for (int64_t n = 0; n < 2; ++n) {
        Tensor xn = Tensor::empty({1, cin, 258, 258}, Layout::NHWC), yn = Tensor::empty({1, 64, 258, 258}, Layout::NHWC);
        std::copy(x.data() + n * image, x.data() + (n + 1) * image, xn.data());
        cpu::conv2d_forward(xn, w, yn, p);
        REQUIRE(std::equal(yn.data(), yn.data() + out_image, y.data() + n * out_image));
    }
}

TEST_CASE("conv2d results are identical for 1 and 2 threads", "[conv2d][threads]") {
    // The second case has 21 channel-block units: the weight gradient takes its direct path on one
    // thread (>= 16 units) and transposes afterwards on two (< 32); the bits must not differ. The
    // third sums two pixel slices (on one thread one after the other).
    // The Winograd forms: the sliced weight gradient (the 1->2 thread change alters which task
    // sums which slice, not the order) and the chunked one (260 channels).
    const Case c = GENERATE(Case{2, 64, 14, 14, 64, 3, 2, 1}, Case{2, 40, 12, 11, 150, 3, 1, 1},
                            Case{2, 20, 20, 22, 70, 3, 1, 1}, Case{2, 24, 31, 29, 36, 3, 1, 1},
                            Case{1, 260, 5, 5, 260, 3, 2, 1},
                            // one input channel, two outputs: the narrow weight gradients (2 slices)
                            Case{2, 1, 30, 29, 20, 3, 1, 1}, Case{2, 24, 31, 27, 2, 3, 1, 1});
    const auto algorithm = GENERATE(cpu::ConvAlgorithm::direct, cpu::ConvAlgorithm::winograd);
    const cpu::Conv2dParams p{c.k, c.stride, c.pad, algorithm};
    const Tensor x = random_tensor({c.n, c.cin, c.h, c.w}, 11, 1.0f, Layout::NHWC);
    const Tensor w = random_tensor({c.cout, c.cin, 3, 3}, 12, 0.1f);
    const int64_t oh = cpu::conv2d_output_size(c.h, p), ow = cpu::conv2d_output_size(c.w, p);
    const Tensor dy = random_tensor({c.n, c.cout, oh, ow}, 13, 1.0f, Layout::NHWC);
    Tensor y[2], dx[2], dw[2];
    for (int t = 0; t < 2; ++t) {
        set_num_threads(t + 1);
        y[t] = Tensor::empty(dy.shape(), Layout::NHWC);
        dx[t] = Tensor::empty(x.shape(), Layout::NHWC);
        dw[t] = Tensor::empty(w.shape());
        cpu::conv2d_forward(x, w, y[t], p);
        cpu::conv2d_backward_input(dy, w, dx[t], p);
        cpu::conv2d_backward_weight(x, dy, dw[t], p);
    }
    set_num_threads(2);
    REQUIRE(bitwise_equal(y[0], y[1]));
    REQUIRE(bitwise_equal(dx[0], dx[1]));
    REQUIRE(bitwise_equal(dw[0], dw[1]));
}

TEST_CASE("conv2d rejects mismatched shapes with a message", "[conv2d][errors]") {
    const Tensor x = random_tensor({1, 3, 8, 8}, 1, 1.0f, Layout::NHWC);
    const Tensor w = random_tensor({4, 2, 3, 3}, 2);
    Tensor y = Tensor::empty({1, 4, 8, 8}, Layout::NHWC);
    REQUIRE_THROWS_WITH(cpu::conv2d_forward(x, w, y, {3, 1, 1}), Catch::Contains("expects 2 input channels"));
    const Tensor xn = random_tensor({1, 3, 8, 8}, 1);  // NCHW
    REQUIRE_THROWS_WITH(cpu::conv2d_forward(xn, w, y, {3, 1, 1}), Catch::Contains("NHWC"));
}

TEST_CASE("conv2d backward passes agree with finite differences", "[conv2d][gradcheck]") {
    const auto algorithm = GENERATE(cpu::ConvAlgorithm::direct, cpu::ConvAlgorithm::winograd);
    for (const Case c : {Case{2, 5, 9, 8, 7, 3, 1, 1}, Case{1, 6, 9, 7, 5, 3, 2, 1}, Case{2, 4, 6, 6, 3, 1, 2, 0}}) {
        if (algorithm == cpu::ConvAlgorithm::winograd && !winograd_covers(c)) continue;
        const cpu::Conv2dParams p{c.k, c.stride, c.pad, algorithm};
        const int64_t oh = cpu::conv2d_output_size(c.h, p), ow = cpu::conv2d_output_size(c.w, p);
        Tensor x = random_tensor({c.n, c.cin, c.h, c.w}, 61, 1.0f, Layout::NHWC);
        Tensor w = random_tensor({c.cout, c.cin, c.k, c.k}, 62, 0.3f);
        const Tensor dy = random_tensor({c.n, c.cout, oh, ow}, 63, 1.0f, Layout::NHWC);
        Tensor y = Tensor::empty(dy.shape(), Layout::NHWC), dx = Tensor::empty(x.shape(), Layout::NHWC),
               dw = Tensor::empty(w.shape());
        cpu::conv2d_backward_input(dy, w, dx, p);
        cpu::conv2d_backward_weight(x, dy, dw, p);
        auto loss = [&] {
            cpu::conv2d_forward(x, w, y, p);
            return dot_double(y, dy);
        };
        require_directional_derivative(x, dx, loss, 64, 1e-3, "dx");
        require_directional_derivative(w, dw, loss, 65, 1e-3, "dw");
    }
}

TEST_CASE("pack_gather_weights writes every weight where the kernels read it and zeros past the last output channel",
          "[conv2d]") {
    // Layout [block][tap][ci][kBlockCo]. Every element is checked, so a tile of the packing that
    // writes the wrong place, misses a place or leaves garbage in the padding fails; the sizes cross
    // the 16 x 16 tiles and the block (64 wide with AVX-512, 16 in the AVX2 and portable builds).
    using cpu::detail::kBlockCo;
    for (const auto& [cout, cin, taps] : {std::tuple<int64_t, int64_t, int64_t>{70, 19, 9}, {5, 33, 1}, {130, 16, 4},
                                         {64, 1, 9}}) {
        const auto value = [](int64_t co, int64_t ci, int64_t t) { return static_cast<float>(co * 1000 + ci * 10 + t) + 0.5f; };
        const Tensor packed = cpu::detail::pack_gather_weights(cout, cin, taps, value);
        const int64_t blocks = (cout + kBlockCo - 1) / kBlockCo;
        REQUIRE(packed.numel() == blocks * taps * cin * kBlockCo);
        int64_t wrong = 0;
        for (int64_t b = 0; b < blocks; ++b)
            for (int64_t t = 0; t < taps; ++t)
                for (int64_t ci = 0; ci < cin; ++ci)
                    for (int64_t j = 0; j < kBlockCo; ++j) {
                        const int64_t co = b * kBlockCo + j;
                        const float want = co < cout ? value(co, ci, t) : 0.0f;
                        wrong += packed.data()[((b * taps + t) * cin + ci) * kBlockCo + j] != want;
                    }
        INFO("cout " << cout << " cin " << cin << " taps " << taps);
        CHECK(wrong == 0);
    }
}
