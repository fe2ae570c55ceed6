// cuda/ops_internal.cuh - what the translation units of the GPU backend share (ops.cu,
// ops_conv_forward.cu, ops_conv_backward.cu, ops_linear.cu, ops_wgmma.cu, rng.cu): error checks, the
// GEMM dispatch (which kernel runs a GEMM, and its launch), the convolution epilogues, the split-K
// reduction, element-wise launches. Not a public header: include it only from those files (and the
// emulated backend's, tests/emulated_*.cpp).
//
// Why several translation units: nvcc compiles each on one core, and the GEMM instantiations of the
// convolutions (every kernel x gather x storage type) took most of a minute in one; split, a
// machine with more cores builds them side by side (bench/gpu_check.sh's build on a lent GPU
// counts against its time).
//
// Everything below the `internal` declarations is in an unnamed namespace: each translation unit
// gets its own copy of these templates and kernels (their instantiations never meet at link time).
// The state they share (the current stream, the launch counters) is defined once, in ops.cu.
#pragma once
#include "ops.cuh"
#include "bfloat16.cuh"
#include "gather.cuh"
#include "gemm_kernels.cuh"
#include "launch.cuh"

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <mma.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>

#include "pin/core/error.hpp"

namespace pin::cuda {

namespace internal {  // defined in ops.cu
// The calling thread's current stream (nullptr: the legacy default stream). Every launch and copy
// goes there.
cudaStream_t cur();
// GEMM launches so far, by GemmKernel (kernel_launches()), and their 2 M N K (kernel_gemm_flops()).
std::atomic<int64_t>* gemm_launches();
std::atomic<int64_t>* gemm_flops();
// out[c] = sum over r < rows of x[r * channels + c], in a fixed order (the reductions' kernels are
// defined in ops.cu's translation unit only: reduce_kernels.cuh).
void channel_sum_floats(const float* x, int64_t rows, int64_t channels, float* out, const char* name, const std::string& shape);
// The forward convolutions on sm_90a's warpgroup MMA (wgmma_gemm.cuh WgmmaConvOperands), defined in
// ops_wgmma.cu, the only translation unit compiled for sm_90a. The epilogue is ConvStore's, given
// by its fields (ConvStore is in each translation unit's unnamed namespace, see above); for a sub-pixel
// class the rows map to the whole output's (RowMappedStore). wk: the whole gather's weights as
// bfloat16, K-major, rows ldk apart (pack_bf16_kmajor). Each runs the GEMM and returns true where
// the kernel applies (WgmmaConvOperands::fits) and the device runs sm_90a code; else returns false
// having done nothing.
struct ConvOutput {
    void* y;
    bool bf16;  // y holds bfloat16, else fp32
    int64_t N;
    const float* bias;
    const float* slope;
    bool accumulate;
};
bool conv_wgmma(const Gather<false, Bf16>& la, int64_t M, int64_t N, int64_t K, const Bf16* wk, int64_t ldk, const ConvOutput& out,
                const char* name, const std::string& shape);
bool conv_wgmma(const Gather<true, Bf16>& la, int64_t M, int64_t N, int64_t K, const Bf16* wk, int64_t ldk, const ConvOutput& out,
                const char* name, const std::string& shape);
bool conv_wgmma(const SubpixelGather<Bf16>& la, int64_t M, int64_t N, int64_t K, const Bf16* wk, int64_t ldk, const ConvOutput& out,
                const char* name, const std::string& shape);
// A convolution's weight gradient on the warpgroup-MMA kernel (wgmma_gemm.cuh
// WgmmaWeightGradOperands): dw (PyTorch layout, overwritten) from the forward's gather over bfloat16
// x and bfloat16 dy [pixels][N], K split along the pixels and summed in chunk order. Runs it and
// returns true where the operands fit and the device runs sm_90a code; else returns false having
// done nothing.
bool conv_weight_grad_wgmma(const Gather<false, Bf16>& la, const Bf16* dy, int64_t N, int64_t pixels, float* dw, const char* name,
                            const std::string& shape);
}  // namespace internal

namespace {
using namespace gemm;
using namespace internal;

inline void check(cudaError_t e, const char* what, const std::string& shape) {
    if (e != cudaSuccess) ::pin::detail::throw_error("CUDA error in ", what, " ", shape, ": ", cudaGetErrorString(e));
}
inline std::string shape_of(const ConvShape& s) {
    std::ostringstream os;
    os << "(batch " << s.batch << ", " << s.in_h << "x" << s.in_w << "x" << s.in_c << " -> " << s.out_c << ", k" << s.kernel
       << " s" << s.stride << " p" << s.padding << ")";
    return os.str();
}
inline std::string dims(int64_t a, int64_t b, int64_t c = -1) {
    std::ostringstream os;
    os << "(" << a << ", " << b;
    if (c >= 0) os << ", " << c;
    os << ")";
    return os.str();
}

// Copies host <-> device on the current stream, complete when they return (as cudaMemcpy).
inline void copy_sync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, const char* what, const std::string& shape) {
    check(cudaMemcpyAsync(dst, src, bytes, kind, cur()), what, shape);
    check(cudaStreamSynchronize(cur()), what, shape);
}

// Epilogue of the forward convolutions: act(acc + bias) (+ existing), stored as Y (float, or Bf16
// rounded once, after the sum).
template <class Y = float>
struct ConvStore {
    Y* y;
    int64_t N;
    const float* bias;
    const float* slope;
    bool accumulate;
    // act(v + bias) of column n, before any accumulation.
    __device__ float activated(int64_t n, float v) const {
        if (bias) v += bias[n];
        if (slope && v < 0.0f) v *= slope[n];
        return v;
    }
    __device__ void operator()(int64_t, int64_t m, int64_t n, float v) const {
        v = activated(n, v);
        Y* o = y + m * N + n;
        *o = from_float<Y>(accumulate ? to_float(*o) + v : v);
    }
    // Columns n .. n + 3 at once (the same values as four calls above).
    __device__ void store4(int64_t, int64_t m, int64_t n, const float (&v)[4]) const {
        float r[4], old[4];
        Y* o = y + m * N + n;
        if (accumulate) load4(o, old);
PIN_UNROLL
        for (int j = 0; j < 4; ++j) r[j] = accumulate ? old[j] + activated(n + j, v[j]) : activated(n + j, v[j]);
        pin::cuda::store4(o, r);  // the free function, not this member
    }
    __device__ bool vectors_ok() const { return vector_aligned(y) && N % 4 == 0; }
};
// Calls f(x, y) with the activations' pointers as their storage types.
template <class F>
inline void with_storage(ConstActivations x, Activations y, F f) {
    if (x.bf16) {
        const Bf16* xs = static_cast<const Bf16*>(x.data);
        if (y.bf16)
            f(xs, static_cast<Bf16*>(y.data));
        else
            f(xs, static_cast<float*>(y.data));
    } else {
        const float* xs = static_cast<const float*>(x.data);
        if (y.bf16)
            f(xs, static_cast<Bf16*>(y.data));
        else
            f(xs, static_cast<float*>(y.data));
    }
}
// Convolutions with one output channel (GatherMode Rows or Vector; gather.cuh gather_dot): the DAE's
// last layer, 64 -> 1 at 112 x 112, twice per forward, whose single column the GEMM kernels would
// compute in 1 of their 64. kOneOutputParts threads per output pixel, each summing every
// kOneOutputParts-th group of 4 channels over the taps, so that one load instruction reads 4 pixels'
// contiguous 32-channel runs (a thread per pixel read 8 or 16 bytes at the pixel's stride, a sector
// per thread); the parts meet in shared memory. fp32 sums in every math mode.
constexpr int kOneOutputParts = 8, kOneOutputRows = THREADS / kOneOutputParts;
template <class G, class Store>
__global__ void __launch_bounds__(THREADS) conv_one_output_kernel(int64_t M, G la, const float* w, bool vec, Store st) {
    PIN_SHARED_ARRAY(float, part, [kOneOutputRows][kOneOutputParts + 1]);  // + 1: the adds below read across banks
    const int tid = threadIdx.x, row = tid / kOneOutputParts, lane = tid % kOneOutputParts;
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kOneOutputRows;
    part[row][lane] = m0 + row < M ? gather_dot(la, w, m0 + row, M, vec, lane, kOneOutputParts) : 0.0f;
    __syncthreads();
    if (tid < kOneOutputRows && m0 + tid < M) {
        float s = 0.0f;
        for (int j = 0; j < kOneOutputParts; ++j) s += part[tid][j];
        st(0, m0 + tid, 0, s);
    }
}

// Convolutions with one input channel (the stems; GatherMode Rows or Vector; gather.cuh
// gather_one_input_quads): a thread per output pixel and kQuads groups of 4 output channels, fp32 in
// every math mode. A pixel's N / (4 kQuads) threads interleave their groups (thread g has channels
// 4 g, 4 (g + groups), ...), so each store instruction writes whole sectors; each tap's pixel is
// read once per kQuads groups. total = M N / (4 kQuads) < 2^32 - 256 (the launch checks). vec:
// store4 (its outputs 16-byte aligned).
template <int kQuads, class G, class Store>
__global__ void conv_one_input_kernel(unsigned total, int64_t M, int64_t N, G la, const float* w, bool vec, Store st) {
    const unsigned idx = blockIdx.x * blockDim.x + threadIdx.x, groups = static_cast<unsigned>(N / (4 * kQuads));
    if (idx >= total) return;
    const unsigned m = idx / groups, g = idx - m * groups;
    float v[kQuads][4];
    gather_one_input_quads<kQuads>(la, w, N, m, M, 4 * g, 4 * groups, v);
    PIN_UNROLL
    for (int j = 0; j < kQuads; ++j) {
        const int64_t n = 4 * (g + j * groups);
        if constexpr (HasStore4<Store>::value) {
            if (vec) {
                st.store4(0, m, n, v[j]);
                continue;
            }
        }
        for (int i = 0; i < 4; ++i) st(0, m, n + i, v[j][i]);
    }
}

// The 3 x 3 stems (one input channel, N output channels, direct gather) by output row bands: a
// block takes `rows` whole output rows of one image (up to kStemBandPixels pixels), their input rows
// staged once in shared memory, zero-padded. Thread (lane, g) keeps output channels 4 g .. 4 g + 3's
// 9 x 4 weights in registers for the whole band and walks the band's pixels lane, lane + lanes, ...
// (groups = N / 4, lanes = THREADS / groups). conv_one_input_kernel, per 16 outputs of a pixel,
// decodes the pixel, tests 9 taps and loads 36 weight vectors from global memory (modelled ~0.45 ms
// for the ESN's stem at batch 256, not measured; its first form, a thread per 4 channels, took 1.18
// ms on the H200 on 2026-12-04). Here an output quad costs 9 broadcast shared-memory reads and 36
// FMAs, and a warp stores 32 / groups neighbouring pixels' whole channel runs (512 contiguous bytes
// at 64 fp32 channels), so the output's bytes should bound it (at batch 256 0.4 GB in bfloat16, 0.8
// in fp32: 0.09-0.17 ms at the H200's 4.8 TB/s). The sums of gather_one_input_quads, in its order
// (taps kh, kw; a padded tap adds a zero where it skips one), fp32.
constexpr int kStemTaps = 9, kStemSmemFloats = 4096, kStemBandPixels = 512;
// Whether the stem kernel takes this gather (3 x 3, one channel, direct) with N output channels, and
// its band: `rows` output rows a block, `span` = the staged input row width. The staged rows must fit
// kStemSmemFloats; groups must divide THREADS.
struct StemBand {
    int rows = 0, in_rows = 0, span = 0;
};
template <class G>
inline bool stem_band(const G& la, int64_t N, StemBand& band) {
    static_assert(!G::kIsTransposed, "the stems are direct convolutions");
    if (la.C != 1 || la.K != 3 || N % 4 != 0 || N / 4 > THREADS || THREADS % (N / 4) != 0) return false;
    band.span = static_cast<int>((la.Wo - 1) * la.stride + la.K);
    band.rows = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(la.Ho, kStemBandPixels / std::max<int64_t>(la.Wo, 1))));
    auto in_rows = [&](int r) { return static_cast<int>((r - 1) * la.stride + la.K); };
    while (band.rows > 1 && in_rows(band.rows) * band.span > kStemSmemFloats) --band.rows;
    band.in_rows = in_rows(band.rows);
    return band.in_rows * band.span <= kStemSmemFloats;
}
// w: the packed weights (9 rows of N, (kh, kw) order). Grid: images x bands blocks, an image's
// bands consecutive.
template <class G, class Store>
__global__ void __launch_bounds__(THREADS) conv_stem_band_kernel(G la, const float* w, int64_t N, StemBand band, bool vec, Store st) {
    PIN_SHARED_ARRAY(float, in, [kStemSmemFloats]);
    const int tid = threadIdx.x, groups = static_cast<int>(N / 4), lanes = THREADS / groups, g = tid % groups, lane = tid / groups;
    const int Ho = static_cast<int>(la.Ho), Wo = static_cast<int>(la.Wo), H = static_cast<int>(la.H), W = static_cast<int>(la.W);
    const int s = static_cast<int>(la.stride), pad = static_cast<int>(la.pad), bands = (Ho + band.rows - 1) / band.rows;
    const int b = static_cast<int>(blockIdx.x) / bands, oh0 = (static_cast<int>(blockIdx.x) - b * bands) * band.rows, ih0 = oh0 * s - pad;
    const auto* image = la.src + static_cast<int64_t>(b) * H * W;
    for (int i = tid; i < band.in_rows * band.span; i += THREADS) {
        const int r = i / band.span, ih = ih0 + r, iw = i - r * band.span - pad;
        in[i] = ih >= 0 && ih < H && iw >= 0 && iw < W ? to_float(image[ih * W + iw]) : 0.0f;
    }
    float wt[kStemTaps][4];
    PIN_UNROLL
    for (int t = 0; t < kStemTaps; ++t) load4(w + t * N + 4 * g, wt[t]);
    __syncthreads();
    const int rows = Ho - oh0 < band.rows ? Ho - oh0 : band.rows;
    // Pixel (r, ow) of the band, stepped by `lanes` without a division per pixel.
    int r = lane / Wo, ow = lane - r * Wo;
    for (; r < rows; ow += lanes) {
        while (ow >= Wo) ow -= Wo, ++r;
        if (r >= rows) break;
        const float* x = in + r * s * band.span + ow * s;
        float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        PIN_UNROLL
        for (int kh = 0; kh < 3; ++kh)
            PIN_UNROLL
            for (int kw = 0; kw < 3; ++kw) {
                const float xv = x[kh * band.span + kw];
                PIN_UNROLL
                for (int i = 0; i < 4; ++i) v[i] += xv * wt[kh * 3 + kw][i];
            }
        const int64_t m = (static_cast<int64_t>(b) * Ho + oh0 + r) * Wo + ow;
        if constexpr (HasStore4<Store>::value) {
            if (vec) {
                st.store4(0, m, 4 * g, v);
                continue;
            }
        }
        for (int i = 0; i < 4; ++i) st(0, m, 4 * g + i, v[i]);
    }
}

// Which kernel a GEMM runs on: the math mode, the gather mode, and what the operands allow.
// OneInputBands counts the OneInput launches by output row bands (conv_stem_band_kernel; both
// counters grow), AsyncCols128 the Async launches with the 256 x 128 tile (both counters grow); Wgmma the
// warpgroup-MMA kernel's (ops_wgmma.cu), WgmmaTensorCopies those of them fed by tensor copies (both
// counters grow), WgmmaWide and WgmmaSplit those of the latter on the wide and the split-column tiles.
enum class GemmKernel {
    Fp32, TensorCore, Wide, OneOutput, OneInput, OneInputBands, Async, AsyncCols128, Wgmma, WgmmaTensorCopies, WgmmaWide, WgmmaSplit
};
constexpr int kGemmKernels = 12;
// Counts a launch of `kernel` and its M x N x K products (ops.cuh kernel_launches, kernel_gemm_flops).
inline void count_gemm(GemmKernel kernel, int64_t M, int64_t N, int64_t K) {
    gemm_launches()[static_cast<int>(kernel)].fetch_add(1, std::memory_order_relaxed);
    gemm_flops()[static_cast<int>(kernel)].fetch_add(2 * M * N * K, std::memory_order_relaxed);
}
// The per-pixel kernels take a plain gather (not a sub-pixel class) and row-major packed weights.
template <class T>
struct IsPlainGather : std::false_type {};
template <bool kTransposed, class Src>
struct IsPlainGather<Gather<kTransposed, Src>> : std::true_type {};
template <bool kAMFast, class LoadA, class LoadB>
constexpr bool kPerPixelForm = !kAMFast && IsPlainGather<LoadA>::value && std::is_same<LoadB, RowMajor>::value;
// The wide kernel's operand form for these operands (gemm_kernels.cuh), NoWideForm if none: the one
// place that decides, for choose_kernel and launch_gemm alike.
struct NoWideForm {};
template <bool kAMFast, class LoadA, class LoadB>
auto wide_form(const LoadA& la, const LoadB& lb) {
    if constexpr (!kAMFast && IsGather<LoadA>::value && IsRowAddressable<LoadB>::value)
        return WideConvOperands<LoadA, LoadB>{la, lb};
    else if constexpr (!kAMFast && IsRowVectors<LoadA>::value && IsRowAddressable<LoadB>::value)
        return WideRowOperands<LoadA, LoadB>{la, lb};
    else if constexpr (kAMFast && std::is_same<LoadA, ColMajor>::value && (IsGather<LoadB>::value || std::is_same<LoadB, RowMajor>::value))
        return WideWeightGradOperands<LoadB>{la, lb};
    else
        return NoWideForm{};
}
template <bool kAMFast, class LoadA, class LoadB>
inline GemmKernel choose_kernel(int64_t M, int64_t N, int64_t K, int64_t splits, const LoadA& la, const LoadB& lb) {
    const MathMode mode = math_mode();
    const GatherMode gmode = gather_mode();
    if constexpr (kPerPixelForm<kAMFast, LoadA, LoadB>) {
        if (gmode != GatherMode::Generic && N == 1 && lb.ld == 1 && splits == 1) return GemmKernel::OneOutput;
        if (gmode != GatherMode::Generic && la.C == 1 && N % 4 == 0 && lb.ld == N && splits == 1 && aligned16(lb.a) &&
            M * (N / 4) < (int64_t{1} << 32) - THREADS)
            return GemmKernel::OneInput;
    }
    using Form = decltype(wide_form<kAMFast>(la, lb));
    if constexpr (!std::is_same<Form, NoWideForm>::value) {
        if (mode == MathMode::BF16 && gmode == GatherMode::Vector && wide_form<kAMFast>(la, lb).fits(M, N, K, splits))
            return GemmKernel::Wide;
    }
    return mode == MathMode::FP32 ? GemmKernel::Fp32 : GemmKernel::TensorCore;
}
inline Tile tile_of(GemmKernel k) { return k == GemmKernel::Wide ? kWideTile : k == GemmKernel::TensorCore ? kTensorCoreTile : kFp32Tile; }

// M tiles go on grid.x (up to 2^31 - 1 blocks; grid.y stops at 65535, which batch 1024 at 112 x 112
// exceeded), N tiles on y, K chunks on z. The gathers index in 32 bits: refuse larger problems.
inline void check_gemm_size(int64_t M, int64_t N, int64_t K, const char* name, const std::string& shape) {
    if (M >= (int64_t{1} << 31) || N >= (int64_t{1} << 31) || K >= (int64_t{1} << 31))
        ::pin::detail::throw_error("CUDA ", name, " ", shape, ": a GEMM dimension reaches 2^31 (M ", M, ", N ", N, ", K ", K,
                                   "); use a smaller batch");
}
// The tensor-core kernel with the row gather where la.rows, else with la(m, k) (its kRows).
template <class Mma, bool kAMFast, class LoadA, class LoadB, class Store>
inline void launch_tensor_core(dim3 grid, int64_t M, int64_t N, int64_t K, int64_t chunk, const LoadA& la, const LoadB& lb,
                               const Store& st) {
    if constexpr (!kAMFast && IsGather<LoadA>::value) {
        if (la.rows) {
            PIN_LAUNCH(grid, THREADS, cur(), gemm_tensor_core_kernel<Mma, kAMFast, true>)(M, N, K, chunk, la, lb, st);
            return;
        }
    }
    PIN_LAUNCH(grid, THREADS, cur(), gemm_tensor_core_kernel<Mma, kAMFast, false>)(M, N, K, chunk, la, lb, st);
}
// Which kernel runs a GEMM and its grid, decided once: a caller that sizes split-K scratch memory
// by grid.z launches with the same plan, so a setting changed meanwhile by another thread
// (set_math_mode is process-wide) cannot launch more chunks than it allocated.
struct GemmPlan {
    GemmKernel kernel;
    GemmGrid grid;
};
template <bool kAMFast, class LoadA, class LoadB>
inline GemmPlan plan_gemm(int64_t M, int64_t N, int64_t K, int64_t splits, const LoadA& la, const LoadB& lb) {
    const GemmKernel kernel = choose_kernel<kAMFast>(M, N, K, splits, la, lb);
    return {kernel, gemm_grid(M, N, K, splits, tile_of(kernel))};
}
template <bool kAMFast, class LoadA, class LoadB, class Store>
inline void launch_gemm(const GemmPlan& plan, int64_t M, int64_t N, int64_t K, LoadA la, LoadB lb, Store st, const char* name,
                        const std::string& shape) {
    if (M <= 0 || N <= 0) return;
    check_gemm_size(M, N, K, name, shape);
    const GemmKernel kernel = plan.kernel;
    count_gemm(kernel, M, N, K);
    if constexpr (!kAMFast && IsGather<LoadA>::value)  // Vector reads as Rows where the wide kernel does not apply
        la.rows = gather_mode() != GatherMode::Generic && la.C % 16 == 0;  // the kernels assert 16-deep slices
    const GemmGrid g = plan.grid;
    const dim3 grid(g.x, g.y, g.z);
    if (g.y > 65535 || g.z > 65535) ::pin::detail::throw_error("CUDA ", name, " ", shape, ": too many column tiles or K chunks");
    if (kernel == GemmKernel::OneOutput || kernel == GemmKernel::OneInput) {
        if constexpr (kPerPixelForm<kAMFast, LoadA, LoadB>) {
            if (kernel == GemmKernel::OneOutput) {
                const bool vec = la.C % 4 == 0 && aligned16(la.src) && aligned16(lb.a);
                PIN_LAUNCH(static_cast<unsigned>((M + kOneOutputRows - 1) / kOneOutputRows), THREADS, cur(), conv_one_output_kernel)(
                    M, la, lb.a, vec, st);
            } else {
                bool vec = false;
                if constexpr (HasStore4<Store>::value) vec = st.vectors_ok();
                bool banded = false;  // by conv_stem_band_kernel (3 x 3 stems), else per pixel
                if constexpr (!LoadA::kIsTransposed) {
                    StemBand band;
                    if (stem_band(la, N, band)) {
                        const int64_t blocks = (M / (la.Ho * la.Wo)) * ((la.Ho + band.rows - 1) / band.rows);
                        if (blocks >= (int64_t{1} << 31)) ::pin::detail::throw_error("CUDA ", name, " ", shape, ": too many images");
                        PIN_LAUNCH(static_cast<unsigned>(blocks), THREADS, cur(), conv_stem_band_kernel)(la, lb.a, N, band, vec, st);
                        count_gemm(GemmKernel::OneInputBands, M, N, K);
                        banded = true;
                    }
                }
                if (!banded && N % 16 == 0) {  // 4 groups per thread
                    const unsigned total = static_cast<unsigned>(M * (N / 16));
                    PIN_LAUNCH((total + THREADS - 1) / THREADS, THREADS, cur(), conv_one_input_kernel<4>)(total, M, N, la, lb.a, vec, st);
                } else if (!banded) {
                    const unsigned total = static_cast<unsigned>(M * (N / 4));
                    PIN_LAUNCH((total + THREADS - 1) / THREADS, THREADS, cur(), conv_one_input_kernel<1>)(total, M, N, la, lb.a, vec, st);
                }
            }
        }
    } else if (kernel == GemmKernel::Wide) {
        if constexpr (!std::is_same<decltype(wide_form<kAMFast>(la, lb)), NoWideForm>::value)
            PIN_LAUNCH(grid, THREADS, cur(), gemm_wide_kernel)(M, N, K, g.chunk, wide_form<kAMFast>(la, lb), st);
    } else if (kernel == GemmKernel::TensorCore) {
        if (math_mode() == MathMode::TF32)
            launch_tensor_core<Tf32Mma, kAMFast>(grid, M, N, K, g.chunk, la, lb, st);
        else
            launch_tensor_core<Bf16Mma, kAMFast>(grid, M, N, K, g.chunk, la, lb, st);
    } else {
        PIN_LAUNCH(grid, THREADS, cur(), gemm_kernel<kAMFast>)(M, N, K, g.chunk, la, lb, st);
    }
    check(cudaGetLastError(), name, shape);
}
template <bool kAMFast, class LoadA, class LoadB, class Store>
inline void launch_gemm(int64_t M, int64_t N, int64_t K, int64_t splits, LoadA la, LoadB lb, Store st, const char* name,
                        const std::string& shape) {
    launch_gemm<kAMFast>(plan_gemm<kAMFast>(M, N, K, splits, la, lb), M, N, K, la, lb, st, name, shape);
}
// An int remembered per device, for the per-device caches (kernel attributes set, device attributes
// asked): the first 64 devices; beyond them nothing is remembered (get is false), which only costs a
// runtime call. Zero-initialised as a static: nothing remembered.
class PerDeviceValue {
public:
    bool get(int device, int& value) const {
        if (device < 0 || device >= kDevices) return false;
        const int64_t v = slots_[device].load();
        value = static_cast<int>(v - kOffset);
        return v != 0;
    }
    void set(int device, int value) {
        if (device >= 0 && device < kDevices) slots_[device].store(value + kOffset);
    }

private:
    static constexpr int kDevices = 64;
    static constexpr int64_t kOffset = int64_t{1} << 32;  // value + kOffset: never 0 for an int
    std::atomic<int64_t> slots_[kDevices] = {};
};
// An attribute of the current device, asked of the runtime once per device (the convolutions ask on
// every launch); false where there is no usable device. The emulated runtime's answers may change
// within a process (tests/cuda_runtime_emulation.cpp: PIN_EMULATE_SHARED_PER_BLOCK), so under the
// emulation it asks every time.
template <cudaDeviceAttr kAttribute>
inline bool current_device_attribute(int& value) {
    static PerDeviceValue known;
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return false;
#if !defined(PIN_CUDA_EMULATION)
    if (known.get(device, value)) return true;
#endif
    if (cudaDeviceGetAttribute(&value, kAttribute, device) != cudaSuccess || value < 0) return false;
    known.set(device, value);
    return true;
}
// Whether a block of the current device may have `bytes` of dynamic shared memory (once allowed
// with cudaFuncSetAttribute). sm_90 and sm_80 allow 227 and 163 KB, the 8.6 and 8.9 cards 99 KB: the
// sm_80 build runs there by binary compatibility, and its 256 x 128 asynchronous-copy tile (135 KB)
// would be refused at launch, so the callers fall back to a tile that fits.
inline bool device_shared_fits(int bytes) {
    int optin = 0;
    return current_device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(optin) && bytes <= optin;
}
// Sets attribute kAttribute of kernel kKernel to `value` on the current device, asking the runtime
// only when that is not what this process last set there. A kernel's attributes belong to each
// device's context: a process that goes on to another device (cudaSetDevice) sets them again there,
// which a cache of one value per kernel would skip, and the next launch there would fail.
template <auto kKernel, cudaFuncAttribute kAttribute>
inline void set_kernel_attribute(int value, const char* name, const std::string& shape) {
    static PerDeviceValue set_to;
    int device = 0, was = 0;
    check(cudaGetDevice(&device), name, shape);
    if (set_to.get(device, was) && was == value) return;
    check(cudaFuncSetAttribute(reinterpret_cast<const void*>(kKernel), kAttribute, value), name, shape);
    set_to.set(device, value);
}
// Launches the asynchronous-copy kernel (gemm_kernels.cuh gemm_async_kernel) on any of its operand
// forms (Operands::Tile), K in `splits` chunks; the caller has checked that the form fits.
template <class Operands, class Store>
inline void launch_async(int64_t M, int64_t N, int64_t K, int64_t splits, const Operands& ops, const Store& st, const char* name,
                         const std::string& shape) {
    using T = typename Operands::Tile;
    check_gemm_size(M, N, K, name, shape);
    const GemmGrid g = gemm_grid(M, N, K, splits, tile_of_async<T>());
    if (g.y > 65535 || g.z > 65535) ::pin::detail::throw_error("CUDA ", name, " ", shape, ": too many column tiles or K chunks");
    // Its shared memory is over the 48 KB a kernel gets without asking.
    constexpr int bytes = T::smem_bytes;
    set_kernel_attribute<&gemm_async_kernel<Operands, Store>, cudaFuncAttributeMaxDynamicSharedMemorySize>(bytes, name, shape);
    count_gemm(GemmKernel::Async, M, N, K);
    if (T::cols == 128) count_gemm(GemmKernel::AsyncCols128, M, N, K);
    PIN_LAUNCH_SHARED(dim3(g.x, g.y, g.z), THREADS, bytes, cur(), gemm_async_kernel)(M, N, K, g.chunk, ops, st);
    check(cudaGetLastError(), name, shape);
}
// Whether the asynchronous-copy kernel may run (MathMode::BF16 with GatherMode::Vector), and with
// the 256 x 128 tile Tile128 a GEMM with N columns (AsyncTileShape): where asked for, N allows it and
// the device gives a block its shared memory (else the 256 x 64 tile runs, as kernel_launches() shows).
inline bool async_mode() { return math_mode() == MathMode::BF16 && gather_mode() == GatherMode::Vector; }
template <class Tile128>
inline bool async_cols128(int64_t N) {
    static_assert(Tile128::cols == 128, "the 256 x 128 tiles");
    return async_tile() == AsyncTileShape::Cols128 && N % 128 == 0 && device_shared_fits(Tile128::smem_bytes);
}
// Whether the gathered operands' copies go through L1 too (ops.cuh GatherCaching).
inline bool gather_l1() { return gather_caching() == GatherCaching::L1; }
// Whether the warpgroup-MMA kernel is asked for (AsyncTileShape::Wgmma, in the asynchronous-copy
// kernel's modes); whether it can run on this device and these operands, its launchers decide.
inline bool wgmma_requested() { return async_mode() && async_tile() == AsyncTileShape::Wgmma; }
// The convolution epilogue behind a GEMM's store, if it has one the warpgroup-MMA kernel can take:
// a ConvStore itself (direct and stride-1 transposed gathers) or one behind the sub-pixel classes'
// row mapping.
template <class Store, class LoadA>
struct WgmmaEpilogue : std::false_type {};
template <class Y, class LoadA>
struct WgmmaEpilogue<ConvStore<Y>, LoadA> : std::true_type {
    static const ConvStore<Y>& of(const ConvStore<Y>& st) { return st; }
};
template <class Y>  // a sub-pixel class's rows are not the output's: only through the row mapping
struct WgmmaEpilogue<ConvStore<Y>, SubpixelGather<Bf16>> : std::false_type {};
template <class Y>
struct WgmmaEpilogue<RowMappedStore<ConvStore<Y>, SubpixelGather<Bf16>>, SubpixelGather<Bf16>> : std::true_type {
    static const ConvStore<Y>& of(const RowMappedStore<ConvStore<Y>, SubpixelGather<Bf16>>& st) { return st.st; }
};
template <class Y>
internal::ConvOutput conv_output(const ConvStore<Y>& st) {
    return {st.y, std::is_same<Y, Bf16>::value, st.N, st.bias, st.slope, st.accumulate};
}
// The warpgroup-MMA kernel for a forward convolution's GEMM (internal::conv_wgmma), where
// AsyncTileShape::Wgmma asks for it, K-major weights are given and it applies. Returns whether it
// ran the GEMM.
template <class LoadA, class Store>
inline bool launch_wgmma_conv(int64_t M, int64_t N, int64_t K, const LoadA& la, const Bf16* wk, int64_t ldk, const Store& st,
                              const char* name, const std::string& shape) {
    if (!wk || !wgmma_requested()) return false;
    if constexpr (WgmmaEpilogue<Store, LoadA>::value)
        return internal::conv_wgmma(la, M, N, K, wk, ldk, conv_output(WgmmaEpilogue<Store, LoadA>::of(st)), name, shape);
    else
        return false;
}
// The asynchronous-copy kernel for a convolution GEMM whose operands are both bfloat16 in memory,
// where it applies: async_mode() and what fits() accepts; before it, where they apply, the
// warpgroup-MMA kernel (launch_wgmma_conv). Returns whether it ran the GEMM (if not, the caller
// launches it otherwise).
// w: the whole gather's packed weights as bfloat16 (rows (tap C + c), N columns); wk: the same
// K-major (rows ldk apart), or null.
template <class LoadA, class Store>
inline bool launch_async_gemm(int64_t M, int64_t N, int64_t K, const LoadA& la, const Bf16* w, const Store& st, const char* name,
                              const std::string& shape, const Bf16* wk = nullptr, int64_t ldk = 0) {
    if (launch_wgmma_conv(M, N, K, la, wk, ldk, st, name, shape)) return true;
    const bool l1 = gather_l1();
    const AsyncConvOperands<LoadA> ops{la, w, N, l1};
    if (!async_mode() || !ops.fits(M, N, K, 1)) return false;
    if (M <= 0 || N <= 0) return true;
    if (async_cols128<AsyncTileCols128>(N))
        launch_async(M, N, K, 1, AsyncConvOperands<LoadA, AsyncTileCols128>{la, w, N, l1}, st, name, shape);
    else
        launch_async(M, N, K, 1, ops, st, name, shape);
    return true;
}

// ---- element-wise --------------------------------------------------------------------------------
template <class F>
__global__ void map_kernel(int64_t n, F f) {
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
        f(i);
}
template <class F>
inline void launch_map(int64_t n, F f, const char* name) {
    if (n <= 0) return;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65535));
    PIN_LAUNCH(blocks, 256, cur(), map_kernel)(n, f);
    check(cudaGetLastError(), name, "(" + std::to_string(n) + " elements)");
}

// Stores the sum over no products, 0, at every (m, n) of an M x N GEMM: what its store makes of it
// (ConvStore: act(bias) or, accumulating, the value as it was).
template <class Store>
struct StoreEmptySum {
    Store st;
    int64_t N;
    __device__ void operator()(int64_t i) const { st(0, i / N, i % N, 0.0f); }
};
// Whether that leaves the output as it was: a convolution's accumulating store without a bias
// adds act(0) = 0 (PReLU keeps 0). Unknown stores: no.
template <class Store>
bool empty_sum_changes_nothing(const Store&) { return false; }
template <class Y>
bool empty_sum_changes_nothing(const ConvStore<Y>& st) { return st.accumulate && !st.bias; }

// A GEMM whose A is a transposed gather (transposed convolution forward, convolution input
// gradient) with the weights packed as rows (kh k + kw) C + c: with GatherMode Rows or Vector and
// a stride that leaves some taps out of every output pixel, one GEMM per sub-pixel class over its
// own pixels and taps (gather.cuh SubpixelGather: at stride 2 a quarter of the products), else one
// over the whole gather. A class without taps (a kernel smaller than the stride: the input gradient
// of a 1 x 1 stride-2 convolution, whose whole gather is 3/4 zero rows) has nothing to multiply:
// its pixels get the store of an empty sum (StoreEmptySum), unless that changes nothing.
// wb: the same weights as bfloat16, or null; with a bfloat16 source they let each GEMM run on the
// asynchronous-copy kernel where it applies; wk: also K-major, or null (launch_async_gemm).
template <class Src, class Store>
inline void launch_transposed_gemm(const Gather<true, Src>& g, int64_t batch, const float* w, int64_t N, Store st, const char* name,
                            const std::string& shape, const Bf16* wb = nullptr, const Bf16* wk = nullptr) {
    constexpr bool kBf16 = std::is_same<Src, Bf16>::value;
    const int64_t M = batch * g.Ho * g.Wo, K = g.K * g.K * g.C;
    if (gather_mode() == GatherMode::Generic || g.stride == 1) {
        if constexpr (kBf16) {
            if (wb && launch_async_gemm(M, N, K, g, wb, st, name, shape, wk, K)) return;
        }
        launch_gemm<false>(M, N, K, 1, g, RowMajor{w, N}, st, name, shape);
        return;
    }
    for (int ry = 0; ry < g.stride; ++ry)
        for (int rx = 0; rx < g.stride; ++rx) {
            const SubpixelGather<Src> sg = subpixel_gather(g, ry, rx);
            if (sg.rows_per_image() == 0) continue;
            const int64_t Mc = batch * sg.rows_per_image();
            const RowMappedStore<Store, SubpixelGather<Src>> mapped{st, sg};
            if (sg.depth() == 0) {
                if (!empty_sum_changes_nothing(st)) launch_map(Mc * N, StoreEmptySum<RowMappedStore<Store, SubpixelGather<Src>>>{mapped, N}, name);
                continue;
            }
            if constexpr (kBf16) {
                if (wb && launch_async_gemm(Mc, N, sg.depth(), sg, wb, mapped, name, shape, wk, K)) continue;
            }
            launch_gemm<false>(Mc, N, sg.depth(), 1, sg, SubpixelWeights<SubpixelGather<Src>>{w, N, sg}, mapped, name, shape);
        }
}
// How many K chunks a weight gradient uses: enough blocks to fill the GPU, chunks of >= 1024.
inline int64_t split_for(int64_t M, int64_t N, int64_t K, Tile t = kFp32Tile) {
    const int64_t tiles = ((M + t.m - 1) / t.m) * ((N + t.n - 1) / t.n);
    return std::max<int64_t>(1, std::min<int64_t>((528 + tiles - 1) / tiles, K / 1024));
}


struct PartialStore {
    float* partial;
    int64_t M, N;
    __device__ void operator()(int64_t z, int64_t m, int64_t n, float v) const { partial[(z * M + m) * N + n] = v; }
    __device__ void store4(int64_t z, int64_t m, int64_t n, const float (&v)[4]) const { pin::cuda::store4(partial + (z * M + m) * N + n, v); }
    __device__ bool vectors_ok() const { return vector_aligned(partial) && N % 4 == 0; }
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
inline DeviceBuffer pack_weight(const float* w, int64_t Cn, int64_t Ck, int64_t K, bool n_outer, const char* name) {
    DeviceBuffer out(static_cast<size_t>(Cn * Ck * K * K));
    const int64_t total = Cn * Ck * K * K;
    PIN_LAUNCH(static_cast<unsigned>((total + 255) / 256), 256, cur(), pack_weight_kernel)(w, out.data(), Cn, Ck, K, n_outer);
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
// The asynchronous-copy kernel's weight-gradient form: (m = (kh, kw, c), n = out channel) -> w[(n, c, kh, kw)].
struct TransposedWeightMap {
    int64_t C, K;
    __device__ int64_t operator()(int64_t m, int64_t n) const {
        const int64_t c = m % C, tap = m / C;
        return (n * C + c) * K * K + tap;
    }
};
struct IdentityMap {
    int64_t N;
    __device__ int64_t operator()(int64_t m, int64_t n) const { return m * N + n; }
};

// The split-K partials of a weight gradient: z chunks of M x N.
inline DeviceBuffer partial_buffer(int64_t z, int64_t M, int64_t N) { return DeviceBuffer(static_cast<size_t>(z * M * N)); }
template <class Map>
inline void reduce_partials(const DeviceBuffer& partial, int64_t z, int64_t M, int64_t N, Map map, float* dst, const std::string& shape) {
    PIN_LAUNCH(static_cast<unsigned>((M * N + 255) / 256), 256, cur(), reduce_partials_kernel)(partial.data(), z, M, N, map, dst);
    check(cudaGetLastError(), "reduce_partials", shape);
}
template <class LoadA, class LoadB, class Map>
inline void gemm_split_reduce(int64_t M, int64_t N, int64_t K, LoadA la, LoadB lb, Map map, float* dst, const char* name,
                       const std::string& shape) {
    const GemmPlan plan = plan_gemm<true>(M, N, K, split_for(M, N, K), la, lb);
    const int64_t z = plan.grid.z;
    DeviceBuffer partial = partial_buffer(z, M, N);
    launch_gemm<true>(plan, M, N, K, la, lb, PartialStore{partial.data(), M, N}, name, shape);
    reduce_partials(partial, z, M, N, map, dst, shape);
}

}  // namespace
}  // namespace pin::cuda
