// cuda/gather.cuh - the implicit GEMM's gathered operand: a convolution's input (or output
// gradient) in NHWC read as the GEMM matrix A(m, k), m = (image, output row, output column),
// k = (kh, kw, channel), with no im2col buffer. Host and device code (PIN_HD): the GPU kernels use
// it, and tests/test_gather.cpp checks on the CPU that GatherMode::Rows (a thread's rows decoded once,
// a slice's tap once) reads exactly what the generic per-element decode reads, for every GEMM
// element a thread block loads.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define PIN_HD __host__ __device__
#define PIN_UNROLL _Pragma("unroll")
#else
#define PIN_HD
#define PIN_UNROLL
#endif

namespace pin::cuda {

// The GEMM kernels' block size and K-slice depth, which the row gather's thread layout assumes.
constexpr int kGatherThreads = 256, kGatherDepth = 16;

// GatherMode::Rows (see ops.cuh): an A operand that gathers convolution input can decode each of a
// thread's rows (pixels) once per launch and each K slice's tap once, instead of four integer
// divisions per element. A slice of 16 k lies in one tap when the channel count is a multiple of 16
// (launch_gemm sets `rows` only then); both GEMMs load A with 16-deep slices at multiples of 16.
template <bool kTransposed>
struct Gather;
struct GatherRow {
    int b = 0, y = 0, x = 0;  // image; first source row / column (direct) or oh + pad, ow + pad (transposed)
    bool valid = false;       // the row exists (m < M)
};
template <class T>
struct IsGather {
    static constexpr bool value = false;
};
template <bool kTransposed>
struct IsGather<Gather<kTransposed>> {
    static constexpr bool value = true;
};
// The rows (tid + i kGatherThreads) / kGatherDepth (i < N) of an A slice, as both GEMMs lay out
// their A loads.
template <int N, class LoadA>
PIN_HD void decode_rows(const LoadA& la, int64_t m0, int64_t M, int tid, GatherRow (&rows)[N]) {
    PIN_UNROLL
    for (int i = 0; i < N; ++i) rows[i] = la.row(m0 + (tid + i * kGatherThreads) / kGatherDepth, M);
}
// out[i] = A(row i, k0 + tid % kGatherDepth): one tap decode for the slice, none per element.
template <int N, class LoadA>
PIN_HD void gather_rows(const LoadA& la, const GatherRow (&rows)[N], int64_t k0, int64_t kend, int tid, float (&out)[N]) {
    int kh, kw, c;
    la.slice(k0, tid % kGatherDepth, kh, kw, c);
    const bool in_k = k0 + tid % kGatherDepth < kend;
    PIN_UNROLL
    for (int i = 0; i < N; ++i) out[i] = in_k ? la.at(rows[i], kh, kw, c) : 0.0f;
}

// ---- gathers from NHWC sources ----------------------------------------------------------------------
// Row m = (b, oh, ow) of a grid Ho x Wo; column k = (kh, kw, c). Direct: the source pixel is
// (oh s - p + kh, ow s - p + kw) (forward convolution). Transposed: it is ((oh + p - kh) / s, ...)
// when that divides exactly (transposed convolution, convolution input gradient).
template <bool kTransposed>
struct Gather {
    const float* src;
    int64_t Ho, Wo, H, W, C, K, stride, pad;
    bool rows = false;  // GatherMode::Rows applies (set by launch_gemm)
    // Row m's image and source origin, decoded once per launch.
    PIN_HD GatherRow row(int64_t m64, int64_t M) const {
        GatherRow r;
        r.valid = m64 < M;
        if (!r.valid) return r;
        const unsigned m = static_cast<unsigned>(m64), uWo = static_cast<unsigned>(Wo), uHo = static_cast<unsigned>(Ho);
        const unsigned t = m / uWo, ow = m - t * uWo, b = t / uHo, oh = t - b * uHo;
        r.b = static_cast<int>(b);
        if (kTransposed) {
            r.y = static_cast<int>(oh) + static_cast<int>(pad);
            r.x = static_cast<int>(ow) + static_cast<int>(pad);
        } else {
            r.y = static_cast<int>(oh * stride) - static_cast<int>(pad);
            r.x = static_cast<int>(ow * stride) - static_cast<int>(pad);
        }
        return r;
    }
    // The tap (kh, kw) of the 16-deep slice starting at k0 (C a multiple of 16) and the channel of kk.
    PIN_HD void slice(int64_t k0, int kk, int& kh, int& kw, int& c) const {
        const unsigned k = static_cast<unsigned>(k0), uC = static_cast<unsigned>(C), uK = static_cast<unsigned>(K);
        const unsigned tap = k / uC, ukh = tap / uK;
        kh = static_cast<int>(ukh);
        kw = static_cast<int>(tap - ukh * uK);
        c = static_cast<int>(k - tap * uC) + kk;
    }
    // The same value as operator()(m, k) for the row and tap decoded above.
    PIN_HD float at(const GatherRow& r, int kh, int kw, int c) const {
        if (!r.valid) return 0.0f;
        int ih, iw;
        if (kTransposed) {
            const int y = r.y - kh, x = r.x - kw;
            if (y < 0 || x < 0) return 0.0f;
            const int s = static_cast<int>(stride), qy = y / s, qx = x / s;
            if (qy * s != y || qx * s != x) return 0.0f;
            ih = qy;
            iw = qx;
        } else {
            ih = r.y + kh;
            iw = r.x + kw;
        }
        if (ih < 0 || iw < 0 || ih >= H || iw >= W) return 0.0f;
        return src[((static_cast<int64_t>(r.b) * H + ih) * W + iw) * C + c];
    }
    // 32-bit unsigned index arithmetic: 64-bit division is emulated and dominated the kernel
    // (launch_gemm refuses M or K >= 2^31).
    PIN_HD float operator()(int64_t m64, int64_t k64) const {
        const unsigned k = static_cast<unsigned>(k64), m = static_cast<unsigned>(m64);
        const unsigned uC = static_cast<unsigned>(C), uK = static_cast<unsigned>(K), uWo = static_cast<unsigned>(Wo),
                       uHo = static_cast<unsigned>(Ho);
        const unsigned tap = k / uC, c = k - tap * uC, kh = tap / uK, kw = tap - kh * uK;
        const unsigned t = m / uWo, ow = m - t * uWo, b = t / uHo, oh = t - b * uHo;
        int ih, iw;
        if (kTransposed) {
            const int y = static_cast<int>(oh + pad) - static_cast<int>(kh), x = static_cast<int>(ow + pad) - static_cast<int>(kw);
            if (y < 0 || x < 0) return 0.0f;
            const unsigned us = static_cast<unsigned>(stride), qy = static_cast<unsigned>(y) / us, qx = static_cast<unsigned>(x) / us;
            if (qy * us != static_cast<unsigned>(y) || qx * us != static_cast<unsigned>(x)) return 0.0f;
            ih = static_cast<int>(qy);
            iw = static_cast<int>(qx);
        } else {
            ih = static_cast<int>(oh * stride + kh) - static_cast<int>(pad);
            iw = static_cast<int>(ow * stride + kw) - static_cast<int>(pad);
        }
        if (ih < 0 || iw < 0 || ih >= H || iw >= W) return 0.0f;
        return src[((static_cast<int64_t>(b) * H + ih) * W + iw) * C + c];
    }
};
}  // namespace pin::cuda
