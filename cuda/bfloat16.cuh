// cuda/bfloat16.cuh - activations stored as bfloat16 (ActivationStorage::BF16, ops.cuh): the bits,
// and their conversions to and from float, host and device code. Own type rather than CUDA's
// __nv_bfloat16 so that the host API (ops.cuh) and the CPU tests of the gathers (tests/test_gather.cpp)
// need no CUDA headers; the bits and the rounding (to nearest, ties to even) are CUDA's
// __float2bfloat16_rn, so the tensor cores read the same values either way.
#pragma once
#include <cstdint>
#include <cstring>

#include "pin/io/half.hpp"

#if defined(__CUDACC__)
#include <cuda_bf16.h>  // device code converts with the hardware's instructions
#define PIN_HD __host__ __device__
#define PIN_UNROLL _Pragma("unroll")
#else
#define PIN_HD
#define PIN_UNROLL
#endif

namespace pin::cuda {

struct Bf16 {
    uint16_t bits;
};

PIN_HD inline float to_float(float x) { return x; }
PIN_HD inline float to_float(Bf16 x) {
    const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    std::memcpy(&f, &u, 4);
    return f;
#endif
}
// Round to nearest, ties to even; NaN stays a NaN. On the GPU the conversion instruction itself
// (one instruction, against about six of integer arithmetic; the same bits for every non-NaN value).
PIN_HD inline Bf16 to_bf16(float f) {
#if defined(__CUDA_ARCH__)
    return Bf16{__bfloat16_as_ushort(__float2bfloat16_rn(f))};
#else
    return Bf16{pin::io::float_to_bfloat16(f)};
#endif
}
// A value as storage type T.
template <class T>
PIN_HD inline T from_float(float v);
template <>
PIN_HD inline float from_float<float>(float v) {
    return v;
}
template <>
PIN_HD inline Bf16 from_float<Bf16>(float v) {
    return to_bf16(v);
}

// p[0..3]: one 16-byte load on the GPU (p 16-byte aligned), four loads on the host.
PIN_HD inline void load4(const float* p, float (&v)[4]) {
#if defined(__CUDA_ARCH__)
    const float4 q = __ldg(reinterpret_cast<const float4*>(p));
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
#else
    for (int j = 0; j < 4; ++j) v[j] = p[j];
#endif
}
// The same from bfloat16: one 8-byte load on the GPU (p 8-byte aligned).
PIN_HD inline void load4(const Bf16* p, float (&v)[4]) {
#if defined(__CUDA_ARCH__)
    const uint2 q = __ldg(reinterpret_cast<const uint2*>(p));
    v[0] = __uint_as_float(q.x << 16), v[1] = __uint_as_float(q.x & 0xffff0000u);
    v[2] = __uint_as_float(q.y << 16), v[3] = __uint_as_float(q.y & 0xffff0000u);
#else
    for (int j = 0; j < 4; ++j) v[j] = to_float(p[j]);
#endif
}

// p[0..3] = v: one 16-byte store on the GPU (p 16-byte aligned), four stores on the host.
PIN_HD inline void store4(float* p, const float (&v)[4]) {
#if defined(__CUDA_ARCH__)
    *reinterpret_cast<float4*>(p) = float4{v[0], v[1], v[2], v[3]};
#else
    for (int j = 0; j < 4; ++j) p[j] = v[j];
#endif
}
// The same as bfloat16, rounded to nearest even: one 8-byte store on the GPU (p 8-byte aligned).
PIN_HD inline void store4(Bf16* p, const float (&v)[4]) {
#if defined(__CUDA_ARCH__)
    const __nv_bfloat162 lo = __floats2bfloat162_rn(v[0], v[1]), hi = __floats2bfloat162_rn(v[2], v[3]);  // .x the lower half
    *reinterpret_cast<uint2*>(p) = uint2{*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi)};
#else
    for (int j = 0; j < 4; ++j) p[j] = to_bf16(v[j]);
#endif
}
// Whether p suits load4 / store4 of its type.
PIN_HD inline bool vector_aligned(const float* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
PIN_HD inline bool vector_aligned(const Bf16* p) { return reinterpret_cast<uintptr_t>(p) % 8 == 0; }

}  // namespace pin::cuda
