// pin/core/rng.hpp - Philox4x32-10 counter-based random numbers, identical on host and device.
//
// Why counter-based: every draw is a pure function of (seed, counter), so a stream can be split
// across threads or CUDA blocks by giving each element its own counter, and the result never
// depends on how the work was scheduled. The constants and round structure follow Salmon et al.,
// "Parallel random numbers: as easy as 1, 2, 3" (SC'11), the same generator cuRAND calls
// PHILOX4_32_10; tests check the published known-answer vectors.
#pragma once
#include <cmath>
#include <cstdint>

#include "pin/core/platform.hpp"

namespace pin {

struct Philox4x32 {
    uint32_t v[4];
};

namespace detail {
PIN_HOST_DEVICE PIN_FORCEINLINE void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
    const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
    hi = static_cast<uint32_t>(p >> 32);
    lo = static_cast<uint32_t>(p);
}
}  // namespace detail

// Ten rounds of Philox4x32 on counter `ctr` with key `key` (two 32-bit words).
PIN_HOST_DEVICE inline Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t key0, uint32_t key1) {
    constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
    constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
    for (int round = 0; round < 10; ++round) {
        uint32_t hi0, lo0, hi1, lo1;
        detail::mulhilo32(kM0, ctr.v[0], hi0, lo0);
        detail::mulhilo32(kM1, ctr.v[2], hi1, lo1);
        Philox4x32 next;
        next.v[0] = hi1 ^ ctr.v[1] ^ key0;
        next.v[1] = lo1;
        next.v[2] = hi0 ^ ctr.v[3] ^ key1;
        next.v[3] = lo0;
        ctr = next;
        key0 += kW0;
        key1 += kW1;
    }
    return ctr;
}

// 24 random bits to a float in [0, 1): exact, and never 1.0f (which 32 bits could round up to).
PIN_HOST_DEVICE PIN_FORCEINLINE float uint_to_unit_float(uint32_t x) {
    return static_cast<float>(x >> 8) * (1.0f / 16777216.0f);
}

// A stream addressed by (seed, stream id, index). Element i of a stream uses counter
// (i / 4, stream_lo, stream_hi, 0) word i % 4, so any element can be drawn on its own, in any order,
// on any thread or device, and gives the same value.
class PhiloxStream {
public:
    PIN_HOST_DEVICE PhiloxStream(uint64_t seed, uint64_t stream)
        : key0_(static_cast<uint32_t>(seed)), key1_(static_cast<uint32_t>(seed >> 32)),
          s0_(static_cast<uint32_t>(stream)), s1_(static_cast<uint32_t>(stream >> 32)) {}

    // Four consecutive 32-bit words starting at element 4*block.
    PIN_HOST_DEVICE Philox4x32 block(uint64_t block_index) const {
        Philox4x32 c{{static_cast<uint32_t>(block_index), static_cast<uint32_t>(block_index >> 32), s0_, s1_}};
        return philox4x32_10(c, key0_, key1_);
    }
    PIN_HOST_DEVICE uint32_t bits(uint64_t index) const { return block(index >> 2).v[index & 3]; }

    // Uniform in [0, 1).
    PIN_HOST_DEVICE float uniform(uint64_t index) const { return uint_to_unit_float(bits(index)); }

    // Standard normal by Box-Muller on the pair of words (2*(index), 2*(index)+1) of a block;
    // the cosine branch only, so every index maps to exactly one value.
    PIN_HOST_DEVICE float normal(uint64_t index) const {
        const Philox4x32 b = block(index >> 1);
        const int half = static_cast<int>(index & 1) * 2;
        // u1 in (0, 1] so log is finite.
        const float u1 = (static_cast<float>(b.v[half] >> 8) + 1.0f) * (1.0f / 16777216.0f);
        const float u2 = uint_to_unit_float(b.v[half + 1]);
        return sqrtf(-2.0f * logf(u1)) * cosf(6.283185307179586f * u2);
    }

    // 1 with probability p, else 0; the released PIN code's rule q = p > U(0, 1).
    PIN_HOST_DEVICE float bernoulli(uint64_t index, float p) const { return p > uniform(index) ? 1.0f : 0.0f; }

private:
    uint32_t key0_, key1_, s0_, s1_;
};

}  // namespace pin
