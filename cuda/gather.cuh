// cuda/gather.cuh - the implicit GEMM's gathered operand: a convolution's input (or output
// gradient) in NHWC read as the GEMM matrix A(m, k), m = (image, output row, output column),
// k = (kh, kw, channel), with no im2col buffer; the row and vector loads of the GEMM kernels
// (GatherMode Rows, Vector), the sub-pixel classes of strided transposed gathers, and the per-pixel
// sums of the 1-channel layers. Host and device code (PIN_HD): the GPU kernels use it, and
// tests/test_gather.cpp checks on the CPU that every form reads exactly what the generic
// per-element decode (an im2col written out there) reads.
#pragma once
#include <cstdint>

#include "bfloat16.cuh"  // PIN_HD, PIN_UNROLL, load4; sources stored as float or bfloat16

namespace pin::cuda {

// The GEMM kernels' block size and K-slice depth, which the row gather's thread layout assumes.
constexpr int kGatherThreads = 256, kGatherDepth = 16;

// GatherMode::Rows (see ops.cuh): an A operand that gathers convolution input can decode each of a
// thread's rows (pixels) once per launch and each K slice's tap once, instead of four integer
// divisions per element. A slice of 16 k lies in one tap when the channel count is a multiple of 16
// (launch_gemm sets `rows` only then); both GEMMs load A with 16-deep slices at multiples of 16.
template <bool kTransposed, class Src = float>
struct Gather;
struct GatherRow {
    int b = 0, y = 0, x = 0;  // image; first source row / column (direct) or oh + pad, ow + pad (transposed)
    bool valid = false;       // the row exists (m < M)
};
template <class T>
struct IsGather {
    static constexpr bool value = false;
};
template <bool kTransposed, class Src>
struct IsGather<Gather<kTransposed, Src>> {
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

// GatherMode::Vector with MathMode::BF16: the wide tensor-core kernel (gemm_kernels.cuh) loads
// 128 x 32 A slices and 32 x 64 B slices of 4-float vectors. Thread t of 256 loads A rows t / 8 + 32 i (i < 4),
// columns 4 (t % 8) .. + 3, and B rows t / 16 + 16 j (j < 2), columns 4 (t % 16) .. + 3: a warp reads
// 4 rows x 32 consecutive channels (128 bytes each) of A and 2 rows x 64 columns of B. A 32-deep
// slice lies in one tap when the gathered channel count is a multiple of 32 (the launch checks).
constexpr int kWideRows = 128, kWideDepth = 32, kWideCols = 64;
constexpr int kWideARows = kWideRows * kWideDepth / 4 / kGatherThreads;  // A vectors per thread
constexpr int kWideBRows = kWideDepth * kWideCols / 4 / kGatherThreads;  // B vectors per thread
static_assert(kWideARows == 4 && kWideBRows == 2, "the wide kernel's thread layout");
PIN_HD inline int wide_a_row(int tid, int i) { return tid / 8 + 32 * i; }
PIN_HD inline int wide_a_col(int tid) { return (tid % 8) * 4; }
PIN_HD inline int wide_b_row(int tid, int j) { return tid / 16 + 16 * j; }
PIN_HD inline int wide_b_col(int tid) { return (tid % 16) * 4; }
template <class LoadA>
PIN_HD void decode_wide_rows(const LoadA& la, int64_t m0, int64_t M, int tid, GatherRow (&rows)[kWideARows]) {
    PIN_UNROLL
    for (int i = 0; i < kWideARows; ++i) rows[i] = la.row(m0 + wide_a_row(tid, i), M);
}
// v[i][0..3] = A(row i, k0 + wide_a_col(tid) + 0..3): one tap decode per slice, one vector per row.
template <class LoadA>
PIN_HD void gather_wide(const LoadA& la, const GatherRow (&rows)[kWideARows], int64_t k0, int tid, float (&v)[kWideARows][4]) {
    int kh, kw, c;
    la.slice(k0, wide_a_col(tid), kh, kw, c);
    PIN_UNROLL
    for (int i = 0; i < kWideARows; ++i) la.at4(rows[i], kh, kw, c, v[i]);
}

// Row m of the GEMM matrix times a vector w of its K = k^2 C entries ((kh, kw, c) order, as the
// packed weights): a convolution with one output channel (the DAE's last layer), which the GEMM
// kernels would compute in 1 of their 64 columns. vec: C % 4 == 0 and src, w 16-byte aligned, so
// 4 channels per load. Taps in order, channels in order within a tap. With parts > 1, only this
// part's share of the channels: groups of 4 (of 1 without vec) part, part + parts, ... - the
// per-pixel kernel gives a pixel `parts` neighbouring threads, whose loads of one tap then cover a
// contiguous run of the pixel's channels, and adds their sums.
template <class G>
PIN_HD float gather_dot(const G& la, const float* w, int64_t m, int64_t M, bool vec, int part = 0, int parts = 1) {
    const GatherRow r = la.row(m, M);
    const int C = static_cast<int>(la.C), k = static_cast<int>(la.K);
    float s = 0.0f;
    for (int kh = 0; kh < k; ++kh)
        for (int kw = 0; kw < k; ++kw) {
            const int64_t o = la.pixel_offset(r, kh, kw);
            if (o < 0) continue;
            const auto* x = la.src + o;
            const float* wt = w + (kh * k + kw) * C;
            if (vec) {
                for (int c = 4 * part; c < C; c += 4 * parts) {
                    float a[4], b[4];
                    load4(x + c, a);
                    load4(wt + c, b);
                    s += a[0] * b[0] + a[1] * b[1] + a[2] * b[2] + a[3] * b[3];
                }
            } else {
                for (int c = part; c < C; c += parts) s += to_float(x[c]) * wt[c];
            }
        }
    return s;
}

// Output channels n + j step .. n + j step + 3 (j < kQuads) of row m for a gather with one channel
// (C = 1: the stems, which see the 1-channel face): sum over the taps of the tap's pixel times
// w[tap N + ...], w the packed weights (K^2 rows of N), N, n and step multiples of 4, w 16-byte
// aligned. Each tap's pixel is read once for all 4 kQuads channels (the index arithmetic and the
// bounds tests are most of the work: 9 products per output). The GEMM kernels would spend a whole K
// slice of 16 or 32 on these 9 (or 1) products per output.
template <int kQuads, class G>
PIN_HD void gather_one_input_quads(const G& la, const float* w, int64_t N, int64_t m, int64_t M, int64_t n, int64_t step,
                                   float (&v)[kQuads][4]) {
    const GatherRow r = la.row(m, M);
    const int k = static_cast<int>(la.K);
    PIN_UNROLL
    for (int j = 0; j < kQuads; ++j) v[j][0] = v[j][1] = v[j][2] = v[j][3] = 0.0f;
    for (int kh = 0; kh < k; ++kh)
        for (int kw = 0; kw < k; ++kw) {
            const int64_t o = la.pixel_offset(r, kh, kw);
            if (o < 0) continue;
            const float x = to_float(la.src[o]);
            const float* wt = w + (kh * k + kw) * N + n;
            PIN_UNROLL
            for (int j = 0; j < kQuads; ++j) {
                float u[4];
                load4(wt + j * step, u);
                for (int i = 0; i < 4; ++i) v[j][i] += x * u[i];
            }
        }
}
// Output channels n .. n + 3 of row m (gather_one_input_quads with one group).
template <class G>
PIN_HD void gather_one_input(const G& la, const float* w, int64_t N, int64_t m, int64_t M, int64_t n, float (&v)[4]) {
    float q[1][4];
    gather_one_input_quads<1>(la, w, N, m, M, n, 0, q);
    for (int i = 0; i < 4; ++i) v[i] = q[0][i];
}

// ---- gathers from NHWC sources ----------------------------------------------------------------------
// Row m = (b, oh, ow) of a grid Ho x Wo; column k = (kh, kw, c). Direct: the source pixel is
// (oh s - p + kh, ow s - p + kw) (forward convolution). Transposed: it is ((oh + p - kh) / s, ...)
// when that divides exactly (transposed convolution, convolution input gradient).
// Src: how the source is stored (float, or Bf16 with ActivationStorage::BF16); values are read as
// float either way.
template <bool kTransposed, class Src>
struct Gather {
    using Source = Src;
    const Src* src;
    int64_t Ho, Wo, H, W, C, K, stride, pad;
    bool rows = false;  // GatherMode::Rows applies (set by launch_gemm)
    static constexpr bool kIsTransposed = kTransposed;
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
    // Where the row's source pixel for tap (kh, kw) starts in src (its channel 0), or -1 when the
    // tap falls outside the source or between its pixels (a zero of the GEMM matrix).
    PIN_HD int64_t pixel_offset(const GatherRow& r, int kh, int kw) const {
        if (!r.valid) return -1;
        int ih, iw;
        if (kTransposed) {
            const int y = r.y - kh, x = r.x - kw;
            if (y < 0 || x < 0) return -1;
            // Strides 1 and 2 (all of PIN's) without a division: a GPU divides in about twenty
            // instructions, and this runs for every row of every slice.
            if (stride == 1) {
                ih = y;
                iw = x;
            } else if (stride == 2) {
                if ((y | x) & 1) return -1;
                ih = y >> 1;
                iw = x >> 1;
            } else {
                const int s = static_cast<int>(stride), qy = y / s, qx = x / s;
                if (qy * s != y || qx * s != x) return -1;
                ih = qy;
                iw = qx;
            }
        } else {
            ih = r.y + kh;
            iw = r.x + kw;
        }
        if (ih < 0 || iw < 0 || ih >= H || iw >= W) return -1;
        return ((static_cast<int64_t>(r.b) * H + ih) * W + iw) * C;
    }
    // The same value as operator()(m, k) for the row and tap decoded above.
    PIN_HD float at(const GatherRow& r, int kh, int kw, int c) const {
        const int64_t o = pixel_offset(r, kh, kw);
        return o < 0 ? 0.0f : to_float(src[o + c]);
    }
    // Channels c .. c + 3 of the same pixel, one 16-byte load on the GPU (8 bytes from bfloat16): c
    // is a multiple of 4 and src 16-byte aligned (the wide kernel's launch checks both).
    PIN_HD void at4(const GatherRow& r, int kh, int kw, int c, float (&v)[4]) const {
        const int64_t o = pixel_offset(r, kh, kw);
        if (o < 0) {
            v[0] = v[1] = v[2] = v[3] = 0.0f;
            return;
        }
        load4(src + o + c, v);
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
        return to_float(src[((static_cast<int64_t>(b) * H + ih) * W + iw) * C + c]);
    }
};

// ---- sub-pixel classes of a strided transposed gather -------------------------------------------
// Output pixel (oh, ow) of a transposed gather with stride s takes tap kh only when s divides
// oh + p - kh: the rows with (oh + p) % s == ry take the taps kh = ry, ry + s, ... < k. One GEMM per
// class (ry, rx), over its pixels and its taps only, gives every output the same sum without the
// products with zeros that the whole gather's GEMM computes ((s^2 - 1) / s^2 of them: 3/4 at
// stride 2). The classes partition the output pixels, and each pixel's taps outside its class read
// zeros in the whole gather (tests/test_gather.cpp checks both).
struct SubpixelClass {
    int ry = 0, rx = 0;           // (oh + p) % s and (ow + p) % s of the class
    int oh0 = 0, ow0 = 0;         // its first output row and column
    int rows_h = 0, rows_w = 0;   // its output rows and columns
    int taps_h = 0, taps_w = 0;   // its taps: kh = ry + s i (i < taps_h), kw = rx + s j (j < taps_w)
};
PIN_HD inline SubpixelClass subpixel_class(int ry, int rx, int64_t Ho, int64_t Wo, int k, int s, int p) {
    SubpixelClass c;
    c.ry = ry;
    c.rx = rx;
    c.oh0 = ((ry - p) % s + s) % s;
    c.ow0 = ((rx - p) % s + s) % s;
    c.rows_h = Ho > c.oh0 ? static_cast<int>((Ho - c.oh0 + s - 1) / s) : 0;
    c.rows_w = Wo > c.ow0 ? static_cast<int>((Wo - c.ow0 + s - 1) / s) : 0;
    c.taps_h = ry < k ? (k - ry + s - 1) / s : 0;
    c.taps_w = rx < k ? (k - rx + s - 1) / s : 0;
    return c;
}

// The GEMM matrix of one class: row m = (image, i, j) is output pixel (oh0 + s i, ow0 + s j), column
// k = (class tap t, channel c) is tap (ry + s (t / taps_w), rx + s (t % taps_w)). Reads through the
// whole gather (its at / at4 / pixel_offset), so the same values; row() and slice() decode the class.
template <class Src = float>
struct SubpixelGather : Gather<true, Src> {
    using G = Gather<true, Src>;
    using G::C;
    using G::Ho;
    using G::K;
    using G::pad;
    using G::stride;
    using G::Wo;
    SubpixelClass cls;
    // Class row m as (image b, output row oh, output column ow) of the whole output.
    PIN_HD void pixel(int64_t m64, int& b, int& oh, int& ow) const {
        const unsigned m = static_cast<unsigned>(m64), w = static_cast<unsigned>(cls.rows_w), h = static_cast<unsigned>(cls.rows_h);
        const unsigned t = m / w, j = m - t * w, ub = t / h, i = t - ub * h, s = static_cast<unsigned>(stride);
        b = static_cast<int>(ub);
        oh = cls.oh0 + static_cast<int>(i * s);
        ow = cls.ow0 + static_cast<int>(j * s);
    }
    PIN_HD GatherRow row(int64_t m64, int64_t M) const {
        GatherRow r;
        r.valid = m64 < M;
        if (!r.valid) return r;
        int oh, ow;
        pixel(m64, r.b, oh, ow);
        r.y = oh + static_cast<int>(pad);
        r.x = ow + static_cast<int>(pad);
        return r;
    }
    // The row of the whole output (b, oh, ow) that class row m is.
    PIN_HD int64_t out_row(int64_t m64) const {
        int b, oh, ow;
        pixel(m64, b, oh, ow);
        return (static_cast<int64_t>(b) * Ho + oh) * Wo + ow;
    }
    // The whole gather's tap of class column k (t = k / C).
    PIN_HD void tap(int64_t k, int& kh, int& kw) const {
        int i, j;
        class_tap(static_cast<int>(static_cast<unsigned>(k) / static_cast<unsigned>(C)), i, j, kh, kw);
    }
    // The class's tap number t as (i, j) within the class and (kh, kw) of the whole gather.
    PIN_HD void class_tap(int t, int& i, int& j, int& kh, int& kw) const {
        i = t / cls.taps_w;
        j = t - i * cls.taps_w;
        kh = cls.ry + i * static_cast<int>(stride);
        kw = cls.rx + j * static_cast<int>(stride);
    }
    // As Gather::slice: the tap of the slice at k0 (inside one tap: C a multiple of the slice) and
    // the channel of kk.
    PIN_HD void slice(int64_t k0, int kk, int& kh, int& kw, int& c) const {
        tap(k0, kh, kw);
        c = static_cast<int>(static_cast<unsigned>(k0) % static_cast<unsigned>(C)) + kk;
    }
    PIN_HD float operator()(int64_t m, int64_t k) const {
        int kh, kw, c;
        slice(k, 0, kh, kw, c);
        return G::at(row(m, m + 1), kh, kw, c);
    }
    // The row of the whole gather's packed weights ((kh k + kw) C + c, n) that class column k uses.
    PIN_HD int64_t weight_row(int64_t k) const {
        int kh, kw;
        tap(k, kh, kw);
        return (static_cast<int64_t>(kh) * K + kw) * C + k % C;
    }
    PIN_HD int64_t rows_per_image() const { return static_cast<int64_t>(cls.rows_h) * cls.rows_w; }
    PIN_HD int64_t depth() const { return static_cast<int64_t>(cls.taps_h) * cls.taps_w * C; }
};
template <class Src>
struct IsGather<SubpixelGather<Src>> {
    static constexpr bool value = true;
};
template <class Src>
SubpixelGather<Src> subpixel_gather(const Gather<true, Src>& g, int ry, int rx) {
    SubpixelGather<Src> sg;
    static_cast<Gather<true, Src>&>(sg) = g;
    sg.cls = subpixel_class(ry, rx, g.Ho, g.Wo, static_cast<int>(g.K), static_cast<int>(g.stride), static_cast<int>(g.pad));
    return sg;
}

// ---- the asynchronous-copy kernel's walk over the taps ----------------------------------------------
// gemm_kernels.cuh AsyncConvOperands copies each K slice (32 channels of one tap) without decoding
// it: a row's origin pixel (y, x) is found once per launch (tap_origin), and tap t of the GEMM's K
// (t = k / C) once per tap (tap_step): the row reads the source pixel (y + dy, x + dx), and the
// packed weights' rows w_tap C + c. Direct gathers: tap t = (kh, kw), (dy, dx) = (kh, kw), origin
// (oh s - p, ow s - p). Transposed at stride 1: (dy, dx) = (-kh, -kw), origin (oh + p, ow + p).
// Sub-pixel classes: the class's tap (ry + s i, rx + s j) gives (-i, -j) and the whole gather's
// weight rows, origin ((oh + p - ry) / s, (ow + p - rx) / s), exact within the class.
// tests/test_gather.cpp checks that these read what the generic decode reads.
struct TapStep {
    int dy, dx, w_tap;
};
template <class Src>
PIN_HD TapStep tap_step(const Gather<false, Src>& g, int t) {
    const int k = static_cast<int>(g.K), kh = t / k;
    return {kh, t - kh * k, t};
}
template <class Src>
PIN_HD TapStep tap_step(const Gather<true, Src>& g, int t) {  // stride 1
    const int k = static_cast<int>(g.K), kh = t / k;
    return {-kh, kh * k - t, t};
}
template <class Src>
PIN_HD TapStep tap_step(const SubpixelGather<Src>& g, int t) {
    int i, j, kh, kw;
    g.class_tap(t, i, j, kh, kw);
    return {-i, -j, kh * static_cast<int>(g.K) + kw};
}
template <bool kTransposed, class Src>
PIN_HD void tap_origin(const Gather<kTransposed, Src>&, const GatherRow& r, int& y, int& x) {
    y = r.y;
    x = r.x;
}
template <class Src>
PIN_HD void tap_origin(const SubpixelGather<Src>& g, const GatherRow& r, int& y, int& x) {
    const int s = static_cast<int>(g.stride);
    y = (r.y - g.cls.ry) / s;
    x = (r.x - g.cls.rx) / s;
}
}  // namespace pin::cuda
