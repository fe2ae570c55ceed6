// cuda/gemm_kernels.cuh - the GEMM kernels behind every convolution direction, the linear layer and
// the projection (ops.cu launches them): the fp32 CUDA-core kernel, the TF32/BF16 tensor-core kernel
// and the wide BF16 kernel (GatherMode::Vector). Their operands are functors (gather.cuh for the
// convolutions), their epilogues store functors.
//
// Compiled by nvcc for the GPU, and by the host compiler for tests/test_gemm_emulated.cpp, which runs
// these same kernels on the CPU under a small emulation of CUDA (tests/cuda_emulation.hpp: threads
// and barriers of a block, shared memory, WMMA with its alignment rules), so their tiling, pipelines
// and fragment offsets are checked in every CI run, GPU or not.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <mma.h>
#elif !defined(PIN_CUDA_EMULATION)
#error "gemm_kernels.cuh: compile with nvcc, or include tests/cuda_emulation.hpp first"
#endif

#include "gather.cuh"

namespace pin::cuda::gemm {

// ---- the GEMM --------------------------------------------------------------------------------------
// Row-major matrix reads: (i, j) -> a[i * ld + j]; the wide kernel reads it in 4-float vectors.
struct RowMajor {
    const float* a;
    int64_t ld;
    __device__ float operator()(int64_t i, int64_t j) const { return a[i * ld + j]; }
    __device__ const float* row_ptr(int64_t i) const { return a + i * ld; }
};
// Its transposed view: (i, j) -> a[j * ld + i].
struct ColMajor {
    const float* a;
    int64_t ld;
    __device__ float operator()(int64_t i, int64_t j) const { return a[j * ld + i]; }
};
// The packed weights (rows (kh k + kw) C + c) of a transposed gather read by one sub-pixel class's
// GEMM (gather.cuh SubpixelGather): class column k is row g.weight_row(k).
struct SubpixelWeights {
    const float* a;
    int64_t ld;
    SubpixelGather g;
    __device__ float operator()(int64_t k, int64_t n) const { return a[g.weight_row(k) * ld + n]; }
    __device__ const float* row_ptr(int64_t k) const { return a + g.weight_row(k) * ld; }
};
// An epilogue for a sub-pixel class: class row m is row g.out_row(m) of the whole output.
template <class Store>
struct RowMappedStore {
    Store st;
    SubpixelGather g;
    __device__ void operator()(int64_t z, int64_t m, int64_t n, float v) const { st(z, g.out_row(m), n, v); }
};
// B operands the wide kernel reads by rows (row_ptr(k): the address of B(k, 0), rows contiguous).
template <class T>
struct IsRowAddressable {
    static constexpr bool value = false;
};
template <>
struct IsRowAddressable<RowMajor> {
    static constexpr bool value = true;
};
template <>
struct IsRowAddressable<SubpixelWeights> {
    static constexpr bool value = true;
};
constexpr int BM = 64, BN = 64, BK = 16, THREADS = 256;
static_assert(THREADS == kGatherThreads && BK == kGatherDepth, "the row gather (gather.cuh) assumes these");

// C[m, n] = sum_k A(m, k) B(k, n) over k in this block's K chunk; store(z, m, n, value).
// kAMFast: A is read with m varying fastest across threads (coalesced when A is (k, m) in memory).
template <bool kAMFast, class LoadA, class LoadB, class Store>
__global__ void __launch_bounds__(THREADS) gemm_kernel(int64_t M, int64_t N, int64_t K, int64_t chunk, LoadA la, LoadB lb,
                                                       Store st) {
    __shared__ float As[BK][BM + 4];
    __shared__ float Bs[BK][BN + 4];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM, n0 = static_cast<int64_t>(blockIdx.y) * BN;
    const int64_t kbeg = static_cast<int64_t>(blockIdx.z) * chunk, kend = (kbeg + chunk < K ? kbeg + chunk : K);
    float acc[4][4] = {};
    constexpr bool kRowGather = !kAMFast && IsGather<LoadA>::value;
    static_assert(THREADS == 256 && BK == 16, "decode_rows / gather_rows assume 256 threads and 16-deep slices");
    GatherRow rows[4];  // this thread's A rows when la.rows
    if constexpr (kRowGather) {
        if (la.rows) decode_rows(la, m0, M, tid, rows);
    }
    for (int64_t k0 = kbeg; k0 < kend; k0 += BK) {
        bool loaded = false;
        if constexpr (kRowGather) {
            if (la.rows) {
                float v[4];
                gather_rows(la, rows, k0, kend, tid, v);
PIN_UNROLL
                for (int i = 0; i < 4; ++i) As[tid % BK][(tid + i * THREADS) / BK] = v[i];
                loaded = true;
            }
        }
        if (!loaded)
PIN_UNROLL
            for (int i = 0; i < 4; ++i) {
                const int idx = tid + i * THREADS;
                const int mm = kAMFast ? idx % BM : idx / BK, kk = kAMFast ? idx / BM : idx % BK;
                const int64_t m = m0 + mm, k = k0 + kk;
                As[kk][mm] = (m < M && k < kend) ? la(m, k) : 0.0f;
            }
PIN_UNROLL
        for (int i = 0; i < 4; ++i) {
            const int idx = tid + i * THREADS;
            const int kk = idx / BN, nn = idx % BN;
            const int64_t n = n0 + nn, k = k0 + kk;
            Bs[kk][nn] = (n < N && k < kend) ? lb(k, n) : 0.0f;
        }
        __syncthreads();
PIN_UNROLL
        for (int kk = 0; kk < BK; ++kk) {
            float a[4], b[4];
PIN_UNROLL
            for (int i = 0; i < 4; ++i) a[i] = As[kk][ty * 4 + i];
PIN_UNROLL
            for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx * 4 + j];
PIN_UNROLL
            for (int i = 0; i < 4; ++i)
PIN_UNROLL
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
PIN_UNROLL
    for (int i = 0; i < 4; ++i)
PIN_UNROLL
        for (int j = 0; j < 4; ++j) {
            const int64_t m = m0 + ty * 4 + i, n = n0 + tx * 4 + j;
            if (m < M && n < N) st(static_cast<int64_t>(blockIdx.z), m, n, acc[i][j]);
        }
}

// The tensor-core variants (MathMode::TF32, MathMode::BF16): the same gathers and epilogues,
// 128 x 64 tiles, eight warps of 32 x 32 each built from 16 x 16 WMMA products, sums in fp32. The
// operands are rounded when they are written to shared memory: to TF32 (10-bit mantissa, kept in a
// float, 16 x 16 x 8 products) or to bfloat16 (8-bit mantissa, half the shared memory, 16 x 16 x 16
// products at twice TF32's rate on sm_80+). The next K slice is fetched into registers while the
// tensor cores work on the current one. The accumulators go through shared memory so the epilogue
// sees (m, n) pairs.
constexpr int TBM = 128, TBN = 64, TBK = 16, TPAD = 4;
constexpr int T_A_PER_THREAD = TBM * TBK / THREADS, T_B_PER_THREAD = TBK * TBN / THREADS;
struct Tf32Mma {
    using Elem = float;
    using Precision = nvcuda::wmma::precision::tf32;
    static constexpr int kK = 8, kPad = 4;  // WMMA's ldm: a multiple of 16 bytes
    __device__ static float convert(float v) { return nvcuda::wmma::__float_to_tf32(v); }
};
struct Bf16Mma {
    using Elem = __nv_bfloat16;
    using Precision = __nv_bfloat16;
    static constexpr int kK = 16, kPad = 8;
    __device__ static __nv_bfloat16 convert(float v) { return __float2bfloat16_rn(v); }
};
// One K slice of the tensor-core kernels on a warp's 2 x 2 tiles of 16 x 16 (warp w at rows 32 (w % 4),
// columns 32 (w / 4)): As is the slice's [rows][LA] m x k tile, Bs its [depth][LB] k x n tile.
template <class Precision, int kK, int kDepth, int LA, int LB, class Elem, class Frag>
__device__ void warp_products(const Elem* As, const Elem* Bs, Frag (&acc)[2][2]) {
    using namespace nvcuda;
    const int warp = threadIdx.x / 32, wm = warp % 4, wn = warp / 4;
PIN_UNROLL
    for (int ks = 0; ks < kDepth; ks += kK) {
        wmma::fragment<wmma::matrix_a, 16, 16, kK, Precision, wmma::row_major> a[2];
        wmma::fragment<wmma::matrix_b, 16, 16, kK, Precision, wmma::row_major> b[2];
PIN_UNROLL
        for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], As + (wm * 32 + i * 16) * LA + ks, LA);
PIN_UNROLL
        for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], Bs + ks * LB + wn * 32 + j * 16, LB);
PIN_UNROLL
        for (int i = 0; i < 2; ++i)
PIN_UNROLL
            for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
}
// The tensor-core kernels' epilogue: each warp's 2 x 2 accumulator tiles (warp w at rows 32 (w % 4),
// columns 32 (w / 4) of the block tile) go through shared memory Cs [TM][LC], so that the store
// functor sees (m, n) pairs; then st(K chunk, m, n, value) for each element inside the matrix.
template <int TM, int TN, int LC, class Frag, class Store>
__device__ void store_warp_tiles(float* Cs, Frag (&acc)[2][2], int64_t m0, int64_t n0, int64_t M, int64_t N, const Store& st) {
    const int tid = threadIdx.x, warp = tid / 32, wm = warp % 4, wn = warp / 4;
PIN_UNROLL
    for (int i = 0; i < 2; ++i)
PIN_UNROLL
        for (int j = 0; j < 2; ++j)
            nvcuda::wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * LC + wn * 32 + j * 16, acc[i][j], LC, nvcuda::wmma::mem_row_major);
    __syncthreads();
    for (int idx = tid; idx < TM * TN; idx += THREADS) {
        const int mm = idx / TN, nn = idx % TN;
        const int64_t m = m0 + mm, n = n0 + nn;
        if (m < M && n < N) st(static_cast<int64_t>(blockIdx.z), m, n, Cs[mm * LC + nn]);
    }
}

template <class Mma, bool kAMFast, class LoadA, class LoadB, class Store>
__global__ void __launch_bounds__(THREADS, 2) gemm_tensor_core_kernel(int64_t M, int64_t N, int64_t K, int64_t chunk, LoadA la,
                                                                   LoadB lb, Store st) {
    using namespace nvcuda;
    using Elem = typename Mma::Elem;
    constexpr int LA = TBK + Mma::kPad, LB = TBN + Mma::kPad, LC = TBN + TPAD;
    constexpr int A_ELEMS = TBM * LA, B_ELEMS = TBK * LB;
    constexpr int AB_BYTES = (A_ELEMS + B_ELEMS) * static_cast<int>(sizeof(Elem)), C_BYTES = TBM * LC * static_cast<int>(sizeof(float));
    // WMMA loads and stores need 32-byte aligned tile pointers: every offset below is a multiple.
    static_assert((A_ELEMS * sizeof(Elem)) % 32 == 0 && (16 * LA * sizeof(Elem)) % 32 == 0 && (16 * LB * sizeof(Elem)) % 32 == 0,
                  "tile rows must keep 32-byte alignment");
    __shared__ __align__(128) unsigned char smem[AB_BYTES > C_BYTES ? AB_BYTES : C_BYTES];
    Elem* As = reinterpret_cast<Elem*>(smem);  // [TBM][LA], row-major m x k
    Elem* Bs = As + A_ELEMS;                   // [TBK][LB], row-major k x n
    const int tid = threadIdx.x;
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) * TBM, n0 = static_cast<int64_t>(blockIdx.y) * TBN;
    const int64_t kbeg = static_cast<int64_t>(blockIdx.z) * chunk, kend = (kbeg + chunk < K ? kbeg + chunk : K);
    float ra[T_A_PER_THREAD], rb[T_B_PER_THREAD];
    constexpr bool kRowGather = !kAMFast && IsGather<LoadA>::value;
    static_assert(THREADS == 256 && TBK == 16, "decode_rows / gather_rows assume 256 threads and 16-deep slices");
    GatherRow rows[T_A_PER_THREAD];  // this thread's A rows when la.rows
    if constexpr (kRowGather) {
        if (la.rows) decode_rows(la, m0, M, tid, rows);
    }
    auto fetch = [&](int64_t k0) {
        bool loaded = false;
        if constexpr (kRowGather) {
            if (la.rows) {
                gather_rows(la, rows, k0, kend, tid, ra);
                loaded = true;
            }
        }
        if (!loaded)
PIN_UNROLL
            for (int i = 0; i < T_A_PER_THREAD; ++i) {
                const int idx = tid + i * THREADS;
                const int mm = kAMFast ? idx % TBM : idx / TBK, kk = kAMFast ? idx / TBM : idx % TBK;
                const int64_t m = m0 + mm, k = k0 + kk;
                ra[i] = (m < M && k < kend) ? la(m, k) : 0.0f;
            }
PIN_UNROLL
        for (int i = 0; i < T_B_PER_THREAD; ++i) {
            const int idx = tid + i * THREADS;
            const int kk = idx / TBN, nn = idx % TBN;
            const int64_t n = n0 + nn, k = k0 + kk;
            rb[i] = (n < N && k < kend) ? lb(k, n) : 0.0f;
        }
    };
    wmma::fragment<wmma::accumulator, 16, 16, Mma::kK, float> acc[2][2];
PIN_UNROLL
    for (int i = 0; i < 2; ++i)
PIN_UNROLL
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
    if (kbeg < kend) fetch(kbeg);
    for (int64_t k0 = kbeg; k0 < kend; k0 += TBK) {
PIN_UNROLL
        for (int i = 0; i < T_A_PER_THREAD; ++i) {
            const int idx = tid + i * THREADS;
            const int mm = kAMFast ? idx % TBM : idx / TBK, kk = kAMFast ? idx / TBM : idx % TBK;
            As[mm * LA + kk] = Mma::convert(ra[i]);
        }
PIN_UNROLL
        for (int i = 0; i < T_B_PER_THREAD; ++i) {
            const int idx = tid + i * THREADS;
            Bs[(idx / TBN) * LB + idx % TBN] = Mma::convert(rb[i]);
        }
        __syncthreads();
        if (k0 + TBK < kend) fetch(k0 + TBK);  // global loads in flight during the products below
        warp_products<typename Mma::Precision, Mma::kK, TBK, LA, LB>(As, Bs, acc);
        __syncthreads();
    }
    // The operand tiles are no longer needed: their memory holds the accumulators.
    store_warp_tiles<TBM, TBN, LC>(reinterpret_cast<float*>(smem), acc, m0, n0, M, N, st);
}

// The wide tensor-core kernel (GatherMode::Vector with MathMode::BF16) for the convolutions whose
// gathered channel count is a multiple of 32 and whose weight operand is read by rows (RowMajor, or
// a sub-pixel class's SubpixelWeights) with n a multiple of 4: the forward passes and the input
// gradients of every layer but the 1-channel ones. What it changes against gemm_tensor_core_kernel, each a known cost of that one:
// 16-byte vector loads (rows and taps decoded once, gather.cuh gather_wide) instead of one float
// per load with its own bounds test; 32-deep K slices (eight WMMA products per warp per slice
// instead of four); two shared-memory stages, so one barrier per slice instead of two, the next
// slice's global loads in flight during the products. 128 x 64 tiles, eight warps of 32 x 32, rows
// padded by 8 bfloat16 (16 bytes), which keeps the tensor cores' 8 x 16-byte row reads on distinct
// banks. Sums in fp32; one K chunk (no split), so the epilogue is the final store.
constexpr int WLA = kWideDepth + 8, WLB = kWideCols + 8, WLC = kWideCols + 4;
constexpr int W_STAGE = kWideRows * WLA + kWideDepth * WLB;  // bfloat16 elements per stage
constexpr int W_OPERAND_BYTES = 2 * W_STAGE * 2, W_C_BYTES = kWideRows * WLC * 4;
constexpr int W_SMEM_BYTES = W_OPERAND_BYTES > W_C_BYTES ? W_OPERAND_BYTES : W_C_BYTES;
static_assert((kWideRows * WLA * 2) % 32 == 0 && (W_STAGE * 2) % 32 == 0 && (16 * WLA * 2) % 32 == 0 && (16 * WLB * 2) % 32 == 0 &&
                  (16 * WLC * 4) % 32 == 0,
              "WMMA tile pointers must stay 32-byte aligned");
static_assert(W_SMEM_BYTES <= 48 * 1024, "static shared memory");

__device__ inline void store_bf16x4(__nv_bfloat16* p, const float (&v)[4]) {
    // p is 4-byte aligned (even element offsets): two paired stores.
    reinterpret_cast<__nv_bfloat162*>(p)[0] = __floats2bfloat162_rn(v[0], v[1]);
    reinterpret_cast<__nv_bfloat162*>(p)[1] = __floats2bfloat162_rn(v[2], v[3]);
}

template <class LoadA, class LoadB, class Store>
__global__ void __launch_bounds__(THREADS, 2) gemm_wide_kernel(int64_t M, int64_t N, int64_t K, LoadA la, LoadB lb, Store st) {
    using namespace nvcuda;
    __shared__ __align__(128) unsigned char smem[W_SMEM_BYTES];
    __nv_bfloat16* const stages = reinterpret_cast<__nv_bfloat16*>(smem);
    const int tid = threadIdx.x;
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kWideRows, n0 = static_cast<int64_t>(blockIdx.y) * kWideCols;
    GatherRow rows[kWideARows];
    decode_wide_rows(la, m0, M, tid, rows);
    float ra[kWideARows][4], rb[kWideBRows][4];
    const int64_t bn = n0 + wide_b_col(tid);  // N % 4 == 0: a vector is all inside or all outside
    auto fetch = [&](int64_t k0) {
        gather_wide(la, rows, k0, tid, ra);
PIN_UNROLL
        for (int j = 0; j < kWideBRows; ++j) {
            if (bn < N) {
                load4(lb.row_ptr(k0 + wide_b_row(tid, j)) + bn, rb[j]);
            } else {
                rb[j][0] = rb[j][1] = rb[j][2] = rb[j][3] = 0.0f;
            }
        }
    };
    auto store = [&](int stage) {
        __nv_bfloat16* As = stages + stage * W_STAGE;  // [kWideRows][WLA], m x k
        __nv_bfloat16* Bs = As + kWideRows * WLA;      // [kWideDepth][WLB], k x n
PIN_UNROLL
        for (int i = 0; i < kWideARows; ++i) store_bf16x4(As + wide_a_row(tid, i) * WLA + wide_a_col(tid), ra[i]);
PIN_UNROLL
        for (int j = 0; j < kWideBRows; ++j) store_bf16x4(Bs + wide_b_row(tid, j) * WLB + wide_b_col(tid), rb[j]);
    };
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
PIN_UNROLL
    for (int i = 0; i < 2; ++i)
PIN_UNROLL
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
    fetch(0);
    store(0);
    __syncthreads();
    int stage = 0;
    for (int64_t k0 = 0; k0 < K; k0 += kWideDepth) {
        const bool more = k0 + kWideDepth < K;
        if (more) fetch(k0 + kWideDepth);  // in flight during the products
        const __nv_bfloat16* As = stages + stage * W_STAGE;
        const __nv_bfloat16* Bs = As + kWideRows * WLA;
        warp_products<__nv_bfloat16, 16, kWideDepth, WLA, WLB>(As, Bs, acc);
        // The other stage was last read before the previous barrier: free to fill. The barrier below
        // publishes it and ends this stage's reads before the next slice overwrites it.
        if (more) store(stage ^ 1);
        __syncthreads();
        stage ^= 1;
    }
    // Every operand read ended at the last barrier: their memory holds the accumulators.
    store_warp_tiles<kWideRows, kWideCols, WLC>(reinterpret_cast<float*>(smem), acc, m0, n0, M, N, st);
}

// The grid of gemm_kernel (tensor_cores false) or gemm_tensor_core_kernel: M tiles on x (up to
// 2^31 - 1; y and z stop at 65535), N tiles on y, K in z chunks of `chunk` (a multiple of the K
// slice) for `splits` requested.
struct GemmGrid {
    unsigned x, y, z;
    int64_t chunk;
};
inline GemmGrid gemm_grid(int64_t M, int64_t N, int64_t K, int64_t splits, bool tensor_cores) {
    const int64_t bk = tensor_cores ? TBK : BK, bm = tensor_cores ? TBM : BM, bn = tensor_cores ? TBN : BN;
    const int64_t per_split = ((K + splits - 1) / splits + bk - 1) / bk * bk;
    const int64_t chunk = per_split > bk ? per_split : bk;
    const int64_t z = (K + chunk - 1) / chunk;
    return {static_cast<unsigned>((M + bm - 1) / bm), static_cast<unsigned>((N + bn - 1) / bn), static_cast<unsigned>(z > 1 ? z : 1),
            chunk};
}

}  // namespace pin::cuda::gemm
