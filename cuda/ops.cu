// cuda/ops.cu - the GPU kernels behind cuda/ops.cuh.
//
// One tiled GEMM (64 x 64 output tile, 16-deep K slices through shared memory, 4 x 4 outputs per
// thread, fp32 FMA) serves every convolution direction and the linear layer: the operands are
// functors that gather from NHWC activations (implicit GEMM), so no im2col buffer is ever built.
// Why functors rather than one kernel per op: the index arithmetic is the only thing that differs,
// and keeping it in one place keeps the six convolution directions consistent with the CPU's.
// Long reductions (weight gradients sum over every pixel of the batch) are split along K into
// fixed chunks written to a scratch buffer and summed in chunk order: deterministic, unlike atomics.
#include "ops.cuh"
#include "gather.cuh"

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <mma.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include <map>
#include <mutex>
#include <sstream>
#include <vector>

#include "pin/core/error.hpp"
#include "pin/core/rng.hpp"

namespace pin::cuda {

namespace {

void check(cudaError_t e, const char* what, const std::string& shape) {
    if (e != cudaSuccess) ::pin::detail::throw_error("CUDA error in ", what, " ", shape, ": ", cudaGetErrorString(e));
}
std::string shape_of(const ConvShape& s) {
    std::ostringstream os;
    os << "(batch " << s.batch << ", " << s.in_h << "x" << s.in_w << "x" << s.in_c << " -> " << s.out_c << ", k" << s.kernel
       << " s" << s.stride << " p" << s.padding << ")";
    return os.str();
}
std::string dims(int64_t a, int64_t b, int64_t c = -1) {
    std::ostringstream os;
    os << "(" << a << ", " << b;
    if (c >= 0) os << ", " << c;
    os << ")";
    return os.str();
}
#define PIN_LAUNCH_CHECK(name, shape) check(cudaGetLastError(), "launch " name, shape)

// ---- streams -------------------------------------------------------------------------------------
// The calling thread's current stream (nullptr: the legacy default stream). Every launch and copy
// below goes there.
thread_local cudaStream_t g_stream = nullptr;
cudaStream_t cur() { return g_stream; }
// Copies host <-> device on the current stream, complete when they return (as cudaMemcpy).
void copy_sync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, const char* what, const std::string& shape) {
    check(cudaMemcpyAsync(dst, src, bytes, kind, cur()), what, shape);
    check(cudaStreamSynchronize(cur()), what, shape);
}

// ---- caching allocator ---------------------------------------------------------------------------
// Freed blocks are cached per (stream they were allocated on, size): a block is handed out again
// only to work on the same stream, which runs after everything already queued there that used it.
std::mutex& pool_mutex() {
    static std::mutex m;
    return m;
}
std::multimap<std::pair<void*, size_t>, float*>& pool() {
    static std::multimap<std::pair<void*, size_t>, float*> p;
    return p;
}

// ---- the GEMM --------------------------------------------------------------------------------------
// Row-major matrix reads: (i, j) -> a[i * ld + j]; the wide kernel reads it in 4-float vectors.
struct RowMajor {
    const float* a;
    int64_t ld;
    __device__ float operator()(int64_t i, int64_t j) const { return a[i * ld + j]; }
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
    const int64_t kbeg = static_cast<int64_t>(blockIdx.z) * chunk, kend = min(K, kbeg + chunk);
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
#pragma unroll
                for (int i = 0; i < 4; ++i) As[tid % BK][(tid + i * THREADS) / BK] = v[i];
                loaded = true;
            }
        }
        if (!loaded)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int idx = tid + i * THREADS;
                const int mm = kAMFast ? idx % BM : idx / BK, kk = kAMFast ? idx / BM : idx % BK;
                const int64_t m = m0 + mm, k = k0 + kk;
                As[kk][mm] = (m < M && k < kend) ? la(m, k) : 0.0f;
            }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int idx = tid + i * THREADS;
            const int kk = idx / BN, nn = idx % BN;
            const int64_t n = n0 + nn, k = k0 + kk;
            Bs[kk][nn] = (n < N && k < kend) ? lb(k, n) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = As[kk][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
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
#pragma unroll
    for (int ks = 0; ks < kDepth; ks += kK) {
        wmma::fragment<wmma::matrix_a, 16, 16, kK, Precision, wmma::row_major> a[2];
        wmma::fragment<wmma::matrix_b, 16, 16, kK, Precision, wmma::row_major> b[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], As + (wm * 32 + i * 16) * LA + ks, LA);
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], Bs + ks * LB + wn * 32 + j * 16, LB);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
}
// The tensor-core kernels' epilogue: each warp's 2 x 2 accumulator tiles (warp w at rows 32 (w % 4),
// columns 32 (w / 4) of the block tile) go through shared memory Cs [TM][LC], so that the store
// functor sees (m, n) pairs; then st(K chunk, m, n, value) for each element inside the matrix.
template <int TM, int TN, int LC, class Frag, class Store>
__device__ void store_warp_tiles(float* Cs, Frag (&acc)[2][2], int64_t m0, int64_t n0, int64_t M, int64_t N, const Store& st) {
    const int tid = threadIdx.x, warp = tid / 32, wm = warp % 4, wn = warp / 4;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
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
    const int64_t kbeg = static_cast<int64_t>(blockIdx.z) * chunk, kend = min(K, kbeg + chunk);
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
#pragma unroll
            for (int i = 0; i < T_A_PER_THREAD; ++i) {
                const int idx = tid + i * THREADS;
                const int mm = kAMFast ? idx % TBM : idx / TBK, kk = kAMFast ? idx / TBM : idx % TBK;
                const int64_t m = m0 + mm, k = k0 + kk;
                ra[i] = (m < M && k < kend) ? la(m, k) : 0.0f;
            }
#pragma unroll
        for (int i = 0; i < T_B_PER_THREAD; ++i) {
            const int idx = tid + i * THREADS;
            const int kk = idx / TBN, nn = idx % TBN;
            const int64_t n = n0 + nn, k = k0 + kk;
            rb[i] = (n < N && k < kend) ? lb(k, n) : 0.0f;
        }
    };
    wmma::fragment<wmma::accumulator, 16, 16, Mma::kK, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
    if (kbeg < kend) fetch(kbeg);
    for (int64_t k0 = kbeg; k0 < kend; k0 += TBK) {
#pragma unroll
        for (int i = 0; i < T_A_PER_THREAD; ++i) {
            const int idx = tid + i * THREADS;
            const int mm = kAMFast ? idx % TBM : idx / TBK, kk = kAMFast ? idx / TBM : idx % TBK;
            As[mm * LA + kk] = Mma::convert(ra[i]);
        }
#pragma unroll
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
// gathered channel count is a multiple of 32 and whose weight operand is a packed row-major (k, n)
// matrix with n a multiple of 4: the forward passes and the input gradients of every layer but the
// 1-channel ones. What it changes against gemm_tensor_core_kernel, each a known cost of that one:
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

template <bool kTransposed, class Store>
__global__ void __launch_bounds__(THREADS, 2) gemm_wide_kernel(int64_t M, int64_t N, int64_t K, Gather<kTransposed> la,
                                                               const float* __restrict__ b, Store st) {
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
#pragma unroll
        for (int j = 0; j < kWideBRows; ++j) {
            if (bn < N) {
                const float4 q = __ldg(reinterpret_cast<const float4*>(b + (k0 + wide_b_row(tid, j)) * N + bn));
                rb[j][0] = q.x, rb[j][1] = q.y, rb[j][2] = q.z, rb[j][3] = q.w;
            } else {
                rb[j][0] = rb[j][1] = rb[j][2] = rb[j][3] = 0.0f;
            }
        }
    };
    auto store = [&](int stage) {
        __nv_bfloat16* As = stages + stage * W_STAGE;  // [kWideRows][WLA], m x k
        __nv_bfloat16* Bs = As + kWideRows * WLA;      // [kWideDepth][WLB], k x n
#pragma unroll
        for (int i = 0; i < kWideARows; ++i) store_bf16x4(As + wide_a_row(tid, i) * WLA + wide_a_col(tid), ra[i]);
#pragma unroll
        for (int j = 0; j < kWideBRows; ++j) store_bf16x4(Bs + wide_b_row(tid, j) * WLB + wide_b_col(tid), rb[j]);
    };
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
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

// Convolutions with one output channel (GatherMode Rows or Vector; gather.cuh gather_dot): a thread
// per output pixel, fp32 sums in every math mode. The GEMM kernels would fill 1 of their 64 columns
// (the DAE's last layer, 64 -> 1 at 112 x 112, twice per forward).
template <bool kTransposed, class Store>
__global__ void conv_one_output_kernel(int64_t M, Gather<kTransposed> la, const float* w, bool vec, Store st) {
    const int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (m < M) st(0, m, 0, gather_dot(la, w, m, M, vec));
}

std::atomic<int>& math_mode_flag() {
    static std::atomic<int> mode{static_cast<int>(MathMode::FP32)};
    return mode;
}
std::atomic<int>& gather_mode_flag() {
    static std::atomic<int> mode{static_cast<int>(GatherMode::Generic)};
    return mode;
}

// M tiles go on grid.x (up to 2^31 - 1 blocks; grid.y stops at 65535, which batch 1024 at 112 x 112
// exceeded), N tiles on y, K chunks on z. The gathers index in 32 bits: refuse larger problems.
template <bool kAMFast, class LoadA, class LoadB, class Store>
void launch_gemm(int64_t M, int64_t N, int64_t K, int64_t splits, LoadA la, LoadB lb, Store st, const char* name,
                 const std::string& shape) {
    if (M <= 0 || N <= 0) return;
    if (M >= (int64_t{1} << 31) || N >= (int64_t{1} << 31) || K >= (int64_t{1} << 31))
        ::pin::detail::throw_error("CUDA ", name, " ", shape, ": a GEMM dimension reaches 2^31 (M ", M, ", N ", N, ", K ", K,
                                   "); use a smaller batch");
    const MathMode mode = math_mode();
    const GatherMode gmode = gather_mode();
    if constexpr (!kAMFast && IsGather<LoadA>::value && std::is_same<LoadB, RowMajor>::value) {
        const auto aligned16 = [](const float* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
        if (gmode != GatherMode::Generic && N == 1 && lb.ld == 1 && splits == 1) {
            const bool vec = la.C % 4 == 0 && aligned16(la.src) && aligned16(lb.a);
            conv_one_output_kernel<LoadA::kIsTransposed><<<static_cast<unsigned>((M + THREADS - 1) / THREADS), THREADS, 0, cur()>>>(
                M, la, lb.a, vec, st);
            check(cudaGetLastError(), name, shape);
            return;
        }
        if (mode == MathMode::BF16 && gmode == GatherMode::Vector && splits == 1 && la.C % kWideDepth == 0 && K % kWideDepth == 0 && N % 4 == 0 &&
            lb.ld == N && aligned16(la.src) && aligned16(lb.a)) {
            const dim3 grid(static_cast<unsigned>((M + kWideRows - 1) / kWideRows), static_cast<unsigned>((N + kWideCols - 1) / kWideCols));
            if (grid.y > 65535) ::pin::detail::throw_error("CUDA ", name, " ", shape, ": too many column tiles");
            gemm_wide_kernel<LoadA::kIsTransposed><<<grid, THREADS, 0, cur()>>>(M, N, K, la, lb.a, st);
            check(cudaGetLastError(), name, shape);
            return;
        }
    }
    const bool tc = mode != MathMode::FP32;
    const int bk = tc ? TBK : BK, bm = tc ? TBM : BM, bn = tc ? TBN : BN;
    if constexpr (!kAMFast && IsGather<LoadA>::value)  // Vector falls back to Rows where the wide kernel does not apply
        la.rows = gmode != GatherMode::Generic && la.C % 16 == 0;  // the kernels assert 16-deep slices
    const int64_t chunk = std::max<int64_t>(bk, ((K + splits - 1) / splits + bk - 1) / bk * bk);
    const int64_t z = std::max<int64_t>(1, (K + chunk - 1) / chunk);
    const dim3 grid(static_cast<unsigned>((M + bm - 1) / bm), static_cast<unsigned>((N + bn - 1) / bn), static_cast<unsigned>(z));
    if (grid.y > 65535 || grid.z > 65535) ::pin::detail::throw_error("CUDA ", name, " ", shape, ": too many column tiles or K chunks");
    if (mode == MathMode::TF32)
        gemm_tensor_core_kernel<Tf32Mma, kAMFast><<<grid, THREADS, 0, cur()>>>(M, N, K, chunk, la, lb, st);
    else if (mode == MathMode::BF16)
        gemm_tensor_core_kernel<Bf16Mma, kAMFast><<<grid, THREADS, 0, cur()>>>(M, N, K, chunk, la, lb, st);
    else
        gemm_kernel<kAMFast><<<grid, THREADS, 0, cur()>>>(M, N, K, chunk, la, lb, st);
    check(cudaGetLastError(), name, shape);
}
// How many K chunks a weight gradient uses: enough blocks to fill the GPU, chunks of >= 1024.
int64_t split_for(int64_t M, int64_t N, int64_t K) {
    const int64_t tiles = ((M + BM - 1) / BM) * ((N + BN - 1) / BN);
    return std::max<int64_t>(1, std::min<int64_t>((528 + tiles - 1) / tiles, K / 1024));
}

// The transposed view of a row-major matrix (RowMajor is above the GEMMs).
struct ColMajor {
    const float* a;
    int64_t ld;
    __device__ float operator()(int64_t i, int64_t j) const { return a[j * ld + i]; }
};
// A = x - mean, row-major (B, D).
struct Centered {
    const float* x;
    const float* mean;
    int64_t D;
    __device__ float operator()(int64_t b, int64_t d) const { return x[b * D + d] - mean[d]; }
};

// Epilogue of the forward convolutions: act(acc + bias) (+ existing).
struct ConvStore {
    float* y;
    int64_t N;
    const float* bias;
    const float* slope;
    bool accumulate;
    __device__ void operator()(int64_t, int64_t m, int64_t n, float v) const {
        if (bias) v += bias[n];
        if (slope && v < 0.0f) v *= slope[n];
        float* o = y + m * N + n;
        *o = accumulate ? *o + v : v;
    }
};
struct PartialStore {
    float* partial;
    int64_t M, N;
    __device__ void operator()(int64_t z, int64_t m, int64_t n, float v) const { partial[(z * M + m) * N + n] = v; }
};

// Packs a convolution weight into the GEMM's (k = (kh, kw, c_in_k), n) layout:
// out[((kh * K + kw) * Ck + ck) * Cn + cn] = w[...] where the source index is given by
// (cn, ck) -> w[(first * second + ...)]: `n_outer` says whether n is w's leading dimension.
__global__ void pack_weight_kernel(const float* w, float* out, int64_t Cn, int64_t Ck, int64_t K, bool n_outer) {
    const int64_t total = Cn * Ck * K * K;
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int64_t cn = i % Cn, t = i / Cn, ck = t % Ck, tap = t / Ck;
    // w is (lead, second, K, K); lead = cn when n_outer, else ck.
    const int64_t lead = n_outer ? cn : ck, second = n_outer ? ck : cn, second_count = n_outer ? Ck : Cn;
    out[i] = w[(lead * second_count + second) * K * K + tap];
}
DeviceBuffer pack_weight(const float* w, int64_t Cn, int64_t Ck, int64_t K, bool n_outer, const char* name) {
    DeviceBuffer out(static_cast<size_t>(Cn * Ck * K * K));
    const int64_t total = Cn * Ck * K * K;
    pack_weight_kernel<<<static_cast<unsigned>((total + 255) / 256), 256, 0, cur()>>>(w, out.data(), Cn, Ck, K, n_outer);
    check(cudaGetLastError(), name, dims(Cn, Ck, K));
    return out;
}

// Sums the split-K partials in chunk order and scatters them: dst[map(m, n)] (= or +=).
template <class Map>
__global__ void reduce_partials_kernel(const float* partial, int64_t z, int64_t M, int64_t N, Map map, float* dst) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= M * N) return;
    float s = 0.0f;
    for (int64_t c = 0; c < z; ++c) s += partial[c * M * N + i];
    dst[map(i / N, i % N)] = s;
}
// (m = out channel of the weight's first dim, n = (kh, kw, c)) -> w[(m, c, kh, kw)].
struct WeightMap {
    int64_t C, K;
    __device__ int64_t operator()(int64_t m, int64_t n) const {
        const int64_t c = n % C, tap = n / C;
        return (m * C + c) * K * K + tap;
    }
};
struct IdentityMap {
    int64_t N;
    __device__ int64_t operator()(int64_t m, int64_t n) const { return m * N + n; }
};

template <class LoadA, class LoadB, class Map>
void gemm_split_reduce(int64_t M, int64_t N, int64_t K, LoadA la, LoadB lb, Map map, float* dst, const char* name,
                       const std::string& shape) {
    const int64_t splits = split_for(M, N, K);
    const int bk = math_mode() != MathMode::FP32 ? TBK : BK;  // as launch_gemm chunks K
    const int64_t chunk = std::max<int64_t>(bk, ((K + splits - 1) / splits + bk - 1) / bk * bk);
    const int64_t z = std::max<int64_t>(1, (K + chunk - 1) / chunk);
    DeviceBuffer partial(static_cast<size_t>(z * M * N));
    launch_gemm<true>(M, N, K, splits, la, lb, PartialStore{partial.data(), M, N}, name, shape);
    reduce_partials_kernel<<<static_cast<unsigned>((M * N + 255) / 256), 256, 0, cur()>>>(partial.data(), z, M, N, map, dst);
    check(cudaGetLastError(), "reduce_partials", shape);
}

// ---- element-wise --------------------------------------------------------------------------------
template <class F>
__global__ void map_kernel(int64_t n, F f) {
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
        f(i);
}
template <class F>
void launch_map(int64_t n, F f, const char* name) {
    if (n <= 0) return;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65535));
    map_kernel<<<blocks, 256, 0, cur()>>>(n, f);
    check(cudaGetLastError(), name, "(" + std::to_string(n) + " elements)");
}

// Per-channel sums of f(i) over i = r * channels + c (rows x channels, channels fastest: NHWC
// activations, a batch of linear outputs), in two passes of a fixed order, so results repeat run to
// run. Pass 1: a block of 32 channels x 8 row lanes reads 32 consecutive floats of a row (one line
// per warp) and sums one chunk of rows into partial[chunk][channel]; pass 2: a thread per channel
// adds its chunks in order. (The first form, one block per channel, read one float every `channels`
// floats and launched only `channels` blocks: 64 for a 64-channel layer, on a 132-SM GPU.)
constexpr int kChannelSumLanes = 32, kChannelSumRowLanes = 8;
template <class F>
__global__ void channel_sum_partial_kernel(int64_t rows, int64_t channels, int64_t rows_per_chunk, F f, double* partial) {
    __shared__ double part[kChannelSumRowLanes][kChannelSumLanes];
    const int64_t c = static_cast<int64_t>(blockIdx.y) * kChannelSumLanes + threadIdx.x;
    const int64_t r0 = static_cast<int64_t>(blockIdx.x) * rows_per_chunk, r1 = min(rows, r0 + rows_per_chunk);
    double s = 0;
    if (c < channels)
        for (int64_t r = r0 + threadIdx.y; r < r1; r += kChannelSumRowLanes) s += f(r * channels + c);
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < channels) {
        double t = 0;
        for (int y = 0; y < kChannelSumRowLanes; ++y) t += part[y][threadIdx.x];
        partial[blockIdx.x * channels + c] = t;
    }
}
__global__ void channel_sum_final_kernel(int64_t chunks, int64_t channels, const double* partial, float* out) {
    const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    double s = 0;
    for (int64_t k = 0; k < chunks; ++k) s += partial[k * channels + c];
    out[c] = static_cast<float>(s);
}
// out[c] = sum over r of f(r * channels + c), c < channels (zeros when rows is 0).
template <class F>
void channel_sum(int64_t rows, int64_t channels, F f, float* out, const char* name, const std::string& shape) {
    if (channels <= 0) return;
    // The chunking is a function of the shape alone (at most 1024 chunks of at least 64 rows), so the
    // order of the additions does not depend on the GPU.
    const int64_t rows_per_chunk = std::max<int64_t>(64, (rows + 1023) / 1024);
    const int64_t chunks = std::max<int64_t>(1, (rows + rows_per_chunk - 1) / rows_per_chunk);
    const int64_t channel_blocks = (channels + kChannelSumLanes - 1) / kChannelSumLanes;
    PIN_CHECK(channel_blocks <= 65535, name, ": ", channels, " channels are more than the channel sum's grid allows");
    DeviceBuffer partial(static_cast<size_t>(2 * chunks * channels));  // doubles
    double* part = reinterpret_cast<double*>(partial.data());
    channel_sum_partial_kernel<<<dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(channel_blocks)),
                                 dim3(kChannelSumLanes, kChannelSumRowLanes), 0, cur()>>>(rows, channels, rows_per_chunk, f, part);
    check(cudaGetLastError(), name, shape);
    channel_sum_final_kernel<<<static_cast<unsigned>((channels + 255) / 256), 256, 0, cur()>>>(chunks, channels, part, out);
    check(cudaGetLastError(), name, shape);
}

// Block-wide sums of two per-thread values (256 threads) in a fixed tree order: totals in a[0], b[0].
__device__ void block_sum_pair(double* a, double* b, double va, double vb) {
    a[threadIdx.x] = va;
    b[threadIdx.x] = vb;
    __syncthreads();
    for (int w = 128; w > 0; w >>= 1) {
        if (threadIdx.x < w) {
            a[threadIdx.x] += a[threadIdx.x + w];
            b[threadIdx.x] += b[threadIdx.x + w];
        }
        __syncthreads();
    }
}

__global__ void mask_cost_kernel(const float* p, const float* g, const double* y2, double* cost, double* kept, int64_t n,
                                 int64_t k, bool l2, double lambda, int64_t pixels, uint64_t seed, uint64_t first_image) {
    __shared__ double ss[256], sk[256];
    const int64_t b = blockIdx.x / k, s = blockIdx.x % k;
    const PhiloxStream rng(seed, (first_image + static_cast<uint64_t>(b)) * static_cast<uint64_t>(k) + static_cast<uint64_t>(s));
    double se = 0, nk = 0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        const float q = rng.bernoulli(static_cast<uint64_t>(j), p[b * n + j]);
        se += q * static_cast<double>(g[b * n + j]);
        nk += q;
    }
    block_sum_pair(ss, sk, se, nk);
    if (threadIdx.x == 0) {
        const double S = fmax(y2[b] + ss[0], 0.0);
        cost[blockIdx.x] = (l2 ? sqrt(S) : S / static_cast<double>(pixels)) + lambda * sk[0];
        kept[blockIdx.x] = sk[0];
    }
}

// The local-expectation gradient, fused: one block per image walks its k masks in order; for each
// mask a block reduction gives S(q) and ||q||_0, then every thread adds Delta_j(q) for the bits it
// owns (j = thread, thread + 256, ...) into dz, so each dz[b, j] has one writer and a fixed summation
// order (deterministic). Finally dz *= p (1 - p) / (k B), as train/estimators.hpp does.
__global__ void local_gradient_kernel(const float* p, const float* g, const double* y2, double* dz, double* cost, double* kept,
                                      int64_t batch, int64_t n, int64_t k, bool l2, double lambda, int64_t pixels, uint64_t seed,
                                      uint64_t first_image) {
    __shared__ double ss[256], sk[256];
    const int64_t b = blockIdx.x;
    const float* pb = p + b * n;
    const float* gb = g + b * n;
    double* dzb = dz + b * n;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) dzb[j] = 0.0;
    for (int64_t s = 0; s < k; ++s) {
        const PhiloxStream rng(seed, (first_image + static_cast<uint64_t>(b)) * static_cast<uint64_t>(k) + static_cast<uint64_t>(s));
        double se = 0, nk = 0;
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
            const float q = rng.bernoulli(static_cast<uint64_t>(j), pb[j]);
            se += q * static_cast<double>(gb[j]);
            nk += q;
        }
        block_sum_pair(ss, sk, se, nk);
        const double S = fmax(y2[b] + ss[0], 0.0);  // as mask_squared_error: rounding can dip below 0
        if (threadIdx.x == 0) {
            cost[b * k + s] = (l2 ? sqrt(S) : S / static_cast<double>(pixels)) + lambda * sk[0];
            kept[b * k + s] = sk[0];
        }
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
            const double q = rng.bernoulli(static_cast<uint64_t>(j), pb[j]), gj = gb[j];
            const double on = fmax(S + (1.0 - q) * gj, 0.0), off = fmax(S - q * gj, 0.0);
            dzb[j] += (l2 ? sqrt(on) - sqrt(off) : (on - off) / static_cast<double>(pixels)) + lambda;
        }
        __syncthreads();  // ss and sk are reused by the next mask
    }
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        const double pj = pb[j];
        dzb[j] *= pj * (1.0 - pj) / static_cast<double>(k * batch);
    }
}

// Fixed-size partial sums of squares: block i covers elements i * 256 + t, stepping by the grid.
constexpr unsigned kSumBlocks = 512;
__global__ void sum_squares_kernel(const float* x, int64_t n, double* partial) {
    __shared__ double a[256], b[256];
    double s = 0;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x; i < n; i += static_cast<int64_t>(kSumBlocks) * 256)
        s += static_cast<double>(x[i]) * x[i];
    block_sum_pair(a, b, s, 0.0);
    if (threadIdx.x == 0) partial[blockIdx.x] = a[0];
}

// One block per image: g for its N coefficients, and ||x - m||^2 by a fixed tree.
__global__ void mask_cost_terms_kernel(const float* c, const float* d, const float* x, const float* mean, float* g, double* y2,
                                       int64_t n, int64_t pixels) {
    __shared__ double a[256], b[256];
    const int64_t img = blockIdx.x;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        const double cj = c[img * n + j], dj = d[img * n + j];
        g[img * n + j] = static_cast<float>(cj * cj - 2.0 * cj * dj);
    }
    double s = 0;
    for (int64_t i = threadIdx.x; i < pixels; i += blockDim.x) {
        const double y = static_cast<double>(x[img * pixels + i]) - mean[i];
        s += y * y;
    }
    block_sum_pair(a, b, s, 0.0);
    if (threadIdx.x == 0) y2[img] = a[0];
}

}  // namespace

void set_math_mode(MathMode mode) { math_mode_flag() = static_cast<int>(mode); }
MathMode math_mode() { return static_cast<MathMode>(math_mode_flag().load()); }
void set_gather_mode(GatherMode mode) { gather_mode_flag() = static_cast<int>(mode); }
GatherMode gather_mode() { return static_cast<GatherMode>(gather_mode_flag().load()); }

// ---- DeviceBuffer ----------------------------------------------------------------------------------
DeviceBuffer::DeviceBuffer(size_t floats) : floats_(floats), stream_(cur()) {
    if (floats == 0) return;
    {
        std::lock_guard<std::mutex> lock(pool_mutex());
        auto it = pool().find({stream_, floats});
        if (it != pool().end()) {
            ptr_ = it->second;
            pool().erase(it);
            return;
        }
    }
    cudaError_t e = cudaMalloc(&ptr_, floats * sizeof(float));
    if (e == cudaErrorMemoryAllocation) {  // give the cached blocks back and try once more
        (void)cudaGetLastError();
        std::lock_guard<std::mutex> lock(pool_mutex());
        for (auto& kv : pool()) cudaFree(kv.second);
        pool().clear();
        e = cudaMalloc(&ptr_, floats * sizeof(float));
    }
    check(e, "cudaMalloc", "(" + std::to_string(floats * sizeof(float)) + " bytes)");
}
DeviceBuffer::~DeviceBuffer() {
    if (!ptr_) return;
    std::lock_guard<std::mutex> lock(pool_mutex());
    pool().emplace(std::make_pair(stream_, floats_), ptr_);
}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
        DeviceBuffer tmp(std::move(*this));
        ptr_ = o.ptr_;
        floats_ = o.floats_;
        stream_ = o.stream_;
        o.ptr_ = nullptr;
        o.floats_ = 0;
    }
    return *this;
}
void DeviceBuffer::upload(const float* host, size_t floats) {
    PIN_CHECK(floats <= floats_, "DeviceBuffer::upload: ", floats, " floats into a buffer of ", floats_);
    copy_sync(ptr_, host, floats * sizeof(float), cudaMemcpyHostToDevice, "cudaMemcpy to device", "(" + std::to_string(floats) + " floats)");
}
void DeviceBuffer::download(float* host, size_t floats) const {
    PIN_CHECK(floats <= floats_, "DeviceBuffer::download: ", floats, " floats from a buffer of ", floats_);
    copy_sync(host, ptr_, floats * sizeof(float), cudaMemcpyDeviceToHost, "cudaMemcpy to host", "(" + std::to_string(floats) + " floats)");
}
void synchronize(const char* what) { check(cudaDeviceSynchronize(), what, ""); }

Stream::Stream() {
    cudaStream_t s = nullptr;
    check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate", "");
    handle_ = s;
}
Stream::~Stream() {
    // Finish the stream's work first: its cached blocks may be handed to a later stream that
    // happens to get the same handle.
    if (!handle_) return;
    (void)cudaStreamSynchronize(static_cast<cudaStream_t>(handle_));
    (void)cudaStreamDestroy(static_cast<cudaStream_t>(handle_));
}
void Stream::synchronize() const { check(cudaStreamSynchronize(static_cast<cudaStream_t>(handle_)), "cudaStreamSynchronize", ""); }
StreamScope::StreamScope(const Stream& s) : previous_(g_stream) { g_stream = static_cast<cudaStream_t>(s.handle()); }
StreamScope::~StreamScope() { g_stream = static_cast<cudaStream_t>(previous_); }
void synchronize_stream(const char* what) { check(cudaStreamSynchronize(cur()), what, ""); }

std::string device_name() {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return "no CUDA device";
    return prop.name;
}

// ---- convolutions ------------------------------------------------------------------------------------
int64_t conv2d_out(const ConvShape& s, int64_t in) { return (in + 2 * s.padding - s.kernel) / s.stride + 1; }
int64_t conv_transpose2d_out(const ConvShape& s, int64_t in) {
    return (in - 1) * s.stride - 2 * s.padding + s.kernel + s.output_padding;
}

DeviceBuffer pack_conv2d_forward_weight(const float* w, const ConvShape& s) {
    return pack_weight(w, s.out_c, s.in_c, s.kernel, true, "pack conv2d weight");
}
DeviceBuffer pack_conv_transpose2d_forward_weight(const float* w, const ConvShape& s) {
    return pack_weight(w, s.out_c, s.in_c, s.kernel, false, "pack conv_transpose2d weight");
}

void conv2d_forward(const float* x, const float* w, float* y, const ConvShape& s, const float* bias, const float* prelu_slope,
                    bool accumulate, const float* packed) {
    const int64_t Ho = conv2d_out(s, s.in_h), Wo = conv2d_out(s, s.in_w), K = s.kernel;
    const DeviceBuffer wp = packed ? DeviceBuffer() : pack_conv2d_forward_weight(w, s);
    launch_gemm<false>(s.batch * Ho * Wo, s.out_c, K * K * s.in_c, 1,
                       Gather<false>{x, Ho, Wo, s.in_h, s.in_w, s.in_c, K, s.stride, s.padding},
                       RowMajor{packed ? packed : wp.data(), s.out_c},
                       ConvStore{y, s.out_c, bias, prelu_slope, accumulate}, "conv2d_forward", shape_of(s));
}

void conv2d_backward_input(const float* dy, const float* w, float* dx, const ConvShape& s) {
    const int64_t Ho = conv2d_out(s, s.in_h), Wo = conv2d_out(s, s.in_w), K = s.kernel;
    // dx[(b, ih, iw), ci] = sum over (kh, kw, co) of dy[b, (ih + p - kh) / s, ...][co] w[co, ci, kh, kw]
    const DeviceBuffer wp = pack_weight(w, s.in_c, s.out_c, K, false, "pack conv2d weight (input gradient)");
    launch_gemm<false>(s.batch * s.in_h * s.in_w, s.in_c, K * K * s.out_c, 1,
                       Gather<true>{dy, s.in_h, s.in_w, Ho, Wo, s.out_c, K, s.stride, s.padding}, RowMajor{wp.data(), s.in_c},
                       ConvStore{dx, s.in_c, nullptr, nullptr, false}, "conv2d_backward_input", shape_of(s));
}

void conv2d_backward_weight(const float* x, const float* dy, float* dw, const ConvShape& s) {
    const int64_t Ho = conv2d_out(s, s.in_h), Wo = conv2d_out(s, s.in_w), K = s.kernel;
    // dw[co, (kh, kw, ci)] = sum over output pixels of dy[pix, co] x_gather(pix, (kh, kw, ci))
    gemm_split_reduce(s.out_c, K * K * s.in_c, s.batch * Ho * Wo, ColMajor{dy, s.out_c},
                      Gather<false>{x, Ho, Wo, s.in_h, s.in_w, s.in_c, K, s.stride, s.padding}, WeightMap{s.in_c, K}, dw,
                      "conv2d_backward_weight", shape_of(s));
}

void conv_transpose2d_forward(const float* x, const float* w, float* y, const ConvShape& s, const float* prelu_slope,
                              const float* packed) {
    const int64_t Ho = conv_transpose2d_out(s, s.in_h), Wo = conv_transpose2d_out(s, s.in_w), K = s.kernel;
    // y[(b, oh, ow), co] = sum over (kh, kw, ci) of x[b, (oh + p - kh) / s, ...][ci] w[ci, co, kh, kw]
    const DeviceBuffer wp = packed ? DeviceBuffer() : pack_conv_transpose2d_forward_weight(w, s);
    launch_gemm<false>(s.batch * Ho * Wo, s.out_c, K * K * s.in_c, 1,
                       Gather<true>{x, Ho, Wo, s.in_h, s.in_w, s.in_c, K, s.stride, s.padding},
                       RowMajor{packed ? packed : wp.data(), s.out_c},
                       ConvStore{y, s.out_c, nullptr, prelu_slope, false}, "conv_transpose2d_forward", shape_of(s));
}

void conv_transpose2d_backward_input(const float* dy, const float* w, float* dx, const ConvShape& s) {
    const int64_t Ho = conv_transpose2d_out(s, s.in_h), Wo = conv_transpose2d_out(s, s.in_w), K = s.kernel;
    // dx[(b, ih, iw), ci] = sum over (kh, kw, co) of dy[b, ih s - p + kh, ...][co] w[ci, co, kh, kw]
    const DeviceBuffer wp = pack_weight(w, s.in_c, s.out_c, K, true, "pack conv_transpose2d weight (input gradient)");
    launch_gemm<false>(s.batch * s.in_h * s.in_w, s.in_c, K * K * s.out_c, 1,
                       Gather<false>{dy, s.in_h, s.in_w, Ho, Wo, s.out_c, K, s.stride, s.padding}, RowMajor{wp.data(), s.in_c},
                       ConvStore{dx, s.in_c, nullptr, nullptr, false}, "conv_transpose2d_backward_input", shape_of(s));
}

void conv_transpose2d_backward_weight(const float* x, const float* dy, float* dw, const ConvShape& s) {
    const int64_t Ho = conv_transpose2d_out(s, s.in_h), Wo = conv_transpose2d_out(s, s.in_w), K = s.kernel;
    // dw[ci, (kh, kw, co)] = sum over input pixels of x[pix, ci] dy_gather(pix, (kh, kw, co))
    gemm_split_reduce(s.in_c, K * K * s.out_c, s.batch * s.in_h * s.in_w, ColMajor{x, s.in_c},
                      Gather<false>{dy, s.in_h, s.in_w, Ho, Wo, s.out_c, K, s.stride, s.padding}, WeightMap{s.out_c, K}, dw,
                      "conv_transpose2d_backward_weight", shape_of(s));
}

// ---- linear --------------------------------------------------------------------------------------------
void linear_forward(const float* x, const float* w, const float* b, float* y, int64_t batch, int64_t in, int64_t out) {
    DeviceBuffer wt(static_cast<size_t>(in * out));
    transpose(w, wt.data(), out, in);
    launch_gemm<false>(batch, out, in, 1, RowMajor{x, in}, RowMajor{wt.data(), out}, ConvStore{y, out, b, nullptr, false},
                       "linear_forward", dims(batch, in, out));
}
void linear_backward_input(const float* dy, const float* w, float* dx, int64_t batch, int64_t in, int64_t out) {
    launch_gemm<false>(batch, in, out, 1, RowMajor{dy, out}, RowMajor{w, in}, ConvStore{dx, in, nullptr, nullptr, false},
                       "linear_backward_input", dims(batch, in, out));
}
void linear_backward_params(const float* x, const float* dy, float* dw, float* db, int64_t batch, int64_t in, int64_t out) {
    gemm_split_reduce(out, in, batch, ColMajor{dy, out}, RowMajor{x, in}, IdentityMap{in}, dw, "linear_backward_params",
                      dims(batch, in, out));
    const float* d = dy;
    channel_sum(batch, out, [d] __device__(int64_t i) { return static_cast<double>(d[i]); }, db, "linear_backward_params (bias)",
                dims(batch, in, out));
}

// ---- element-wise ----------------------------------------------------------------------------------------
void prelu_forward(const float* x, const float* slope, float* y, int64_t n, int64_t channels) {
    launch_map(n, [=] __device__(int64_t i) { y[i] = x[i] > 0.0f ? x[i] : slope[i % channels] * x[i]; }, "prelu_forward");
}
void prelu_backward(const float* x, const float* slope, const float* dy, float* dx, float* dslope, int64_t n, int64_t channels) {
    launch_map(n, [=] __device__(int64_t i) { dx[i] = x[i] > 0.0f ? dy[i] : slope[i % channels] * dy[i]; }, "prelu_backward");
    channel_sum(n / channels, channels, [=] __device__(int64_t i) { return x[i] > 0.0f ? 0.0 : static_cast<double>(x[i]) * dy[i]; },
                dslope, "prelu_backward (slope)", dims(n / channels, channels));
}
void tanh_forward(const float* x, float* y, int64_t n) {
    launch_map(n, [=] __device__(int64_t i) { y[i] = tanhf(x[i]); }, "tanh_forward");
}
void tanh_backward(const float* y, const float* dy, float* dx, int64_t n) {
    launch_map(n, [=] __device__(int64_t i) { dx[i] = dy[i] * (1.0f - y[i] * y[i]); }, "tanh_backward");
}
void sigmoid_forward(const float* x, float* y, int64_t n) {
    // The CPU's form: exp of a non-positive argument only, so no overflow for large |x|.
    launch_map(n, [=] __device__(int64_t i) {
        const float z = x[i];
        if (z >= 0) {
            y[i] = 1.0f / (1.0f + expf(-z));
        } else {
            const float e = expf(z);
            y[i] = e / (1.0f + e);
        }
    }, "sigmoid_forward");
}
void sigmoid_backward(const float* y, const float* dy, float* dx, int64_t n) {
    launch_map(n, [=] __device__(int64_t i) { dx[i] = dy[i] * y[i] * (1.0f - y[i]); }, "sigmoid_backward");
}
void add(const float* a, const float* b, float* y, int64_t n) {
    launch_map(n, [=] __device__(int64_t i) { y[i] = a[i] + b[i]; }, "add");
}

// ---- PIN ------------------------------------------------------------------------------------------------
void sample_masks(const float* p, float* q, int64_t batch, int64_t n, uint64_t seed, uint64_t first_image) {
    launch_map(batch * n, [=] __device__(int64_t i) {
        const int64_t b = i / n, j = i % n;
        q[i] = PhiloxStream(seed, first_image + static_cast<uint64_t>(b)).bernoulli(static_cast<uint64_t>(j), p[i]);
    }, "sample_masks");
}
void copy(const float* src, float* dst, int64_t n) {
    if (n > 0)
        check(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * sizeof(float), cudaMemcpyDeviceToDevice, cur()), "copy",
              "(" + std::to_string(n) + " floats)");
}
void copy_to_device(const float* host, float* dst, int64_t n) {
    if (n > 0) copy_sync(dst, host, static_cast<size_t>(n) * sizeof(float), cudaMemcpyHostToDevice, "copy_to_device", "(" + std::to_string(n) + " floats)");
}
void copy_to_host(const float* src, float* host, int64_t n) {
    if (n > 0) copy_sync(host, src, static_cast<size_t>(n) * sizeof(float), cudaMemcpyDeviceToHost, "copy_to_host", "(" + std::to_string(n) + " floats)");
}
void nhwc_to_nchw(const float* x, float* y, int64_t batch, int64_t channels, int64_t h, int64_t w) {
    const int64_t P = h * w;
    launch_map(batch * channels * P, [=] __device__(int64_t i) {
        const int64_t pix = i % P, c = (i / P) % channels, b = i / (P * channels);
        y[i] = x[(b * P + pix) * channels + c];
    }, "nhwc_to_nchw");
}
void transpose(const float* a, float* at, int64_t rows, int64_t cols) {
    launch_map(rows * cols, [=] __device__(int64_t i) {
        const int64_t r = i / cols, c = i % cols;
        at[c * rows + r] = a[i];
    }, "transpose");
}
void project_coefficients(const float* basis, const float* mean, const float* x, float* c, int64_t batch, int64_t D, int64_t N) {
    launch_gemm<false>(batch, N, D, 1, Centered{x, mean, D}, RowMajor{basis, N}, ConvStore{c, N, nullptr, nullptr, false},
                       "project_coefficients", dims(batch, D, N));
}
struct MaskedCoefficients {
    const float* c;
    const float* q;
    int64_t N;
    __device__ float operator()(int64_t b, int64_t j) const { return q ? q[b * N + j] * c[b * N + j] : c[b * N + j]; }
};
void reconstruct(const float* basis_t, const float* mean, const float* c, const float* q, float* y, int64_t batch, int64_t D,
                 int64_t N) {
    // y = (q .* c) B^T + mean: the mean enters as a per-column "bias".
    launch_gemm<false>(batch, D, N, 1, MaskedCoefficients{c, q, N}, RowMajor{basis_t, D}, ConvStore{y, D, mean, nullptr, false},
                       "reconstruct", dims(batch, D, N));
}
void mask_costs(const float* p, const float* g, const double* y2, double* cost, double* kept, int64_t batch, int64_t n, int64_t k,
                bool l2, double lambda, int64_t pixels, uint64_t seed, uint64_t first_image) {
    if (batch * k <= 0) return;
    mask_cost_kernel<<<static_cast<unsigned>(batch * k), 256, 0, cur()>>>(p, g, y2, cost, kept, n, k, l2, lambda, pixels, seed, first_image);
    check(cudaGetLastError(), "mask_costs", dims(batch, n, k));
}

void local_gradient(const float* p, const float* g, const double* y2, double* dz, double* cost, double* kept, int64_t batch,
                    int64_t n, int64_t k, bool l2, double lambda, int64_t pixels, uint64_t seed, uint64_t first_image) {
    if (batch * k <= 0) return;
    local_gradient_kernel<<<static_cast<unsigned>(batch), 256, 0, cur()>>>(p, g, y2, dz, cost, kept, batch, n, k, l2, lambda, pixels, seed,
                                                                 first_image);
    check(cudaGetLastError(), "local_gradient", dims(batch, n, k));
}

// ---- training step ------------------------------------------------------------------------------------
void nchw_to_nhwc(const float* x, float* y, int64_t batch, int64_t channels, int64_t h, int64_t w) {
    const int64_t P = h * w;
    launch_map(batch * channels * P, [=] __device__(int64_t i) {
        const int64_t c = i % channels, pix = (i / channels) % P, b = i / (P * channels);
        y[i] = x[(b * channels + c) * P + pix];
    }, "nchw_to_nhwc");
}
double sum_squares(const float* x, int64_t n) {
    if (n <= 0) return 0.0;
    DeviceBuffer partial(2 * kSumBlocks);  // doubles
    double* part = reinterpret_cast<double*>(partial.data());
    sum_squares_kernel<<<kSumBlocks, 256, 0, cur()>>>(x, n, part);
    check(cudaGetLastError(), "sum_squares", "(" + std::to_string(n) + " elements)");
    std::vector<double> host(kSumBlocks);
    copy_sync(host.data(), part, kSumBlocks * sizeof(double), cudaMemcpyDeviceToHost, "sum_squares (download)",
          "(" + std::to_string(n) + " elements)");
    double s = 0;
    for (double v : host) s += v;
    return s;
}
void scale(float* x, int64_t n, float s) {
    launch_map(n, [=] __device__(int64_t i) { x[i] *= s; }, "scale");
}
void sgd_step(float* w, const float* g, float* v, int64_t n, float lr, float momentum, bool first) {
    launch_map(n, [=] __device__(int64_t i) {
        const float vi = first ? g[i] : momentum * v[i] + g[i];
        v[i] = vi;
        w[i] -= lr * vi;
    }, "sgd_step");
}
void mask_cost_terms(const float* c, const float* d, const float* x, const float* mean, float* g, double* y2, int64_t batch,
                     int64_t n, int64_t pixels) {
    if (batch <= 0) return;
    mask_cost_terms_kernel<<<static_cast<unsigned>(batch), 256, 0, cur()>>>(c, d, x, mean, g, y2, n, pixels);
    check(cudaGetLastError(), "mask_cost_terms", dims(batch, n, pixels));
}
void policy_gradient(const float* p, const double* advantage, float* dz, int64_t batch, int64_t n, int64_t k, uint64_t seed,
                     uint64_t first_image) {
    launch_map(batch * n, [=] __device__(int64_t i) {
        const int64_t b = i / n, j = i % n;
        const float pj = p[i];
        double s = 0;
        for (int64_t m = 0; m < k; ++m) {
            const PhiloxStream rng(seed, (first_image + static_cast<uint64_t>(b)) * static_cast<uint64_t>(k) + static_cast<uint64_t>(m));
            const float q = rng.bernoulli(static_cast<uint64_t>(j), pj);
            s += advantage[b * k + m] * static_cast<double>(q - pj);  // (q - p) in float, as the CPU
        }
        dz[i] = static_cast<float>(s);
    }, "policy_gradient");
}
void to_float(const double* x, float* y, int64_t n) {
    launch_map(n, [=] __device__(int64_t i) { y[i] = static_cast<float>(x[i]); }, "to_float");
}

}  // namespace pin::cuda
