// Philox4x32-10: published known-answer vectors, distribution sanity, order/thread independence.
#include <cmath>
#include <vector>

#include "helpers.hpp"
#include "pin/core/parallel.hpp"

using namespace pin;

TEST_CASE("philox4x32-10 matches the Random123 known-answer vectors", "[rng]") {
    // Random123 tests/kat_vectors, the three "philox4x32 10" lines: counter, key -> result.
    struct Kat {
        Philox4x32 ctr;
        uint32_t k0, k1;
        Philox4x32 want;
    };
    const Kat kats[] = {
        {{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}},
        {{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, 0xffffffffu, 0xffffffffu,
         {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}},
        {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0xa4093822u, 0x299f31d0u,
         {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}},
    };
    for (const Kat& k : kats) {
        const Philox4x32 got = philox4x32_10(k.ctr, k.k0, k.k1);
        for (int i = 0; i < 4; ++i) REQUIRE(got.v[i] == k.want.v[i]);
    }
}

TEST_CASE("uniform, normal and Bernoulli draws have the right moments", "[rng]") {
    const PhiloxStream rng(2024, 3);
    const int n = 200000;
    double su = 0, su2 = 0, sn = 0, sn2 = 0, sb = 0;
    float umin = 1, umax = 0;
    for (int i = 0; i < n; ++i) {
        const float u = rng.uniform(static_cast<uint64_t>(i));
        umin = std::min(umin, u);
        umax = std::max(umax, u);
        su += u;
        su2 += static_cast<double>(u) * u;
        const float z = rng.normal(static_cast<uint64_t>(i));
        REQUIRE(std::isfinite(z));
        sn += z;
        sn2 += static_cast<double>(z) * z;
        sb += rng.bernoulli(static_cast<uint64_t>(i) + 10'000'000, 0.3f);
    }
    REQUIRE(umin >= 0.0f);
    REQUIRE(umax < 1.0f);
    // 5-sigma bounds for the sample statistics.
    REQUIRE(std::fabs(su / n - 0.5) < 5 * std::sqrt(1.0 / 12 / n));
    REQUIRE(std::fabs(su2 / n - su / n * su / n - 1.0 / 12) < 0.002);
    REQUIRE(std::fabs(sn / n) < 5 / std::sqrt(static_cast<double>(n)));
    REQUIRE(std::fabs(sn2 / n - 1.0) < 5 * std::sqrt(2.0 / n));
    REQUIRE(std::fabs(sb / n - 0.3) < 5 * std::sqrt(0.21 / n));
}

TEST_CASE("different seeds and streams give different sequences", "[rng]") {
    const PhiloxStream a(1, 0), b(2, 0), c(1, 1);
    int same_ab = 0, same_ac = 0;
    for (uint64_t i = 0; i < 1000; ++i) {
        same_ab += a.bits(i) == b.bits(i);
        same_ac += a.bits(i) == c.bits(i);
    }
    REQUIRE(same_ab < 3);
    REQUIRE(same_ac < 3);
}

TEST_CASE("a draw depends only on (seed, stream, index): any order, any thread count", "[rng][threads]") {
    const PhiloxStream rng(99, 5);
    const int64_t n = 100003;
    std::vector<float> forward(n), reversed(n), threaded(n);
    for (int64_t i = 0; i < n; ++i) forward[i] = rng.normal(static_cast<uint64_t>(i));
    for (int64_t i = n - 1; i >= 0; --i) reversed[i] = rng.normal(static_cast<uint64_t>(i));
    set_num_threads(2);
    parallel_for(n, [&](int64_t i) { threaded[i] = rng.normal(static_cast<uint64_t>(i)); });
    REQUIRE(forward == reversed);
    REQUIRE(forward == threaded);
}
