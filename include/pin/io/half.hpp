// pin/io/half.hpp - IEEE 754 binary16 and bfloat16 <-> float32 conversions (portable, exact).
#pragma once
#include <cstdint>
#include <cstring>

#include "pin/core/platform.hpp"

namespace pin::io {

PIN_HOST_DEVICE inline float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | (mantissa << 13);  // inf / nan
    } else if (exponent == 0) {
        if (mantissa == 0) {
            bits = sign;  // +-0
        } else {  // subnormal: normalise
            exponent = 127 - 15 + 1;
            while ((mantissa & 0x400u) == 0) {
                mantissa <<= 1;
                --exponent;
            }
            mantissa &= 0x3ffu;
            bits = sign | (exponent << 23) | (mantissa << 13);
        }
    } else {
        bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// Round to nearest even; overflow goes to infinity, NaN stays NaN.
PIN_HOST_DEVICE inline uint16_t float_to_half(float f) {
    uint32_t x;
    std::memcpy(&x, &f, sizeof x);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    const uint32_t abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
    if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past 65504
    if (abs < 0x38800000u) {  // below the smallest normal half: subnormal or zero
        if (abs < 0x33000000u) return sign;  // below half of the smallest subnormal
        // value = m * 2^(e - 150) with m the 24-bit significand; a subnormal half is r * 2^-24,
        // so r = m >> (126 - e), rounded to nearest even.
        const uint32_t e = abs >> 23;
        const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
        const uint32_t drop = 126 - e;
        const uint32_t kept = m >> drop;
        const uint32_t rest = m & ((1u << drop) - 1u);
        const uint32_t halfway = 1u << (drop - 1);
        const uint32_t r = kept + ((rest > halfway || (rest == halfway && (kept & 1u))) ? 1u : 0u);
        return static_cast<uint16_t>(sign | r);
    }
    const uint32_t e = (abs >> 23) - 127 + 15;
    const uint32_t m = abs & 0x7fffffu;
    uint32_t h = (e << 10) | (m >> 13);
    const uint32_t rest = m & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent: correct
    return static_cast<uint16_t>(sign | h);
}

PIN_HOST_DEVICE inline float bfloat16_to_float(uint16_t b) {
    const uint32_t bits = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// Round to nearest, ties to even, as CUDA's __float2bfloat16_rn (and a tensor core reading a float
// operand as bfloat16); a NaN stays a (quiet) NaN, an overflow becomes an infinity.
PIN_HOST_DEVICE inline uint16_t float_to_bfloat16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}
// f as the nearest bfloat16 value (8 significant bits).
PIN_HOST_DEVICE inline float round_to_bfloat16(float f) { return bfloat16_to_float(float_to_bfloat16(f)); }

}  // namespace pin::io
