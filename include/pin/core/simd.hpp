// pin/core/simd.hpp - the one SIMD vector type the CPU kernels are written against.
//
// AVX-512 (16 lanes) when the compiler targets it, AVX2+FMA (8 lanes), else a plain array of 8
// floats that any compiler handles. Kernels pick their register tiles from VecF::kLanes and
// VecF::kRegisters, so one source serves all three.
#pragma once
#include <cstdint>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#include "pin/core/platform.hpp"

namespace pin::simd {

#if defined(__AVX512F__)
struct VecF {
    static constexpr int kLanes = 16;
    static constexpr int kRegisters = 32;
    static constexpr const char* kName = "avx512";
    __m512 v;
    static PIN_FORCEINLINE VecF zero() { return {_mm512_setzero_ps()}; }
    static PIN_FORCEINLINE VecF broadcast(float x) { return {_mm512_set1_ps(x)}; }
    static PIN_FORCEINLINE VecF load(const float* p) { return {_mm512_loadu_ps(p)}; }
    static PIN_FORCEINLINE VecF load_partial(const float* p, int n) {
        return {_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p)};
    }
    PIN_FORCEINLINE void store(float* p) const { _mm512_storeu_ps(p, v); }
    // Non-temporal store of a 64-byte aligned vector: no read-for-ownership of the line.
    PIN_FORCEINLINE void stream(float* p) const { _mm512_stream_ps(p, v); }
    PIN_FORCEINLINE void store_partial(float* p, int n) const {
        _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), v);
    }
    friend PIN_FORCEINLINE VecF fma(VecF a, VecF b, VecF c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
    friend PIN_FORCEINLINE VecF operator+(VecF a, VecF b) { return {_mm512_add_ps(a.v, b.v)}; }
    friend PIN_FORCEINLINE VecF operator-(VecF a, VecF b) { return {_mm512_sub_ps(a.v, b.v)}; }
    friend PIN_FORCEINLINE VecF operator*(VecF a, VecF b) { return {_mm512_mul_ps(a.v, b.v)}; }
    friend PIN_FORCEINLINE VecF max(VecF a, VecF b) { return {_mm512_max_ps(a.v, b.v)}; }
    friend PIN_FORCEINLINE VecF min(VecF a, VecF b) { return {_mm512_min_ps(a.v, b.v)}; }
    // Lane-wise cond > 0 ? a : b (false for NaN).
    friend PIN_FORCEINLINE VecF select_positive(VecF cond, VecF a, VecF b) {
        return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(cond.v, _mm512_setzero_ps(), _CMP_GT_OQ), b.v, a.v)};
    }
    // acc[i] += double(a[i]) * double(b[i]) for every lane: exact products, double sums.
    friend PIN_FORCEINLINE void add_products_f64(double* acc, VecF a, VecF b) {
        const __m512d lo = _mm512_mul_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(a.v)), _mm512_cvtps_pd(_mm512_castps512_ps256(b.v)));
        const __m512d hi = _mm512_mul_pd(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a.v), 1))),
                                         _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(b.v), 1))));
        _mm512_storeu_pd(acc, _mm512_add_pd(_mm512_loadu_pd(acc), lo));
        _mm512_storeu_pd(acc + 8, _mm512_add_pd(_mm512_loadu_pd(acc + 8), hi));
    }
    PIN_FORCEINLINE float sum() const { return _mm512_reduce_add_ps(v); }
};
#elif defined(__AVX2__) && defined(__FMA__)
struct VecF {
    static constexpr int kLanes = 8;
    static constexpr int kRegisters = 16;
    static constexpr const char* kName = "avx2";
    __m256 v;
    static PIN_FORCEINLINE __m256i tail_mask(int n) {
        const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
    }
    static PIN_FORCEINLINE VecF zero() { return {_mm256_setzero_ps()}; }
    static PIN_FORCEINLINE VecF broadcast(float x) { return {_mm256_set1_ps(x)}; }
    static PIN_FORCEINLINE VecF load(const float* p) { return {_mm256_loadu_ps(p)}; }
    static PIN_FORCEINLINE VecF load_partial(const float* p, int n) { return {_mm256_maskload_ps(p, tail_mask(n))}; }
    PIN_FORCEINLINE void store(float* p) const { _mm256_storeu_ps(p, v); }
    PIN_FORCEINLINE void stream(float* p) const { _mm256_stream_ps(p, v); }
    PIN_FORCEINLINE void store_partial(float* p, int n) const { _mm256_maskstore_ps(p, tail_mask(n), v); }
    friend PIN_FORCEINLINE VecF fma(VecF a, VecF b, VecF c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
    friend PIN_FORCEINLINE VecF operator+(VecF a, VecF b) { return {_mm256_add_ps(a.v, b.v)}; }
    friend PIN_FORCEINLINE VecF operator-(VecF a, VecF b) { return {_mm256_sub_ps(a.v, b.v)}; }
    friend PIN_FORCEINLINE VecF operator*(VecF a, VecF b) { return {_mm256_mul_ps(a.v, b.v)}; }
    friend PIN_FORCEINLINE VecF max(VecF a, VecF b) { return {_mm256_max_ps(a.v, b.v)}; }
    friend PIN_FORCEINLINE VecF min(VecF a, VecF b) { return {_mm256_min_ps(a.v, b.v)}; }
    friend PIN_FORCEINLINE VecF select_positive(VecF cond, VecF a, VecF b) {
        return {_mm256_blendv_ps(b.v, a.v, _mm256_cmp_ps(cond.v, _mm256_setzero_ps(), _CMP_GT_OQ))};
    }
    friend PIN_FORCEINLINE void add_products_f64(double* acc, VecF a, VecF b) {
        const __m256d lo = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a.v)), _mm256_cvtps_pd(_mm256_castps256_ps128(b.v)));
        const __m256d hi = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(a.v, 1)), _mm256_cvtps_pd(_mm256_extractf128_ps(b.v, 1)));
        _mm256_storeu_pd(acc, _mm256_add_pd(_mm256_loadu_pd(acc), lo));
        _mm256_storeu_pd(acc + 4, _mm256_add_pd(_mm256_loadu_pd(acc + 4), hi));
    }
    PIN_FORCEINLINE float sum() const {
        alignas(32) float t[8];
        _mm256_store_ps(t, v);
        return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
    }
};
#else
struct VecF {
    static constexpr int kLanes = 8;
    static constexpr int kRegisters = 16;
    static constexpr const char* kName = "portable";
    float v[8];
    static VecF zero() { return broadcast(0.0f); }
    static VecF broadcast(float x) {
        VecF r;
        for (int i = 0; i < 8; ++i) r.v[i] = x;
        return r;
    }
    static VecF load(const float* p) {
        VecF r;
        for (int i = 0; i < 8; ++i) r.v[i] = p[i];
        return r;
    }
    static VecF load_partial(const float* p, int n) {
        VecF r = zero();
        for (int i = 0; i < n; ++i) r.v[i] = p[i];
        return r;
    }
    void store(float* p) const {
        for (int i = 0; i < 8; ++i) p[i] = v[i];
    }
    void stream(float* p) const { store(p); }
    void store_partial(float* p, int n) const {
        for (int i = 0; i < n; ++i) p[i] = v[i];
    }
    friend VecF fma(VecF a, VecF b, VecF c) {
        for (int i = 0; i < 8; ++i) c.v[i] += a.v[i] * b.v[i];
        return c;
    }
    friend VecF operator+(VecF a, VecF b) {
        for (int i = 0; i < 8; ++i) a.v[i] += b.v[i];
        return a;
    }
    friend VecF operator-(VecF a, VecF b) {
        for (int i = 0; i < 8; ++i) a.v[i] -= b.v[i];
        return a;
    }
    friend VecF operator*(VecF a, VecF b) {
        for (int i = 0; i < 8; ++i) a.v[i] *= b.v[i];
        return a;
    }
    friend VecF max(VecF a, VecF b) {
        for (int i = 0; i < 8; ++i) a.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i];
        return a;
    }
    friend VecF min(VecF a, VecF b) {
        for (int i = 0; i < 8; ++i) a.v[i] = a.v[i] < b.v[i] ? a.v[i] : b.v[i];
        return a;
    }
    friend VecF select_positive(VecF cond, VecF a, VecF b) {
        for (int i = 0; i < 8; ++i) a.v[i] = cond.v[i] > 0.0f ? a.v[i] : b.v[i];
        return a;
    }
    friend void add_products_f64(double* acc, VecF a, VecF b) {
        for (int i = 0; i < 8; ++i) acc[i] += static_cast<double>(a.v[i]) * static_cast<double>(b.v[i]);
    }
    float sum() const {
        return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
    }
};
#endif

// Orders earlier non-temporal stores before later stores (call before another thread may read).
inline void store_fence() {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
    _mm_sfence();
#endif
}

// Dot product of two float arrays, vectorised with a fixed summation order (so it is deterministic).
inline float dot(const float* a, const float* b, int64_t n) {
    constexpr int L = VecF::kLanes;
    VecF s0 = VecF::zero(), s1 = VecF::zero(), s2 = VecF::zero(), s3 = VecF::zero();
    int64_t i = 0;
    for (; i + 4 * L <= n; i += 4 * L) {
        s0 = fma(VecF::load(a + i), VecF::load(b + i), s0);
        s1 = fma(VecF::load(a + i + L), VecF::load(b + i + L), s1);
        s2 = fma(VecF::load(a + i + 2 * L), VecF::load(b + i + 2 * L), s2);
        s3 = fma(VecF::load(a + i + 3 * L), VecF::load(b + i + 3 * L), s3);
    }
    for (; i + L <= n; i += L) s0 = fma(VecF::load(a + i), VecF::load(b + i), s0);
    if (i < n) {
        const int r = static_cast<int>(n - i);
        s1 = fma(VecF::load_partial(a + i, r), VecF::load_partial(b + i, r), s1);
    }
    return ((s0 + s1) + (s2 + s3)).sum();
}

// y[i] += a * x[i]
inline void axpy(float a, const float* x, float* y, int64_t n) {
    constexpr int L = VecF::kLanes;
    const VecF va = VecF::broadcast(a);
    int64_t i = 0;
    for (; i + L <= n; i += L) fma(va, VecF::load(x + i), VecF::load(y + i)).store(y + i);
    if (i < n) {
        const int r = static_cast<int>(n - i);
        fma(va, VecF::load_partial(x + i, r), VecF::load_partial(y + i, r)).store_partial(y + i, r);
    }
}

}  // namespace pin::simd
