// pin/cpu/conv_kernels.hpp - the two register-tiled loops every CPU convolution is built from.
//
// 1. gather_conv: out[pixel, co] = sum over taps t and input channels ci of
//        src[tap_source(pixel, t), ci] * wpack[t, ci, co]
//    on channels-last data. Each output pixel carries its own source pointer per tap (or a pointer
//    to zeros when the tap falls in the padding), so there is no im2col copy, a tile of pixels may
//    cross image rows and images freely, and stride, padding and the sub-pixel classes of a
//    strided backward pass are all just different pointer tables. Forward conv2d, its input
//    gradient, and both directions of the transposed convolution are instances.
//    gather_conv_packed_classes runs several such convolutions over one source together (the
//    sub-pixel classes of a stride-2 input gradient), block by block.
// 2. tap_weight_gradient: dwt[t, ci, co] = sum over pixels of src[tap_source(pixel, t), ci] * g[pixel, co],
//    the weight gradient of any such convolution, optionally also written as out[co, ci, t]
//    (PyTorch's weight layout) without a separate transposition pass.
//
// Register tiles: MR pixels x NV vectors of output channels, MR*NV accumulators kept in registers;
// the input value is broadcast, the weights are loaded as vectors. Work is split into tasks whose
// boundaries depend only on the problem shape, and every output element is reduced inside one task
// in a fixed order, so results are bit-identical for any thread count.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "pin/core/error.hpp"
#include "pin/core/parallel.hpp"
#include "pin/core/simd.hpp"
#include "pin/core/tensor.hpp"

namespace pin::cpu {

using simd::VecF;

// Geometry of one gather convolution. Pixel (n, gh, gw) of the grid reads tap t at source row
// gh * src_stride + tap_dh[t], column gw * src_stride + tap_dw[t] (skipped when outside the source)
// and writes row gh * dst_stride + dst_row0, column gw * dst_stride + dst_col0 of the destination.
struct GatherConvGeometry {
    int64_t batch = 0;
    int64_t src_h = 0, src_w = 0, src_channels = 0;
    int64_t grid_h = 0, grid_w = 0;
    int64_t src_stride = 1;
    std::vector<int64_t> tap_dh, tap_dw;
    int64_t dst_h = 0, dst_w = 0, dst_channels = 0;
    int64_t dst_stride = 1, dst_row0 = 0, dst_col0 = 0;
    int64_t taps() const { return static_cast<int64_t>(tap_dh.size()); }
};

// The grid position (n, gh, gw) of consecutive pixels, advanced without divisions: three 64-bit
// divisions per pixel cost more than the arithmetic of a one-channel layer.
struct GridCursor {
    int64_t n, gh, gw;
    int64_t grid_h, grid_w;
    GridCursor(const GatherConvGeometry& g, int64_t pixel)
        : n(pixel / (g.grid_h * g.grid_w)), gh(pixel % (g.grid_h * g.grid_w) / g.grid_w), gw(pixel % g.grid_w),
          grid_h(g.grid_h), grid_w(g.grid_w) {}
    // To the next pixel; true when that starts a new grid row.
    bool advance() {
        if (++gw < grid_w) return false;
        gw = 0;
        if (++gh == grid_h) {
            gh = 0;
            ++n;
        }
        return true;
    }
};

// What happens to an output tile after its sums are complete.
struct ConvEpilogue {
    const float* prelu_slope = nullptr;  // per output channel; y = x > 0 ? x : slope * x (0: ReLU)
    bool accumulate = false;             // y = activation(sum) + y (fused residual add)
    const float* bias = nullptr;         // per output channel, added before the activation
};

namespace detail {

constexpr int kMaxNV = VecF::kLanes == 16 ? 4 : 2;   // vectors of output channels per tile
constexpr int kBlockCo = kMaxNV * VecF::kLanes;     // output channels per packed weight block
// Rows of a register tile for nv vectors of output channels: MR x NV accumulators, NV weight
// vectors and a broadcast must fit the register file. An FMA's result is ready some 4-5 cycles
// later on two pipes, so a tile needs 8-10 independent accumulators to keep both busy: AVX2 (16
// registers) takes 6 x 2 (15 registers; its old 4 x 2 kept the FMA pipes at most 80 % busy),
// AVX-512 (32) keeps the 6 x 4 of its measured tables.
constexpr int mr_for_nv(int nv) { return std::min(12, (VecF::kRegisters - (VecF::kRegisters == 32 ? 8 : 3)) / nv); }

// Packed weights: [co_block][tap][ci][kBlockCo], zero-padded past the last output channel.
// weight(co, ci, t) supplies the values, so every convolution direction packs from the same layout.
// Packing writes into pooled storage (for a 512 -> 512 3x3 layer the packed weights are 9.4 MB, and
// packing them on one thread into fresh pages cost as much as the convolution itself at batch 16)
// and runs in parallel over (block, group of kPackCi input channels). Within a task, tiles of 16
// output x kPackCi input channels with all their taps: in every layout the callers read (co, ci
// or ci, co leading, the taps innermost) such a tile's sources lie in 16 or kPackCi runs of
// consecutive floats, which stay in L1 while the tile's taps are written, each write a run of 16
// floats. Task per (block, tap), reading one float per source line, took 1.9 ms for 512 x 512 x 9
// on 2 threads: a sixth of that layer's stride-2 forward at batch 16.
template <typename WeightFn>
Tensor pack_gather_weights(int64_t out_channels, int64_t in_channels, int64_t taps, WeightFn weight) {
    constexpr int64_t kPackCi = 16, kPackCo = 16;
    static_assert(kBlockCo % kPackCo == 0, "a block is a whole number of packing tiles");
    const int64_t blocks = (out_channels + kBlockCo - 1) / kBlockCo;
    const int64_t ci_groups = (in_channels + kPackCi - 1) / kPackCi;
    Tensor packed = Tensor::empty({blocks * taps * in_channels * kBlockCo});
    float* base = packed.data();
    parallel_for(blocks * ci_groups, [&](int64_t task) {
        const int64_t b = task / ci_groups, ci0 = task % ci_groups * kPackCi;
        const int64_t ci1 = std::min(in_channels, ci0 + kPackCi);
        const int64_t co_end = std::min<int64_t>(kBlockCo, out_channels - b * kBlockCo);
        for (int64_t j0 = 0; j0 < kBlockCo; j0 += kPackCo) {
            const int64_t j1 = std::clamp(co_end, j0, j0 + kPackCo);  // weights in [j0, j1), zeros after
            for (int64_t t = 0; t < taps; ++t)
                for (int64_t ci = ci0; ci < ci1; ++ci) {
                    float* row = base + ((b * taps + t) * in_channels + ci) * kBlockCo;
                    for (int64_t j = j0; j < j1; ++j) row[j] = weight(b * kBlockCo + j, ci, t);
                    std::fill(row + j1, row + j0 + kPackCo, 0.0f);
                }
        }
    });
    return packed;
}

// One MR x NV tile: acc += sum over taps, ci in [0, kc) of src_t,i[ci] * w[t][ci][:].
// src holds taps*MR pointers (tap-major), already offset to the first channel of the chunk.
// The accumulators are copied into locals: through the reference the compiler must assume the
// stores may alias the inputs and would spill all MR*NV of them on every iteration.
template <int MR, int NV>
PIN_FORCEINLINE void gather_tile(VecF (&acc_io)[MR][NV], const float* const* src, int64_t taps, int64_t kc,
                                 const float* w, int64_t w_tap_stride, int64_t w_ci_stride = kBlockCo) {
    constexpr int L = VecF::kLanes;
    VecF acc[MR][NV];
    for (int i = 0; i < MR; ++i)
        for (int v = 0; v < NV; ++v) acc[i][v] = acc_io[i][v];
    for (int64_t t = 0; t < taps; ++t) {
        const float* s[MR];
        for (int i = 0; i < MR; ++i) s[i] = src[t * MR + i];
        const float* wt = w + t * w_tap_stride;
        for (int64_t ci = 0; ci < kc; ++ci) {
            VecF wv[NV];
            for (int v = 0; v < NV; ++v) wv[v] = VecF::load(wt + ci * w_ci_stride + v * L);
            for (int i = 0; i < MR; ++i) {
                const VecF b = VecF::broadcast(s[i][ci]);
                for (int v = 0; v < NV; ++v) acc[i][v] = fma(b, wv[v], acc[i][v]);
            }
        }
    }
    for (int i = 0; i < MR; ++i)
        for (int v = 0; v < NV; ++v) acc_io[i][v] = acc[i][v];
}

constexpr int64_t kPrefetchTiles = 2;
// Cache hints (no-ops where the compiler has no __builtin_prefetch).
#if defined(__GNUC__) || defined(__clang__)
#define PIN_PREFETCH(p, write, locality) __builtin_prefetch((p), (write), (locality))
#else
#define PIN_PREFETCH(p, write, locality) ((void)(p))
#endif
PIN_FORCEINLINE void prefetch_l2(const float* p) { PIN_PREFETCH(p, 0, 2); }
PIN_FORCEINLINE void prefetch_l1(const float* p) { PIN_PREFETCH(p, 0, 3); }
PIN_FORCEINLINE void prefetch_for_write(float* p) { PIN_PREFETCH(p, 1, 3); }

// A destination far larger than the caches (a 112 x 112 x 64 batch is 51 MB) is written with
// non-temporal stores: no read-for-ownership, half the memory traffic.
inline bool stream_destination(const GatherConvGeometry& g, const float* dst, const ConvEpilogue& ep) {
    const int64_t dst_bytes = g.batch * g.dst_h * g.dst_w * g.dst_channels * static_cast<int64_t>(sizeof(float));
    return !ep.accumulate && dst_bytes > (32 << 20) && g.dst_channels % VecF::kLanes == 0 &&
           reinterpret_cast<uintptr_t>(dst) % 64 == 0;
}

// The destination of the grid pixel at `at` (its first channel).
inline float* dst_pixel(const GatherConvGeometry& g, float* dst, const GridCursor& at) {
    const int64_t oh = at.gh * g.dst_stride + g.dst_row0, ow = at.gw * g.dst_stride + g.dst_col0;
    return dst + ((at.n * g.dst_h + oh) * g.dst_w + ow) * g.dst_channels;
}

// The epilogue of a finished tile: rows 0..rows-1 of `acc` go to dsts[i] + [0, co_count) (dsts[i]
// points at the pixel's channel co0), with the bias, the activation, the residual add.
template <int MR, int NV>
PIN_FORCEINLINE void store_tile(const VecF (&acc)[MR][NV], int64_t rows, float* const* dsts, int64_t co0,
                                int64_t co_count, const ConvEpilogue& ep, bool stream) {
    constexpr int L = VecF::kLanes;
    for (int64_t i = 0; i < rows; ++i) {
        float* d = dsts[i];
        for (int v = 0; v < NV; ++v) {
            const int64_t c0 = v * L;
            const int lanes = static_cast<int>(std::min<int64_t>(L, co_count - c0));
            if (lanes <= 0) break;
            VecF y = acc[i][v];
            if (ep.bias)
                y = y + (lanes == L ? VecF::load(ep.bias + co0 + c0) : VecF::load_partial(ep.bias + co0 + c0, lanes));
            if (ep.prelu_slope) {
                const VecF a = lanes == L ? VecF::load(ep.prelu_slope + co0 + c0)
                                          : VecF::load_partial(ep.prelu_slope + co0 + c0, lanes);
                y = max(y, VecF::zero()) + a * min(y, VecF::zero());
            }
            if (lanes == L) {
                if (ep.accumulate) y = y + VecF::load(d + c0);
                if (stream) y.stream(d + c0);
                else y.store(d + c0);
            } else {
                if (ep.accumulate) y = y + VecF::load_partial(d + c0, lanes);
                y.store_partial(d + c0, lanes);
            }
        }
    }
}

template <int NV>
void gather_conv_block(const float* src, const GatherConvGeometry& g, const float* wpack, float* dst,
                       const ConvEpilogue& ep, const float* zeros, int64_t co_block, int64_t pixel_begin,
                       int64_t pixel_end, int64_t kc_max, std::vector<float>& partial,
                       std::vector<const float*>& ptrs) {
    constexpr int MR = mr_for_nv(NV);
    constexpr int L = VecF::kLanes;
    const int64_t taps = g.taps();
    const int64_t cin = g.src_channels;
    const int64_t co0 = co_block * kBlockCo;
    const int64_t co_count = std::min<int64_t>(kBlockCo, g.dst_channels - co0);
    const int64_t npx = pixel_end - pixel_begin;
    const int64_t ntiles = (npx + MR - 1) / MR;

    // Source pointer per (tile, tap, row) and destination pointer per pixel.
    ptrs.assign(static_cast<size_t>(ntiles * taps * MR), zeros);
    thread_local std::vector<float*> dsts;
    dsts.assign(static_cast<size_t>(ntiles * MR), nullptr);
    GridCursor at(g, pixel_begin);
    const int64_t* dh = g.tap_dh.data();
    const int64_t* dw = g.tap_dw.data();
    for (int64_t p = 0; p < npx; ++p, at.advance()) {
        const int64_t tile = p / MR, row = p % MR;
        const float* img = src + at.n * g.src_h * g.src_w * cin;
        const float** out = ptrs.data() + tile * taps * MR + row;
        for (int64_t t = 0; t < taps; ++t) {
            const int64_t ih = at.gh * g.src_stride + dh[t];
            const int64_t iw = at.gw * g.src_stride + dw[t];
            if (ih >= 0 && ih < g.src_h && iw >= 0 && iw < g.src_w) out[t * MR] = img + (ih * g.src_w + iw) * cin;
        }
        dsts[static_cast<size_t>(p)] = dst_pixel(g, dst, at) + co0;
    }

    const float* wblock = wpack + co_block * taps * cin * kBlockCo;
    const bool stream_dst = stream_destination(g, dst, ep);
    // Steps of (input-channel chunk, group of taps): each step's weights (kc x kBlockCo floats
    // per tap, at most ~32 KiB) stay in L1 while every tile of the block uses them; partial sums
    // wait in `partial` between steps. Few input channels (the first layer has one) put several
    // taps in a step, so a step still has enough arithmetic to pay for its partial-sum traffic.
    const int64_t chunks = (cin + kc_max - 1) / kc_max;
    const int64_t kc_step = (cin + chunks - 1) / chunks;
    const int64_t group = std::clamp<int64_t>(kc_max / kc_step, 1, taps);
    const int64_t groups_per_chunk = (taps + group - 1) / group;
    const int64_t steps = chunks * groups_per_chunk;
    if (steps > 1) partial.resize(static_cast<size_t>(ntiles * MR * NV * L));
    thread_local std::vector<const float*> shifted;
    shifted.resize(static_cast<size_t>(group * MR));

    for (int64_t step = 0; step < steps; ++step) {
        const int64_t chunk = step / groups_per_chunk;
        const int64_t t0 = (step % groups_per_chunk) * group, tn = std::min(group, taps - t0);
        const int64_t ci0 = chunk * kc_step;
        const int64_t kc = std::min(kc_step, cin - ci0);
        const bool last = step == steps - 1;
        const float* wt = wblock + (t0 * cin + ci0) * kBlockCo;
        for (int64_t tile = 0; tile < ntiles; ++tile) {
            VecF acc[MR][NV];
            float* part = steps > 1 ? partial.data() + tile * MR * NV * L : nullptr;
            for (int i = 0; i < MR; ++i)
                for (int v = 0; v < NV; ++v) acc[i][v] = step == 0 ? VecF::zero() : VecF::load(part + (i * NV + v) * L);
            const float* const* tp = ptrs.data() + (tile * taps + t0) * MR;
            for (int64_t k = 0; k < tn * MR; ++k) shifted[static_cast<size_t>(k)] = tp[k] + ci0;
            // Inputs of a strided convolution over a large image come from memory in a pattern the
            // hardware prefetchers miss (measured: 74 % of peak when the input fits in cache, 55 %
            // when not); ask for the tile two ahead while this one computes.
            if (tile + kPrefetchTiles < ntiles) {
                const float* const* ahead = ptrs.data() + ((tile + kPrefetchTiles) * taps + t0) * MR;
                for (int64_t k = 0; k < tn * MR; ++k)
                    for (int64_t c = 0; c < kc; c += 16) prefetch_l2(ahead[k] + ci0 + c);
            }
            // And the destination lines the tile two ahead will write: their read-for-ownership
            // otherwise stalls the epilogue's stores (~20 % of a 1x1 convolution's time).
            if (last && tile + kPrefetchTiles < ntiles)
                for (int64_t i = 0; i < MR; ++i) {
                    float* d = dsts[static_cast<size_t>((tile + kPrefetchTiles) * MR + i)];
                    if (d)
                        for (int v = 0; v < NV; ++v) prefetch_for_write(d + v * L);
                }
            gather_tile<MR, NV>(acc, shifted.data(), tn, kc, wt, cin * kBlockCo);
            if (!last) {
                for (int i = 0; i < MR; ++i)
                    for (int v = 0; v < NV; ++v) acc[i][v].store(part + (i * NV + v) * L);
                continue;
            }
            const int64_t rows = std::min<int64_t>(MR, npx - tile * MR);
            store_tile<MR, NV>(acc, rows, dsts.data() + tile * MR, co0, co_count, ep, stream_dst);
        }
    }
    if (stream_dst) simd::store_fence();
}

// One input channel (the first convolution of the DAE and of the ESN, 1 -> 64, and the input
// gradient of the DAE's last, 64 -> 1). gather_conv_block's tile sets up, prefetches and reads a
// source pointer per (tap, pixel) for the single FMA row each feeds, once per block of output
// channels: 5 % of the FMA peak measured for 1 -> 64 at 112 x 112. Here a tile's MR pixels read
// their tap values once into `vals` (zeros in the padding) and every block of output channels
// reduces over them with the taps in the place of input channels (one input channel's packed
// weights, [tap][1][kBlockCo], are laid out as [ci][kBlockCo] would be). Each output is the same
// FMAs in the same order as in gather_conv_block, so the results are the same bits.
template <int MR, int NV>
PIN_FORCEINLINE void one_channel_tile(const float* const* rows, int64_t taps, const float* w, int64_t count,
                                      float* const* dsts, int64_t co0, int64_t co_count, const ConvEpilogue& ep,
                                      bool stream) {
    VecF acc[MR][NV];
    for (int i = 0; i < MR; ++i)
        for (int v = 0; v < NV; ++v) acc[i][v] = VecF::zero();
    gather_tile<MR, NV>(acc, rows, 1, taps, w, 0);
    float* d[MR];
    for (int64_t i = 0; i < count; ++i) d[i] = dsts[i] + co0;
    store_tile<MR, NV>(acc, count, d, co0, co_count, ep, stream);
}

inline void one_channel_conv_block(const float* src, const GatherConvGeometry& g, const float* wpack, float* dst,
                                   const ConvEpilogue& ep, bool stream, int64_t p0, int64_t p1) {
    constexpr int MR = mr_for_nv(kMaxNV);
    constexpr int L = VecF::kLanes;
    const int64_t taps = g.taps();
    const int64_t co_blocks = (g.dst_channels + kBlockCo - 1) / kBlockCo;
    thread_local std::vector<float> vals;
    vals.resize(static_cast<size_t>(MR * taps));
    const float* rows[MR];
    for (int i = 0; i < MR; ++i) rows[i] = vals.data() + i * taps;
    const int64_t* dh = g.tap_dh.data();
    const int64_t* dw = g.tap_dw.data();
    GridCursor at(g, p0);
    for (int64_t p = p0; p < p1; p += MR) {
        const int64_t count = std::min<int64_t>(MR, p1 - p);
        float* dsts[MR] = {};
        for (int64_t i = 0; i < MR; ++i) {
            float* v = vals.data() + i * taps;
            if (i >= count) {  // rows past the block's end: computed on zeros, never stored
                std::fill(v, v + taps, 0.0f);
                continue;
            }
            const float* img = src + at.n * g.src_h * g.src_w;
            for (int64_t t = 0; t < taps; ++t) {
                const int64_t ih = at.gh * g.src_stride + dh[t], iw = at.gw * g.src_stride + dw[t];
                v[t] = ih >= 0 && ih < g.src_h && iw >= 0 && iw < g.src_w ? img[ih * g.src_w + iw] : 0.0f;
            }
            dsts[i] = dst_pixel(g, dst, at);
            at.advance();
        }
        for (int64_t cb = 0; cb < co_blocks; ++cb) {
            const int64_t co0 = cb * kBlockCo, co_count = std::min<int64_t>(kBlockCo, g.dst_channels - co0);
            const float* w = wpack + cb * taps * kBlockCo;
            switch ((co_count + L - 1) / L) {
                case 1: one_channel_tile<MR, 1>(rows, taps, w, count, dsts, co0, co_count, ep, stream); break;
#if defined(__AVX512F__)
                case 2: one_channel_tile<MR, 2>(rows, taps, w, count, dsts, co0, co_count, ep, stream); break;
                case 3: one_channel_tile<MR, 3>(rows, taps, w, count, dsts, co0, co_count, ep, stream); break;
#endif
                default: one_channel_tile<MR, kMaxNV>(rows, taps, w, count, dsts, co0, co_count, ep, stream); break;
            }
        }
    }
}

}  // namespace detail

// Runs gather convolutions that share a source, a destination and a pixel grid size (the
// sub-pixel classes of a strided input gradient) over the whole grid: each task runs every class
// on the same block of pixels, so the block's source values come from cache for all but the
// first. `wpacks[k]` comes from detail::pack_gather_weights for `geos[k]`.
inline void gather_conv_packed_classes(const float* src, const GatherConvGeometry* const* geos,
                                       const float* const* wpacks, int64_t classes, float* dst,
                                       const ConvEpilogue& ep = {}) {
    using namespace detail;
    const GatherConvGeometry& g0 = *geos[0];
    const int64_t pixels = g0.batch * g0.grid_h * g0.grid_w;
    if (pixels == 0 || g0.dst_channels == 0) return;
    int64_t max_taps = 0;
    bool every_class_has_taps = true;
    for (int64_t k = 0; k < classes; ++k) {
        PIN_CHECK(geos[k]->batch * geos[k]->grid_h * geos[k]->grid_w == pixels &&
                      geos[k]->dst_channels == g0.dst_channels && geos[k]->src_channels == g0.src_channels,
                  "gather_conv_packed_classes: classes must share grid size and channels");
        max_taps = std::max(max_taps, geos[k]->taps());
        every_class_has_taps = every_class_has_taps && geos[k]->taps() > 0;
    }
    const int64_t co_blocks = (g0.dst_channels + kBlockCo - 1) / kBlockCo;
    if (g0.src_channels == 1 && every_class_has_taps) {
        // 96 pixels (16 tiles of 6) per task, every block of output channels in it.
        constexpr int64_t kBlock = 96;
        const bool stream = stream_destination(g0, dst, ep);
        parallel_for((pixels + kBlock - 1) / kBlock, [&](int64_t b) {
            const int64_t p0 = b * kBlock, p1 = std::min(pixels, p0 + kBlock);
            for (int64_t k = 0; k < classes; ++k) one_channel_conv_block(src, *geos[k], wpacks[k], dst, ep, stream, p0, p1);
            if (stream) simd::store_fence();
        });
        return;
    }
    // Input channels per step: kc x kBlockCo packed weights = 32 KiB, which stays in L1 while all
    // tiles of a pixel block use it (measured best on Zen 5 among 64/128/192/256).
    constexpr int64_t kc_max = 128;
    std::vector<float> zeros(static_cast<size_t>(g0.src_channels + VecF::kLanes), 0.0f);
    // Pixel blocks (a multiple of every MR used): 48 pixels, so a block's partial sums stay near
    // L1; 96 when a co-block's packed weights outgrow L2 (deep layers on small grids), where
    // every block re-reads them from L3 and more tiles per block amortise that. A pixel's sums
    // never depend on which block holds it (their order is fixed by the steps), so any block size
    // gives the same bits.
    const int64_t weight_block_bytes = max_taps * g0.src_channels * kBlockCo * static_cast<int64_t>(sizeof(float));
    const int64_t kPixelBlock = weight_block_bytes > (512 << 10) ? 96 : 48;
    static_assert(48 % mr_for_nv(1) == 0 && 48 % mr_for_nv(2) == 0 && 48 % mr_for_nv(kMaxNV) == 0, "whole tiles per block");
    const int64_t pixel_blocks = (pixels + kPixelBlock - 1) / kPixelBlock;
    auto run_block = [&](int64_t cb, int64_t pb) {
        const int64_t p0 = pb * kPixelBlock, p1 = std::min(pixels, p0 + kPixelBlock);
        const int64_t co_left = g0.dst_channels - cb * kBlockCo;
        const int nv = static_cast<int>(std::min<int64_t>(kMaxNV, (co_left + VecF::kLanes - 1) / VecF::kLanes));
        thread_local std::vector<float> partial;
        thread_local std::vector<const float*> ptrs;
        for (int64_t k = 0; k < classes; ++k) {
            const GatherConvGeometry& g = *geos[k];
            const float* wpack = wpacks[k];
            // A sub-pixel class that no tap reaches (1x1 stride-2 backward, odd positions): the
            // sum is 0, so is PReLU(0); write zeros, or leave an accumulated destination as it is.
            if (g.taps() == 0) {
                PIN_CHECK(!ep.bias, "gather_conv: a bias on a convolution direction without taps");
                if (ep.accumulate) continue;
                const int64_t count = std::min<int64_t>(kBlockCo, g.dst_channels - cb * kBlockCo);
                GridCursor at(g, p0);
                for (int64_t pix = p0; pix < p1; ++pix, at.advance()) {
                    float* d = dst_pixel(g, dst, at) + cb * kBlockCo;
                    std::fill(d, d + count, 0.0f);
                }
                continue;
            }
            switch (nv) {
                case 1: gather_conv_block<1>(src, g, wpack, dst, ep, zeros.data(), cb, p0, p1, kc_max, partial, ptrs); break;
                case 2: gather_conv_block<2>(src, g, wpack, dst, ep, zeros.data(), cb, p0, p1, kc_max, partial, ptrs); break;
#if defined(__AVX512F__)
                case 3: gather_conv_block<3>(src, g, wpack, dst, ep, zeros.data(), cb, p0, p1, kc_max, partial, ptrs); break;
                case 4: gather_conv_block<4>(src, g, wpack, dst, ep, zeros.data(), cb, p0, p1, kc_max, partial, ptrs); break;
#endif
                default: PIN_CHECK(false, "gather_conv: unexpected vector count ", nv);
            }
        }
    };
    // When every block's packed weights together fit in L2 (the 1x1 shortcuts, layers of few
    // channels), a task takes one block of pixels through all blocks of output channels: its
    // source pixels come from memory once instead of once per block of output channels, and each
    // destination line is finished while it is still in cache. Larger weights keep the block of
    // output channels outer, so that its weights stay in L2 while the pixels stream past.
    if (co_blocks > 1 && co_blocks * weight_block_bytes <= (256 << 10)) {
        parallel_for(pixel_blocks, [&](int64_t pb) {
            for (int64_t cb = 0; cb < co_blocks; ++cb) run_block(cb, pb);
        });
    } else {
        parallel_for(co_blocks * pixel_blocks, [&](int64_t task) { run_block(task / pixel_blocks, task % pixel_blocks); });
    }
}

// Runs one gather convolution over the whole grid. `wpack` comes from detail::pack_gather_weights.
inline void gather_conv_packed(const float* src, const GatherConvGeometry& g, const float* wpack, float* dst,
                               const ConvEpilogue& ep = {}) {
    const GatherConvGeometry* geos[1] = {&g};
    const float* wpacks[1] = {wpack};
    gather_conv_packed_classes(src, geos, wpacks, 1, dst, ep);
}

namespace detail {

// Few output channels (the DAE's last 64 -> 1 convolution): vectorising over output channels
// would waste 15 of 16 lanes, so this path vectorises over input channels instead, one dot
// product per (pixel, output channel), with kSplit independent accumulators to hide FMA latency.
// Weights: [tap][co][ci padded to kLanes].
template <int CO>
void gather_conv_narrow_block(const float* src, const GatherConvGeometry& g, const float* wn, int64_t cin_padded,
                              float* dst, const ConvEpilogue& ep, int64_t p0, int64_t p1) {
    constexpr int L = VecF::kLanes;
    constexpr int kSplit = 4;
    const int64_t cin = g.src_channels, taps = g.taps();
    const int64_t full = cin / L * L;
    const int tail = static_cast<int>(cin - full);
    GridCursor at(g, p0);
    for (int64_t pix = p0; pix < p1; ++pix, at.advance()) {
        const int64_t n = at.n, gh = at.gh, gw = at.gw;
        VecF acc[CO][kSplit];
        for (int c = 0; c < CO; ++c)
            for (int k = 0; k < kSplit; ++k) acc[c][k] = VecF::zero();
        for (int64_t t = 0; t < taps; ++t) {
            const int64_t ih = gh * g.src_stride + g.tap_dh[static_cast<size_t>(t)];
            const int64_t iw = gw * g.src_stride + g.tap_dw[static_cast<size_t>(t)];
            if (ih < 0 || ih >= g.src_h || iw < 0 || iw >= g.src_w) continue;
            const float* s = src + ((n * g.src_h + ih) * g.src_w + iw) * cin;
            const float* w = wn + t * CO * cin_padded;
            int64_t ci = 0;
            for (; ci + kSplit * L <= full; ci += kSplit * L)
                for (int k = 0; k < kSplit; ++k) {
                    const VecF x = VecF::load(s + ci + k * L);
                    for (int c = 0; c < CO; ++c)
                        acc[c][k] = fma(x, VecF::load(w + c * cin_padded + ci + k * L), acc[c][k]);
                }
            for (; ci < full; ci += L) {
                const VecF x = VecF::load(s + ci);
                for (int c = 0; c < CO; ++c) acc[c][1] = fma(x, VecF::load(w + c * cin_padded + ci), acc[c][1]);
            }
            if (tail) {
                const VecF x = VecF::load_partial(s + ci, tail);
                for (int c = 0; c < CO; ++c) acc[c][2] = fma(x, VecF::load(w + c * cin_padded + ci), acc[c][2]);
            }
        }
        float* d = dst_pixel(g, dst, at);
        for (int c = 0; c < CO; ++c) {
            float y = ((acc[c][0] + acc[c][1]) + (acc[c][2] + acc[c][3])).sum();
            if (ep.bias) y += ep.bias[c];
            if (ep.prelu_slope && y < 0.0f) y *= ep.prelu_slope[c];
            d[c] = ep.accumulate ? d[c] + y : y;
        }
    }
}

}  // namespace detail

constexpr int64_t kNarrowOutputChannels = 4;

// Runs one gather convolution with weights given by weight(co, ci, t): packs them in the layout
// of the path that suits the shape (narrow outputs, or the register-tiled main path) and runs it.
template <typename WeightFn>
void gather_conv(const float* src, const GatherConvGeometry& g, WeightFn weight, float* dst,
                 const ConvEpilogue& ep = {}) {
    const int64_t cout = g.dst_channels, cin = g.src_channels, taps = g.taps();
    if (taps > 0 && cout <= kNarrowOutputChannels) {
        const int64_t cin_padded = (cin + VecF::kLanes - 1) / VecF::kLanes * VecF::kLanes;
        std::vector<float> wn(static_cast<size_t>(taps * cout * cin_padded), 0.0f);
        for (int64_t t = 0; t < taps; ++t)
            for (int64_t co = 0; co < cout; ++co)
                for (int64_t ci = 0; ci < cin; ++ci) wn[static_cast<size_t>((t * cout + co) * cin_padded + ci)] = weight(co, ci, t);
        const int64_t pixels = g.batch * g.grid_h * g.grid_w;
        constexpr int64_t kBlock = 256;
        parallel_for((pixels + kBlock - 1) / kBlock, [&](int64_t b) {
            const int64_t p0 = b * kBlock, p1 = std::min(pixels, p0 + kBlock);
            switch (cout) {
                case 1: detail::gather_conv_narrow_block<1>(src, g, wn.data(), cin_padded, dst, ep, p0, p1); break;
                case 2: detail::gather_conv_narrow_block<2>(src, g, wn.data(), cin_padded, dst, ep, p0, p1); break;
                case 3: detail::gather_conv_narrow_block<3>(src, g, wn.data(), cin_padded, dst, ep, p0, p1); break;
                default: detail::gather_conv_narrow_block<4>(src, g, wn.data(), cin_padded, dst, ep, p0, p1); break;
            }
        });
        return;
    }
    const Tensor wpack = detail::pack_gather_weights(cout, cin, std::max<int64_t>(taps, 1),
                                                                 [&](int64_t co, int64_t ci, int64_t t) {
                                                                     return taps == 0 ? 0.0f : weight(co, ci, t);
                                                                 });
    gather_conv_packed(src, g, wpack.data(), dst, ep);
}

namespace detail {

// MR input channels x NV vectors of output channels, summed over `count` pixels. kFull: all
// NV*kLanes output channels exist (no masking), a compile-time choice so that the loop has one
// straight path and the compiler keeps all MR*NV accumulators in registers. The sums go to (or, after
// the first chunk, are added to) out + i * out_stride for input channel ci0 + i; g and out start at
// the tile's first output channel.
template <int MR, int NV, bool kFull>
void weight_grad_tile(float* out, int64_t out_stride, const float* src, const int64_t* offsets, const int64_t* rows,
                      const float* g, int64_t g_stride, int64_t count, int64_t ci0, int64_t co_count, bool first, bool prefetch_src) {
    constexpr int L = VecF::kLanes;
    VecF acc[MR][NV];
    for (int i = 0; i < MR; ++i)
        for (int v = 0; v < NV; ++v) acc[i][v] = VecF::zero();
    int lanes[NV];
    for (int v = 0; v < NV; ++v) lanes[v] = static_cast<int>(std::clamp<int64_t>(co_count - v * L, 0, L));
    const float* src_c = src + ci0;
    const float* g_c = g;  // already at this tile's first output channel
    // Only the pixels whose tap lands inside the source are listed: no branch in the loop (on a
    // 7x7 grid a third of the pixels fall in the padding for the border taps).
    // The source line kAhead pixels on is fetched into L1 now: the lines of a stride-2 grid lie
    // 2 * channels * 4 bytes apart (4 KiB at 512 channels) and each serves one pixel. On one core
    // with such a source (in L2) the loop ran at 84 % of peak, with the prefetch at 92 %, with a
    // dense source at 100 %; 512 -> 512 at 14 -> 7 took 4-7 % less time (kAhead 8: 1-4 %).
    constexpr int64_t kAhead = 4;
    for (int64_t k = 0; k < count; ++k) {
        if (prefetch_src) prefetch_l1(src_c + offsets[std::min(k + kAhead, count - 1)]);
        const float* xs = src_c + offsets[k];
        const float* gp = g_c + rows[k] * g_stride;
        VecF gv[NV];
        for (int v = 0; v < NV; ++v) gv[v] = kFull ? VecF::load(gp + v * L) : VecF::load_partial(gp + v * L, lanes[v]);
        for (int i = 0; i < MR; ++i) {
            const VecF b = VecF::broadcast(xs[i]);
            for (int v = 0; v < NV; ++v) acc[i][v] = fma(b, gv[v], acc[i][v]);
        }
    }
    // Fold this chunk's sums into the running total (the first chunk starts it): chunk order is
    // fixed, so is the result.
    for (int i = 0; i < MR; ++i)
        for (int v = 0; v < NV; ++v) {
            float* o = out + i * out_stride + v * L;
            if (first) {
                if (lanes[v] == L) acc[i][v].store(o);
                else if (lanes[v] > 0) acc[i][v].store_partial(o, lanes[v]);
            } else if (lanes[v] == L) {
                (acc[i][v] + VecF::load(o)).store(o);
            } else if (lanes[v] > 0) {
                (acc[i][v] + VecF::load_partial(o, lanes[v])).store_partial(o, lanes[v]);
            }
        }
}

template <int MR, int NV>
void weight_grad_tile_any(float* out, int64_t out_stride, const float* src, const int64_t* offsets,
                          const int64_t* rows, const float* g, int64_t g_stride, int64_t count, int64_t ci0,
                          int64_t co_count, bool first, bool prefetch_src) {
    if (co_count == NV * VecF::kLanes)
        weight_grad_tile<MR, NV, true>(out, out_stride, src, offsets, rows, g, g_stride, count, ci0, co_count, first, prefetch_src);
    else
        weight_grad_tile<MR, NV, false>(out, out_stride, src, offsets, rows, g, g_stride, count, ci0, co_count, first, prefetch_src);
}

constexpr int kWeightGradMR = 6;  // 6 x kMaxNV accumulators: 24 of 32 registers (AVX-512), 12 of 16 (AVX2)
constexpr int64_t kWeightGradChunk = 128;  // pixels per chunk of tap_weight_gradient

template <int NV>
void weight_grad_dispatch_mr(int mr, float* out, int64_t out_stride, const float* src, const int64_t* offsets,
                             const int64_t* rows, const float* g, int64_t g_stride, int64_t count, int64_t ci0,
                             int64_t co_count, bool first, bool prefetch_src) {
#define PIN_WG_CASE(M) \
    case M: weight_grad_tile_any<M, NV>(out, out_stride, src, offsets, rows, g, g_stride, count, ci0, co_count, first, prefetch_src); break;
    switch (mr) {
        PIN_WG_CASE(6)
        PIN_WG_CASE(5)
        PIN_WG_CASE(4)
        PIN_WG_CASE(3)
        PIN_WG_CASE(2)
        default: weight_grad_tile_any<1, NV>(out, out_stride, src, offsets, rows, g, g_stride, count, ci0, co_count, first, prefetch_src); break;
    }
#undef PIN_WG_CASE
}

// dwt [t][ci][co] -> out [co][ci][t] (PyTorch's weight layout), in parallel over blocks of 16 co.
// The innermost loop runs over co, so each read takes a whole cache line of dwt (16 co of one
// (t, ci)): with co outermost every line was fetched 16 times for one float each (6.6 ms instead
// of 2 for 9.4 MB).
inline void tap_gradient_to_weight_layout(const float* dwt, int64_t taps, int64_t cin, int64_t cout, float* out) {
    constexpr int64_t kB = 16;
    parallel_for((cout + kB - 1) / kB, [&](int64_t blk) {
        const int64_t b0 = blk * kB, b1 = std::min(cout, b0 + kB);
        for (int64_t a = 0; a < cin; ++a)
            for (int64_t t = 0; t < taps; ++t) {
                const float* in = dwt + (t * cin + a) * cout;
                float* o = out + a * taps + t;
                for (int64_t b = b0; b < b1; ++b) o[b * cin * taps] = in[b];
            }
    });
}

// One (tap, narrow index j, run of wide indices from w0) of narrow_weight_gradient:
// acc[v] = sum over the listed pixels k of b_k * x_k[v], b_k the narrow side's value j and x_k the
// wide side's values from w0. kFull: all kVectors vectors are whole (no bounds or tail checks per
// pixel); otherwise `width` wide values.
template <bool kOverCi, int kVectors, bool kFull>
PIN_FORCEINLINE void narrow_sums(VecF (&acc)[kVectors], const float* src, const float* g, const int64_t* offsets,
                                 const int64_t* rows, int64_t valid, int64_t j, int64_t w0, int64_t width) {
    constexpr int L = VecF::kLanes;
    const int nvec = kFull ? kVectors : static_cast<int>((width + L - 1) / L);
    const int tail = kFull ? L : static_cast<int>(width - (nvec - 1) * L);
    for (int v = 0; v < kVectors; ++v) acc[v] = VecF::zero();
    for (int64_t k = 0; k < valid; ++k) {
        const float* x = kOverCi ? src + offsets[k] + w0 : g + rows[k] + w0;
        const VecF b = VecF::broadcast(kOverCi ? g[rows[k] + j] : src[offsets[k] + j]);
        for (int v = 0; v < kVectors; ++v) {
            if (kFull) {
                acc[v] = fma(b, VecF::load(x + v * L), acc[v]);
                continue;
            }
            if (v >= nvec) break;
            const VecF xv = v == nvec - 1 && tail < L ? VecF::load_partial(x + v * L, tail) : VecF::load(x + v * L);
            acc[v] = fma(b, xv, acc[v]);
        }
    }
}

// Weight gradients with one input channel (the first layers, 1 -> 64) or few output channels (the
// DAE's last layer, 64 -> 1). The register tile of tap_weight_gradient spans kWeightGradMR input
// channels by vectors of output channels, so these shapes filled one row of it (1 -> 64) or one
// lane of each vector (64 -> 1): 9 % and 2 % of the FMA peak measured on AVX2. Here the wide side
// is vectorised and the narrow one broadcast, one tap at a time: acc[v] += b * x[v] over the pixels,
// with up to kVectors accumulators. kOverCi: vectors over input channels, broadcasts of the
// gradient (few output channels); otherwise vectors over output channels, broadcasts of the
// one-channel source. The pixels are cut into slices of kSlice (a function of the shape alone),
// each summed in pixel order into its own piece, and the pieces are added in slice order, so the
// result does not depend on the thread count.
template <bool kOverCi>
void narrow_weight_gradient(const float* src, const GatherConvGeometry& geo, const float* g, float* dwt, float* out) {
    constexpr int L = VecF::kLanes;
    constexpr int kVectors = 8;
    constexpr int64_t kSlice = 1024;
    const int64_t taps = geo.taps(), cin = geo.src_channels, cout = geo.dst_channels;
    const int64_t pixels = geo.batch * geo.grid_h * geo.grid_w;
    const int64_t wide = kOverCi ? cin : cout, narrow = kOverCi ? cout : cin;
    const int64_t total = taps * cin * cout;
    const int64_t slices = (pixels + kSlice - 1) / kSlice;
    std::vector<float> pieces(static_cast<size_t>(slices * total));
    parallel_for(slices, [&](int64_t sl) {
        const int64_t p0 = sl * kSlice, count = std::min(kSlice, pixels - p0);
        float* piece = pieces.data() + sl * total;  // [t][ci][co]
        thread_local std::vector<int64_t> offsets, rows;
        offsets.resize(static_cast<size_t>(count));
        rows.resize(static_cast<size_t>(count));
        for (int64_t t = 0; t < taps; ++t) {
            // The slice's pixels whose tap t lies inside the source: source offset and pixel.
            int64_t valid = 0;
            GridCursor at(geo, p0);
            for (int64_t p = 0; p < count; ++p, at.advance()) {
                const int64_t ih = at.gh * geo.src_stride + geo.tap_dh[static_cast<size_t>(t)];
                const int64_t iw = at.gw * geo.src_stride + geo.tap_dw[static_cast<size_t>(t)];
                if (ih >= 0 && ih < geo.src_h && iw >= 0 && iw < geo.src_w) {
                    offsets[static_cast<size_t>(valid)] = ((at.n * geo.src_h + ih) * geo.src_w + iw) * cin;
                    rows[static_cast<size_t>(valid++)] = (p0 + p) * cout;
                }
            }
            for (int64_t j = 0; j < narrow; ++j)
                for (int64_t w0 = 0; w0 < wide; w0 += kVectors * L) {
                    const int64_t width = std::min<int64_t>(kVectors * L, wide - w0);
                    VecF acc[kVectors];
                    if (width == kVectors * L)
                        narrow_sums<kOverCi, kVectors, true>(acc, src, g, offsets.data(), rows.data(), valid, j, w0, 0);
                    else
                        narrow_sums<kOverCi, kVectors, false>(acc, src, g, offsets.data(), rows.data(), valid, j, w0, width);
                    alignas(64) float lanes[kVectors * L];
                    for (int v = 0; v < kVectors; ++v) acc[v].store(lanes + v * L);
                    for (int64_t i = 0; i < width; ++i) {
                        const int64_t ci = kOverCi ? w0 + i : j, co = kOverCi ? j : w0 + i;
                        piece[(t * cin + ci) * cout + co] = lanes[i];
                    }
                }
        }
    });
    constexpr int64_t kBlock = 1 << 12;
    parallel_for((total + kBlock - 1) / kBlock, [&](int64_t blk) {
        const int64_t i0 = blk * kBlock, i1 = std::min(total, i0 + kBlock);
        std::copy(pieces.begin() + i0, pieces.begin() + i1, dwt + i0);
        for (int64_t sl = 1; sl < slices; ++sl)
            for (int64_t i = i0; i < i1; ++i) dwt[i] += pieces[static_cast<size_t>(sl * total + i)];
    });
    if (out) tap_gradient_to_weight_layout(dwt, taps, cin, cout, out);
}

}  // namespace detail

// dwt[t][ci][co] = sum over grid pixels of src[tap source, ci] * g[pixel, co], overwriting dwt
// (taps x src_channels x dst_channels floats). g is channels-last over the grid (batch, grid_h,
// grid_w, dst_channels); the destination fields of the geometry are not used.
// With `out`, the result is also written there in PyTorch's weight layout out[co][ci][t], and dwt
// is scratch space (on the direct path it is not written at all): each unit (input-channel block,
// output-channel block) sums into a contiguous piece of its own and moves it, still in L1, into
// out. A separate transposition of the whole gradient afterwards costs 13 % of a 512 x 512 x 3 x 3
// weight gradient (it moves 9.4 MB at memory speed).
inline void tap_weight_gradient(const float* src, const GatherConvGeometry& geo, const float* g, float* dwt,
                                float* out = nullptr) {
    using namespace detail;
    constexpr int MR = kWeightGradMR;
    constexpr int L = VecF::kLanes;
    const int64_t taps = geo.taps(), cin = geo.src_channels, cout = geo.dst_channels;
    const int64_t pixels = geo.batch * geo.grid_h * geo.grid_w;
    if (pixels == 0 || taps == 0) {
        std::fill(dwt, dwt + taps * cin * cout, 0.0f);
        if (out) std::fill(out, out + taps * cin * cout, 0.0f);
        return;
    }
    if (cout <= kNarrowOutputChannels && cin >= VecF::kLanes) return narrow_weight_gradient<true>(src, geo, g, dwt, out);
    if (cin == 1 && cout >= VecF::kLanes) return narrow_weight_gradient<false>(src, geo, g, dwt, out);
    const int64_t ci_blocks = (cin + MR - 1) / MR;
    const int64_t co_blocks = (cout + kBlockCo - 1) / kBlockCo;
    const int64_t units = ci_blocks * co_blocks;
    const int64_t tiles = taps * units;
    // Tiles (tap, input-channel block, output-channel block) are shared among groups, one per
    // thread; each group streams the pixels in chunks of kChunk, a chunk staying in cache while the
    // group's tiles use it, and prefetches the next chunk meanwhile. A tile's sum does not depend
    // on which group owns it, so the grouping may follow the thread count; the chunk length (and
    // so the order in which a tile's partial sums are folded) depends only on the shape.
    // Tile order: output blocks vary fastest (a tile's source values, one cache line per pixel,
    // are reused by the next tiles from L1). Writing `out` directly needs the taps of a unit in
    // one group, consecutive: taps vary fastest and groups own whole units. That needs enough
    // units to share evenly (deep layers, where the transposition it saves is largest).
    // Few units (64- and 128-channel layers on large grids): every group would stream all pixels
    // and build every chunk's tables for a handful of tiles each. Instead the pixels are cut into
    // kSlices slices (by chunks, a choice of the shape alone) with a gradient buffer each, summed
    // in slice order at the end: each group streams its own slice.
    constexpr int64_t kSlices = 2;
    const int64_t chunks = (pixels + kWeightGradChunk - 1) / kWeightGradChunk;
    const bool sliced = units < 32 && chunks >= 4 && taps * cin * cout <= (int64_t{1} << 20);
    const bool direct = !sliced && out != nullptr && units >= 16 * num_threads();
    const int64_t slices = sliced ? kSlices : 1;
    const int64_t groups_per_slice = std::min<int64_t>(direct ? units : tiles, std::max<int64_t>(1, num_threads() / slices));
    const int64_t groups = slices * groups_per_slice;
    Tensor slice_sums;  // slices 1.. (slice 0 sums into dwt)
    // The direct path sums each unit into its own contiguous piece [tap][MR][kBlockCo]: in dwt a
    // unit's rows lie cout floats apart and its taps cin * cout apart (1 MiB at 512 channels), so
    // the running totals of a tile fell on few cache sets, and reading the finished piece back for
    // out[co][ci][t] took a fifth of the time outside the inner loop.
    Tensor unit_sums;
    if (direct) unit_sums = Tensor::empty({units * taps * MR * kBlockCo});
    if (sliced) slice_sums = Tensor::empty({(slices - 1) * taps * cin * cout});
    // 128 pixels: a chunk's gradient rows for one block of output channels (128 x 256 B) stay
    // in L1 while the group's tiles use them. Measured against 256 on 2 threads (Xeon, one
    // process, the variants interleaved, best of 40): 64 -> 64 at 112 -> 56 16.9 -> 15.5 ms,
    // 128 -> 128 at 56 -> 28 17.6 -> 17.0; 256 and 512 channels within 2 % either way.
    constexpr int64_t kChunk = kWeightGradChunk;
    // The tile's L1 prefetch of the source line kAhead pixels on, except on AVX2 when consecutive
    // pixels' lines lie a multiple of 4 KiB apart (512 channels at stride 2): all of a chunk's lines
    // then fall in one L1 set, and the 8 ways of the 32 KiB L1 of AVX2-only cores (Zen 2)
    // evicted prefetched lines before use (512 -> 512 at 14 -> 7 took 0.77 of the time without).
    const bool prefetch_src = VecF::kLanes == 16 || (geo.src_stride * cin * static_cast<int64_t>(sizeof(float))) % 4096 != 0;
    std::vector<int64_t> tap_delta(static_cast<size_t>(taps));  // source offset of tap t from (gh s, gw s)
    for (int64_t t = 0; t < taps; ++t)
        tap_delta[static_cast<size_t>(t)] = (geo.tap_dh[static_cast<size_t>(t)] * geo.src_w + geo.tap_dw[static_cast<size_t>(t)]) * cin;
    parallel_for(groups, [&](int64_t task) {
        const int64_t slice = task / groups_per_slice, grp = task % groups_per_slice, gn = groups_per_slice;
        const int64_t t_begin = direct ? units * grp / gn * taps : tiles * grp / gn;
        const int64_t t_end = direct ? units * (grp + 1) / gn * taps : tiles * (grp + 1) / gn;
        const int64_t pix_begin = chunks * slice / slices * kChunk;
        const int64_t pix_end = std::min(pixels, chunks * (slice + 1) / slices * kChunk);
        float* sums = slice == 0 ? dwt : slice_sums.data() + (slice - 1) * taps * cin * cout;
        std::vector<int64_t> offsets(static_cast<size_t>(taps * kChunk)), rows(static_cast<size_t>(taps * kChunk));
        std::vector<int64_t> valid(static_cast<size_t>(taps));
        std::vector<char> row_ok(static_cast<size_t>(taps));
        std::vector<float> gpanel;
        for (int64_t p0 = pix_begin; p0 < pix_end; p0 += kChunk) {
            const int64_t count = std::min(kChunk, pix_end - p0);
            const bool last_chunk = p0 + kChunk >= pix_end;
            // Both groups build the same tables for every chunk, so they are built cheaply: the
            // grid position advances without divisions, and a tap's row test is made once per grid
            // row (they cost a fifth of a 64-channel layer's weight gradient).
            std::fill(valid.begin(), valid.end(), 0);
            GridCursor at(geo, p0);
            auto start_row = [&] {
                for (int64_t t = 0; t < taps; ++t) {
                    const int64_t ih = at.gh * geo.src_stride + geo.tap_dh[static_cast<size_t>(t)];
                    row_ok[static_cast<size_t>(t)] = ih >= 0 && ih < geo.src_h;
                }
            };
            start_row();
            for (int64_t p = 0; p < count; ++p) {
                const int64_t base = ((at.n * geo.src_h + at.gh * geo.src_stride) * geo.src_w + at.gw * geo.src_stride) * cin;
                for (int64_t t = 0; t < taps; ++t) {
                    const int64_t iw = at.gw * geo.src_stride + geo.tap_dw[static_cast<size_t>(t)];
                    if (row_ok[static_cast<size_t>(t)] && iw >= 0 && iw < geo.src_w) {
                        const size_t k = static_cast<size_t>(t * kChunk + valid[static_cast<size_t>(t)]++);
                        offsets[k] = base + tap_delta[static_cast<size_t>(t)];
                        rows[k] = p;
                    }
                }
                if (at.advance()) start_row();
            }
            // The next chunk's gradient rows and centre-tap sources, fetched while this one computes.
            const int64_t next = p0 + kChunk;
            const int64_t ncount = std::min(kChunk, pix_end - next);
            const int64_t my_tiles = t_end - t_begin;
            const int64_t per_tile = my_tiles > 0 ? (ncount + my_tiles - 1) / my_tiles : 0;
            const float* gchunk = g + p0 * cout;
            // With more than one block of output channels, each block's kBlockCo gradient values
            // per pixel are copied into a contiguous panel once per chunk, so tiles read them
            // sequentially.
            const bool pack = co_blocks > 1;
            if (pack) {
                gpanel.resize(static_cast<size_t>(co_blocks * count * kBlockCo));
                for (int64_t p = 0; p < count; ++p)
                    for (int64_t cb = 0; cb < co_blocks; ++cb) {
                        const int64_t c0 = cb * kBlockCo, cc = std::min<int64_t>(kBlockCo, cout - c0);
                        std::copy(gchunk + p * cout + c0, gchunk + p * cout + c0 + cc,
                                  gpanel.data() + (cb * count + p) * kBlockCo);
                    }
            }
            for (int64_t tile = t_begin; tile < t_end; ++tile) {
                int64_t t, cib, cb;
                if (direct) {
                    t = tile % taps;
                    cb = (tile / taps) % co_blocks;
                    cib = tile / taps / co_blocks;
                } else {
                    cb = tile % co_blocks;
                    t = tile / co_blocks / ci_blocks;
                    cib = (tile / co_blocks) % ci_blocks;
                }
                const int64_t q0 = (tile - t_begin) * per_tile, q1 = std::min(ncount, q0 + per_tile);
                if (q0 < q1) {
                    GridCursor at(geo, next + q0);
                    for (int64_t q = q0; q < q1; ++q, at.advance()) {
                        const float* gp = g + (next + q) * cout;
                        for (int64_t c = 0; c < cout; c += 16) prefetch_l2(gp + c);
                        // The s x s source pixels this output pixel owns (the whole source when
                        // strided: taps of a stride-2 convolution also read odd rows and columns).
                        const int64_t ih0 = at.gh * geo.src_stride, iw0 = at.gw * geo.src_stride;
                        for (int64_t dh = 0; dh < geo.src_stride; ++dh)
                            for (int64_t dw = 0; dw < geo.src_stride; ++dw) {
                                const int64_t ih = ih0 + dh, iw = iw0 + dw;
                                if (ih >= geo.src_h || iw >= geo.src_w) continue;
                                const float* xp = src + ((at.n * geo.src_h + ih) * geo.src_w + iw) * cin;
                                for (int64_t c = 0; c < cin; c += 16) prefetch_l2(xp + c);
                            }
                    }
                }
                const int64_t ci0 = cib * MR, co0 = cb * kBlockCo;
                const int mr = static_cast<int>(std::min<int64_t>(MR, cin - ci0));
                const int64_t co_count = std::min<int64_t>(kBlockCo, cout - co0);
                const int nv = static_cast<int>((co_count + L - 1) / L);
                // The running totals this tile folds into: dwt[t][ci0..][co0..], rows cout apart, or
                // on the direct path the unit's own piece [t][MR][kBlockCo] of unit_sums.
                float* const piece = direct ? unit_sums.data() + (cib * co_blocks + cb) * taps * MR * kBlockCo : nullptr;
                float* dst = direct ? piece + t * MR * kBlockCo : sums + (t * cin + ci0) * cout + co0;
                const int64_t dst_stride = direct ? kBlockCo : cout;
                // Fetched now, used after the chunk's arithmetic (megabytes for deep layers).
                for (int i = 0; i < mr; ++i)
                    for (int64_t c = 0; c < co_count; c += 16) prefetch_l2(dst + i * dst_stride + c);
                const int64_t* off = offsets.data() + t * kChunk;
                const int64_t* row = rows.data() + t * kChunk;
                const int64_t nvalid = valid[static_cast<size_t>(t)];
                const float* gsrc = pack ? gpanel.data() + cb * count * kBlockCo : gchunk;
                const int64_t gstride = pack ? kBlockCo : cout;
                const int64_t gco0 = pack ? 0 : co0;
                switch (nv) {
                    case 1: weight_grad_dispatch_mr<1>(mr, dst, dst_stride, src, off, row, gsrc + gco0, gstride, nvalid, ci0, co_count, p0 == pix_begin, prefetch_src); break;
                    case 2: weight_grad_dispatch_mr<2>(mr, dst, dst_stride, src, off, row, gsrc + gco0, gstride, nvalid, ci0, co_count, p0 == pix_begin, prefetch_src); break;
#if defined(__AVX512F__)
                    case 3: weight_grad_dispatch_mr<3>(mr, dst, dst_stride, src, off, row, gsrc + gco0, gstride, nvalid, ci0, co_count, p0 == pix_begin, prefetch_src); break;
                    case 4: weight_grad_dispatch_mr<4>(mr, dst, dst_stride, src, off, row, gsrc + gco0, gstride, nvalid, ci0, co_count, p0 == pix_begin, prefetch_src); break;
#endif
                    default: PIN_CHECK(false, "tap_weight_gradient: unexpected vector count ", nv);
                }
                // The unit's last tap of the last chunk: its piece is complete and in L1;
                // out[co][ci][t] holds it as one run of mr * taps floats per co.
                if (direct && last_chunk && t == taps - 1)
                    for (int64_t c = 0; c < co_count; ++c) {
                        float* o = out + ((co0 + c) * cin + ci0) * taps;
                        for (int i = 0; i < mr; ++i)
                            for (int64_t tt = 0; tt < taps; ++tt) o[i * taps + tt] = piece[(tt * MR + i) * kBlockCo + c];
                    }
            }
        }
    });
    if (sliced) {
        const int64_t total = taps * cin * cout;
        constexpr int64_t kBlock = 1 << 14;
        parallel_for((total + kBlock - 1) / kBlock, [&](int64_t blk) {
            for (int64_t sl = 1; sl < slices; ++sl) {
                const float* part = slice_sums.data() + (sl - 1) * total;
                for (int64_t i = blk * kBlock; i < std::min(total, (blk + 1) * kBlock); ++i) dwt[i] += part[i];
            }
        });
    }
    if (out && !direct) tap_gradient_to_weight_layout(dwt, taps, cin, cout, out);
}

}  // namespace pin::cpu
