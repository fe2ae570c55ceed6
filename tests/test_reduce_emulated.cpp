// The GPU's fixed-order reductions (cuda/reduce_kernels.cuh) run on the CPU under
// tests/cuda_emulation.hpp, against the CPU engine: per-channel sums (the PReLU slope and linear bias
// gradients), sums of squares (gradient clipping), the O(N) mask-cost terms, the per-mask costs and
// the fused local-expectation gradient (train/estimators.hpp). Their block-wide tree sums go through
// emulated shared memory and barriers; 2D blocks for the channel sums.
#include "cuda_emulation.hpp"  // first: reduce_kernels.cuh checks for it on the host

#include <cmath>
#include <vector>

#include "estimator_checks.hpp"
#include "helpers.hpp"
#include "pin/train/estimators.hpp"
#include "pin/train/mask_cost.hpp"
#include "pin/train/noise.hpp"
#include "reduce_kernels.cuh"

using namespace pin;
namespace kernels = pin::cuda::kernels;

namespace {
std::vector<float> random_vector(int64_t n, uint64_t seed) {
    const Tensor t = test::random_tensor({n}, seed, 1.0f);
    return std::vector<float>(t.data(), t.data() + n);
}
}  // namespace

TEST_CASE("emulated: per-channel sums and sums of squares in a fixed order", "[emulated][reduce]") {
    // The chunking: at most 1024 chunks of at least 64 rows.
    REQUIRE(kernels::channel_sum_chunks(70221).rows_per_chunk == 69);
    REQUIRE(kernels::channel_sum_chunks(70221).chunks == 1018);
    REQUIRE(kernels::channel_sum_chunks(10).chunks == 1);
    // 6,421 rows (100 chunks of 64 and one of 21) of 45 channels (a partial 32-channel block).
    const int64_t rows = 6421, channels = 45;
    const std::vector<float> x = random_vector(rows * channels, 61), dy = random_vector(rows * channels, 62);
    const auto f = [&](int64_t i) {  // the PReLU slope gradient's terms
        const size_t e = static_cast<size_t>(i);
        return x[e] > 0.0f ? 0.0 : static_cast<double>(x[e]) * dy[e];
    };
    const kernels::ChannelSumChunks ch = kernels::channel_sum_chunks(rows);
    REQUIRE(ch.chunks == 101);
    std::vector<double> partial(static_cast<size_t>(ch.chunks * channels));
    std::vector<float> out(static_cast<size_t>(channels), -1.0f);
    const unsigned blocks = static_cast<unsigned>((channels + kernels::kChannelSumLanes - 1) / kernels::kChannelSumLanes);
    pin_emulation::launch(dim3(static_cast<unsigned>(ch.chunks), blocks), dim3(kernels::kChannelSumLanes, kernels::kChannelSumRowLanes),
                          [&] { kernels::channel_sum_partial_kernel(rows, channels, ch.rows_per_chunk, f, partial.data()); });
    pin_emulation::launch(dim3(1), 256, [&] { kernels::channel_sum_final_kernel(ch.chunks, channels, partial.data(), out.data()); });
    for (int64_t c = 0; c < channels; ++c) {
        double want = 0, mag = 0;
        for (int64_t r = 0; r < rows; ++r) want += f(r * channels + c), mag += std::fabs(f(r * channels + c));
        INFO("channel " << c);
        REQUIRE(std::fabs(out[static_cast<size_t>(c)] - want) <= 1e-6 * mag + 1e-30);  // float result of double sums
    }
    // Sums of squares: 7 blocks (the GPU launches 512) striding over 300,007 elements, block partials
    // summed on the host.
    const int64_t n = 300007;
    const std::vector<float> v = random_vector(n, 63);
    std::vector<double> blocks_sum(7, -1.0);
    pin_emulation::launch(dim3(7), 256, [&] { kernels::sum_squares_kernel(v.data(), n, blocks_sum.data()); });
    double got = 0, want = 0;
    for (double b : blocks_sum) got += b;
    for (float e : v) want += static_cast<double>(e) * e;
    REQUIRE(got == Approx(want).epsilon(1e-11));  // double sums of 300,007 terms in another order
}

TEST_CASE("emulated: mask-cost terms, per-mask costs and the fused local-expectation gradient match the CPU", "[emulated][reduce]") {
    const int64_t B = 3, N = 301, k = 7, D = 1000;
    const std::vector<float> c = random_vector(B * N, 64), d = random_vector(B * N, 65), x = random_vector(B * D, 66),
                             mean = random_vector(D, 67);
    // mask_cost_terms: g = c^2 - 2 c d (stored as float) and ||x - m||^2 per image.
    std::vector<float> g(static_cast<size_t>(B * N));
    std::vector<double> y2(static_cast<size_t>(B));
    pin_emulation::launch(dim3(static_cast<unsigned>(B)), 256,
                          [&] { kernels::mask_cost_terms_kernel(c.data(), d.data(), x.data(), mean.data(), g.data(), y2.data(), N, D); });
    std::vector<train::MaskCostTerms> terms;
    for (int64_t b = 0; b < B; ++b) {
        double want_y2 = 0;
        for (int64_t i = 0; i < D; ++i) {
            const double e = static_cast<double>(x[static_cast<size_t>(b * D + i)]) - mean[static_cast<size_t>(i)];
            want_y2 += e * e;
        }
        REQUIRE(y2[static_cast<size_t>(b)] == Approx(want_y2).epsilon(1e-13));
        terms.push_back(train::mask_cost_terms(c.data() + b * N, d.data() + b * N, N, y2[static_cast<size_t>(b)], D));
        for (int64_t j = 0; j < N; ++j) {
            REQUIRE(g[static_cast<size_t>(b * N + j)] == static_cast<float>(terms.back().g[static_cast<size_t>(j)]));
            terms.back().g[static_cast<size_t>(j)] = g[static_cast<size_t>(b * N + j)];  // the GPU's float g, as the CPU's input
        }
    }
    std::vector<float> p(static_cast<size_t>(B * N));
    for (size_t i = 0; i < p.size(); ++i) p[i] = 0.02f + 0.96f * static_cast<float>((i * 53) % 97) / 96.0f;
    for (const bool l2 : {true, false}) {
        INFO((l2 ? "L2" : "MSE") << " cost");
        const train::CostType type = l2 ? train::CostType::L2 : train::CostType::MSE;
        // Per-mask costs: one block per (image, mask), the CPU estimator's mask streams.
        std::vector<double> cost(static_cast<size_t>(B * k)), kept(static_cast<size_t>(B * k));
        pin_emulation::launch(dim3(static_cast<unsigned>(B * k)), 256, [&] {
            kernels::mask_cost_kernel(p.data(), g.data(), y2.data(), cost.data(), kept.data(), N, k, l2, 0.015, D, 5, 20);
        });
        for (int64_t b = 0; b < B; ++b)
            for (int64_t s = 0; s < k; ++s) {
                const PhiloxStream rng(5, (20 + static_cast<uint64_t>(b)) * k + static_cast<uint64_t>(s));
                std::vector<float> m(static_cast<size_t>(N));
                double nk = 0;
                for (int64_t j = 0; j < N; ++j)
                    nk += m[static_cast<size_t>(j)] = rng.bernoulli(static_cast<uint64_t>(j), p[static_cast<size_t>(b * N + j)]);
                REQUIRE(kept[static_cast<size_t>(b * k + s)] == nk);
                REQUIRE(cost[static_cast<size_t>(b * k + s)] == Approx(train::mask_cost(terms[static_cast<size_t>(b)], m.data(), type, 0.015)).epsilon(1e-12));
            }
        // The fused local-expectation gradient: one block per image.
        const train::BatchGradient cpu = train::estimate_gradient(p, terms, k, train::Estimator::LocalExpectation, type, 0.015, 9, 40);
        std::vector<double> dz(static_cast<size_t>(B * N)), lcost(static_cast<size_t>(B * k)), lkept(static_cast<size_t>(B * k));
        pin_emulation::launch(dim3(static_cast<unsigned>(B)), 256, [&] {
            kernels::local_gradient_kernel(p.data(), g.data(), y2.data(), dz.data(), lcost.data(), lkept.data(), B, N, k, l2, 0.015, D, 9, 40);
        });
        test::require_estimator_matches(dz, lcost, lkept, cpu, l2 ? "emulated local gradient (L2 cost)" : "emulated local gradient (MSE cost)");
    }
}

TEST_CASE("emulated: the training noise drawn by the GPU kernel is the CPU's", "[emulated][reduce]") {
    // 4 images of 12,544 + 3 values (not a multiple of the block), image numbers from 7: the same
    // normals (the same source, here compiled for the host) and the same per-image scale (double
    // sums in another order); the noise's norm is intensity ||x|| per image.
    const int64_t B = 4, D = 12547;
    const std::vector<float> x = random_vector(B * D, 71);
    std::vector<float> want(x.size()), got(x.size(), -1.0f);
    train::add_relative_noise(x.data(), want.data(), B, D, 0.25, 5, 7);
    pin_emulation::launch(dim3(static_cast<unsigned>(B)), 256, [&] { kernels::relative_noise_kernel(x.data(), got.data(), D, 0.25, 5, 7); });
    double worst = 0;
    for (int64_t b = 0; b < B; ++b) {
        double xs = 0, es = 0;
        for (int64_t i = b * D; i < (b + 1) * D; ++i) {
            const size_t e = static_cast<size_t>(i);
            worst = std::max(worst, std::fabs(static_cast<double>(got[e]) - want[e]));
            const double eta = static_cast<double>(got[e]) - x[e];
            xs += static_cast<double>(x[e]) * x[e];
            es += eta * eta;
        }
        INFO("image " << b);
        REQUIRE(std::sqrt(es / xs) == Approx(0.25).epsilon(1e-4));
    }
    REQUIRE(worst <= 1e-6);
}
