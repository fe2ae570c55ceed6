// cuda/ops.cu - the GPU kernels behind cuda/ops.cuh.
//
// One tiled GEMM (cuda/gemm_kernels.cuh: fp32 FMA, or TF32/BF16 tensor cores, per MathMode) serves
// every convolution direction and the linear layer: the operands are functors that gather from
// NHWC activations (implicit GEMM), so no im2col buffer is ever built.
// Why functors rather than one kernel per op: the index arithmetic is the only thing that differs,
// and keeping it in one place keeps the six convolution directions consistent with the CPU's.
// Long reductions (weight gradients sum over every pixel of the batch) are split along K into
// fixed chunks written to a scratch buffer and summed in chunk order: deterministic, unlike atomics.
#include "ops.cuh"
#include "bfloat16.cuh"
#include "gather.cuh"
#include "gemm_kernels.cuh"
#include "launch.cuh"
#include "reduce_kernels.cuh"

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <curand_kernel.h>  // host code too: the emulated backend draws with the same source
#include <mma.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <map>
#include <mutex>
#include <sstream>
#include <vector>

#include "pin/core/error.hpp"
#include "pin/core/rng.hpp"

namespace pin::cuda {

namespace {
using namespace gemm;
using namespace kernels;

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
// Never destroyed: a DeviceBuffer destroyed after main (in a static) still returns its block, and
// the cached blocks stay reachable to the end (to leak checkers as well; the driver frees them).
std::mutex& pool_mutex() {
    static std::mutex* m = new std::mutex;
    return *m;
}
std::multimap<std::pair<void*, size_t>, float*>& pool() {
    static auto* p = new std::multimap<std::pair<void*, size_t>, float*>;
    return *p;
}

// Convolutions with one output channel (GatherMode Rows or Vector; gather.cuh gather_dot): a thread
// per output pixel, fp32 sums in every math mode. The GEMM kernels would fill 1 of their 64 columns
// (the DAE's last layer, 64 -> 1 at 112 x 112, twice per forward).
template <class G, class Store>
__global__ void conv_one_output_kernel(int64_t M, G la, const float* w, bool vec, Store st) {
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
std::atomic<int>& activation_storage_flag() {
    static std::atomic<int> storage{static_cast<int>(ActivationStorage::FP32)};
    return storage;
}
std::atomic<int>& mask_sampler_flag() {
    static std::atomic<int> sampler{static_cast<int>(MaskSampler::Pin)};
    return sampler;
}

// Convolutions with one input channel (the stems; GatherMode Rows or Vector; gather.cuh
// gather_one_input): a thread per (output pixel, 4 output channels), fp32 in every math mode; a
// warp writes 2 pixels' 64 channels, 512 contiguous bytes. total = M N / 4 < 2^32 - 256 (the launch
// checks).
template <class G, class Store>
__global__ void conv_one_input_kernel(unsigned total, int64_t M, int64_t N, G la, const float* w, Store st) {
    const unsigned idx = blockIdx.x * blockDim.x + threadIdx.x, groups = static_cast<unsigned>(N / 4);
    if (idx >= total) return;
    const unsigned m = idx / groups, n = (idx - m * groups) * 4;
    float v[4];
    gather_one_input(la, w, N, m, M, n, v);
    for (int j = 0; j < 4; ++j) st(0, m, n + j, v[j]);
}

// Which kernel a GEMM runs on: the math mode, the gather mode, and what the operands allow.
enum class GemmKernel { Fp32, TensorCore, Wide, OneOutput, OneInput, Async };
std::atomic<int64_t> g_launches[6];  // by GemmKernel
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
GemmKernel choose_kernel(int64_t M, int64_t N, int64_t K, int64_t splits, const LoadA& la, const LoadB& lb) {
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
Tile tile_of(GemmKernel k) { return k == GemmKernel::Wide ? kWideTile : k == GemmKernel::TensorCore ? kTensorCoreTile : kFp32Tile; }

// M tiles go on grid.x (up to 2^31 - 1 blocks; grid.y stops at 65535, which batch 1024 at 112 x 112
// exceeded), N tiles on y, K chunks on z. The gathers index in 32 bits: refuse larger problems.
void check_gemm_size(int64_t M, int64_t N, int64_t K, const char* name, const std::string& shape) {
    if (M >= (int64_t{1} << 31) || N >= (int64_t{1} << 31) || K >= (int64_t{1} << 31))
        ::pin::detail::throw_error("CUDA ", name, " ", shape, ": a GEMM dimension reaches 2^31 (M ", M, ", N ", N, ", K ", K,
                                   "); use a smaller batch");
}
template <bool kAMFast, class LoadA, class LoadB, class Store>
void launch_gemm(int64_t M, int64_t N, int64_t K, int64_t splits, LoadA la, LoadB lb, Store st, const char* name,
                 const std::string& shape) {
    if (M <= 0 || N <= 0) return;
    check_gemm_size(M, N, K, name, shape);
    const GemmKernel kernel = choose_kernel<kAMFast>(M, N, K, splits, la, lb);
    g_launches[static_cast<int>(kernel)].fetch_add(1, std::memory_order_relaxed);
    if constexpr (!kAMFast && IsGather<LoadA>::value)  // Vector reads as Rows where the wide kernel does not apply
        la.rows = gather_mode() != GatherMode::Generic && la.C % 16 == 0;  // the kernels assert 16-deep slices
    const GemmGrid g = gemm_grid(M, N, K, splits, tile_of(kernel));
    const dim3 grid(g.x, g.y, g.z);
    if (g.y > 65535 || g.z > 65535) ::pin::detail::throw_error("CUDA ", name, " ", shape, ": too many column tiles or K chunks");
    if (kernel == GemmKernel::OneOutput || kernel == GemmKernel::OneInput) {
        if constexpr (kPerPixelForm<kAMFast, LoadA, LoadB>) {
            if (kernel == GemmKernel::OneOutput) {
                const bool vec = la.C % 4 == 0 && aligned16(la.src) && aligned16(lb.a);
                PIN_LAUNCH(static_cast<unsigned>((M + THREADS - 1) / THREADS), THREADS, cur(), conv_one_output_kernel)(M, la, lb.a, vec, st);
            } else {
                const unsigned total = static_cast<unsigned>(M * (N / 4));
                PIN_LAUNCH((total + THREADS - 1) / THREADS, THREADS, cur(), conv_one_input_kernel)(total, M, N, la, lb.a, st);
            }
        }
    } else if (kernel == GemmKernel::Wide) {
        if constexpr (!std::is_same<decltype(wide_form<kAMFast>(la, lb)), NoWideForm>::value)
            PIN_LAUNCH(grid, THREADS, cur(), gemm_wide_kernel)(M, N, K, g.chunk, wide_form<kAMFast>(la, lb), st);
    } else if (kernel == GemmKernel::TensorCore) {
        if (math_mode() == MathMode::TF32)
            PIN_LAUNCH(grid, THREADS, cur(), gemm_tensor_core_kernel<Tf32Mma, kAMFast>)(M, N, K, g.chunk, la, lb, st);
        else
            PIN_LAUNCH(grid, THREADS, cur(), gemm_tensor_core_kernel<Bf16Mma, kAMFast>)(M, N, K, g.chunk, la, lb, st);
    } else {
        PIN_LAUNCH(grid, THREADS, cur(), gemm_kernel<kAMFast>)(M, N, K, g.chunk, la, lb, st);
    }
    check(cudaGetLastError(), name, shape);
}
// The asynchronous-copy kernel (gemm_kernels.cuh gemm_async_kernel) for a GEMM whose operands are
// both bfloat16 in memory, where it applies: MathMode::BF16, GatherMode::Vector, and what fits()
// accepts. Returns whether it ran the GEMM (if not, the caller launches it otherwise).
// w: the whole gather's packed weights as bfloat16 (rows (tap C + c), N columns).
template <class LoadA, class Store>
bool launch_async_gemm(int64_t M, int64_t N, int64_t K, const LoadA& la, const Bf16* w, const Store& st, const char* name,
                       const std::string& shape) {
    const AsyncConvOperands<LoadA> ops{la, w, N};
    if (math_mode() != MathMode::BF16 || gather_mode() != GatherMode::Vector || !ops.fits(M, N, K, 1)) return false;
    if (M <= 0 || N <= 0) return true;
    check_gemm_size(M, N, K, name, shape);
    const GemmGrid g = gemm_grid(M, N, K, 1, kAsyncTile);
    if (g.y > 65535) ::pin::detail::throw_error("CUDA ", name, " ", shape, ": too many column tiles");
    // Its shared memory is over the 48 KB a kernel gets without asking: ask once per instantiation.
    constexpr int bytes = AsyncTileUsed::smem_bytes;
    static const cudaError_t allowed = cudaFuncSetAttribute(reinterpret_cast<const void*>(&gemm_async_kernel<AsyncConvOperands<LoadA>, Store>),
                                                            cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    check(allowed, name, shape);
    g_launches[static_cast<int>(GemmKernel::Async)].fetch_add(1, std::memory_order_relaxed);
    PIN_LAUNCH_SHARED(dim3(g.x, g.y, 1), THREADS, bytes, cur(), gemm_async_kernel)(M, N, K, ops, st);
    check(cudaGetLastError(), name, shape);
    return true;
}

// A GEMM whose A is a transposed gather (transposed convolution forward, convolution input
// gradient) with the weights packed as rows (kh k + kw) C + c: with GatherMode Rows or Vector and
// a stride that leaves some taps out of every output pixel, one GEMM per sub-pixel class over its
// own pixels and taps (gather.cuh SubpixelGather: at stride 2 a quarter of the products), else one
// over the whole gather.
// wb: the same weights as bfloat16, or null; with a bfloat16 source they let each GEMM run on the
// asynchronous-copy kernel where it applies.
template <class Src, class Store>
void launch_transposed_gemm(const Gather<true, Src>& g, int64_t batch, const float* w, int64_t N, Store st, const char* name,
                            const std::string& shape, const Bf16* wb = nullptr) {
    constexpr bool kBf16 = std::is_same<Src, Bf16>::value;
    const int64_t M = batch * g.Ho * g.Wo, K = g.K * g.K * g.C;
    if (gather_mode() == GatherMode::Generic || g.stride == 1 || g.K < g.stride) {
        if constexpr (kBf16) {
            if (wb && launch_async_gemm(M, N, K, g, wb, st, name, shape)) return;
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
            if constexpr (kBf16) {
                if (wb && launch_async_gemm(Mc, N, sg.depth(), sg, wb, mapped, name, shape)) continue;
            }
            launch_gemm<false>(Mc, N, sg.depth(), 1, sg, SubpixelWeights<SubpixelGather<Src>>{w, N, sg}, mapped, name, shape);
        }
}
// How many K chunks a weight gradient uses: enough blocks to fill the GPU, chunks of >= 1024.
int64_t split_for(int64_t M, int64_t N, int64_t K) {
    const int64_t tiles = ((M + BM - 1) / BM) * ((N + BN - 1) / BN);
    return std::max<int64_t>(1, std::min<int64_t>((528 + tiles - 1) / tiles, K / 1024));
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
void with_storage(ConstActivations x, Activations y, F f) {
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
DeviceBuffer pack_weight(const float* w, int64_t Cn, int64_t Ck, int64_t K, bool n_outer, const char* name) {
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
struct IdentityMap {
    int64_t N;
    __device__ int64_t operator()(int64_t m, int64_t n) const { return m * N + n; }
};

template <class LoadA, class LoadB, class Map>
void gemm_split_reduce(int64_t M, int64_t N, int64_t K, LoadA la, LoadB lb, Map map, float* dst, const char* name,
                       const std::string& shape) {
    const int64_t splits = split_for(M, N, K);
    const int64_t z = gemm_grid(M, N, K, splits, tile_of(choose_kernel<true>(M, N, K, splits, la, lb))).z;  // as launch_gemm chunks K
    DeviceBuffer partial(static_cast<size_t>(z * M * N));
    launch_gemm<true>(M, N, K, splits, la, lb, PartialStore{partial.data(), M, N}, name, shape);
    PIN_LAUNCH(static_cast<unsigned>((M * N + 255) / 256), 256, cur(), reduce_partials_kernel)(partial.data(), z, M, N, map, dst);
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
    PIN_LAUNCH(blocks, 256, cur(), map_kernel)(n, f);
    check(cudaGetLastError(), name, "(" + std::to_string(n) + " elements)");
}

// out[c] = sum over r of f(r * channels + c), c < channels (zeros when rows is 0).
template <class F>
void channel_sum(int64_t rows, int64_t channels, F f, float* out, const char* name, const std::string& shape) {
    if (channels <= 0) return;
    const ChannelSumChunks ch = channel_sum_chunks(rows);
    const int64_t rows_per_chunk = ch.rows_per_chunk, chunks = ch.chunks;
    const int64_t channel_blocks = (channels + kChannelSumLanes - 1) / kChannelSumLanes;
    PIN_CHECK(channel_blocks <= 65535, name, ": ", channels, " channels are more than the channel sum's grid allows");
    DeviceBuffer partial(static_cast<size_t>(2 * chunks * channels));  // doubles
    double* part = reinterpret_cast<double*>(partial.data());
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(channel_blocks)), block(kChannelSumLanes, kChannelSumRowLanes);
    PIN_LAUNCH(grid, block, cur(), channel_sum_partial_kernel)(rows, channels, rows_per_chunk, f, part);
    check(cudaGetLastError(), name, shape);
    PIN_LAUNCH(static_cast<unsigned>((channels + 255) / 256), 256, cur(), channel_sum_final_kernel)(chunks, channels, part, out);
    check(cudaGetLastError(), name, shape);
}

}  // namespace

void set_math_mode(MathMode mode) { math_mode_flag() = static_cast<int>(mode); }
MathMode math_mode() { return static_cast<MathMode>(math_mode_flag().load()); }
void set_gather_mode(GatherMode mode) { gather_mode_flag() = static_cast<int>(mode); }
KernelLaunches kernel_launches() {
    KernelLaunches k;
    k.fp32 = g_launches[static_cast<int>(GemmKernel::Fp32)].load();
    k.tensor_core = g_launches[static_cast<int>(GemmKernel::TensorCore)].load();
    k.wide = g_launches[static_cast<int>(GemmKernel::Wide)].load();
    k.one_output = g_launches[static_cast<int>(GemmKernel::OneOutput)].load();
    k.one_input = g_launches[static_cast<int>(GemmKernel::OneInput)].load();
    k.async = g_launches[static_cast<int>(GemmKernel::Async)].load();
    return k;
}
GatherMode gather_mode() { return static_cast<GatherMode>(gather_mode_flag().load()); }
void set_activation_storage(ActivationStorage storage) { activation_storage_flag() = static_cast<int>(storage); }
ActivationStorage activation_storage() { return static_cast<ActivationStorage>(activation_storage_flag().load()); }
void set_mask_sampler(MaskSampler sampler) { mask_sampler_flag() = static_cast<int>(sampler); }
MaskSampler mask_sampler() { return static_cast<MaskSampler>(mask_sampler_flag().load()); }

// ---- DeviceBuffer ----------------------------------------------------------------------------------
DeviceBuffer::DeviceBuffer(size_t floats) : floats_(floats), stream_(cur()) {
    if (floats == 0) return;
    {
        std::lock_guard<std::mutex> lock(pool_mutex());
        auto it = pool().find({stream_, floats});
        if (it != pool().end()) {
            ptr_ = it->second;
            pool().erase(it);
#if defined(PIN_CUDA_EMULATION)
            // As new memory in the emulated runtime: NaNs, so a kernel that reads what nothing wrote
            // fails its test instead of finding the last user's values.
            std::memset(ptr_, 0xff, floats * sizeof(float));
#endif
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

DeviceBuffer pack_bf16(const float* x, int64_t n) {
    DeviceBuffer out(static_cast<size_t>((n + 1) / 2));
    Bf16* const o = reinterpret_cast<Bf16*>(out.data());
    launch_map(n, [=] __device__(int64_t i) { o[i] = to_bf16(x[i]); }, "pack_bf16");
    return out;
}
DeviceBuffer pack_conv2d_forward_weight(const float* w, const ConvShape& s) {
    return pack_weight(w, s.out_c, s.in_c, s.kernel, true, "pack conv2d weight");
}
DeviceBuffer pack_conv_transpose2d_forward_weight(const float* w, const ConvShape& s) {
    return pack_weight(w, s.out_c, s.in_c, s.kernel, false, "pack conv_transpose2d weight");
}

void conv2d_forward(ConstActivations x, const float* w, Activations y, const ConvShape& s, const float* bias, const float* prelu_slope,
                    bool accumulate, PackedWeight packed) {
    const int64_t Ho = conv2d_out(s, s.in_h), Wo = conv2d_out(s, s.in_w), K = s.kernel;
    with_storage(x, y, [&](auto xs, auto ys) {
        using Src = std::remove_const_t<std::remove_pointer_t<decltype(xs)>>;
        using Y = std::remove_pointer_t<decltype(ys)>;
        const int64_t M = s.batch * Ho * Wo, Kg = K * K * s.in_c;
        const Gather<false, Src> g{xs, Ho, Wo, s.in_h, s.in_w, s.in_c, K, s.stride, s.padding};
        const ConvStore<Y> st{ys, s.out_c, bias, prelu_slope, accumulate};
        if constexpr (std::is_same<Src, Bf16>::value) {
            if (packed.bf16 && launch_async_gemm(M, s.out_c, Kg, g, packed.bf16, st, "conv2d_forward", shape_of(s))) return;
        }
        const DeviceBuffer wp = packed.fp32 ? DeviceBuffer() : pack_conv2d_forward_weight(w, s);
        launch_gemm<false>(M, s.out_c, Kg, 1, g, RowMajor{packed.fp32 ? packed.fp32 : wp.data(), s.out_c}, st, "conv2d_forward",
                           shape_of(s));
    });
}

void conv2d_backward_input(const float* dy, const float* w, float* dx, const ConvShape& s) {
    const int64_t Ho = conv2d_out(s, s.in_h), Wo = conv2d_out(s, s.in_w), K = s.kernel;
    // dx[(b, ih, iw), ci] = sum over (kh, kw, co) of dy[b, (ih + p - kh) / s, ...][co] w[co, ci, kh, kw]
    const DeviceBuffer wp = pack_weight(w, s.in_c, s.out_c, K, false, "pack conv2d weight (input gradient)");
    launch_transposed_gemm(Gather<true>{dy, s.in_h, s.in_w, Ho, Wo, s.out_c, K, s.stride, s.padding}, s.batch, wp.data(), s.in_c,
                           ConvStore<>{dx, s.in_c, nullptr, nullptr, false}, "conv2d_backward_input", shape_of(s));
}

void conv2d_backward_weight(const float* x, const float* dy, float* dw, const ConvShape& s) {
    const int64_t Ho = conv2d_out(s, s.in_h), Wo = conv2d_out(s, s.in_w), K = s.kernel;
    // dw[co, (kh, kw, ci)] = sum over output pixels of dy[pix, co] x_gather(pix, (kh, kw, ci))
    gemm_split_reduce(s.out_c, K * K * s.in_c, s.batch * Ho * Wo, ColMajor{dy, s.out_c},
                      Gather<false>{x, Ho, Wo, s.in_h, s.in_w, s.in_c, K, s.stride, s.padding}, WeightMap{s.in_c, K}, dw,
                      "conv2d_backward_weight", shape_of(s));
}

void conv_transpose2d_forward(ConstActivations x, const float* w, Activations y, const ConvShape& s, const float* prelu_slope,
                              PackedWeight packed) {
    const int64_t Ho = conv_transpose2d_out(s, s.in_h), Wo = conv_transpose2d_out(s, s.in_w), K = s.kernel;
    // y[(b, oh, ow), co] = sum over (kh, kw, ci) of x[b, (oh + p - kh) / s, ...][ci] w[ci, co, kh, kw]
    const DeviceBuffer wp = packed.fp32 ? DeviceBuffer() : pack_conv_transpose2d_forward_weight(w, s);
    with_storage(x, y, [&](auto xs, auto ys) {
        using Src = std::remove_const_t<std::remove_pointer_t<decltype(xs)>>;
        using Y = std::remove_pointer_t<decltype(ys)>;
        launch_transposed_gemm(Gather<true, Src>{xs, Ho, Wo, s.in_h, s.in_w, s.in_c, K, s.stride, s.padding}, s.batch,
                               packed.fp32 ? packed.fp32 : wp.data(), s.out_c, ConvStore<Y>{ys, s.out_c, nullptr, prelu_slope, false},
                               "conv_transpose2d_forward", shape_of(s), packed.bf16);
    });
}

void conv_transpose2d_backward_input(const float* dy, const float* w, float* dx, const ConvShape& s) {
    const int64_t Ho = conv_transpose2d_out(s, s.in_h), Wo = conv_transpose2d_out(s, s.in_w), K = s.kernel;
    // dx[(b, ih, iw), ci] = sum over (kh, kw, co) of dy[b, ih s - p + kh, ...][co] w[ci, co, kh, kw]
    const DeviceBuffer wp = pack_weight(w, s.in_c, s.out_c, K, true, "pack conv_transpose2d weight (input gradient)");
    launch_gemm<false>(s.batch * s.in_h * s.in_w, s.in_c, K * K * s.out_c, 1,
                       Gather<false>{dy, s.in_h, s.in_w, Ho, Wo, s.out_c, K, s.stride, s.padding}, RowMajor{wp.data(), s.in_c},
                       ConvStore<>{dx, s.in_c, nullptr, nullptr, false}, "conv_transpose2d_backward_input", shape_of(s));
}

void conv_transpose2d_backward_weight(const float* x, const float* dy, float* dw, const ConvShape& s) {
    const int64_t Ho = conv_transpose2d_out(s, s.in_h), Wo = conv_transpose2d_out(s, s.in_w), K = s.kernel;
    // dw[ci, (kh, kw, co)] = sum over input pixels of x[pix, ci] dy_gather(pix, (kh, kw, co))
    gemm_split_reduce(s.in_c, K * K * s.out_c, s.batch * s.in_h * s.in_w, ColMajor{x, s.in_c},
                      Gather<false>{dy, s.in_h, s.in_w, Ho, Wo, s.out_c, K, s.stride, s.padding}, WeightMap{s.out_c, K}, dw,
                      "conv_transpose2d_backward_weight", shape_of(s));
}

// ---- linear --------------------------------------------------------------------------------------------
DeviceBuffer pack_linear_forward_weight(const float* w, int64_t in, int64_t out) {
    DeviceBuffer wt(static_cast<size_t>(in * out));
    transpose(w, wt.data(), out, in);
    return wt;
}
void linear_forward(const float* x, const float* w, const float* b, float* y, int64_t batch, int64_t in, int64_t out,
                    const float* packed) {
    const DeviceBuffer wt = packed ? DeviceBuffer() : pack_linear_forward_weight(w, in, out);
    launch_gemm<false>(batch, out, in, 1, RowMajor{x, in}, RowMajor{packed ? packed : wt.data(), out}, ConvStore<>{y, out, b, nullptr, false},
                       "linear_forward", dims(batch, in, out));
}
void linear_backward_input(const float* dy, const float* w, float* dx, int64_t batch, int64_t in, int64_t out) {
    launch_gemm<false>(batch, in, out, 1, RowMajor{dy, out}, RowMajor{w, in}, ConvStore<>{dx, in, nullptr, nullptr, false},
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
namespace {
// MaskSampler::CuRand: a thread per 4 consecutive j of one image, one cuRAND Philox block (curand4)
// at counter j / 4 of subsequence first_image + b; the words become uniforms as PhiloxStream's do.
__global__ void curand_masks_kernel(const float* p, float* q, int64_t batch, int64_t n, uint64_t seed, uint64_t first_image) {
    const int64_t groups = (n + 3) / 4, t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t >= batch * groups) return;
    const int64_t b = t / groups, j0 = (t - b * groups) * 4;
    curandStatePhilox4_32_10_t state;
    curand_init(seed, first_image + static_cast<uint64_t>(b), static_cast<uint64_t>(j0), &state);
    const uint4 r = curand4(&state);
    const uint32_t words[4] = {r.x, r.y, r.z, r.w};
    for (int64_t i = 0; i < 4 && j0 + i < n; ++i) {
        const int64_t at = b * n + j0 + i;
        q[at] = p[at] > uint_to_unit_float(words[i]) ? 1.0f : 0.0f;  // PhiloxStream::bernoulli's rule
    }
}
}  // namespace

void sample_masks(const float* p, float* q, int64_t batch, int64_t n, uint64_t seed, uint64_t first_image) {
    if (mask_sampler() == MaskSampler::CuRand) {
        const int64_t threads = batch * ((n + 3) / 4);
        if (threads <= 0) return;
        PIN_LAUNCH(static_cast<unsigned>((threads + 255) / 256), 256, cur(), curand_masks_kernel)(p, q, batch, n, seed, first_image);
        check(cudaGetLastError(), "sample_masks (cuRAND)", dims(batch, n));
        return;
    }
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
namespace {
template <class Src>
void nhwc_to_nchw_from(const Src* x, float* y, int64_t batch, int64_t channels, int64_t h, int64_t w) {
    const int64_t P = h * w;
    launch_map(batch * channels * P, [=] __device__(int64_t i) {
        const int64_t pix = i % P, c = (i / P) % channels, b = i / (P * channels);
        y[i] = to_float(x[(b * P + pix) * channels + c]);
    }, "nhwc_to_nchw");
}
}  // namespace
void nhwc_to_nchw(ConstActivations x, float* y, int64_t batch, int64_t channels, int64_t h, int64_t w) {
    if (x.bf16)
        nhwc_to_nchw_from(static_cast<const Bf16*>(x.data), y, batch, channels, h, w);
    else
        nhwc_to_nchw_from(static_cast<const float*>(x.data), y, batch, channels, h, w);
}
void transpose(const float* a, float* at, int64_t rows, int64_t cols) {
    launch_map(rows * cols, [=] __device__(int64_t i) {
        const int64_t r = i / cols, c = i % cols;
        at[c * rows + r] = a[i];
    }, "transpose");
}
void project_coefficients(const float* basis, const float* mean, const float* x, float* c, int64_t batch, int64_t D, int64_t N) {
    launch_gemm<false>(batch, N, D, 1, Centered{x, mean, D}, RowMajor{basis, N}, ConvStore<>{c, N, nullptr, nullptr, false},
                       "project_coefficients", dims(batch, D, N));
}
void reconstruct(const float* basis_t, const float* mean, const float* c, const float* q, float* y, int64_t batch, int64_t D,
                 int64_t N) {
    // y = (q .* c) B^T + mean: the mean enters as a per-column "bias".
    launch_gemm<false>(batch, D, N, 1, MaskedCoefficients{c, q, N}, RowMajor{basis_t, D}, ConvStore<>{y, D, mean, nullptr, false},
                       "reconstruct", dims(batch, D, N));
}
void mask_costs(const float* p, const float* g, const double* y2, double* cost, double* kept, int64_t batch, int64_t n, int64_t k,
                bool l2, double lambda, int64_t pixels, uint64_t seed, uint64_t first_image) {
    if (batch * k <= 0) return;
    PIN_LAUNCH(static_cast<unsigned>(batch * k), 256, cur(), mask_cost_kernel)(p, g, y2, cost, kept, n, k, l2, lambda, pixels, seed,
                                                                               first_image);
    check(cudaGetLastError(), "mask_costs", dims(batch, n, k));
}

void local_gradient(const float* p, const float* g, const double* y2, double* dz, double* cost, double* kept, int64_t batch,
                    int64_t n, int64_t k, bool l2, double lambda, int64_t pixels, uint64_t seed, uint64_t first_image) {
    if (batch * k <= 0) return;
    PIN_LAUNCH(static_cast<unsigned>(batch), 256, cur(), local_gradient_kernel)(p, g, y2, dz, cost, kept, batch, n, k, l2, lambda, pixels,
                                                                               seed, first_image);
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
    PIN_LAUNCH(kSumBlocks, 256, cur(), sum_squares_kernel)(x, n, part);
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
    PIN_LAUNCH(static_cast<unsigned>(batch), 256, cur(), mask_cost_terms_kernel)(c, d, x, mean, g, y2, n, pixels);
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
void relative_noise(const float* x, float* xn, int64_t batch, int64_t pixels, double intensity, uint64_t seed, uint64_t first_image) {
    if (batch <= 0) return;
    PIN_LAUNCH(static_cast<unsigned>(batch), 256, cur(), relative_noise_kernel)(x, xn, pixels, intensity, seed, first_image);
    check(cudaGetLastError(), "relative_noise", dims(batch, pixels));
}
void to_float(const double* x, float* y, int64_t n) {
    launch_map(n, [=] __device__(int64_t i) { y[i] = static_cast<float>(x[i]); }, "to_float");
}

}  // namespace pin::cuda
