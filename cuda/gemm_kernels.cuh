// cuda/gemm_kernels.cuh - the GEMM kernels behind every convolution direction, the linear layer and
// the projection (ops.cu launches them): the fp32 CUDA-core kernel, the TF32/BF16 tensor-core kernel,
// the wide BF16 kernel (GatherMode::Vector) and the asynchronous-copy BF16 kernel (both operands
// stored as bfloat16). Their operands are functors (gather.cuh for the
// convolutions), their epilogues store functors.
//
// Compiled by nvcc for the GPU, and by the host compiler for tests/test_gemm_emulated.cpp, which runs
// these same kernels on the CPU under a small emulation of CUDA (tests/cuda_emulation.hpp: threads
// and barriers of a block, shared memory, WMMA with its alignment rules), so their tiling, pipelines
// and fragment offsets are checked in every CI run, GPU or not.
#pragma once
#include <cstdint>
#include <type_traits>
#include <utility>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <mma.h>
#elif !defined(PIN_CUDA_EMULATION)
#error "gemm_kernels.cuh: compile with nvcc, or include tests/cuda_emulation.hpp first"
#endif

#include "async_copy.cuh"
#include "gather.cuh"
#include "launch.cuh"

namespace pin::cuda::gemm {

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// ---- operands --------------------------------------------------------------------------------------
// Row-major matrix reads: (i, j) -> a[i * ld + j]; the wide kernel reads it in 4-float vectors.
struct RowMajor {
    const float* a;
    int64_t ld;
    __device__ float operator()(int64_t i, int64_t j) const { return a[i * ld + j]; }
    __device__ const float* row_ptr(int64_t i) const { return a + i * ld; }
    // A(i, j .. j + 3), for the wide kernel (j a multiple of 4, vectors_aligned()).
    __device__ void vec4(int64_t i, int64_t j, float (&v)[4]) const { load4(a + i * ld + j, v); }
    bool vectors_aligned() const { return aligned16(a) && ld % 4 == 0; }
};
// A = x - mean, row-major (B, D): the faces centred for the projection onto the eigenfaces.
struct Centered {
    const float* x;
    const float* mean;
    int64_t D;
    __device__ float operator()(int64_t b, int64_t d) const { return x[b * D + d] - mean[d]; }
    __device__ void vec4(int64_t b, int64_t d, float (&v)[4]) const {
        float m[4];
        load4(x + b * D + d, v);
        load4(mean + d, m);
        for (int j = 0; j < 4; ++j) v[j] -= m[j];
    }
    bool vectors_aligned() const { return aligned16(x) && aligned16(mean) && D % 4 == 0; }
};
// A = q .* c, row-major (B, N) (q null: c): the masked coefficients of the reconstruction.
struct MaskedCoefficients {
    const float* c;
    const float* q;
    int64_t N;
    __device__ float operator()(int64_t b, int64_t j) const { return q ? q[b * N + j] * c[b * N + j] : c[b * N + j]; }
    __device__ void vec4(int64_t b, int64_t j, float (&v)[4]) const {
        load4(c + b * N + j, v);
        if (!q) return;
        float m[4];
        load4(q + b * N + j, m);
        for (int e = 0; e < 4; ++e) v[e] = m[e] * v[e];
    }
    bool vectors_aligned() const { return aligned16(c) && aligned16(q) && N % 4 == 0; }
};
// Row-major A operands the wide kernel reads 4 k at a time: those with vec4 (RowMajor, Centered,
// MaskedCoefficients).
template <class T, class = void>
struct IsRowVectors : std::false_type {};
template <class T>
struct IsRowVectors<T, std::void_t<decltype(std::declval<const T&>().vec4(0, 0, std::declval<float (&)[4]>()))>> : std::true_type {};
// The transposed view of a row-major matrix: (i, j) -> a[j * ld + i].
struct ColMajor {
    const float* a;
    int64_t ld;
    __device__ float operator()(int64_t i, int64_t j) const { return a[j * ld + i]; }
};
// The packed weights (rows (kh k + kw) C + c) of a transposed gather read by one sub-pixel class's
// GEMM (gather.cuh SubpixelGather): class column k is row g.weight_row(k).
template <class G = SubpixelGather<>>
struct SubpixelWeights {
    const float* a;
    int64_t ld;
    G g;
    __device__ float operator()(int64_t k, int64_t n) const { return a[g.weight_row(k) * ld + n]; }
    __device__ const float* row_ptr(int64_t k) const { return a + g.weight_row(k) * ld; }
};
// Epilogues that can also store 4 consecutive columns at once: st.store4(z, m, n, v[4]) for
// n % 4 == 0 and N % 4 == 0, where st.vectors_ok() (their pointers' alignment; the tensor-core
// kernels' epilogue uses it then, one vector load from shared memory and one store per 4 outputs).
template <class T, class = void>
struct HasStore4 : std::false_type {};
template <class T>
struct HasStore4<T, std::void_t<decltype(std::declval<const T&>().store4(0, 0, 0, std::declval<const float (&)[4]>()))>>
    : std::true_type {};
// An epilogue for a sub-pixel class: class row m is row g.out_row(m) of the whole output.
template <class Store, class G = SubpixelGather<>>
struct RowMappedStore {
    Store st;
    G g;
    __device__ void operator()(int64_t z, int64_t m, int64_t n, float v) const { st(z, g.out_row(m), n, v); }
    template <class S = Store, class = std::enable_if_t<HasStore4<S>::value>>
    __device__ void store4(int64_t z, int64_t m, int64_t n, const float (&v)[4]) const {
        st.store4(z, g.out_row(m), n, v);
    }
    template <class S = Store, class = std::enable_if_t<HasStore4<S>::value>>
    __device__ bool vectors_ok() const {
        return st.vectors_ok();
    }
};
// B operands the wide kernel reads by rows: those with row_ptr(k), the address of B(k, 0), rows
// contiguous (RowMajor, SubpixelWeights).
template <class T, class = void>
struct IsRowAddressable : std::false_type {};
template <class T>
struct IsRowAddressable<T, std::void_t<decltype(std::declval<const T&>().row_ptr(0))>> : std::true_type {};
constexpr int BM = 64, BN = 64, BK = 16, THREADS = 256;
static_assert(THREADS == kGatherThreads && BK == kGatherDepth, "the row gather (gather.cuh) assumes these");

// C[m, n] = sum_k A(m, k) B(k, n) over k in this block's K chunk; store(z, m, n, value).
// kAMFast: A is read with m varying fastest across threads (coalesced when A is (k, m) in memory).
template <bool kAMFast, class LoadA, class LoadB, class Store>
__global__ void __launch_bounds__(THREADS) gemm_kernel(int64_t M, int64_t N, int64_t K, int64_t chunk, LoadA la, LoadB lb,
                                                       Store st) {
    PIN_SHARED_ARRAY(float, As, [BK][BM + 4]);
    PIN_SHARED_ARRAY(float, Bs, [BK][BN + 4]);
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
// One K slice of the tensor-core kernels on a warp's FM x FN tiles of 16 x 16 (the eight warps as
// 4 x 2: warp w at rows 16 FM (w % 4), columns 16 FN (w / 4); 2 x 2 tiles make a 128 x 64 block
// tile, 4 x 2 a 256 x 64 one): As is the slice's [rows][LA] m x k tile, Bs its [depth][LB] k x n tile.
// kAColMajor: As is [depth][LA], k x m (the weight-gradient form, whose A arrives m-contiguous).
template <class Precision, int kK, int kDepth, int LA, int LB, bool kAColMajor = false, class Elem, class Frag, int FM, int FN>
__device__ void warp_products(const Elem* As, const Elem* Bs, Frag (&acc)[FM][FN]) {
    using namespace nvcuda;
    using ALayout = typename std::conditional<kAColMajor, wmma::col_major, wmma::row_major>::type;
    const int warp = threadIdx.x / 32, wm = warp % 4, wn = warp / 4;
PIN_UNROLL
    for (int ks = 0; ks < kDepth; ks += kK) {
        wmma::fragment<wmma::matrix_a, 16, 16, kK, Precision, ALayout> a[FM];
        wmma::fragment<wmma::matrix_b, 16, 16, kK, Precision, wmma::row_major> b[FN];
PIN_UNROLL
        for (int i = 0; i < FM; ++i) {
            const int row = (wm * FM + i) * 16;
            wmma::load_matrix_sync(a[i], kAColMajor ? As + ks * LA + row : As + row * LA + ks, LA);
        }
PIN_UNROLL
        for (int j = 0; j < FN; ++j) wmma::load_matrix_sync(b[j], Bs + ks * LB + (wn * FN + j) * 16, LB);
PIN_UNROLL
        for (int i = 0; i < FM; ++i)
PIN_UNROLL
            for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
}
// p[0..3] from shared memory (16-byte aligned): one vector load on the GPU.
__device__ inline void load4_shared(const float* p, float (&v)[4]) {
#if defined(__CUDA_ARCH__)
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
#else
    for (int j = 0; j < 4; ++j) v[j] = p[j];
#endif
}
template <class Frag, int FM, int FN>
__device__ void zero_accumulators(Frag (&acc)[FM][FN]) {
PIN_UNROLL
    for (int i = 0; i < FM; ++i)
PIN_UNROLL
        for (int j = 0; j < FN; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);
}
// The tensor-core kernels' epilogue, second half: the block's TM x TN results in shared memory
// Cs [TM][LC] (every thread's writes done: after a barrier) go to st(K chunk, m, n, value) for each
// element inside the matrix, four columns at a time where the store takes vectors; by the block's
// THREADS threads, or by kThreads of them, tid 0 .. kThreads - 1.
template <int TM, int TN, int LC, int kThreads = THREADS, class Store>
__device__ void store_shared_tile(const float* Cs, int64_t m0, int64_t n0, int64_t M, int64_t N, const Store& st,
                                  int tid = static_cast<int>(threadIdx.x)) {
    if constexpr (HasStore4<Store>::value) {
        static_assert(TN % 4 == 0 && LC % 4 == 0, "whole 16-byte vectors of Cs");
        if (N % 4 == 0 && st.vectors_ok()) {  // a vector is all inside N or all outside
            for (int idx = tid; idx < TM * TN / 4; idx += kThreads) {
                const int mm = idx / (TN / 4), nn = idx % (TN / 4) * 4;
                const int64_t m = m0 + mm, n = n0 + nn;
                if (m >= M || n >= N) continue;
                float v[4];
                load4_shared(Cs + mm * LC + nn, v);
                st.store4(static_cast<int64_t>(blockIdx.z), m, n, v);
            }
            return;
        }
    }
    for (int idx = tid; idx < TM * TN; idx += kThreads) {
        const int mm = idx / TN, nn = idx % TN;
        const int64_t m = m0 + mm, n = n0 + nn;
        if (m < M && n < N) st(static_cast<int64_t>(blockIdx.z), m, n, Cs[mm * LC + nn]);
    }
}
// The WMMA kernels' epilogue: each warp's FM x FN accumulator tiles (placed as in warp_products)
// go through shared memory Cs [TM][LC], so that the store functor sees (m, n) pairs.
template <int TM, int TN, int LC, class Frag, int FM, int FN, class Store>
__device__ void store_warp_tiles(float* Cs, Frag (&acc)[FM][FN], int64_t m0, int64_t n0, int64_t M, int64_t N, const Store& st) {
    static_assert(TM == 4 * 16 * FM && TN == 2 * 16 * FN, "eight warps as 4 x 2");
    const int tid = threadIdx.x, warp = tid / 32, wm = warp % 4, wn = warp / 4;
PIN_UNROLL
    for (int i = 0; i < FM; ++i)
PIN_UNROLL
        for (int j = 0; j < FN; ++j)
            nvcuda::wmma::store_matrix_sync(Cs + (wm * FM + i) * 16 * LC + (wn * FN + j) * 16, acc[i][j], LC, nvcuda::wmma::mem_row_major);
    __syncthreads();
    store_shared_tile<TM, TN, LC>(Cs, m0, n0, M, N, st);
}

// kRows: A comes through the row gather (gather.cuh GatherRow; the launch passes it where la.rows),
// else through la(m, k). Two instantiations, not a runtime branch: one kernel holding both paths kept
// the rows' 32 registers live through the generic gather's loop as well, and at the 128 registers
// of two blocks per SM it spilled (ptxas -v: up to 292 B of stores per thread; apart, at most 32).
template <class Mma, bool kAMFast, bool kRows, class LoadA, class LoadB, class Store>
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
    PIN_SHARED_ARRAY_ALIGNED(128, unsigned char, smem, [(AB_BYTES > C_BYTES ? AB_BYTES : C_BYTES)]);
    Elem* As = reinterpret_cast<Elem*>(smem);  // [TBM][LA], row-major m x k
    Elem* Bs = As + A_ELEMS;                   // [TBK][LB], row-major k x n
    const int tid = threadIdx.x;
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) * TBM, n0 = static_cast<int64_t>(blockIdx.y) * TBN;
    const int64_t kbeg = static_cast<int64_t>(blockIdx.z) * chunk, kend = (kbeg + chunk < K ? kbeg + chunk : K);
    float ra[T_A_PER_THREAD], rb[T_B_PER_THREAD];
    static_assert(!kRows || (!kAMFast && IsGather<LoadA>::value), "the row gather reads a gathered A, m-major");
    static_assert(THREADS == 256 && TBK == 16, "decode_rows / gather_rows assume 256 threads and 16-deep slices");
    GatherRow rows[T_A_PER_THREAD];  // this thread's A rows (kRows)
    if constexpr (kRows) decode_rows(la, m0, M, tid, rows);
    auto fetch = [&](int64_t k0) {
        if constexpr (kRows) {
            gather_rows(la, rows, k0, kend, tid, ra);
        } else {
PIN_UNROLL
            for (int i = 0; i < T_A_PER_THREAD; ++i) {
                const int idx = tid + i * THREADS;
                const int mm = kAMFast ? idx % TBM : idx / TBK, kk = kAMFast ? idx / TBM : idx % TBK;
                const int64_t m = m0 + mm, k = k0 + kk;
                ra[i] = (m < M && k < kend) ? la(m, k) : 0.0f;
            }
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
    zero_accumulators(acc);
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

// The wide tensor-core kernel (GatherMode::Vector with MathMode::BF16), for the GEMMs that carry
// most of the FLOPs: the convolutions' forward passes and input gradients whose gathered channel
// count is a multiple of 32 (WideConvOperands) and the weight gradients with channel counts that
// are multiples of 4 (WideWeightGradOperands). What it changes against gemm_tensor_core_kernel,
// each a known cost of that one: 16-byte vector loads, their rows and taps decoded once per slice
// or launch, instead of one float per load with its own bounds test; 32-deep K slices (eight WMMA
// products per warp per slice instead of four); two shared-memory stages, so one barrier per slice
// instead of two, the next slice's global loads in flight during the products. 128 x 64 tiles,
// eight warps of 32 x 32, shared rows padded by 8 bfloat16 (16 bytes), which keeps the tensor
// cores' 8 x 16-byte row reads on distinct banks. Sums in fp32; K in chunks of `chunk` (blockIdx.z).
constexpr int WLA = kWideDepth + 8, WLAT = kWideRows + 8, WLB = kWideCols + 8, WLC = kWideCols + 4;
constexpr int W_A_ELEMS = kWideRows * WLA > kWideDepth * WLAT ? kWideRows * WLA : kWideDepth * WLAT;
constexpr int W_STAGE = W_A_ELEMS + kWideDepth * WLB;  // bfloat16 elements per stage
constexpr int W_OPERAND_BYTES = 2 * W_STAGE * 2, W_C_BYTES = kWideRows * WLC * 4;
constexpr int W_SMEM_BYTES = W_OPERAND_BYTES > W_C_BYTES ? W_OPERAND_BYTES : W_C_BYTES;
static_assert((W_A_ELEMS * 2) % 32 == 0 && (W_STAGE * 2) % 32 == 0 && (16 * WLA * 2) % 32 == 0 && (16 * WLAT * 2) % 32 == 0 &&
                  (16 * WLB * 2) % 32 == 0 && (16 * WLC * 4) % 32 == 0,
              "WMMA tile pointers must stay 32-byte aligned");
static_assert(W_SMEM_BYTES <= 48 * 1024, "static shared memory");

__device__ inline void store_bf16x4(__nv_bfloat16* p, const float (&v)[4]) {
    // p is 4-byte aligned (even element offsets): two paired stores.
    reinterpret_cast<__nv_bfloat162*>(p)[0] = __floats2bfloat162_rn(v[0], v[1]);
    reinterpret_cast<__nv_bfloat162*>(p)[1] = __floats2bfloat162_rn(v[2], v[3]);
}
__device__ inline void zero4(float (&v)[4]) { v[0] = v[1] = v[2] = v[3] = 0.0f; }
// A slice's registers into a stage, A m x k ([kWideRows][WLA]) and B k x n, in the thread layout of
// gather.cuh (wide_a_row, wide_b_row, ...).
__device__ inline void store_row_major_a(const float (&a)[kWideARows][4], const float (&b)[kWideBRows][4], __nv_bfloat16* As,
                                         __nv_bfloat16* Bs, int tid) {
PIN_UNROLL
    for (int i = 0; i < kWideARows; ++i) store_bf16x4(As + wide_a_row(tid, i) * WLA + wide_a_col(tid), a[i]);
PIN_UNROLL
    for (int j = 0; j < kWideBRows; ++j) store_bf16x4(Bs + wide_b_row(tid, j) * WLB + wide_b_col(tid), b[j]);
}

// B vectors of a slice from a row-addressable B (RowMajor, SubpixelWeights): rows k0 + wide_b_row,
// columns n .. n + 3; zeros past K's end or N's (N % 4 == 0: a vector is all inside or all outside).
// A slice's rows are consecutive rows of B (RowMajor: always; SubpixelWeights: the slice lies in one
// tap, which WideConvOperands requires), so the row is decoded once per slice (the sub-pixel weight
// row takes divisions).
template <class LoadB>
__device__ void fetch_b_rows(const LoadB& lb, int64_t k0, int64_t kend, int64_t n, int64_t N, int tid, float (&b)[kWideBRows][4]) {
    const float* first = lb.row_ptr(k0) + n;
PIN_UNROLL
    for (int j = 0; j < kWideBRows; ++j) {
        const int64_t k = k0 + wide_b_row(tid, j);
        if (k < kend && n < N)
            load4(first + wide_b_row(tid, j) * lb.ld, b[j]);
        else
            zero4(b[j]);
    }
}

// The convolution GEMMs: A gathered by rows (Gather, SubpixelGather), B read by rows (RowMajor,
// SubpixelWeights); the gathered channel count a multiple of 32 (a slice lies in one tap), N a
// multiple of 4, both sources 16-byte aligned (fits() says whether they are).
template <class LoadA, class LoadB>
struct WideConvOperands {
    static constexpr bool kAColMajor = false;
    static constexpr int kALd = WLA;  // As is [kWideRows][WLA], m x k
    LoadA la;
    LoadB lb;
    struct Regs {
        GatherRow rows[kWideARows];
        float a[kWideARows][4], b[kWideBRows][4];
        int64_t n;  // this thread's B column (N % 4 == 0: a vector is all inside or all outside)
    };
    __device__ void begin(Regs& r, int64_t m0, int64_t n0, int64_t M, int tid) const {
        decode_wide_rows(la, m0, M, tid, r.rows);
        r.n = n0 + wide_b_col(tid);
    }
    __device__ void fetch(Regs& r, int64_t k0, int64_t kend, int64_t, int64_t N, int tid) const {
        gather_wide(la, r.rows, k0, tid, r.a);
        fetch_b_rows(lb, k0, kend, r.n, N, tid, r.b);
    }
    __device__ void store(const Regs& r, __nv_bfloat16* As, __nv_bfloat16* Bs, int tid) const { store_row_major_a(r.a, r.b, As, Bs, tid); }
    bool fits(int64_t, int64_t N, int64_t K, int64_t splits) const {
        return splits == 1 && la.C % kWideDepth == 0 && K % kWideDepth == 0 && N % 4 == 0 && lb.ld == N && aligned16(la.src) &&
               aligned16(lb.a);
    }
};

// Row-major A operands (linear layers, the projection onto the eigenfaces and back): A read by the
// convolution form's thread layout, 4 consecutive k per vector (vec4); K, N and the leading
// dimensions multiples of 4 (a vector is all inside or all outside K), sources 16-byte aligned
// (fits()).
template <class LoadA, class LoadB>
struct WideRowOperands {
    static constexpr bool kAColMajor = false;
    static constexpr int kALd = WLA;  // As is [kWideRows][WLA], m x k
    LoadA la;
    LoadB lb;
    struct Regs {
        float a[kWideARows][4], b[kWideBRows][4];
        int64_t m0, n;
    };
    __device__ void begin(Regs& r, int64_t m0, int64_t n0, int64_t, int tid) const {
        r.m0 = m0;
        r.n = n0 + wide_b_col(tid);
    }
    __device__ void fetch(Regs& r, int64_t k0, int64_t kend, int64_t M, int64_t N, int tid) const {
        const int64_t k = k0 + wide_a_col(tid);
PIN_UNROLL
        for (int i = 0; i < kWideARows; ++i) {
            const int64_t m = r.m0 + wide_a_row(tid, i);
            if (m < M && k < kend)
                la.vec4(m, k, r.a[i]);
            else
                zero4(r.a[i]);
        }
        fetch_b_rows(lb, k0, kend, r.n, N, tid, r.b);
    }
    __device__ void store(const Regs& r, __nv_bfloat16* As, __nv_bfloat16* Bs, int tid) const { store_row_major_a(r.a, r.b, As, Bs, tid); }
    bool fits(int64_t, int64_t N, int64_t K, int64_t) const {
        return K % 4 == 0 && N % 4 == 0 && la.vectors_aligned() && lb.ld == N && aligned16(lb.a);
    }
};

// The weight gradients: A(m, k) = a[k ld + m] (ColMajor: the output gradient, m = channel, k =
// pixel), read 4 channels at a time along m; B(k, n) the gathered input (Gather, k = pixel, n = (tap,
// channel)) or a row-major matrix (linear layers). Thread t loads A rows k = t / 32 + 8 i (i < 4),
// channels 4 (t % 32) .. + 3 (a warp reads 512 contiguous bytes) and stores them k-major; its B
// vectors are those of the convolution form. M, ld and N multiples of 4, sources 16-byte aligned
// (fits()).
template <class LoadB>
struct WideWeightGradOperands {
    static constexpr bool kAColMajor = true;
    static constexpr int kALd = WLAT;  // As is [kWideDepth][WLAT], k x m
    ColMajor la;
    LoadB lb;
    struct Regs {
        float a[kWideARows][4], b[kWideBRows][4];
        int64_t m, n;    // this thread's A channel and B column
        int kh, kw, c;   // the tap and channel of column n (gathered B)
    };
    __device__ static int a_row(int tid, int i) { return tid / 32 + 8 * i; }
    __device__ static int a_col(int tid) { return (tid % 32) * 4; }
    __device__ void begin(Regs& r, int64_t m0, int64_t n0, int64_t, int tid) const {
        r.m = m0 + a_col(tid);
        r.n = n0 + wide_b_col(tid);
        r.kh = r.kw = r.c = 0;
        if constexpr (IsGather<LoadB>::value) lb.slice(r.n, 0, r.kh, r.kw, r.c);  // any n: C % 4 == 0 keeps the vector in one tap
    }
    __device__ void fetch(Regs& r, int64_t k0, int64_t kend, int64_t M, int64_t N, int tid) const {
PIN_UNROLL
        for (int i = 0; i < kWideARows; ++i) {
            const int64_t k = k0 + a_row(tid, i);
            if (k < kend && r.m < M)
                load4(la.a + k * la.ld + r.m, r.a[i]);
            else
                zero4(r.a[i]);
        }
        if constexpr (IsGather<LoadB>::value) {
PIN_UNROLL
            for (int j = 0; j < kWideBRows; ++j) {
                const int64_t k = k0 + wide_b_row(tid, j);
                if (r.n < N && k < kend)
                    lb.at4(lb.row(k, kend), r.kh, r.kw, r.c, r.b[j]);
                else
                    zero4(r.b[j]);
            }
        } else {
            fetch_b_rows(lb, k0, kend, r.n, N, tid, r.b);
        }
    }
    __device__ void store(const Regs& r, __nv_bfloat16* As, __nv_bfloat16* Bs, int tid) const {
PIN_UNROLL
        for (int i = 0; i < kWideARows; ++i) store_bf16x4(As + a_row(tid, i) * WLAT + a_col(tid), r.a[i]);
PIN_UNROLL
        for (int j = 0; j < kWideBRows; ++j) store_bf16x4(Bs + wide_b_row(tid, j) * WLB + wide_b_col(tid), r.b[j]);
    }
    bool fits(int64_t M, int64_t N, int64_t, int64_t) const {
        bool ok = M % 4 == 0 && la.ld % 4 == 0 && aligned16(la.a) && N % 4 == 0;
        if constexpr (IsGather<LoadB>::value)
            return ok && lb.C % 4 == 0 && aligned16(lb.src);
        else
            return ok && lb.ld == N && aligned16(lb.a);
    }
};

template <class Operands, class Store>
__global__ void __launch_bounds__(THREADS, 2) gemm_wide_kernel(int64_t M, int64_t N, int64_t K, int64_t chunk, Operands ops,
                                                               Store st) {
    using namespace nvcuda;
    PIN_SHARED_ARRAY_ALIGNED(128, unsigned char, smem, [W_SMEM_BYTES]);
    __nv_bfloat16* const stages = reinterpret_cast<__nv_bfloat16*>(smem);
    const int tid = threadIdx.x;
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kWideRows, n0 = static_cast<int64_t>(blockIdx.y) * kWideCols;
    const int64_t kbeg = static_cast<int64_t>(blockIdx.z) * chunk, kend = kbeg + chunk < K ? kbeg + chunk : K;
    typename Operands::Regs r;
    ops.begin(r, m0, n0, M, tid);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
    zero_accumulators(acc);
    if (kbeg < kend) {
        ops.fetch(r, kbeg, kend, M, N, tid);
        ops.store(r, stages, stages + W_A_ELEMS, tid);
    }
    __syncthreads();
    int stage = 0;
    for (int64_t k0 = kbeg; k0 < kend; k0 += kWideDepth) {
        const bool more = k0 + kWideDepth < kend;
        if (more) ops.fetch(r, k0 + kWideDepth, kend, M, N, tid);  // in flight during the products
        const __nv_bfloat16* As = stages + stage * W_STAGE;
        warp_products<__nv_bfloat16, 16, kWideDepth, Operands::kALd, WLB, Operands::kAColMajor>(As, As + W_A_ELEMS, acc);
        // The other stage was last read before the previous barrier: free to fill. The barrier below
        // publishes it and ends this stage's reads before the next slice overwrites it.
        if (more) ops.store(r, stages + (stage ^ 1) * W_STAGE, stages + (stage ^ 1) * W_STAGE + W_A_ELEMS, tid);
        __syncthreads();
        stage ^= 1;
    }
    // Every operand read ended at the last barrier: their memory holds the accumulators.
    store_warp_tiles<kWideRows, kWideCols, WLC>(reinterpret_cast<float*>(smem), acc, m0, n0, M, N, st);
}

// The asynchronous-copy kernel (GatherMode::Vector with MathMode::BF16, where both operands are
// bfloat16 in memory: ActivationStorage::BF16 and the weights packed in bfloat16, as GpuDefense runs
// its convolutions). The wide kernel above loads each slice into registers, converts it and stores
// it to shared memory: about 230-260 PTX instructions per thread per 32-deep slice on the forward
// convolutions (bench/ptx_loop_count.py) for the 8 WMMA products (16 tensor-core instructions) of
// each warp, so the issue slots, not the tensor cores, would bound it. Here each thread issues
// 16-byte cp.async copies (8 channels each) whose addresses come from rows decoded once per launch
// and a tap decoded once per tap, with two slices in flight while the tensor cores work on the
// current one (three stages, one barrier per slice); and each warp computes 64 x 32 of a 256 x 64
// block tile (4 x 2 WMMA tiles: twice the products per slice of the wide kernel's 32 x 32, for the
// same B fragments). Shared memory is dynamic (75,264 bytes: three stages of A [256][40] and
// B [32][72] bfloat16; the epilogue reuses it for C [256][68] fp32), two blocks per SM.
// A second tile, 256 x 128 (AsyncTileShape::Cols128, for N a multiple of 128), gives each warp
// 64 x 64 (4 x 4 WMMA tiles): per slice the block's shared-memory traffic (cp.async writes and
// fragment reads) is 88 KB for 2 MFLOP against 68 KB for 1 MFLOP, which at an SM's 128 bytes per
// clock bounds the 256 x 64 tile at about half of the tensor cores' dense BF16 rate; the price is
// 128 accumulator registers per thread, so one block per SM (eight warps) and 135 KB of shared
// memory. Which is faster on the H200 is for a measurement to say (pin-bench-gpu times both).
// Requires (fits()): the gathered channel count and K multiples of 32 (a slice lies in one tap),
// N and the weights' leading dimension multiples of 8, both sources 16-byte aligned, no K split.
constexpr int kAsyncStages = 3;
// kKMajorA: A arrives contiguous along m (the weight gradients' gathered input), so a stage holds it
// k-major, [kWideDepth][kRows + 8], for column-major WMMA loads; else m-major, [kRows][WLA].
template <int kRows, bool kKMajorA = false, int kCols = kWideCols>
struct AsyncTile {
    static_assert(kRows % 64 == 0 && (kCols == 64 || kCols == 128), "eight warps as 4 x 2, 16 x 16 WMMA tiles");
    static constexpr int rows = kRows, cols = kCols, frags_m = kRows / 64, frags_n = kCols / 32;
    static constexpr bool a_col_major = kKMajorA;
    static constexpr int a_copies = kRows * kWideDepth / 8 / THREADS;  // 16-byte A copies per thread and slice
    static constexpr int b_copies = kCols * kWideDepth / 8 / THREADS;  // and B copies
    static constexpr int a_ld = kKMajorA ? kRows + 8 : WLA;           // + 16 bytes: distinct banks for ldmatrix's rows
    static constexpr int b_ld = kCols + 8, c_ld = kCols + 4;
    static constexpr int a_elems = kKMajorA ? kWideDepth * a_ld : kRows * WLA, stage = a_elems + kWideDepth * b_ld;  // bfloat16 elements
    static constexpr int operand_bytes = kAsyncStages * stage * 2, c_bytes = kRows * c_ld * 4;
    static constexpr int smem_bytes = operand_bytes > c_bytes ? operand_bytes : c_bytes;
    // Two blocks per SM with 64 accumulators per thread; one with 128 (the registers' limit).
    static constexpr int min_blocks = frags_m * frags_n * 8 > 64 ? 1 : 2;
    // sm_90's shared memory: at most 227 KB a block, 228 KB an SM, of which each resident block takes
    // 1 KB for the system. A tile over them would fail every launch, or get fewer blocks per SM than
    // __launch_bounds__ promises ptxas (which then spends registers for occupancy it never gets).
    static_assert(smem_bytes <= 227 * 1024, "a block's shared memory fits sm_90");
    static_assert(min_blocks * (smem_bytes + 1024) <= 228 * 1024, "min_blocks blocks fit an sm_90 SM's shared memory");
    static_assert((a_elems * 2) % 128 == 0 && (stage * 2) % 128 == 0, "stages keep WMMA's and cp.async's alignment");
    static_assert((16 * a_ld * 2) % 32 == 0 && (16 * b_ld * 2) % 32 == 0 && (16 * c_ld * 4) % 32 == 0,
                  "WMMA tile pointers stay 32-byte aligned");
    static_assert(b_copies * 8 * THREADS == kCols * kWideDepth, "whole 16-byte B copies per thread and slice");
    // Thread t copies B row b_row(t, j), columns b_col(t) .. + 7 (a warp: whole rows of 128 or 256
    // contiguous bytes).
    PIN_HD static int b_row(int tid, int j) { return tid / (kCols / 8) + j * (THREADS / (kCols / 8)); }
    PIN_HD static int b_col(int tid) { return (tid % (kCols / 8)) * 8; }
};
using AsyncTileUsed = AsyncTile<256>;                        // the tiles launched for the convolutions
using AsyncTileCols128 = AsyncTile<256, false, 128>;
using AsyncWeightGradTile = AsyncTile<256, true>;            // and for the weight gradients
using AsyncWeightGradTileCols128 = AsyncTile<256, true, 128>;
// Thread t copies A rows t / 4 + 64 i, channels 8 (t % 4) .. + 7 of the slice (a warp: 8 rows x 64
// contiguous bytes).
PIN_HD inline int async_a_row(int tid, int i) { return tid / 4 + 64 * i; }
PIN_HD inline int async_a_col(int tid) { return (tid % 4) * 8; }

// The origin pixel (y, x) of a gather's row m (tap_origin) and the source offset of its channel 0
// there; y far negative (no tap inside the image) for a row past M.
template <class LoadA>
PIN_HD int64_t gather_row_origin(const LoadA& la, int64_t m, int64_t M, int& y, int& x) {
    const GatherRow g = la.row(m, M);
    tap_origin(la, g, y, x);
    const int64_t base = ((static_cast<int64_t>(g.b) * la.H + y) * la.W + x) * la.C;
    if (!g.valid) y = -(1 << 30);
    return base;
}

// A thread's walk through a gather's K in slices of kDepth channels, tap after tap (the gathered
// channel count a multiple of kDepth, so a slice lies in one tap), for the kRows rows it copies:
// each row's origin is decoded once per launch and the tap once per tap (gather.cuh tap_step), so a
// slice costs a few additions and compares per copy. Shared by the asynchronous-copy and the
// warpgroup-MMA kernels' convolution operands.
template <int kRows, int kDepth>
struct GatherSliceWalk {
    int64_t base[kRows];           // source offset of each row's origin pixel, at the thread's channel offset
    int y[kRows], x[kRows];        // the origin (y far negative: no such row)
    int t, c0;                     // the next slice: its tap and first channel
    TapStep tap;
    // row(i): the gather row of this thread's copy i; channel: the thread's channel within a slice.
    template <class LoadA, class Row>
    __device__ void begin(const LoadA& la, int64_t M, Row row, int channel) {
PIN_UNROLL
        for (int i = 0; i < kRows; ++i) base[i] = gather_row_origin(la, row(i), M, y[i], x[i]) + channel;
        t = 0;
        c0 = 0;
        tap = tap_step(la, 0);
    }
    // The source of copy i in the current slice, or null where its pixel lies outside the image
    // (zero padding) or its row past M.
    template <class LoadA>
    __device__ const typename LoadA::Source* source(const LoadA& la, int i) const {
        const bool inside = static_cast<unsigned>(y[i] + tap.dy) < static_cast<unsigned>(la.H) &&
                            static_cast<unsigned>(x[i] + tap.dx) < static_cast<unsigned>(la.W);
        return inside ? la.src + base[i] + (static_cast<int64_t>(tap.dy) * la.W + tap.dx) * la.C + c0 : nullptr;
    }
    // The current slice's first row of the whole gather's packed weights (tap C + c).
    template <class LoadA>
    __device__ int64_t weight_row(const LoadA& la) const { return static_cast<int64_t>(tap.w_tap) * la.C + c0; }
    template <class LoadA>
    __device__ void next(const LoadA& la) {
        c0 += kDepth;
        if (c0 == la.C) {
            c0 = 0;
            tap = tap_step(la, ++t);
        }
    }
};

// LoadA: a gather over bfloat16 (Gather<false, Bf16>, Gather<true, Bf16> at stride 1,
// SubpixelGather<Bf16>); w: the whole gather's packed weights as bfloat16, rows (tap C + c), ld = N.
// Each issue() copies the next slice and moves on: the rows' origins are decoded once per launch,
// the tap once per tap (gather.cuh tap_step), so a slice costs a few additions and compares per copy.
template <class LoadA, class T = AsyncTileUsed>
struct AsyncConvOperands {
    using Tile = T;
    LoadA la;
    const Bf16* w;
    int64_t ld;
    bool cache_l1 = false;  // the gathered copies also through L1 (ops.cuh GatherCaching)
    struct Regs {
        GatherSliceWalk<T::a_copies, kWideDepth> walk;
        int64_t n;  // this thread's B columns start here (N % 8 == 0: all inside or all outside)
    };
    __device__ void begin(Regs& r, int64_t m0, int64_t n0, int64_t M, int64_t, int64_t, int tid) const {  // K is never split
        r.walk.begin(la, M, [&](int i) { return m0 + async_a_row(tid, i); }, async_a_col(tid));
        r.n = n0 + T::b_col(tid);
    }
    // The next slice into a stage: As [rows][WLA], Bs [kWideDepth][b_ld].
    __device__ void issue(Regs& r, int64_t N, __nv_bfloat16* As, __nv_bfloat16* Bs, int tid) const {
PIN_UNROLL
        for (int i = 0; i < T::a_copies; ++i) {
            const Bf16* src = r.walk.source(la, i);
            async_copy16(As + async_a_row(tid, i) * WLA + async_a_col(tid), src ? src : la.src, src != nullptr, cache_l1);
        }
        const bool valid = r.n < N;  // N % 8 == 0: a copy is all inside or all outside
        const int64_t first = r.walk.weight_row(la);
PIN_UNROLL
        for (int j = 0; j < T::b_copies; ++j)
            async_copy16(Bs + T::b_row(tid, j) * T::b_ld + T::b_col(tid), valid ? w + (first + T::b_row(tid, j)) * ld + r.n : w, valid);
        r.walk.next(la);
    }
    bool fits(int64_t, int64_t N, int64_t K, int64_t splits) const {
        bool stride_ok = true;
        if constexpr (std::is_same<LoadA, Gather<true, typename LoadA::Source>>::value) stride_ok = la.stride == 1;
        return stride_ok && splits == 1 && K > 0 && la.C % kWideDepth == 0 && K % kWideDepth == 0 && N % 8 == 0 && ld == N &&
               aligned16(la.src) && aligned16(w);
    }
};

// What both weight-gradient operand forms require: 16-byte copies of 8 input channels (C % 8) and
// of 8 output channels (N % 8), rows (tap, channel) exactly, 32-bit tap offsets (WeightGradRow),
// both sources 16-byte aligned.
inline bool weight_grad_fits(const Gather<false, Bf16>& la, const Bf16* dy, int64_t M, int64_t N) {
    return la.C % 8 == 0 && M == la.K * la.K * la.C && N % 8 == 0 && la.K * la.W * la.C < (int64_t{1} << 31) && aligned16(la.src) &&
           aligned16(dy);
}
// The weight gradients' per-thread walk over the gather (AsyncWeightGradOperands here,
// WgmmaWeightGradOperands in wgmma_gemm.cuh): a row m = (kh, kw, c) decoded once per launch into
// its tap and offset, and an output pixel that moves by a whole slice each time.
struct WeightGradRow {
    int tap_offset;  // (kh W + kw) C + c: 32-bit (< k W C, the operands' fits() bound it); with
                     // 64-bit offsets ptxas spilled at the launch bounds' 128 registers
    int kh, kw;      // kh far outside (no pixel has it) for m past M
    __device__ void decode(const Gather<false, Bf16>& la, int64_t m, int64_t M) {
        const unsigned uC = static_cast<unsigned>(la.C), uK = static_cast<unsigned>(la.K);
        const unsigned um = static_cast<unsigned>(m), tap = um / uC, c = um - tap * uC, h = tap / uK;
        kh = m < M ? static_cast<int>(h) : -(1 << 30);
        kw = static_cast<int>(tap - h * uK);
        tap_offset = static_cast<int>((h * la.W + kw) * la.C + c);
    }
    // Whether the row's tap of the pixel whose top-left input is (y, x) lies inside the input.
    __device__ bool inside(const Gather<false, Bf16>& la, int y, int x) const {
        return static_cast<unsigned>(y + kh) < static_cast<unsigned>(la.H) && static_cast<unsigned>(x + kw) < static_cast<unsigned>(la.W);
    }
};
struct OutputPixelWalk {
    int b, oh, ow;       // the pixel
    int step_h, step_w;  // a step of `step` pixels as whole output rows and columns
    __device__ void begin(const Gather<false, Bf16>& la, int64_t k, int step) {
        const unsigned uWo = static_cast<unsigned>(la.Wo), uHo = static_cast<unsigned>(la.Ho), uk = static_cast<unsigned>(k);
        const unsigned t = uk / uWo, ub = t / uHo;
        ow = static_cast<int>(uk - t * uWo);
        oh = static_cast<int>(t - ub * uHo);
        b = static_cast<int>(ub);
        step_h = static_cast<int>(static_cast<unsigned>(step) / uWo);
        step_w = static_cast<int>(static_cast<unsigned>(step) - static_cast<unsigned>(step_h) * uWo);
    }
    // The pixel's top-left input position (y, x) and the offset of (b, y, x, 0) in the input.
    __device__ int y(const Gather<false, Bf16>& la) const { return oh * static_cast<int>(la.stride) - static_cast<int>(la.pad); }
    __device__ int x(const Gather<false, Bf16>& la) const { return ow * static_cast<int>(la.stride) - static_cast<int>(la.pad); }
    __device__ int64_t origin(const Gather<false, Bf16>& la) const { return ((static_cast<int64_t>(b) * la.H + y(la)) * la.W + x(la)) * la.C; }
    __device__ void advance(const Gather<false, Bf16>& la) {  // by `step`, carried into rows and images
        ow += step_w;
        oh += step_h;
        if (ow >= la.Wo) {
            ow -= static_cast<int>(la.Wo);
            ++oh;
        }
        while (oh >= la.Ho) {  // once per step at most when an image has at least `step` pixels (every PIN layer)
            oh -= static_cast<int>(la.Ho);
            ++b;
        }
    }
};

// The weight gradients of the 3 x 3 convolutions from bfloat16 operands (the training step's x and
// output gradient, converted once; gpu_trainer.cpp), as the GEMM dw^T = X^T dY: rows m = (tap,
// input channel), columns n = output channel, K = the batch's output pixels, split in chunks
// (blockIdx.z) whose partial sums are added in chunk order afterwards (ops_internal.cuh). Both
// operands arrive contiguous along m or n for a fixed pixel k: A(m, k) = x at pixel k's tap
// (kh, kw), channel c (the gathered input, 8 channels per 16-byte copy, stored k-major for
// column-major WMMA loads), B(k, n) = dy[k N + n] (as the forward's weights). Thread t copies, for
// pixel k0 + t / 8 of the slice, A rows 8 (t % 8) + 64 i (i < 4) and B columns 8 (t % 8) + 64 j .. + 7: its
// four rows' taps and channels are fixed for the launch (decoded once), and its pixel moves by 32
// per slice (a carry instead of a division), so a slice costs a few additions and compares per
// copy, as in AsyncConvOperands. Requires (fits()): the input channel count and N multiples of 8,
// M = k^2 C, dy's leading dimension N, both sources 16-byte aligned, tap offsets under 2^31.
template <class T = AsyncWeightGradTile>
struct AsyncWeightGradOperands {
    using Tile = T;
    static_assert(T::a_col_major && T::a_copies == T::rows / 64, "k-major A, thread t's copies 64 rows apart");
    static_assert(T::b_copies * 64 == T::cols, "thread t's B copies 64 columns apart, in its own pixel's row");
    Gather<false, Bf16> la;  // rows: output pixels (as the forward's gather); la.C the input channels
    const Bf16* dy;          // [pixels][N]
    bool cache_l1 = false;   // the gathered copies also through L1 (ops.cuh GatherCaching)
    struct Regs {
        WeightGradRow row[T::a_copies];
        OutputPixelWalk pixel;  // this thread's pixel in the next slice
        int64_t k, kend, n;
    };
    __device__ static int a_row(int tid, int i) { return (tid % 8) * 8 + 64 * i; }
    __device__ static int k_row(int tid) { return tid / 8; }
    __device__ static int b_col(int tid) { return (tid % 8) * 8; }
    __device__ void begin(Regs& r, int64_t m0, int64_t n0, int64_t M, int64_t kbeg, int64_t kend, int tid) const {
PIN_UNROLL
        for (int i = 0; i < T::a_copies; ++i) r.row[i].decode(la, m0 + a_row(tid, i), M);
        r.k = kbeg + k_row(tid);
        r.kend = kend;
        r.n = n0 + b_col(tid);
        r.pixel.begin(la, r.k, kWideDepth);
    }
    // The next slice (pixels k .. k + 31 of the block's chunk) into a stage: As [kWideDepth][a_ld]
    // (k x m), Bs [kWideDepth][b_ld].
    __device__ void issue(Regs& r, int64_t N, __nv_bfloat16* As, __nv_bfloat16* Bs, int tid) const {
        const bool in_k = r.k < r.kend;
        const int y = r.pixel.y(la), x = r.pixel.x(la);
        const int64_t origin = r.pixel.origin(la);
PIN_UNROLL
        for (int i = 0; i < T::a_copies; ++i) {
            const bool valid = in_k && r.row[i].inside(la, y, x);
            async_copy16(As + k_row(tid) * T::a_ld + a_row(tid, i), valid ? la.src + origin + r.row[i].tap_offset : la.src, valid, cache_l1);
        }
PIN_UNROLL
        for (int j = 0; j < T::b_copies; ++j) {
            const bool valid = in_k && r.n + 64 * j < N;  // N % 8 == 0: a copy is all inside or all outside
            async_copy16(Bs + k_row(tid) * T::b_ld + b_col(tid) + 64 * j, valid ? dy + r.k * N + r.n + 64 * j : dy, valid);
        }
        r.k += kWideDepth;  // the same pixel walk: ow by 32, carried into rows and images
        r.pixel.advance(la);
    }
    bool fits(int64_t M, int64_t N, int64_t, int64_t) const { return weight_grad_fits(la, dy, M, N); }
};

// Launched with T::smem_bytes of dynamic shared memory (PIN_LAUNCH_SHARED), a grid of T::rows x
// T::cols tiles and K chunks of `chunk` (a multiple of kWideDepth; one chunk unless the operands
// take a split K: AsyncWeightGradOperands) on z.
template <class Operands, class Store>
__global__ void __launch_bounds__(THREADS, Operands::Tile::min_blocks)
    gemm_async_kernel(int64_t M, int64_t N, int64_t K, int64_t chunk, Operands ops, Store st) {
    using namespace nvcuda;
    using T = typename Operands::Tile;
    PIN_DYNAMIC_SHARED(smem);
    __nv_bfloat16* const stages = reinterpret_cast<__nv_bfloat16*>(smem);
    const int tid = threadIdx.x;
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) * T::rows, n0 = static_cast<int64_t>(blockIdx.y) * T::cols;
    const int64_t kbeg = static_cast<int64_t>(blockIdx.z) * chunk, kend = kbeg + chunk < K ? kbeg + chunk : K;
    typename Operands::Regs r;
    ops.begin(r, m0, n0, M, kbeg, kend, tid);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[T::frags_m][T::frags_n];
    zero_accumulators(acc);
    const int slices = kbeg < kend ? static_cast<int>((kend - kbeg + kWideDepth - 1) / kWideDepth) : 0;  // K < 2^31 (the launch checks)
    auto next = [](int s) { return s + 1 == kAsyncStages ? 0 : s + 1; };
    // One group per slice, empty past the last, so that async_wait counts slices. The stage written
    // is always kAsyncStages - 1 slices ahead of the one read.
    int write = 0, read = 0;
PIN_UNROLL
    for (int s = 0; s < kAsyncStages - 1; ++s) {
        if (s < slices) ops.issue(r, N, stages + write * T::stage, stages + write * T::stage + T::a_elems, tid);
        async_commit();
        write = next(write);
    }
    for (int t = 0; t < slices; ++t) {
        async_wait<kAsyncStages - 2>();  // this thread's copies of slice t have landed
        // Everyone's have; and every warp is done with slice t - 1, whose stage the copies below refill.
        __syncthreads();
        if (t + kAsyncStages - 1 < slices) ops.issue(r, N, stages + write * T::stage, stages + write * T::stage + T::a_elems, tid);
        async_commit();
        write = next(write);
        const __nv_bfloat16* As = stages + read * T::stage;
        warp_products<__nv_bfloat16, 16, kWideDepth, T::a_ld, T::b_ld, T::a_col_major>(As, As + T::a_elems, acc);
        read = next(read);
    }
    async_wait<0>();
    __syncthreads();  // every product read its stage: the memory holds the accumulators
    store_warp_tiles<T::rows, T::cols, T::c_ld>(reinterpret_cast<float*>(smem), acc, m0, n0, M, N, st);
}

// A kernel's output tile and K slice, and the grid that covers an M x N x K GEMM with it: M tiles on
// x (up to 2^31 - 1; y and z stop at 65535), N tiles on y, K in z chunks of `chunk` (a multiple of
// the slice) for `splits` requested.
struct Tile {
    int m, n, k;
};
constexpr Tile kFp32Tile{BM, BN, BK}, kTensorCoreTile{TBM, TBN, TBK}, kWideTile{kWideRows, kWideCols, kWideDepth};
template <class T>  // an AsyncTile
constexpr Tile tile_of_async() { return {T::rows, T::cols, kWideDepth}; }
struct GemmGrid {
    unsigned x, y, z;
    int64_t chunk;
};
inline GemmGrid gemm_grid(int64_t M, int64_t N, int64_t K, int64_t splits, Tile t) {
    const int64_t per_split = ((K + splits - 1) / splits + t.k - 1) / t.k * t.k;
    const int64_t chunk = per_split > t.k ? per_split : t.k;
    const int64_t z = (K + chunk - 1) / chunk;
    return {static_cast<unsigned>((M + t.m - 1) / t.m), static_cast<unsigned>((N + t.n - 1) / t.n), static_cast<unsigned>(z > 1 ? z : 1),
            chunk};
}

}  // namespace pin::cuda::gemm
