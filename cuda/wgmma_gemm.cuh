// cuda/wgmma_gemm.cuh - GEMMs on sm_90a's warpgroup MMA (wgmma.cuh), bfloat16 operands, fp32 sums: C =
// A B^T with A (M x K) and B (N x K), in three operand forms: read K-contiguous, dense matrices (the
// probe, gemm_bf16_wgmma: how much of the H200's dense BF16 rate a kernel of ours reaches with the
// instructions that rate is specified for, and whether our reading of the PTX ISA's descriptors and
// layouts holds on hardware) and the forward convolutions (A the gathered bfloat16 input, 8 channels
// per 16-byte cp.async copy, as gemm_kernels.cuh AsyncConvOperands; B the weights packed K-major,
// pack_bf16_kmajor); read M- and N-contiguous, the convolutions' weight gradients
// (WgmmaWeightGradOperands, WgmmaMnMajorTile, K split into chunks). The tensor cores read both
// operands from shared memory: unlike WMMA, no fragment loads through the registers, and one
// instruction per warpgroup covers 64 x 128 x 16.
//
// A block is two warpgroups (256 threads) and a 128 x kCols tile of C (kCols 128, or 64 for layers
// with 64 output channels, which 128 would half waste); warpgroup g computes rows 64 g .. 64 g + 63
// with one m64n{kCols}k16 per 16-deep step. K goes in slices of 64 through three shared-memory
// stages filled by cp.async (two slices in flight while the tensor cores work on one; or, with
// WgmmaTile's kInFlight = 1, one slice's copies and the previous slice's MMAs in flight while the
// next slice's MMAs are issued: which is faster is for the GPU to say). Shared
// memory is the no-swizzle K-major layout (wgmma.cuh) with core matrices 144 bytes apart along K
// (LBO = 128 + 16): the 8 copies a quarter-warp issues for one row (its 64 K values, 128 contiguous
// bytes of global memory) then land on 8 different 16-byte bank groups, where 128 would put all 8
// on the same one. The accumulators go through shared memory to the store functor (the
// convolutions' bias, PReLU and accumulation: gemm_kernels.cuh store_shared_tile).
//
// gemm_wgmma_ws_kernel is the same GEMM warp-specialized (ops.cuh WgmmaPipeline::WarpSpecialized,
// the K-major operand forms): a third warpgroup only copies, the two MMA warpgroups wait on
// mbarriers (mbarrier.cuh) for the stages they read, the grid is persistent; see WgmmaWsTile. Its
// operands may also come by tensor copies (tma.cuh, ops.cuh WgmmaLoads) into 128-byte swizzled
// stages: WgmmaTensorDenseOperands, WgmmaTensorConvOperands.
#pragma once
#include <cstdint>

#if !defined(__CUDACC__) && !defined(PIN_CUDA_EMULATION)
#error "wgmma_gemm.cuh: compile with nvcc, or include tests/cuda_emulation.hpp first"
#endif

#include "async_copy.cuh"
#include "bfloat16.cuh"
#include "gather.cuh"
#include "gemm_kernels.cuh"
#include "launch.cuh"
#include "mbarrier.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

namespace pin::cuda::gemm {

// What the tiles below share: a block of two warpgroups computing a 128 x kCols tile of C, K in
// slices of 64 through three stages of both operands, core matrices kLbo bytes apart along K and
// kSbo along M / N (kMnMajor: wgmma.cuh's M/N-major layout, else K-major).
// kInFlight: how many slices' MMAs a warpgroup leaves running when it goes on to the next slice:
// 0 waits for each slice's before the next barrier (the stage it read is free at once); 1 lets them
// run under the next slice's issue, and a second barrier per slice tells the copies when the stage
// the slice before read is free (ops.cuh WgmmaPipeline).
template <int kCols, int kInFlight, bool kMnMajor, int kLbo, int kSbo>
struct WgmmaStages {
    static_assert(kCols == 64 || kCols == 128, "the wgmma shapes wgmma.cuh instantiates");
    static_assert(kInFlight == 0 || kInFlight == 1, "three stages: one being copied, one being read, one in flight");
    static constexpr int threads = 256, rows = 128, cols = kCols, depth = 64, stages = 3, in_flight = kInFlight;
    static constexpr bool mn_major = kMnMajor;
    static_assert(threads == THREADS, "store_shared_tile strides by THREADS");
    static constexpr int lbo = kLbo, sbo = kSbo;  // bytes between core matrices along K, along M / N
    static constexpr int a_bytes = rows / 8 * sbo, b_bytes = cols / 8 * sbo, stage_bytes = a_bytes + b_bytes;
    // The epilogue's C [rows][c_ld] fp32 over the stages: + 8 so that the row pairs a quad writes
    // fall on distinct banks.
    static constexpr int c_ld = cols + 8;
    static constexpr int operand_bytes = stages * stage_bytes, c_bytes = rows * c_ld * 4;
    static constexpr int smem_bytes = operand_bytes > c_bytes ? operand_bytes : c_bytes;
    static constexpr int a_copies = rows * depth / 8 / threads, b_copies = cols * depth / 8 / threads;  // 16-byte copies per thread and slice
    static constexpr int min_blocks = 2;
    static_assert(rows * depth / 8 % threads == 0 && cols * depth / 8 % threads == 0, "whole copies per thread");
    static_assert(smem_bytes <= 227 * 1024 && min_blocks * (smem_bytes + 1024) <= 228 * 1024, "two blocks fit an sm_90 SM");
    // Byte offset of element (r, k) in an operand's tile.
    __host__ __device__ static constexpr int offset(int r, int k) {
        return (r / 8) * sbo + (k / 8) * lbo + (kMnMajor ? (k % 8) * 16 + (r % 8) * 2 : (r % 8) * 16 + (k % 8) * 2);
    }
};

// K-major operands, core matrices 144 bytes apart along K (see the top of this file).
template <int kCols, int kInFlight = 0>
struct WgmmaTile : WgmmaStages<kCols, kInFlight, false, 128 + 16, 64 / 8 * (128 + 16)> {
    using Base = WgmmaStages<kCols, kInFlight, false, 128 + 16, 64 / 8 * (128 + 16)>;
    static constexpr int chunks = Base::depth / 8;  // 16-byte copies per row and slice
    // Thread t copies rows t / 8 + 32 i of each operand, K values 8 (t % 8) .. + 7 of the slice (a
    // warp: 4 rows x 128 contiguous bytes).
    __host__ __device__ static constexpr int copy_row(int t, int i) { return t / chunks + (Base::threads / chunks) * i; }
    __host__ __device__ static constexpr int copy_k(int t) { return (t % chunks) * 8; }
};
using WgmmaGemmTile = WgmmaTile<128>;

// Both operands M/N-major (wgmma.cuh kMnMajor), for operands contiguous along M and N at each k (the
// weight gradients': x's channels at a tap, dy's output channels at a pixel): a 16-byte copy is 8
// consecutive rows at one k, a core-matrix row as it is. Core matrices are 128 bytes apart along K
// (LBO), 8 x 128 + 32 along M / N (SBO): the copies of 8 threads, (4 chunks of rows) x (2 values of
// k) as WgmmaWeightGradOperands issues them, then land on 8 different 16-byte bank groups
// ((2 chunk + k) mod 8).
template <int kCols, int kInFlight = 0>
struct WgmmaMnMajorTile : WgmmaStages<kCols, kInFlight, true, 128, 64 / 8 * 128 + 32> {};

// Dense operands: A (M x K) and B (N x K) row-major bfloat16; K % 8 == 0, both 16-byte aligned
// (every copy is 16 bytes, whole or zero-filled).
template <class T = WgmmaGemmTile>
struct WgmmaDenseOperands {
    using Tile = T;
    const Bf16* a;
    const Bf16* b;
    int64_t K;
    struct Regs {
        const Bf16* a_row[T::a_copies];  // this thread's rows (null: outside the matrix), at its K offset
        const Bf16* b_row[T::b_copies];
        int64_t k;  // its next slice's first K value
    };
    // One K chunk (kbeg 0, kend K): launched unsplit.
    __device__ void begin(Regs& r, int64_t m0, int64_t n0, int64_t M, int64_t N, int64_t, int64_t, int tid) const {
        for (int i = 0; i < T::a_copies; ++i) {
            const int64_t m = m0 + T::copy_row(tid, i);
            r.a_row[i] = m < M ? a + m * K + T::copy_k(tid) : nullptr;
        }
        for (int j = 0; j < T::b_copies; ++j) {
            const int64_t n = n0 + T::copy_row(tid, j);
            r.b_row[j] = n < N ? b + n * K + T::copy_k(tid) : nullptr;
        }
        r.k = T::copy_k(tid);
    }
    __device__ void issue(Regs& r, unsigned char* stage, int tid) const {
        const bool k_in = r.k < K;  // K % 8 == 0: a copy is all inside or all outside
        const int64_t step = r.k - T::copy_k(tid);
        for (int i = 0; i < T::a_copies; ++i) {
            const bool in = k_in && r.a_row[i];
            async_copy16(stage + T::offset(T::copy_row(tid, i), T::copy_k(tid)), in ? r.a_row[i] + step : a, in);
        }
        for (int j = 0; j < T::b_copies; ++j) {
            const bool in = k_in && r.b_row[j];
            async_copy16(stage + T::a_bytes + T::offset(T::copy_row(tid, j), T::copy_k(tid)), in ? r.b_row[j] + step : b, in);
        }
        r.k += T::depth;
    }
};

// The forward convolutions: A the gather over bfloat16 activations (Gather<false, Bf16>,
// Gather<true, Bf16> at stride 1, SubpixelGather<Bf16>: rows decoded once per launch, the tap once
// per tap, as AsyncConvOperands), B the weights K-major: row n (output channel) holds the whole
// gather's K = taps x C values at ldk apart (pack_bf16_kmajor), of which a sub-pixel class reads its
// taps' (TapStep::w_tap). Requires (fits()): C and K multiples of 64 (a slice lies in one tap),
// N and ldk multiples of 8 (N = 1, the DAE's last layer, belongs to the per-pixel kernel), both
// sources 16-byte aligned.
template <class LoadA, class T>
struct WgmmaConvOperands {
    using Tile = T;
    LoadA la;
    const Bf16* w;
    int64_t ldk;
    bool cache_l1 = false;  // the gathered copies also through L1 (ops.cuh GatherCaching)
    struct Regs {
        GatherSliceWalk<T::a_copies, T::depth> walk;
        const Bf16* w_row[T::b_copies];  // this thread's weight rows at its K offset (null: past N)
    };
    // One K chunk (kbeg 0, kend K): launched unsplit.
    __device__ void begin(Regs& r, int64_t m0, int64_t n0, int64_t M, int64_t N, int64_t, int64_t, int tid) const {
        r.walk.begin(la, M, [&](int i) { return m0 + T::copy_row(tid, i); }, T::copy_k(tid));
        for (int j = 0; j < T::b_copies; ++j) {
            const int64_t n = n0 + T::copy_row(tid, j);
            r.w_row[j] = n < N ? w + n * ldk + T::copy_k(tid) : nullptr;
        }
    }
    __device__ void issue(Regs& r, unsigned char* stage, int tid) const {
        for (int i = 0; i < T::a_copies; ++i) {
            const Bf16* src = r.walk.source(la, i);
            async_copy16(stage + T::offset(T::copy_row(tid, i), T::copy_k(tid)), src ? src : la.src, src != nullptr, cache_l1);
        }
        const int64_t first = r.walk.weight_row(la);
        for (int j = 0; j < T::b_copies; ++j)
            async_copy16(stage + T::a_bytes + T::offset(T::copy_row(tid, j), T::copy_k(tid)), r.w_row[j] ? r.w_row[j] + first : w,
                         r.w_row[j] != nullptr);
        r.walk.next(la);
    }
    bool fits(int64_t M, int64_t N, int64_t K) const {
        bool stride_ok = true;
        if constexpr (std::is_same<LoadA, Gather<true, typename LoadA::Source>>::value) stride_ok = la.stride == 1;
        return stride_ok && M > 0 && N > 0 && N % 8 == 0 && K > 0 && la.C % T::depth == 0 && K % T::depth == 0 && ldk % 8 == 0 &&
               aligned16(la.src) && aligned16(w);
    }
};

// The weight gradient of a convolution, dw^T[(kh, kw, ci), co] = sum over output pixels of
// x_gather(pixel, (kh, kw, ci)) dy[pixel, co] (as gemm_kernels.cuh AsyncWeightGradOperands): M the
// gather's taps x channels, N the output channels, K the pixels, split into chunks on blockIdx.z.
// Both operands are contiguous along M and N at a pixel, so they go to shared memory M/N-major
// (WgmmaMnMajorTile) in 16-byte copies of 8 channels. Thread t copies for pixel t / 4 of each slice
// the row chunks t % 4 + 4 i of A (its taps and channels fixed for the launch) and the column chunks
// t % 4 + 4 j of B (a warp: 8 pixels x 64 contiguous bytes of dy, and of x where C is a multiple
// of 32, the chunks then in one tap), and walks its pixel by
// 64 a slice with carries into rows and images instead of a division. Requires (fits()): C and N
// multiples of 8, both sources 16-byte aligned.
template <class T>
struct WgmmaWeightGradOperands {
    using Tile = T;
    static_assert(T::mn_major && T::a_copies * 32 == T::rows && T::b_copies * 32 == T::cols && T::depth * 4 == T::threads,
                  "thread t: pixel t / 4, chunks t % 4 + 4 i");
    Gather<false, Bf16> la;  // rows: output pixels (as the forward's gather); la.C the input channels
    const Bf16* dy;          // [pixels][N]
    bool cache_l1 = false;   // the gathered copies also through L1 (ops.cuh GatherCaching)
    struct Regs {
        WeightGradRow row[T::a_copies];  // the A chunks' rows (gemm_kernels.cuh)
        OutputPixelWalk pixel;           // this thread's pixel in the next slice
        int64_t k, kend, n, n_end;       // n: its first B chunk's column; n_end: N
    };
    __host__ __device__ static constexpr int chunk(int tid, int i) { return tid % 4 + 4 * i; }
    __host__ __device__ static constexpr int pixel(int tid) { return tid / 4; }
    __device__ void begin(Regs& r, int64_t m0, int64_t n0, int64_t M, int64_t N, int64_t kbeg, int64_t kend, int tid) const {
        for (int i = 0; i < T::a_copies; ++i) r.row[i].decode(la, m0 + 8 * chunk(tid, i), M);
        r.k = kbeg + pixel(tid);
        r.kend = kend;
        r.n = n0 + 8 * chunk(tid, 0);
        r.n_end = N;
        r.pixel.begin(la, r.k, T::depth);
    }
    __device__ void issue(Regs& r, unsigned char* stage, int tid) const {
        const bool in_k = r.k < r.kend;
        const int y = r.pixel.y(la), x = r.pixel.x(la);
        const int64_t origin = r.pixel.origin(la);
        for (int i = 0; i < T::a_copies; ++i) {
            const bool valid = in_k && r.row[i].inside(la, y, x);
            async_copy16(stage + T::offset(8 * chunk(tid, i), pixel(tid)), valid ? la.src + origin + r.row[i].tap_offset : la.src, valid,
                         cache_l1);
        }
        for (int j = 0; j < T::b_copies; ++j) {
            const int64_t n = r.n + 32 * j;
            const bool valid = in_k && n < r.n_end;  // N % 8 == 0: a copy is all inside or all outside
            async_copy16(stage + T::a_bytes + T::offset(8 * chunk(tid, j), pixel(tid)), valid ? dy + r.k * r.n_end + n : dy, valid);
        }
        r.k += T::depth;
        r.pixel.advance(la);
    }
    bool fits(int64_t M, int64_t N, int64_t K) const {
        return M > 0 && N > 0 && K > 0 && weight_grad_fits(la, dy, M, N);
    }
};

// The warp-specialized tiles (gemm_wgmma_ws_kernel): 384 threads, warpgroups 0 and 1 the consumers
// (the tensor cores' warpgroups), warpgroup 2 the producer (its 128 threads issue every copy:
// `threads` is what the operands divide the copies among). Shared memory: kStages stages of K-major
// operands as WgmmaTile's (core matrices 144 bytes apart along K), then the epilogue's C (regions of
// its own: the producer fills the stages with the next tile's slices meanwhile), then a full and an
// empty mbarrier per stage and two for the consumers' turns (ping-pong). One block per SM (the
// kernel is persistent).
//
// Cooperative (kPingPong false): both consumers work on one kRows x kCols tile of C. Consumer g
// computes rows 64 g .. 64 g + 63 with one m64n{kCols}k16 per 16-deep step; or, kSwapped (kRows
// 256, kCols 64), the transposed product: its 64 columns (output channels) as the instruction's M
// and rows 128 g .. 128 g + 127 as its N, one m64n128k16 (A = the B operand's 64 rows); swapped
// with kCols 128 (split_cols: kRows 200, tensor copies), consumer g takes columns 64 g .. 64 g + 63
// as the instruction's M over all 200 rows as its N, one m64n200k16. A 64-column
// tile the plain way, m64n64k16, has the tensor cores read 4 KB of shared memory per 64 x 64 x 16
// products, all of the SM's 128 bytes a clock at their full rate; swapped, 6 KB per twice the
// products.
//
// Ping-pong (kPingPong): each consumer takes whole tiles, the block's tiles alternately (warpgroup
// 0 its 1st, 3rd, ..., warpgroup 1 its 2nd, 4th, ...), a tile half the cooperative one: 64 x 128
// (kRows 64), or swapped 128 x 64 (kRows 128), one m64n128k16 per step either way, so the same 64
// accumulators a thread. The consumers take turns at the tensor cores (turn mbarriers): one's MMAs
// for a tile start when the other's for the tile before have been issued, so while one stores a
// tile's C the other's MMAs run, and the tensor cores do not wait for the epilogue, which the
// cooperative form leaves them idle for once per tile. The price: the B operand (the A operand,
// swapped) is copied once per half as many products.
//
// kSwizzled: the stages in the 128-byte swizzled layout that tensor copies leave (tma.cuh; the
// operands WgmmaTensorDenseOperands): rows of 128 bytes, 8 to a 1024-byte atom, no padding (a
// 128 x 128 stage 32 KB where the padded one is 36), the stages 1024-byte aligned (a launch takes
// 1 KB more to align them).
template <int kCols, int kStages, int kRows = 128, bool kSwapped = false, bool kPingPong = false, bool kSwizzled = false>
struct WgmmaWsTile {
    static_assert(kPingPong ? (kSwapped ? kCols == 64 && (kSwizzled ? kRows == 112 || kRows == 224 : kRows == 128) : kCols == 128 && kRows == 64)
                            : (kSwapped ? (kCols == 64 && kRows == (kSwizzled ? 224 : 256)) || (kSwizzled && kCols == 128 && (kRows == 112 || kRows == 200))
                                        : (kCols == 128 || (kSwizzled && kCols == 256)) && kRows == 128),
                  "the wgmma shapes wgmma.cuh instantiates (N 112 and 224 only in the tensor-copy swapped tiles, 200, 224 and 256 "
                  "only in the wide ones)");
    static constexpr int consumers = 256, producers = 128, block_threads = consumers + producers;
    static constexpr int threads = producers, rows = kRows, cols = kCols, depth = 64, stages = kStages, min_blocks = 1;
    static constexpr bool mn_major = false, swapped = kSwapped, pingpong = kPingPong, swizzled = kSwizzled;
    // The consumer threads that compute one tile, and the rows of the tile each warpgroup computes.
    // Cooperative and swapped with 128 columns (split_cols), the two warpgroups split the columns
    // instead: each computes 64 of them (the instruction's M) over all the tile's rows (its N).
    static constexpr bool split_cols = kSwapped && !kPingPong && kCols == 128;
    static constexpr int tile_consumers = kPingPong ? 128 : 256, group_rows = kPingPong || split_cols ? kRows : kRows / 2;
    static constexpr int group_cols = split_cols ? 64 : kCols;
    static constexpr int mma_n = kSwapped ? group_rows : kCols;  // the instruction's N
    // Wide (m64n256k16, m64n224k16, m64n200k16): 100-128 accumulators a consumer thread, which fit
    // only once the producer warpgroup has given back its registers (setmaxnreg: 40 a thread, the
    // consumers' 232; the producer of tensor copies is one lane, so only those tiles are wide), and
    // no C region (128 x 256 floats would be 132 KB): C goes from the registers (store_accumulators).
    static constexpr bool wide = mma_n > 128;
    static constexpr int producer_registers = 40, consumer_registers = 232;
    static_assert(producers * producer_registers + consumers * consumer_registers <= 64 * 1024, "an SM's 64 K registers");
    static constexpr int lbo = kSwizzled ? 16 : 128 + 16, sbo = kSwizzled ? 1024 : 64 / 8 * lbo;
    static constexpr int k_step = kSwizzled ? 32 : 2 * lbo;  // bytes from one 16-deep step's descriptors to the next's
    static constexpr int align = kSwizzled ? 1024 : 0;       // bytes a launch adds to align the stages
    static constexpr int a_bytes = rows / 8 * sbo, b_bytes = cols / 8 * sbo, stage_bytes = a_bytes + b_bytes;
    __host__ __device__ static constexpr uint64_t descriptor(uint32_t address) {
        return kSwizzled ? wgmma_descriptor_sw128(address, sbo) : wgmma_descriptor(address, lbo, sbo);
    }
    // C's row length in floats: + 8 so that the row pairs a quad writes fall on distinct banks;
    // swapped (a thread's values run down the columns) + 4, so that a warp's 32 stores do.
    static constexpr int c_ld = cols + (kSwapped ? 4 : 8);
    static constexpr int c_regions = wide ? 0 : kPingPong ? 2 : 1;  // ping-pong: one C per consumer; wide: C direct
    static constexpr int c_bytes = rows * c_ld * 4;
    // A launch's ring may have fewer stages than kStages (ops.cuh set_wgmma_ws_smem_kib: what it
    // leaves of the SM's 256 KB goes to L1, which caches the gathered copies), and its epilogue may
    // store C from the registers (`direct`, ops.cuh WgmmaStores::Direct) instead of through the C
    // regions: shared memory is `n` stages, then the C regions (not direct), then a full and an
    // empty mbarrier per stage and the two turns.
    __host__ __device__ static constexpr int c_offset(int n) { return n * stage_bytes; }
    static constexpr bool direct_only = c_regions == 0;
    __host__ __device__ static constexpr int barrier_offset(int n, bool direct = false) {
        return c_offset(n) + (direct ? 0 : c_regions * c_bytes);  // direct_only: c_regions 0
    }
    __host__ __device__ static constexpr int smem_bytes_for(int n, bool direct = false) {
        return align + barrier_offset(n, direct) + (2 * n + 2) * 8;
    }
    static constexpr int min_stages = 2;  // a consumer releases a slice's stage after issuing the next slice's MMAs
    // The most a launch takes: smem_bytes_for(kStages), spelled out (a member function cannot be
    // called in a constant expression before the class is complete).
    static constexpr int smem_bytes = align + kStages * stage_bytes + c_regions * c_bytes + (2 * kStages + 2) * 8;
    // The most stages, from min_stages to kStages, whose block fits `limit` bytes of an SM's shared
    // memory with the 1 KB the system reserves per block (0: no limit, kStages).
    static constexpr int stages_within(int64_t limit, bool direct = false) {
        int n = kStages;
        while (limit > 0 && n > min_stages && smem_bytes_for(n, direct) + 1024 > limit) --n;
        return n;
    }
    static constexpr int chunks = depth / 8;  // 16-byte copies per row and slice
    static constexpr int a_copies = rows * chunks / threads, b_copies = cols * chunks / threads;
    static_assert(kSwizzled || (rows * chunks % threads == 0 && cols * chunks % threads == 0),
                  "whole copies per thread (the swizzled tiles' copies are tensor copies, one thread's)");
    static_assert(smem_bytes <= 227 * 1024, "fits an sm_90 SM");
    __host__ __device__ static constexpr int offset(int r, int k) {
        return kSwizzled ? r * 128 + ((k / 8) ^ (r % 8)) * 16 + (k % 8) * 2 : (r / 8) * sbo + (k / 8) * lbo + (r % 8) * 16 + (k % 8) * 2;
    }
    // Producer thread t copies rows t / 8 + 16 i of each operand, K values 8 (t % 8) .. + 7 of the
    // slice (a quarter-warp: one row's 128 contiguous bytes, onto 8 different 16-byte bank groups).
    __host__ __device__ static constexpr int copy_row(int t, int i) { return t / chunks + (threads / chunks) * i; }
    __host__ __device__ static constexpr int copy_k(int t) { return (t % chunks) * 8; }
};
// Four stages of 128 x 128 (36 KB each) and its C (68 KB); three of the 256 x 64 swapped tile (45
// KB) and its C (68 KB); ping-pong, five stages of 27 KB and two Cs of 34 KB. Tried and left (ptxas
// -v, this kernel's 168 registers a thread): 128 x 256 (m64n256k16; three stages, C in four parts
// of 32 rows) spilled 150-730 bytes a thread, its 128 accumulators beside the persistent loop's
// state; setmaxnreg moving registers from the producer to the consumers (40/232 to 72/216) spilled
// the producer's copy addresses instead, 0.5-2.8 KB (with tensor copies the producer is one lane,
// and both work: the wide tiles below); 128 x 64 tiles two blocks per SM (80
// registers) 108-284 bytes. The swapped tile's sub-pixel form spills 164/248 bytes: the transposed
// convolutions' 64-channel GEMMs stay on gemm_wgmma_kernel.
using WgmmaWsTile128 = WgmmaWsTile<128, 4>;
using WgmmaWsSwappedTile = WgmmaWsTile<64, 3, 256, true>;
using WgmmaPingPongTile = WgmmaWsTile<128, 5, 64, false, true>;
using WgmmaPingPongSwappedTile = WgmmaWsTile<64, 5, 128, true, true>;
// The same four, swizzled for tensor copies, the swapped ones (the 64-channel layers) with 224 and
// 112 pixels where the others have 256 and 128: their operands (WgmmaTensorConvOperands) are whole
// output rows, and the 64-channel layers' widths, 112 and 56 (and 28, 14), fill 224 or 112 pixels
// exactly where they left 1/8 of 256 or 128 empty, MMAs computing C rows never stored (the
// instruction's N, the pixels here, may be any multiple of 8). Stages: 128 x 128 four of 32 KB
// (197 KB with C and the alignment); 224 x 64 four of 36 KB (205 KB); ping-pong 64 x 128 five of
// 24 KB (190 KB), 112 x 64 six of 22 KB (193 KB).
using WgmmaWsTensorTile128 = WgmmaWsTile<128, 4, 128, false, false, true>;
using WgmmaWsTensorSwappedTile = WgmmaWsTile<64, 4, 224, true, false, true>;
using WgmmaPingPongTensorTile = WgmmaWsTile<128, 5, 64, false, true, true>;
using WgmmaPingPongTensorSwappedTile = WgmmaWsTile<64, 6, 112, true, true, true>;
// Wide (m64n256k16; ops.cuh WgmmaMmaN::N256): cooperative 128 x 256 (four stages of 48 KB, 193 KB)
// where N is a multiple of 256, and for the 64-channel layers ping-pong 224 x 64 computed
// transposed, each consumer's tile 224 pixels (m64n224k16; six stages of 36 KB, 217 KB). Per
// 16-deep step the tensor cores read 10 KB of shared memory for 64 x 256 x 16 products, where
// m64n128k16 reads 6 KB for half as many: 1.2x fewer bytes per product, and half as many
// instructions (m64n224k16: 9 KB for 7/8 as many).
using WgmmaWsWideTile = WgmmaWsTile<256, 4, 128, false, false, true>;
using WgmmaPingPongWideSwappedTile = WgmmaWsTile<64, 6, 224, true, true, true>;
// And for ws's convolutions with 128k output channels whose output rows fill 200 pixels better
// than 128 (ops_wgmma.cu conv_on_tensor_copies; WgmmaTensorConvOperands::row_share): 200 x 128, the
// two warpgroups each 64 of the channels over all 200 pixels (m64n200k16, 100 accumulators a
// thread), five stages of 41 KB (206 KB). 200 pixels are 7 rows of 28 (4 tiles an image), one 14 x
// 14 image or four 7 x 7 ones, 98 % of the tile where 128 rows held 7/8 (28 x 28) or 77 % (14 x 14,
// 7 x 7): the layers of 128, 256 and 512 channels, 4.8 of the forward's 11.8 GFLOP an image.
using WgmmaWsWideSwappedTile = WgmmaWsTile<128, 5, 200, true, false, true>;
// Its narrow form (m64n112k16, 56 accumulators a thread: no register move, C through shared
// memory): 112 x 128, five stages of 30 KB and C (59 KB), 210 KB. 112 pixels are 4 rows of 28 (7
// tiles an image), 8 rows of 14 (8 + 6) or two 7 x 7 images: 100 %, 7/8 and 7/8 where 128 rows
// held 7/8, 77 % and 77 %.
using WgmmaWsSplitTile = WgmmaWsTile<128, 5, 112, true, false, true>;

// Dense operands as WgmmaDenseOperands, brought by tensor copies (tma.cuh) into a swizzled tile:
// per slice one copy of A's rows x 64 K values and one of B's, issued by one producer thread, their
// bytes expected on the stage's full barrier (so that barrier counts one arrival, not the
// producers'). Rows and K past the matrices come as zeros. The maps are encoded on the host (make)
// and reach the kernel inside the operands, a __grid_constant__ parameter.
template <class T>
struct WgmmaTensorDenseOperands {
    using Tile = T;
    static_assert(T::swizzled, "tensor copies leave the swizzled layout");
    static constexpr bool tensor_copies = true;
    TensorMap a_map, b_map;
    struct Regs {
        int32_t m0, n0, k;
    };
    // A (M x K) and B (N x K) row-major, K % 8 == 0, both 16-byte aligned; false (and why) where a
    // map cannot be made.
    static bool make(WgmmaTensorDenseOperands& ops, const Bf16* a, const Bf16* b, int64_t M, int64_t N, int64_t K, std::string* why) {
        return encode_matrix_map_bf16(ops.a_map, a, M, K, K, T::depth, T::rows, why) &&
               encode_matrix_map_bf16(ops.b_map, b, N, K, K, T::depth, T::cols, why);
    }
    __device__ void prefetch() const {
        tma_prefetch_map(a_map);
        tma_prefetch_map(b_map);
    }
    __device__ void begin(Regs& r, int64_t m0, int64_t n0, int64_t, int64_t, int64_t, int64_t, int) const {
        r = Regs{static_cast<int32_t>(m0), static_cast<int32_t>(n0), 0};
    }
    // The next slice into `stage`, completing on `full`.
    __device__ void issue_tensor(Regs& r, unsigned char* stage, uint64_t* full) const {
        mbarrier_arrive_expect_tx(full, T::stage_bytes);
        tma_load_2d(stage, a_map, r.k, r.m0, full);
        tma_load_2d(stage + T::a_bytes, b_map, r.k, r.n0, full);
        r.k += T::depth;
    }
};
// Whether Operands are brought by tensor copies (Operands::tensor_copies) rather than cp.async.
template <class Operands, class = void>
struct UsesTensorCopies : std::false_type {};
template <class Operands>
struct UsesTensorCopies<Operands, std::enable_if_t<Operands::tensor_copies>> : std::true_type {};

// The rows of C a row tile covers: m0 .. m_end - 1. Operands that tile M their own way
// (Operands::row_spans: WgmmaTensorConvOperands, whole output rows of one image a tile) say how
// many row tiles there are and where each lies; otherwise tile i is rows 128 i .. (Tile::rows
// each), the last one cut at M.
struct RowSpan {
    int64_t m0, m_end;
};
template <class Operands, class = void>
struct HasRowSpans : std::false_type {};
template <class Operands>
struct HasRowSpans<Operands, std::enable_if_t<Operands::row_spans>> : std::true_type {};
template <class Operands>
__host__ __device__ int64_t row_tile_count(const Operands& ops, int64_t M) {
    if constexpr (HasRowSpans<Operands>::value) return ops.row_tiles();
    (void)ops;
    return (M + Operands::Tile::rows - 1) / Operands::Tile::rows;
}
template <class Operands>
__host__ __device__ RowSpan row_span(const Operands& ops, int64_t i, int64_t M) {
    if constexpr (HasRowSpans<Operands>::value) return ops.row_span(i);
    (void)ops;
    return RowSpan{i * Operands::Tile::rows, M};
}

// The convolutions' GEMMs fed by tensor copies: direct gathers (Gather<false, Bf16>, the forward
// convolutions) at any stride up to 8, transposed gathers (Gather<true, Bf16>: the input gradients,
// the transposed convolutions) at stride 1 and the sub-pixel classes of strided ones
// (SubpixelGather<Bf16>: the stride-2 transposed convolutions, the stride-2 layers' input
// gradients); C a multiple of 64. A comes by a 4-dimensional map over the NHWC activations
// (channels, columns, rows, images) whose box, placed at the slice's tap, is 64 channels of output
// rows: either `bh` whole output rows of one image, bh = Tile::rows / Wo, or (where an image has no
// more pixels than the tile has rows) `ni` whole images, ni = Tile::rows / (Ho Wo). Direct, the box
// starts at column kw - pad, row s oh0 + kh - pad and takes every s-th column and row (the map's
// element strides, s the convolution's stride). Transposed, the rows are those of a class's output
// grid (Ho x Wo: the class's rows_h x rows_w; at stride 1 the one class is the whole output):
// class row (i, j) is output pixel (oh0 + s i, ow0 + s j), which its tap (ry + s a, rx + s b)
// takes from source pixel (i + base_h - a, j + base_w - b), base_h = (oh0 + pad - ry) / s exact
// (gather.cuh tap_origin), so the box starts at column base_w - b, row oh0 + base_h - a of the
// source, every pixel (at stride 1: pad - kw, oh0 + pad - kh). Either way the padding is the
// copies' zero fill, no address is computed per pixel, and a tile is whole output rows: bh Wo or
// ni Ho Wo of its Tile::rows rows. Of an image's tiles' rows, 128-row tiles use 7/8 at 112 x 112,
// 56 x 56 and 28 x 28 outputs, 77 % at 14 x 14 and 7 x 7; the swapped tiles' 224 and 112 (the
// 64-channel layers) all at 112 x 112 and 56 x 56, 112 all at 28 x 28, else 7/8; the split-column
// 200 98 % at 28 x 28, 14 x 14 and 7 x 7. The MMAs of the rest are wasted: the rows they read hold
// whatever the stage held and reach only C rows that are not stored (each tile's stores stop at
// its own last pixel, RowSpan; a class's stores go through RowMappedStore to the whole output's
// rows). B, the K-major weights (pack_bf16_kmajor, the whole gather's), by 2-dimensional copies as
// WgmmaTensorDenseOperands', at the rows of the slice's tap.
template <class T, bool kTransposed = false>
struct WgmmaTensorConvOperands {
    using Tile = T;
    static_assert(T::swizzled, "tensor copies leave the swizzled layout");
    static constexpr bool tensor_copies = true, row_spans = true;
    TensorMap x_map, w_map;
    int32_t images, Ho, Wo, C, kernel, pad, stride;
    // Transposed: the gather as a sub-pixel class (a stride-1 gather is its own class (0, 0)),
    // whose taps the slices walk (gather.cuh tap_step), and class row (0, 0)'s source pixel
    // (tap_origin), from which tap t's box starts at (base_w + dx, base_h + dy).
    SubpixelGather<Bf16> cls;
    int32_t base_h, base_w;
    int32_t bh, ni;            // a box's output rows of an image, and its images (bh = Ho where ni > 1)
    int32_t tiles_per_image;   // 1 where ni > 1
    struct Regs {
        int32_t b, oh0, n0, s;  // the tile's (first) image, first output row and first output channel; the next slice
    };
    // The output grid the tile's rows walk: the convolution's, or a sub-pixel class's.
    struct Grid {
        int64_t Ho, Wo;
    };
    static Grid grid_of(const Gather<kTransposed, Bf16>& la) { return {la.Ho, la.Wo}; }
    static Grid grid_of(const SubpixelGather<Bf16>& la) { return {la.cls.rows_h, la.cls.rows_w}; }
    // The map's element stride along rows and columns: the direct gather's stride, else 1.
    static int64_t element_stride(const Gather<kTransposed, Bf16>& la) { return kTransposed ? 1 : la.stride; }
    static int64_t element_stride(const SubpixelGather<Bf16>&) { return 1; }
    // The strides a gather may have here: direct 1-8, transposed 1; a sub-pixel class any (its
    // source pixels are consecutive).
    static bool stride_fits(const Gather<kTransposed, Bf16>& la) { return la.stride >= 1 && la.stride <= (kTransposed ? 1 : 8); }
    static bool stride_fits(const SubpixelGather<Bf16>& la) { return la.stride >= 1; }
    void set_taps(const Gather<kTransposed, Bf16>& la) {
        if constexpr (kTransposed) set_taps(subpixel_gather(la, 0, 0));
    }
    void set_taps(const SubpixelGather<Bf16>& la) {
        cls = la;
        int y = 0, x = 0;
        tap_origin(la, la.row(0, 1), y, x);
        base_h = y, base_w = x;
    }
    // The box's output rows and images for a convolution with Ho x Wo outputs.
    static void box_of(int64_t Ho, int64_t Wo, int32_t& bh, int32_t& ni) {
        const bool whole_images = Ho * Wo <= T::rows;
        bh = static_cast<int32_t>(whole_images ? Ho : T::rows / Wo);
        ni = static_cast<int32_t>(whole_images ? T::rows / (Ho * Wo) : 1);
    }
    // The share of the tiles' rows an image's Ho x Wo outputs fill (0 where a row does not fit):
    // whole images in one tile, or ceil(Ho / bh) tiles of bh rows. ops_wgmma.cu chooses ws's wide
    // split-column tile by it.
    static double row_share(int64_t Ho, int64_t Wo) {
        if (Wo < 1 || Ho < 1 || Wo > T::rows) return 0.0;
        int32_t bh = 0, ni = 0;
        box_of(Ho, Wo, bh, ni);
        const int64_t image = Ho * Wo, tiles = image <= T::rows ? 1 : (Ho + bh - 1) / bh;
        return static_cast<double>(image <= T::rows ? ni * image : image) / static_cast<double>(tiles * T::rows);
    }
    // Whether the tile takes this convolution: a stride the copies' element strides take (above),
    // whole 64-channel slices, an output row within the tile and a box within 256 elements a
    // dimension, N and ldk multiples of 8, sizes within the copies' 32-bit coordinates.
    template <class G>
    static bool fits(const G& la, int64_t M, int64_t N, int64_t ldk, const Bf16* w) {
        static_assert(G::kIsTransposed == kTransposed, "the gather's direction is the operands'");
        const Grid g = grid_of(la);
        if (!stride_fits(la) || la.C % T::depth != 0 || g.Wo < 1 || g.Wo > T::rows || g.Ho < 1 || M % (g.Ho * g.Wo) != 0) return false;
        int32_t bh = 0, ni = 0;
        box_of(g.Ho, g.Wo, bh, ni);
        const int64_t e = element_stride(la);
        return e * g.Wo <= 256 && e * bh <= 256 && N > 0 && N % 8 == 0 && ldk % 8 == 0 && aligned16(la.src) && aligned16(w) &&
               M < (int64_t{1} << 31) && ldk < (int64_t{1} << 31) && N < (int64_t{1} << 31);
    }
    template <class G>
    static bool make(WgmmaTensorConvOperands& ops, const G& la, int64_t M, int64_t N, const Bf16* w, int64_t ldk, std::string* why) {
        const Grid g = grid_of(la);
        ops.images = static_cast<int32_t>(M / (g.Ho * g.Wo));
        ops.Ho = static_cast<int32_t>(g.Ho), ops.Wo = static_cast<int32_t>(g.Wo), ops.C = static_cast<int32_t>(la.C);
        ops.kernel = static_cast<int32_t>(la.K), ops.pad = static_cast<int32_t>(la.pad), ops.stride = static_cast<int32_t>(la.stride);
        ops.set_taps(la);
        box_of(g.Ho, g.Wo, ops.bh, ops.ni);
        ops.tiles_per_image = (ops.Ho + ops.bh - 1) / ops.bh;
        TensorMapShape x;
        x.rank = 4;
        const uint64_t row = static_cast<uint64_t>(la.C) * 2;
        const uint32_t e = static_cast<uint32_t>(element_stride(la));
        x.dims[0] = static_cast<uint64_t>(la.C), x.dims[1] = static_cast<uint64_t>(la.W), x.dims[2] = static_cast<uint64_t>(la.H),
        x.dims[3] = static_cast<uint64_t>(ops.images);
        x.strides[0] = row, x.strides[1] = row * static_cast<uint64_t>(la.W), x.strides[2] = row * static_cast<uint64_t>(la.W * la.H);
        x.box[0] = T::depth, x.box[1] = e * static_cast<uint32_t>(g.Wo), x.box[2] = e * static_cast<uint32_t>(ops.bh),
        x.box[3] = static_cast<uint32_t>(ops.ni);
        x.element_strides[1] = x.element_strides[2] = e;  // n elements e apart: a box of n e (the driver's rule)
        return encode_tensor_map_bf16(ops.x_map, la.src, x, why) &&
               encode_matrix_map_bf16(ops.w_map, w, N, la.K * la.K * la.C, ldk, T::depth, T::cols, why);
    }
    __host__ __device__ int64_t row_tiles() const {
        return ni > 1 ? (static_cast<int64_t>(images) + ni - 1) / ni : static_cast<int64_t>(images) * tiles_per_image;
    }
    __host__ __device__ RowSpan row_span(int64_t i) const {
        const int64_t image = static_cast<int64_t>(Ho) * Wo;
        if (ni > 1) {
            const int64_t b0 = i * ni, b1 = b0 + ni < images ? b0 + ni : images;
            return RowSpan{b0 * image, b1 * image};
        }
        const int64_t b = i / tiles_per_image, oh0 = (i - b * tiles_per_image) * bh;
        const int64_t m0 = b * image + oh0 * Wo, rows = (Ho - oh0 < bh ? Ho - oh0 : bh) * static_cast<int64_t>(Wo);
        return RowSpan{m0, m0 + rows};
    }
    __device__ void prefetch() const {
        tma_prefetch_map(x_map);
        tma_prefetch_map(w_map);
    }
    __device__ void begin(Regs& r, int64_t m0, int64_t n0, int64_t, int64_t, int64_t, int64_t, int) const {
        const int64_t image = static_cast<int64_t>(Ho) * Wo, b = m0 / image;
        r = Regs{static_cast<int32_t>(b), static_cast<int32_t>((m0 - b * image) / Wo), static_cast<int32_t>(n0), 0};
    }
    __device__ void issue_tensor(Regs& r, unsigned char* stage, uint64_t* full) const {
        const int slices_per_tap = C / T::depth, tap = r.s / slices_per_tap, c0 = (r.s - tap * slices_per_tap) * T::depth;
        mbarrier_arrive_expect_tx(full, static_cast<uint32_t>(Wo * bh * ni * T::depth * 2 + T::b_bytes));
        int w_tap = tap;  // the tap's rows in the whole gather's weights
        if (kTransposed) {
            const TapStep t = tap_step(cls, tap);
            tma_load_4d(stage, x_map, c0, base_w + t.dx, r.oh0 + base_h + t.dy, r.b, full);
            w_tap = t.w_tap;
        } else {
            const int kh = tap / kernel, kw = tap - kh * kernel;
            tma_load_4d(stage, x_map, c0, kw - pad, stride * r.oh0 + kh - pad, r.b, full);
        }
        tma_load_2d(stage + T::a_bytes, w_map, w_tap * C + c0, r.n0, full);
        ++r.s;
    }
};

// The 4 x 4 transpose of v across the 4 lanes whose indices differ by stride x {0, 1, 2, 3} (`me`:
// this lane's place among them): afterwards v[i] is what lane i's v[me] was. Two rounds of
// butterfly exchanges, each lane sending the two values whose place differs from its own in the
// round's bit; 4 shuffles.
__device__ inline void transpose4_across_lanes(float (&v)[4], int me, int stride) {
PIN_UNROLL
    for (int bit = 1; bit <= 2; bit <<= 1) {
        const bool high = (me & bit) != 0;
PIN_UNROLL
        for (int i0 = 0; i0 < 4; ++i0) {
            if (i0 & bit) continue;
            const int i1 = i0 | bit;
            const float got = __shfl_xor_sync(0xffffffffu, high ? v[i0] : v[i1], stride * bit);
            if (high)
                v[i0] = got;
            else
                v[i1] = got;
        }
    }
}

// The warp-specialized kernel's direct epilogue: a consumer warpgroup's accumulators d go from the
// registers to st, with no shared memory (so none is kept for C, and L1 gets it). Thread l of warp
// w holds the instruction's rows 16 w + l / 4 (+ 8), columns 8 c8 + 2 (l % 4) (+ 1) (wgmma.cuh):
// C's rows row0 + those and its columns, or, swapped, C's columns and its rows row0 + those. Where
// the store takes vectors, every store4 gets 4 consecutive columns of one row, exchanged between
// lanes first: unswapped, lanes l and l ^ 1 swap halves, so the even one has its row's 4 columns
// from 8 c8 + 2 (l % 4) and the odd one row + 8's from 2 columns before (a warp's store: 16 rows x
// 8 values); swapped, the 4 lanes 4 (4 a + b) + t, b = 0 .. 3, hold channels 16 w + 8 h + 4 a + b
// of pixels 8 c8 + 2 t + p as their v[2 h + p], and transposed across b, lane b has channels
// 16 w + 8 (b / 2) + 4 a + 0 .. 3 of pixel 8 c8 + 2 t + b % 2 (a warp's store: 8 pixels x 16
// channels, whole 32-byte sectors of bfloat16). Otherwise one st call per element.
template <class T, class Store>
__device__ void store_accumulators(const float (&d)[T::mma_n / 2], int row0, int64_t m0, int64_t n0, int64_t M, int64_t N,
                                   const Store& st, int w, int l) {
    if constexpr (HasStore4<Store>::value) {
        if (N % 4 == 0 && st.vectors_ok()) {  // a vector is all inside N or all outside
            const int t = l % 4, g = l / 4;
PIN_UNROLL
            for (int c8 = 0; c8 < T::mma_n / 8; ++c8) {
                float v[4] = {d[4 * c8], d[4 * c8 + 1], d[4 * c8 + 2], d[4 * c8 + 3]};
                int r, c;  // v's row and first column in the tile
                if constexpr (T::swapped) {
                    const int b = g % 4;
                    transpose4_across_lanes(v, b, 4);
                    r = row0 + 8 * c8 + 2 * t + b % 2;
                    c = 16 * w + 8 * (b / 2) + 4 * (g / 4);
                } else {
                    const bool odd = (t & 1) != 0;
                    const float got0 = __shfl_xor_sync(0xffffffffu, odd ? v[0] : v[2], 1);
                    const float got1 = __shfl_xor_sync(0xffffffffu, odd ? v[1] : v[3], 1);
                    if (odd) {
                        v[0] = got0, v[1] = got1;
                    } else {
                        v[2] = got0, v[3] = got1;
                    }
                    r = row0 + 16 * w + g + (odd ? 8 : 0);
                    c = 8 * c8 + 2 * (t & ~1);
                }
                if (m0 + r < M && n0 + c < N) st.store4(0, m0 + r, n0 + c, v);
            }
            return;
        }
    }
PIN_UNROLL
    for (int c8 = 0; c8 < T::mma_n / 8; ++c8)
PIN_UNROLL
        for (int e = 0; e < 4; ++e) {
            const AccumulatorPlace place = accumulator_place(w, l, c8, e);
            const int64_t m = m0 + (T::swapped ? row0 + place.col : row0 + place.row), n = n0 + (T::swapped ? place.row : place.col);
            if (m < M && n < N) st(0, m, n, d[4 * c8 + e]);
        }
}

// Grid: (ceil(M / 128), ceil(N / kCols), K chunks); Tile::smem_bytes of dynamic shared memory. Block
// z sums K values z chunk .. (z + 1) chunk - 1 (Operands other than WgmmaWeightGradOperands: one
// chunk); st(z, m, n, v) receives every element of its C inside M x N.
template <class Operands, class Store>
__global__ void __launch_bounds__(256, Operands::Tile::min_blocks)
    gemm_wgmma_kernel(int64_t M, int64_t N, int64_t K, int64_t chunk, Operands ops, Store st) {
    using T = typename Operands::Tile;
    PIN_DYNAMIC_SHARED(smem);
    const int tid = static_cast<int>(threadIdx.x), group = tid / 128;
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) * T::rows, n0 = static_cast<int64_t>(blockIdx.y) * T::cols;
    const int64_t kbeg = static_cast<int64_t>(blockIdx.z) * chunk, kend = kbeg + chunk < K ? kbeg + chunk : K;
    const int64_t slices = (kend - kbeg + T::depth - 1) / T::depth;
    typename Operands::Regs r;
    ops.begin(r, m0, n0, M, N, kbeg, kend, tid);
    // The next slice's copies into its stage (the slices are issued in order), then a commit
    // (possibly of nothing: the waits below count groups, so every slice index has one).
    auto issue = [&](int64_t s) {
        if (s < slices) ops.issue(r, smem + (s % T::stages) * T::stage_bytes, tid);
        async_commit();
    };
    issue(0);
    issue(1);
    float d[T::cols / 2];
    for (float& v : d) v = 0.0f;
    for (int64_t s = 0; s < slices; ++s) {
        async_wait<1>();      // this thread's copies of slice s have landed (s + 1's may be in flight)
        fence_proxy_async();  // ... and are visible to the tensor cores' proxy once the barrier passes them on
        __syncthreads();      // every thread's copies of slice s (in_flight 0: every wgmma of slice s - 1 is done)
        if constexpr (T::in_flight == 0) issue(s + 2);  // into the stage slice s - 1 used
        const uint32_t stage = shared_address(smem + (s % T::stages) * T::stage_bytes);
        const uint32_t a_tile = stage + group * (64 / 8) * T::sbo, b_tile = stage + T::a_bytes;
        for (float& v : d) wgmma_hold(v);
        wgmma_fence();
        for (int k = 0; k < T::depth / 16; ++k)  // 16 K values = 2 core matrices along K
            wgmma_bf16<T::cols, T::mn_major>(d, wgmma_descriptor(a_tile + 2 * k * T::lbo, T::lbo, T::sbo),
                                wgmma_descriptor(b_tile + 2 * k * T::lbo, T::lbo, T::sbo), true);
        wgmma_commit();
        wgmma_wait<T::in_flight>();  // in_flight 1: this warpgroup's MMAs of slice s - 1 are done, s's may run on
        for (float& v : d) wgmma_hold(v);
        if constexpr (T::in_flight == 1) {
            __syncthreads();  // both warpgroups' MMAs of slice s - 1 are done ...
            issue(s + 2);     // ... so the stage it used takes slice s + 2
        }
    }
    wgmma_wait<0>();  // the last slice's MMAs (in_flight 1) have written the accumulators
    for (float& v : d) wgmma_hold(v);
    async_wait<0>();  // nothing in flight (the last commits were empty) ...
    __syncthreads();  // ... and every warpgroup's MMAs are done: the stages hold C now
    // Warpgroup g's accumulators are rows 64 g + those of its instruction's result (wgmma.cuh).
    float* const Cs = reinterpret_cast<float*>(smem);
    const int w = (tid % 128) / 32, l = tid % 32;
    for (int j = 0; j < T::cols / 8; ++j)
        for (int e = 0; e < 4; ++e) {
            const AccumulatorPlace place = accumulator_place(w, l, j, e);
            Cs[(group * 64 + place.row) * T::c_ld + place.col] = d[4 * j + e];
        }
    __syncthreads();
    store_shared_tile<T::rows, T::cols, T::c_ld>(Cs, m0, n0, M, N, st);
}

// C = A B^T as gemm_wgmma_kernel (the same operands, one K chunk), with the copies and the MMAs in
// different warps, persistent: block b computes tiles b, b + gridDim.x, ... (row tiles fastest), and
// its producer warpgroup runs ahead into the next tile's slices while the consumers store the
// last one's C. The producer fills stage i % stages with the block's i-th slice (counted over all
// its tiles) as soon as the consumers have released it (empty[stage]) and hands its copies to
// full[stage], on which they arrive as they land; a consumer warpgroup waits for full[stage],
// issues the slice's four wgmma, and once the slice before's have finished releases that slice's
// stage. No barrier of the whole block inside the K loop: a slow copy holds up only the MMAs that
// need it, and while the tensor cores work on one slice the copies of the next `stages - 1` are
// already under way. Slice i is full[i % stages]'s (i / stages)-th phase, its stage free again at
// empty[i % stages]'s (StageCursor). Ping-pong (WgmmaWsTile), consumer g takes the block's tiles
// g, g + 2, ... and skips the other's slices; it waits at turn[g] for the other to have issued its
// MMAs of the tile before, which also keeps it from waiting on a full barrier two phases early
// (a barrier's parity cannot tell those apart: the other consumer's slice in the same stage must
// have landed first). Grid: (at most the number of tiles, 1, 1); a ring of `stages` stages (from
// Tile::min_stages to Tile::stages), C stored through shared memory or, `direct`, from the
// registers (store_accumulators); Tile::smem_bytes_for(stages, direct) of dynamic shared memory.
// Operands brought by tensor copies (UsesTensorCopies): the producer's first warp waits for the
// stages, its first lane issues a slice's copies, and each full barrier counts that one arrival
// and the copies' bytes; the stages start at the next 1024-byte boundary (Tile::align).
template <class Operands, class Store>
__global__ void __launch_bounds__(384, 1)
    gemm_wgmma_ws_kernel(int64_t M, int64_t N, int64_t K, int stages, bool direct, const __grid_constant__ Operands ops, Store st) {
    using T = typename Operands::Tile;
    constexpr bool kTensorCopies = UsesTensorCopies<Operands>::value;
    static_assert(T::block_threads == 384 && T::producers == 128 && T::consumers == 256, "warpgroups 0, 1 consume, 2 produces");
    static_assert(!T::wide || kTensorCopies, "a wide tile's producer keeps 40 registers: one lane issuing tensor copies");
    PIN_DYNAMIC_SHARED(dynamic);
    unsigned char* const smem = dynamic + (T::align ? (T::align - shared_address(dynamic) % T::align) % T::align : 0);
    uint64_t* const full = reinterpret_cast<uint64_t*>(smem + T::barrier_offset(stages, direct));
    uint64_t* const empty = full + stages;
    uint64_t* const turn = empty + stages;  // ping-pong: turn[g] completes a phase when consumer g may start a tile
    const int tid = static_cast<int>(threadIdx.x), group = tid / 128;
    const int64_t row_tiles = row_tile_count(ops, M), tiles = row_tiles * ((N + T::cols - 1) / T::cols);
    const int64_t slices = (K + T::depth - 1) / T::depth;
    if (tid == 0) {
        for (int s = 0; s < stages; ++s) {
            mbarrier_init(&full[s], kTensorCopies ? 1 : T::producers);  // every producer thread's copies, or the one issuing
            mbarrier_init(&empty[s], T::tile_consumers);  // every thread of the consumers that read it
        }
        mbarrier_init(&turn[0], 128);
        mbarrier_init(&turn[1], 128);
    }
    __syncthreads();
    StageCursor at(stages);  // the block's next slice, over its tiles
    if (group == 2) {
        const int p = tid - T::consumers;
        // Waits until the cursor's stage is free: its slice `stages` before has been released. In
        // the first round that is the phase before a fresh barrier's first, which counts as complete
        // (the PTX ISA's parity wait; the emulation's too).
        const auto wait_stage_free = [&] { mbarrier_wait(&empty[at.stage], at.phase ^ 1u); };
        if constexpr (T::wide) warpgroup_registers<RegisterMove::Release, T::producer_registers>();  // all four warps, before three leave
        if constexpr (kTensorCopies) {
            if (p >= 32) return;  // one warp (waits are warp-wide), one lane of it issuing
            if (p == 0) ops.prefetch();
        }
        for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
            typename Operands::Regs r;
            ops.begin(r, row_span(ops, tile % row_tiles, M).m0, tile / row_tiles * T::cols, M, N, 0, K, p);
            for (int64_t s = 0; s < slices; ++s, at.next()) {
                wait_stage_free();
                if constexpr (kTensorCopies) {
                    if (p == 0) ops.issue_tensor(r, smem + at.stage * T::stage_bytes, &full[at.stage]);
                } else {
                    ops.issue(r, smem + at.stage * T::stage_bytes, p);
                    async_copies_arrive(&full[at.stage]);
                }
            }
        }
        // Before it exits, the consumers' release of the last `stages` slices: every copy it issued
        // has landed and been read (as CUTLASS's producers end), so no copy is in flight from a
        // thread that has exited.
        for (int k = 0; k < stages; ++k, at.next()) wait_stage_free();
        return;
    }
    if constexpr (T::wide) warpgroup_registers<RegisterMove::Take, T::consumer_registers>();
    // Cooperative: every tile, both warpgroups; ping-pong: every other one, this warpgroup's C.
    const int first = T::pingpong ? group : 0, step = T::pingpong ? 2 : 1;
    const int row0 = T::pingpong || T::split_cols ? 0 : group * T::group_rows;  // this warpgroup's rows (swapped: columns of the MMA) in the tile
    const int col0 = T::split_cols ? group * T::group_cols : 0;                 // and its first column (split_cols: rows of the MMA)
    const int w = (tid % 128) / 32, l = tid % 32;
    if (T::pingpong) at.skip(first * slices);
    for (int64_t j = first, tile = blockIdx.x + first * static_cast<int64_t>(gridDim.x); tile < tiles;
         j += step, tile += step * static_cast<int64_t>(gridDim.x)) {
        // Ping-pong: consumer 1's tile j waits for consumer 0 to have issued tile j - 1's MMAs
        // (turn[1]'s phase j / 2), consumer 0's (j > 0) for consumer 1's of tile j - 1 (turn[0]'s
        // phase j / 2 - 1).
        if (T::pingpong && j > 0) mbarrier_wait(&turn[group], static_cast<unsigned>((j / 2 - (group == 0 ? 1 : 0)) & 1));
        float d[T::mma_n / 2];
        for (float& v : d) v = 0.0f;
        int released = -1;  // the stage of the slice before, which this warpgroup still reads
        for (int64_t s = 0; s < slices; ++s, at.next()) {
            mbarrier_wait(&full[at.stage], at.phase);
            fence_proxy_async();  // the landed copies (generic proxy) before the tensor cores' reads (async proxy)
            const uint32_t base = shared_address(smem + at.stage * T::stage_bytes);
            // This warpgroup's rows of the A operand, and the B operand's tile; swapped, the
            // instruction takes them the other way round.
            const uint32_t a_rows = base + (row0 / 8) * T::sbo, b_tile = base + T::a_bytes + (col0 / 8) * T::sbo;
            const uint32_t mma_a = T::swapped ? b_tile : a_rows, mma_b = T::swapped ? a_rows : b_tile;
            for (float& v : d) wgmma_hold(v);
            wgmma_fence();
            for (int k = 0; k < T::depth / 16; ++k)
                wgmma_bf16<T::mma_n>(d, T::descriptor(mma_a + k * T::k_step), T::descriptor(mma_b + k * T::k_step), true);
            wgmma_commit();
            wgmma_wait<1>();  // this thread's share of the slice before's MMAs is done ...
            for (float& v : d) wgmma_hold(v);
            if (released >= 0) mbarrier_arrive(&empty[released]);  // ... so it no longer reads that stage
            released = at.stage;
        }
        if (T::pingpong) mbarrier_arrive(&turn[1 - group]);  // every MMA of this tile issued: the other's turn
        wgmma_wait<0>();
        for (float& v : d) wgmma_hold(v);
        mbarrier_arrive(&empty[released]);  // the tile's last slice: the producer may refill it
        if (T::pingpong) at.skip(slices);   // the other consumer's tile
        // The tile's rows: m0 .. m_end - 1 (m_end M but for operands with their own row spans).
        const RowSpan span = row_span(ops, tile % row_tiles, M);
        const int64_t m0 = span.m0, n0 = tile / row_tiles * T::cols;
        if (T::direct_only || direct) {
            store_accumulators<T>(d, row0, m0, n0 + col0, span.m_end, N, st, w, l);
            continue;
        }
        if constexpr (!T::direct_only) {
            // C through this warpgroup's C region to the store functor: the instruction's result rows
            // are C's rows row0 + those and its columns, or, swapped, C's columns and its rows row0 +
            // those (wgmma.cuh accumulator_place).
            float* const Cs = reinterpret_cast<float*>(smem + T::c_offset(stages) + (T::pingpong ? group * T::c_bytes : 0));
            named_barrier_sync(1 + first, T::tile_consumers);  // the previous tile's reads of Cs are done
            for (int c8 = 0; c8 < T::mma_n / 8; ++c8)
                for (int e = 0; e < 4; ++e) {
                    const AccumulatorPlace place = accumulator_place(w, l, c8, e);
                    if constexpr (T::swapped)
                        Cs[(row0 + place.col) * T::c_ld + col0 + place.row] = d[4 * c8 + e];
                    else
                        Cs[(row0 + place.row) * T::c_ld + place.col] = d[4 * c8 + e];
                }
            named_barrier_sync(1 + first, T::tile_consumers);
            const int ctid = T::pingpong ? tid % 128 : tid;  // this thread among the tile's consumers
            store_shared_tile<T::rows, T::cols, T::c_ld, T::tile_consumers>(Cs, m0, n0, span.m_end, N, st, ctid);
        }
    }
}

}  // namespace pin::cuda::gemm
