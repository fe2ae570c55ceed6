// pin/cpu/winograd.hpp - 3x3 convolutions through minimal filtering (Winograd) algorithms.
//
// A 1-D minimal filtering algorithm computes a tile of kOut outputs of a 3-tap filter g from
// kIn inputs d with kAlpha products instead of 3 * kOut:
//     y = AT [ (G g) . (BT d) ]        (. element-wise)
// In 2-D the same matrices act on rows and columns:  Y = AT [ (G g G^T) . (BT D B) ] A.
// Summed over input channels, the kAlpha^2 element-wise products become kAlpha^2 independent
// matrix products  M_xi = V_xi (tiles x cin) * U_xi (cin x cout), which run on the same register
// tile as the direct convolution (gather_tile), so the multiplications drop by
//     Stride1            F(4x4, 3x3), stride 1:                     36 instead of 144 per tile (4x)
//     Stride2            stride 2, the even/odd source phases split,
//                        the odd one through F(2, 2):               25 instead of 36 per tile (1.44x)
//     Stride2Transposed  the transpose of Stride2 (a stride-2 input
//                        gradient, a transposed convolution):       25 instead of 36 per tile (1.44x)
// The weight gradient of each is  dW = G^T [ sum over tiles (A dY A^T) . V ] G : the same
// products with the output-tile gradient transformed by A instead of G.
//
// Costs: the transforms (a few additions per value, vectorised over channels) and the
// transformed tiles, kAlpha^2 values per kOut^2 outputs, which each task of the forward (and of a
// small weight gradient) keeps in a buffer of its own sized for L2; a deep layer's weight gradient
// transforms chunks of tiles into shared buffers first. Accuracy: the stride-2 transforms use the
// coefficients 0 and +-1 only, F(4, 3) small integers and 1/4, 1/6, 1/12, 1/24; against the
// float64 reference the error stays within the direct convolution's 2e-5 test bound.
// Every output (forward) and every weight-gradient sum is reduced in an order fixed by the shape,
// so results are bit-identical for any thread count.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "pin/core/error.hpp"
#include "pin/core/parallel.hpp"
#include "pin/core/simd.hpp"
#include "pin/core/tensor.hpp"
#include "pin/cpu/conv_kernels.hpp"

namespace pin::cpu {

// Which kernel a 3x3 convolution uses: automatic picks the Winograd forms for 3x3 kernels with
// padding 1 at stride 1 or 2 and enough channels to fill the vectors, the direct (gather) form
// otherwise. The choice can be forced to compare the two or to test both.
enum class ConvAlgorithm { automatic, direct, winograd };

namespace winograd {

// Output tile t covers outputs [t * kOut, t * kOut + kOut); it reads inputs t * kStep + kOffset + p,
// p in [0, kIn), zero outside the source. Filter taps g0, g1, g2 in the convolution weight's order.
// kTilesPerTask: the most tiles a forward task transforms into its buffer (see tiles_per_task).
//
// y_j = sum_k g_k d_{j+k}: a stride-1 convolution with padding 1, through F(4, 3) at the points
// 0, +-1, +-2 and infinity: 36 products per 4 x 4 outputs where F(2, 3) took 64, for a larger
// rounding error (up to 4e-6 of the sum of |products| against 1e-7 on 64-512 channels, still inside
// the direct convolution's 2e-5 test bound) and 36 planes of transformed tiles. Measured on the
// PIN layers against F(2x2, 3x3) (docs/benchmarks.md): 1.35-1.5x faster on 28-112 pixel grids
// on AVX-512 and AVX2 alike; on 14 and 7, where a 4 x 4 tile computes 31 % more outputs than
// exist, 1.0-1.5x on AVX-512 and on par on AVX2.
struct Stride1 {
    static constexpr int kAlpha = 6, kIn = 6, kOut = 4, kStep = 4, kOffset = -1, kTilesPerTask = 48;
    static constexpr float BT[kAlpha][kIn] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                              {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
    static constexpr float G[kAlpha][3] = {{1.0f / 4, 0, 0},
                                           {-1.0f / 6, -1.0f / 6, -1.0f / 6},
                                           {-1.0f / 6, 1.0f / 6, -1.0f / 6},
                                           {1.0f / 24, 1.0f / 12, 1.0f / 6},
                                           {1.0f / 24, -1.0f / 12, 1.0f / 6},
                                           {0, 0, 1}};
    static constexpr float AT[kOut][kAlpha] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
};
// y_j = sum_k g_k d_{2j+k}: stride 2, padding 1. The even inputs meet g1 alone (two products);
// the odd ones the 2-tap filter (g0, g2), through F(2, 2): (d0 - d2) g0, d2 (g0 + g2), (d4 - d2) g2.
struct Stride2 {
    static constexpr int kAlpha = 5, kIn = 5, kOut = 2, kStep = 4, kOffset = -1, kTilesPerTask = 96;
    static constexpr float BT[kAlpha][kIn] = {
        {0, 1, 0, 0, 0}, {0, 0, 0, 1, 0}, {1, 0, -1, 0, 0}, {0, 0, 1, 0, 0}, {0, 0, -1, 0, 1}};
    static constexpr float G[kAlpha][3] = {{0, 1, 0}, {0, 1, 0}, {1, 0, 0}, {1, 0, 1}, {0, 0, 1}};
    static constexpr float AT[kOut][kAlpha] = {{1, 0, 1, 1, 0}, {0, 1, 0, 1, 1}};
};
// z_i = sum over (o, k) with 2 o + k - 1 = i of g_k u_o: the input gradient of a stride-2,
// padding-1 convolution (and so a transposed convolution's forward). Four outputs from three
// inputs: z0 = g1 u0, z2 = g1 u1, and (z1, z3) = F(2, 2) of (g2, g0) over (u0, u1, u2).
struct Stride2Transposed {
    static constexpr int kAlpha = 5, kIn = 3, kOut = 4, kStep = 2, kOffset = 0, kTilesPerTask = 96;
    static constexpr float BT[kAlpha][kIn] = {{1, 0, 0}, {0, 1, 0}, {1, -1, 0}, {0, 1, 0}, {0, -1, 1}};
    static constexpr float G[kAlpha][3] = {{0, 1, 0}, {0, 1, 0}, {0, 0, 1}, {1, 0, 1}, {1, 0, 0}};
    static constexpr float AT[kOut][kAlpha] = {{1, 0, 0, 0, 0}, {0, 0, 1, 1, 0}, {0, 1, 0, 0, 0}, {0, 0, 0, 1, 1}};
};

// A channels-last plane set (N, h, w, c).
struct Nhwc {
    int64_t n = 0, h = 0, w = 0, c = 0;
};

namespace detail {
using pin::cpu::detail::kBlockCo;
using pin::cpu::detail::mr_for_nv;

// out[r * os] = sum_c m[r][c] * in[c * is] for every r. Called with constant tables inside fully
// unrolled loops, so the zero coefficients drop out and +-1 become additions.
template <int R, int C>
PIN_FORCEINLINE void apply(const float (&m)[R][C], const VecF* in, int is, VecF* out, int os) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
        VecF acc = VecF::zero();
        bool any = false;
#pragma GCC unroll 8
        for (int c = 0; c < C; ++c) {
            const float k = m[r][c];
            if (k == 0.0f) continue;
            const VecF x = in[c * is];
            if (!any) acc = k == 1.0f ? x : k == -1.0f ? VecF::zero() - x : VecF::broadcast(k) * x;
            else acc = k == 1.0f ? acc + x : k == -1.0f ? acc - x : fma(VecF::broadcast(k), x, acc);
            any = true;
        }
        out[r * os] = acc;
    }
}

// A constant table and the transpose of one (A from AT, G^T from G), built at compile time so
// that apply() still sees constants.
template <int R, int C>
struct Matrix {
    float m[R][C];
};
template <int R, int C>
constexpr Matrix<C, R> transposed(const float (&t)[R][C]) {
    Matrix<C, R> out{};
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) out.m[c][r] = t[r][c];
    return out;
}

// The tiles of an output plane set.
struct TileGrid {
    int64_t n = 0, th = 0, tw = 0;
    int64_t count() const { return n * th * tw; }
};
template <typename Alg>
TileGrid tile_grid(const Nhwc& out) {
    return {out.n, (out.h + Alg::kOut - 1) / Alg::kOut, (out.w + Alg::kOut - 1) / Alg::kOut};
}

// One channel vector of a source patch (rows[p][q]: the pixel, or null in the padding) -> the
// kAlpha^2 values of V. Column by column, so that only one column of the patch is live at a time
// (the whole 5 x 5 patch and its transforms at once spilled most of them to the stack).
template <typename Alg, bool kChecked>
PIN_FORCEINLINE void transform_patch(const float* const (&rows)[Alg::kIn][Alg::kIn], int64_t ch, int lanes, float* v,
                                     int64_t xi_stride) {
    constexpr int A = Alg::kAlpha, I = Alg::kIn, L = VecF::kLanes;
    VecF t[A][I];
    for (int q = 0; q < I; ++q) {
        VecF col[I];
        for (int p = 0; p < I; ++p) {
            if (!kChecked) col[p] = VecF::load(rows[p][q] + ch);
            else if (!rows[p][q]) col[p] = VecF::zero();
            else col[p] = lanes == L ? VecF::load(rows[p][q] + ch) : VecF::load_partial(rows[p][q] + ch, lanes);
        }
        apply(Alg::BT, col, 1, &t[0][q], I);  // columns: t = BT d
    }
    for (int a = 0; a < A; ++a) {
        VecF u[A];
        apply(Alg::BT, &t[a][0], 1, u, 1);  // rows: u = t B
        for (int b = 0; b < A; ++b) {
            float* o = v + (a * A + b) * xi_stride + ch;
            if (!kChecked || lanes == L) u[b].store(o);
            else u[b].store_partial(o, lanes);
        }
    }
}

// V[xi][row][c] = (BT D B)[xi] for source tile `tile`, channels [0, src.c): xi_stride floats
// between the kAlpha^2 planes, row already applied to v.
template <typename Alg>
void transform_input_tile(const float* src, const Nhwc& s, const TileGrid& tg, int64_t tile, float* v,
                          int64_t xi_stride) {
    constexpr int I = Alg::kIn, L = VecF::kLanes;
    const int64_t n = tile / (tg.th * tg.tw), ty = (tile / tg.tw) % tg.th, tx = tile % tg.tw;
    const int64_t r0 = ty * Alg::kStep + Alg::kOffset, c0 = tx * Alg::kStep + Alg::kOffset;
    const float* rows[I][I];
    for (int p = 0; p < I; ++p)
        for (int q = 0; q < I; ++q) {
            const int64_t r = r0 + p, c = c0 + q;
            rows[p][q] = (r >= 0 && r < s.h && c >= 0 && c < s.w) ? src + ((n * s.h + r) * s.w + c) * s.c : nullptr;
        }
    bool interior = true;
    for (int p = 0; p < I; ++p)
        for (int q = 0; q < I; ++q) interior = interior && rows[p][q] != nullptr;
    for (int64_t ch = 0; ch < s.c; ch += L) {
        const int lanes = static_cast<int>(std::min<int64_t>(L, s.c - ch));
        // Most tiles lie inside the image with whole vectors: a path without per-value tests.
        if (interior && lanes == L) transform_patch<Alg, false>(rows, ch, L, v, xi_stride);
        else transform_patch<Alg, true>(rows, ch, lanes, v, xi_stride);
    }
}

// dM[xi][row][co] = (A dY A^T)[xi] for output tile `tile`, channels [0, g.c), zero past g.c up to
// co_pad (the products read whole vectors).
template <typename Alg>
void transform_gradient_tile(const float* dy, const Nhwc& g, const TileGrid& tg, int64_t tile, float* m,
                             int64_t xi_stride, int64_t co_pad) {
    constexpr int A = Alg::kAlpha, O = Alg::kOut, L = VecF::kLanes;
    // A = AT transposed, as a table for apply().
    static constexpr Matrix<A, O> At = transposed(Alg::AT);
    const int64_t n = tile / (tg.th * tg.tw), ty = (tile / tg.tw) % tg.th, tx = tile % tg.tw;
    const float* rows[O][O];
    for (int p = 0; p < O; ++p)
        for (int q = 0; q < O; ++q) {
            const int64_t r = ty * O + p, c = tx * O + q;
            rows[p][q] = (r < g.h && c < g.w) ? dy + ((n * g.h + r) * g.w + c) * g.c : nullptr;
        }
    for (int64_t ch = 0; ch < co_pad; ch += L) {
        const int lanes = static_cast<int>(std::clamp<int64_t>(g.c - ch, 0, L));
        VecF d[O][O], t[A][O], u[A][A];
        for (int p = 0; p < O; ++p)
            for (int q = 0; q < O; ++q)
                d[p][q] = rows[p][q] && lanes > 0
                              ? (lanes == L ? VecF::load(rows[p][q] + ch) : VecF::load_partial(rows[p][q] + ch, lanes))
                              : VecF::zero();
        for (int q = 0; q < O; ++q) apply(At.m, &d[0][q], O, &t[0][q], O);
        for (int a = 0; a < A; ++a) apply(At.m, &t[a][0], 1, &u[a][0], 1);
        for (int a = 0; a < A; ++a)
            for (int b = 0; b < A; ++b) u[a][b].store(m + (a * A + b) * xi_stride + ch);
    }
}

// U[xi][co_block][ci][kBlockCo] = (G g G^T)[xi] of weight(co, ci, kh, kw), zero past cout.
// Vectorised over the output channels of a block (a scalar version cost 8.6 ms for 512 x 512,
// as much as a third of the convolution on a 7 x 7 grid).
template <typename Alg, typename WeightAt>
Tensor transform_weights(int64_t cout, int64_t cin, WeightAt weight) {
    constexpr int A = Alg::kAlpha, L = VecF::kLanes;
    constexpr int64_t kVec = kBlockCo / L;
    const int64_t blocks = (cout + kBlockCo - 1) / kBlockCo;
    Tensor u = Tensor::empty({A * A * blocks * cin * kBlockCo});
    float* base = u.data();
    parallel_for(blocks * ((cin + 15) / 16), [&](int64_t task) {
        const int64_t b = task / ((cin + 15) / 16), ci_begin = task % ((cin + 15) / 16) * 16;
        const int64_t co_count = std::min<int64_t>(kBlockCo, cout - b * kBlockCo);
        alignas(64) float g[9][kBlockCo];
        for (int64_t ci = ci_begin; ci < std::min(cin, ci_begin + 16); ++ci) {
            for (int64_t j = 0; j < kBlockCo; ++j)
                for (int k = 0; k < 9; ++k) g[k][j] = j < co_count ? weight(b * kBlockCo + j, ci, k / 3, k % 3) : 0.0f;
            for (int64_t v = 0; v < kVec; ++v) {
                VecF gv[3][3], t[A][3], uv[A][A];
                for (int k = 0; k < 9; ++k) gv[k / 3][k % 3] = VecF::load(&g[k][v * L]);
                for (int kw = 0; kw < 3; ++kw) apply(Alg::G, &gv[0][kw], 3, &t[0][kw], 3);  // t = G g
                for (int a = 0; a < A; ++a) apply(Alg::G, &t[a][0], 1, &uv[a][0], 1);      // u = t G^T
                for (int a = 0; a < A; ++a)
                    for (int c = 0; c < A; ++c) uv[a][c].store(base + (((a * A + c) * blocks + b) * cin + ci) * kBlockCo + v * L);
            }
        }
    });
    return u;
}

// The products of one task for one block of output channels: M[xi][row][:] = V[xi][row][:cin] *
// U[xi][block], rows [0, rows) (padded to MR), input channels in steps of kc so that a step's
// weights (kc x kBlockCo) stay in L1 while every row uses them.
template <int A2, int NV>
void products(const float* v, int64_t v_xi_stride, int64_t v_row_stride, int64_t rows, int64_t cin,
              const float* u_block, int64_t u_xi_stride, float* m, int64_t m_xi_stride) {
    constexpr int MR = mr_for_nv(NV), L = VecF::kLanes;
    constexpr int64_t kc_max = 128;
    for (int xi = 0; xi < A2; ++xi) {
        const float* vx = v + xi * v_xi_stride;
        const float* ux = u_block + xi * u_xi_stride;
        float* mx = m + xi * m_xi_stride;
        for (int64_t ci0 = 0; ci0 < cin; ci0 += kc_max) {
            const int64_t kc = std::min(kc_max, cin - ci0);
            for (int64_t r0 = 0; r0 < rows; r0 += MR) {
                const float* ptrs[MR];
                for (int i = 0; i < MR; ++i) ptrs[i] = vx + std::min<int64_t>(r0 + i, rows - 1) * v_row_stride + ci0;
                VecF acc[MR][NV];
                float* out = mx + r0 * kBlockCo;
                for (int i = 0; i < MR; ++i)
                    for (int q = 0; q < NV; ++q)
                        acc[i][q] = ci0 == 0 ? VecF::zero() : VecF::load(out + i * kBlockCo + q * L);
                pin::cpu::detail::gather_tile<MR, NV>(acc, ptrs, 1, kc, ux + ci0 * kBlockCo, 0);
                for (int i = 0; i < MR; ++i)
                    for (int q = 0; q < NV; ++q) acc[i][q].store(out + i * kBlockCo + q * L);
            }
        }
    }
}

// Y = AT M A for the tiles [0, rows) of a task (global tiles tile0 + row), output channels
// [co0, co0 + co_count), through the epilogue into dst.
template <typename Alg>
void transform_output_tiles(const float* m, int64_t m_xi_stride, int64_t rows, int64_t tile0, const TileGrid& tg,
                            float* dst, const Nhwc& o, int64_t co0, int64_t co_count, const ConvEpilogue& ep) {
    constexpr int A = Alg::kAlpha, O = Alg::kOut, L = VecF::kLanes;
    for (int64_t row = 0; row < rows; ++row) {
        const int64_t tile = tile0 + row;
        const int64_t n = tile / (tg.th * tg.tw), ty = (tile / tg.tw) % tg.th, tx = tile % tg.tw;
        for (int64_t c = 0; c < co_count; c += L) {
            const int lanes = static_cast<int>(std::min<int64_t>(L, co_count - c));
            VecF mv[A][A], t[O][A], y[O][O];
            for (int a = 0; a < A; ++a)
                for (int b = 0; b < A; ++b) mv[a][b] = VecF::load(m + (a * A + b) * m_xi_stride + row * kBlockCo + c);
            for (int b = 0; b < A; ++b) apply(Alg::AT, &mv[0][b], A, &t[0][b], A);
            for (int j = 0; j < O; ++j) apply(Alg::AT, &t[j][0], 1, &y[j][0], 1);
            const int64_t cc = co0 + c;
            VecF bias = VecF::zero(), slope = VecF::zero();
            if (ep.bias) bias = lanes == L ? VecF::load(ep.bias + cc) : VecF::load_partial(ep.bias + cc, lanes);
            if (ep.prelu_slope)
                slope = lanes == L ? VecF::load(ep.prelu_slope + cc) : VecF::load_partial(ep.prelu_slope + cc, lanes);
            for (int p = 0; p < O; ++p) {
                const int64_t r = ty * O + p;
                if (r >= o.h) break;
                for (int q = 0; q < O; ++q) {
                    const int64_t col = tx * O + q;
                    if (col >= o.w) break;
                    float* d = dst + ((n * o.h + r) * o.w + col) * o.c + cc;
                    VecF val = y[p][q];
                    if (ep.bias) val = val + bias;
                    if (ep.prelu_slope) val = max(val, VecF::zero()) + slope * min(val, VecF::zero());
                    if (lanes == L) {
                        if (ep.accumulate) val = val + VecF::load(d);
                        val.store(d);
                    } else {
                        if (ep.accumulate) val = val + VecF::load_partial(d, lanes);
                        val.store_partial(d, lanes);
                    }
                }
            }
        }
    }
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Floats between the kAlpha^2 planes of a transform buffer. A transform writes one vector to
// every plane; planes a multiple of 4 KiB apart (96 tiles x 64 channels is 24 KiB) put all of
// them in one L1 set and alias the next loads, so the stride is a whole number of cache lines
// plus one.
inline int64_t plane_stride(int64_t floats) {
    const int64_t s = round_up(floats, 16);
    return s % 1024 == 0 ? s + 16 : s;
}

// Tiles per task, at most max_tiles: enough rows that a block of weights (read from L2 or L3 once
// per task) serves many, few enough that both threads get work. (F(4, 3)'s 48 and 96 ran alike on
// the PIN layers; 48 halves its 36-plane buffer.)
// The tasks are a multiple of the thread count, so that every thread gets the same number (three
// tasks of 96 on two threads left one idle a third of the time on a 7 x 7 grid).
inline int64_t tiles_per_task(int64_t tiles, int64_t max_tiles) {
    const int64_t threads = std::max(1, num_threads());
    const int64_t tasks = ((tiles + max_tiles - 1) / max_tiles + threads - 1) / threads * threads;
    return std::max<int64_t>(1, (tiles + tasks - 1) / tasks);
}

template <typename Alg>
void forward_task(const float* src, const Nhwc& s, const float* u, float* dst, const Nhwc& o, const TileGrid& tg,
                  int64_t tile0, int64_t rows, const ConvEpilogue& ep) {
    constexpr int A2 = Alg::kAlpha * Alg::kAlpha, L = VecF::kLanes;
    const int64_t cs_pad = round_up(s.c, L);
    const int64_t rows_pad = round_up(rows, 24);  // a multiple of every MR (12, 8, 6, 4)
    static_assert(24 % mr_for_nv(1) == 0 && 24 % mr_for_nv(2) == 0 && 24 % mr_for_nv(pin::cpu::detail::kMaxNV) == 0, "rows_pad covers whole tiles");
    const int64_t co_blocks = (o.c + kBlockCo - 1) / kBlockCo;
    thread_local std::vector<float> vbuf, mbuf;
    const int64_t v_xi = plane_stride(rows * cs_pad), m_xi = plane_stride(rows_pad * kBlockCo);
    vbuf.resize(static_cast<size_t>(A2 * v_xi));
    mbuf.resize(static_cast<size_t>(A2 * m_xi));
    for (int64_t row = 0; row < rows; ++row)
        transform_input_tile<Alg>(src, s, tg, tile0 + row, vbuf.data() + row * cs_pad, v_xi);
    for (int64_t cb = 0; cb < co_blocks; ++cb) {
        const int64_t co0 = cb * kBlockCo, co_count = std::min<int64_t>(kBlockCo, o.c - co0);
        const float* ub = u + cb * s.c * kBlockCo;
        const int64_t u_xi = co_blocks * s.c * kBlockCo;
        // The last block of a layer whose cout is not a multiple of kBlockCo needs fewer vectors.
        switch ((co_count + L - 1) / L) {
            case 1: products<A2, 1>(vbuf.data(), v_xi, cs_pad, rows, s.c, ub, u_xi, mbuf.data(), m_xi); break;
            case 2: products<A2, 2>(vbuf.data(), v_xi, cs_pad, rows, s.c, ub, u_xi, mbuf.data(), m_xi); break;
#if defined(__AVX512F__)
            case 3: products<A2, 3>(vbuf.data(), v_xi, cs_pad, rows, s.c, ub, u_xi, mbuf.data(), m_xi); break;
            case 4: products<A2, 4>(vbuf.data(), v_xi, cs_pad, rows, s.c, ub, u_xi, mbuf.data(), m_xi); break;
#endif
            default: PIN_CHECK(false, "winograd: unexpected vector count");
        }
        transform_output_tiles<Alg>(mbuf.data(), m_xi, rows, tile0, tg, dst, o, co0, co_count, ep);
    }
}

}  // namespace detail

// dst (o: N, Ho, Wo, Co) = the 3x3 operation of Alg applied to src (s: N, H, W, Cs) with weights
// weight(co, ci, kh, kw), through the epilogue. Output tiles past Ho, Wo are computed and dropped.
template <typename Alg, typename WeightAt>
void convolve(const float* src, const Nhwc& s, float* dst, const Nhwc& o, WeightAt weight, const ConvEpilogue& ep = {}) {
    using namespace detail;
    PIN_CHECK(s.n == o.n, "winograd::convolve: batch mismatch");
    if (o.n == 0 || o.h == 0 || o.w == 0 || o.c == 0) return;
    const TileGrid tg = tile_grid<Alg>(o);
    const Tensor u = transform_weights<Alg>(o.c, s.c, weight);
    const int64_t tiles = tg.count();
    const int64_t per_task = tiles_per_task(tiles, Alg::kTilesPerTask);
    parallel_for((tiles + per_task - 1) / per_task, [&](int64_t task) {
        const int64_t t0 = task * per_task, rows = std::min(per_task, tiles - t0);
        forward_task<Alg>(src, s, u.data(), dst, o, tg, t0, rows, ep);
    });
}

namespace detail {

// dU[i][:] (+)= sum over rows p of V[p][ci0 + i] * dM[p][:] for MR input channels and NV vectors
// of output channels; `first` overwrites.
template <int MR, int NV>
void gradient_products(float* du, int64_t du_stride, const float* v, int64_t v_stride, const float* m,
                       int64_t m_stride, int64_t rows, bool first) {
    constexpr int L = VecF::kLanes;
    VecF acc[MR][NV];
    for (int i = 0; i < MR; ++i)
        for (int q = 0; q < NV; ++q) acc[i][q] = first ? VecF::zero() : VecF::load(du + i * du_stride + q * L);
    for (int64_t p = 0; p < rows; ++p) {
        const float* vp = v + p * v_stride;
        const float* mp = m + p * m_stride;
        VecF g[NV];
        for (int q = 0; q < NV; ++q) g[q] = VecF::load(mp + q * L);
        for (int i = 0; i < MR; ++i) {
            const VecF b = VecF::broadcast(vp[i]);
            for (int q = 0; q < NV; ++q) acc[i][q] = fma(b, g[q], acc[i][q]);
        }
    }
    for (int i = 0; i < MR; ++i)
        for (int q = 0; q < NV; ++q) acc[i][q].store(du + i * du_stride + q * L);
}

template <int NV>
void gradient_products_any_mr(int mr, float* du, int64_t du_stride, const float* v, int64_t v_stride, const float* m,
                              int64_t m_stride, int64_t rows, bool first) {
    switch (mr) {
        case 6: gradient_products<6, NV>(du, du_stride, v, v_stride, m, m_stride, rows, first); break;
        case 5: gradient_products<5, NV>(du, du_stride, v, v_stride, m, m_stride, rows, first); break;
        case 4: gradient_products<4, NV>(du, du_stride, v, v_stride, m, m_stride, rows, first); break;
        case 3: gradient_products<3, NV>(du, du_stride, v, v_stride, m, m_stride, rows, first); break;
        case 2: gradient_products<2, NV>(du, du_stride, v, v_stride, m, m_stride, rows, first); break;
        default: gradient_products<1, NV>(du, du_stride, v, v_stride, m, m_stride, rows, first); break;
    }
}

constexpr int kGradMR = pin::cpu::detail::kWeightGradMR;

// dU[xi][ci][co_pad] (+)= sum over the rows of V[xi][row][ci] dM[xi][row][co] for the (xi, output
// block) pairs [pair0, pair1) (pair = xi * co_blocks + cb), every input channel.
inline void gradient_block(float* du, int64_t cin, int64_t co_pad, const float* v, int64_t v_xi_stride,
                           int64_t cs_pad, const float* m, int64_t m_xi_stride, int64_t rows, int64_t pair0,
                           int64_t pair1, bool first) {
    constexpr int NV = pin::cpu::detail::kMaxNV;
    const int64_t co_blocks = co_pad / kBlockCo;
    for (int64_t pair = pair0; pair < pair1; ++pair) {
        const int64_t xi = pair / co_blocks, cb = pair % co_blocks;
        const float* vx = v + xi * v_xi_stride;
        const float* mx = m + xi * m_xi_stride + cb * kBlockCo;
        float* dux = du + xi * cin * co_pad + cb * kBlockCo;
        // Rows in runs of kRows: a run's gradient values (kRows x kBlockCo floats) stay in L1 while
        // every input-channel block uses them; the order of the runs is fixed by the shape.
        constexpr int64_t kRows = 128;
        for (int64_t r0 = 0; r0 < rows; r0 += kRows)
            for (int64_t ci0 = 0; ci0 < cin; ci0 += kGradMR) {
                const int mr = static_cast<int>(std::min<int64_t>(kGradMR, cin - ci0));
                gradient_products_any_mr<NV>(mr, dux + ci0 * co_pad, co_pad, vx + r0 * cs_pad + ci0, cs_pad,
                                             mx + r0 * co_pad, co_pad, std::min(kRows, rows - r0), first && r0 == 0);
            }
    }
}

}  // namespace detail

// Weight gradient of convolve<Alg>: store(co, ci, kh, kw, value) receives every element of
// dW = sum over output positions of dy * (the source under the tap), from src (s) and dy (o).
template <typename Alg, typename Store>
void weight_gradient(const float* src, const Nhwc& s, const float* dy, const Nhwc& o, Store store) {
    using namespace detail;
    constexpr int A = Alg::kAlpha, A2 = A * A, L = VecF::kLanes;
    const int64_t cin = s.c, cout = o.c;
    const int64_t co_pad = round_up(cout, kBlockCo), cs_pad = round_up(cin, L);
    const int64_t co_blocks = co_pad / kBlockCo;
    const TileGrid tg = tile_grid<Alg>(o);
    const int64_t tiles = tg.count();
    const int64_t du_floats = A2 * cin * co_pad;
    Tensor du = Tensor::empty({du_floats});
    if (tiles == 0) std::fill(du.data(), du.data() + du_floats, 0.0f);
    // Small gradients (up to 128 x 128 channels): the tiles are cut into slices fixed by the shape,
    // each summed by one task into a gradient of its own in runs of kRun tiles whose transforms stay
    // in L2; the slices are added in order at the end. Large ones (deep layers, few tiles): the
    // transforms of a chunk of tiles are made first, then tasks own (xi, output block) pairs.
    constexpr int64_t kRun = 64;
    const bool sliced = du_floats * 4 <= (4 << 20) && tiles >= 2 * kRun;
    if (sliced) {
        const int64_t slices = std::min<int64_t>(8, tiles / kRun);
        Tensor parts = Tensor::empty({(slices - 1) * du_floats});
        parallel_for(slices, [&](int64_t sl) {
            float* dus = sl == 0 ? du.data() : parts.data() + (sl - 1) * du_floats;
            const int64_t t_begin = tiles * sl / slices, t_end = tiles * (sl + 1) / slices;
            thread_local std::vector<float> vbuf, mbuf;
            const int64_t v_xi = plane_stride(kRun * cs_pad), m_xi = plane_stride(kRun * co_pad);
            vbuf.resize(static_cast<size_t>(A2 * v_xi));
            mbuf.resize(static_cast<size_t>(A2 * m_xi));
            for (int64_t t0 = t_begin; t0 < t_end; t0 += kRun) {
                const int64_t rows = std::min(kRun, t_end - t0);
                for (int64_t r = 0; r < rows; ++r) {
                    transform_input_tile<Alg>(src, s, tg, t0 + r, vbuf.data() + r * cs_pad, v_xi);
                    transform_gradient_tile<Alg>(dy, o, tg, t0 + r, mbuf.data() + r * co_pad, m_xi, co_pad);
                }
                gradient_block(dus, cin, co_pad, vbuf.data(), v_xi, cs_pad, mbuf.data(), m_xi, rows, 0,
                               A2 * co_blocks, t0 == t_begin);
            }
        });
        constexpr int64_t kBlock = 1 << 14;
        parallel_for((du_floats + kBlock - 1) / kBlock, [&](int64_t b) {
            const int64_t i0 = b * kBlock, i1 = std::min(du_floats, i0 + kBlock);
            for (int64_t sl = 1; sl < slices; ++sl) {
                const float* part = parts.data() + (sl - 1) * du_floats;
                for (int64_t i = i0; i < i1; ++i) du.data()[i] += part[i];
            }
        });
    } else if (tiles > 0) {
        // Chunks of tiles whose transforms take at most ~64 MB, in order.
        const int64_t per_tile = A2 * (cs_pad + co_pad) * 4;
        const int64_t chunk = std::min(tiles, std::max(kRun, (int64_t{64} << 20) / per_tile));
        const int64_t v_xi = plane_stride(chunk * cs_pad), m_xi = plane_stride(chunk * co_pad);
        Tensor vbuf = Tensor::empty({A2 * v_xi}), mbuf = Tensor::empty({A2 * m_xi});
        for (int64_t t0 = 0; t0 < tiles; t0 += chunk) {
            const int64_t rows = std::min(chunk, tiles - t0);
            parallel_for((rows + 15) / 16, [&](int64_t b) {
                for (int64_t r = b * 16; r < std::min(rows, b * 16 + 16); ++r) {
                    transform_input_tile<Alg>(src, s, tg, t0 + r, vbuf.data() + r * cs_pad, v_xi);
                    transform_gradient_tile<Alg>(dy, o, tg, t0 + r, mbuf.data() + r * co_pad, m_xi, co_pad);
                }
            });
            parallel_for(A2 * co_blocks, [&](int64_t pair) {
                gradient_block(du.data(), cin, co_pad, vbuf.data(), v_xi, cs_pad, mbuf.data(), m_xi,
                               rows, pair, pair + 1, t0 == 0);
            });
        }
    }
    // dW[co][ci] = G^T dU[.][ci][co] G, vectorised over output channels.
    static constexpr Matrix<3, A> Gt = transposed(Alg::G);
    parallel_for(cin, [&](int64_t ci) {
        for (int64_t c0 = 0; c0 < cout; c0 += L) {
            VecF m[A][A], t[3][A], w[3][3];
            for (int a = 0; a < A; ++a)
                for (int b = 0; b < A; ++b) m[a][b] = VecF::load(du.data() + ((a * A + b) * cin + ci) * co_pad + c0);
            for (int b = 0; b < A; ++b) apply(Gt.m, &m[0][b], A, &t[0][b], A);
            for (int k = 0; k < 3; ++k) apply(Gt.m, &t[k][0], 1, &w[k][0], 1);
            const int lanes = static_cast<int>(std::min<int64_t>(L, cout - c0));
            for (int kh = 0; kh < 3; ++kh)
                for (int kw = 0; kw < 3; ++kw) {
                    float vals[L];
                    w[kh][kw].store(vals);
                    for (int l = 0; l < lanes; ++l) store(c0 + l, ci, kh, kw, vals[l]);
                }
        }
    });
}

}  // namespace winograd
}  // namespace pin::cpu
