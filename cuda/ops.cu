// cuda/ops.cu - the GPU backend behind cuda/ops.cuh: its settings, device memory (a caching allocator),
// streams, the element-wise kernels, the masks, the fixed-order reductions and the training step's
// small kernels. The GEMMs are in ops_conv_forward.cu, ops_conv_backward.cu and ops_linear.cu, over
// the dispatch in ops_internal.cuh.
//
// One tiled GEMM family (cuda/gemm_kernels.cuh: fp32 FMA, or TF32/BF16 tensor cores, per MathMode)
// serves every convolution direction and the linear layer: the operands are functors that gather
// from NHWC activations (implicit GEMM), so no im2col buffer is ever built.
// Why functors rather than one kernel per op: the index arithmetic is the only thing that differs,
// and keeping it in one place keeps the six convolution directions consistent with the CPU's.
// Long reductions (weight gradients sum over every pixel of the batch) are split along K into
// fixed chunks written to a scratch buffer and summed in chunk order: deterministic, unlike atomics.
#include "ops_internal.cuh"
#include "reduce_kernels.cuh"  // from this translation unit only: it defines kernels

#include <curand_kernel.h>  // host code too: the emulated backend draws with the same source

#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "pin/core/rng.hpp"

namespace pin::cuda {

namespace internal {
thread_local cudaStream_t g_stream = nullptr;
cudaStream_t cur() { return g_stream; }
std::atomic<int64_t>* gemm_launches() {
    static std::atomic<int64_t> counts[kGemmKernels];  // by GemmKernel
    return counts;
}
std::atomic<int64_t>* gemm_flops() {
    static std::atomic<int64_t> flops[kGemmKernels];  // by GemmKernel: 2 M N K of each launch
    return flops;
}
}  // namespace internal

namespace {
using namespace kernels;

// ---- caching allocator ---------------------------------------------------------------------------
// Freed blocks are cached per (device, stream they were allocated on, size): a block is handed out
// again only on its own device (a kernel on another one cannot read it without peer access), to work
// on the same stream, which runs after everything already queued there that used it.
// Never destroyed: a DeviceBuffer destroyed after main (in a static) still returns its block, and
// the cached blocks stay reachable to the end (to leak checkers as well; the driver frees them).
std::mutex& pool_mutex() {
    static std::mutex* m = new std::mutex;
    return *m;
}
using PoolKey = std::tuple<int, void*, size_t>;  // device, stream, floats
std::multimap<PoolKey, float*>& pool() {
    static auto* p = new std::multimap<PoolKey, float*>;
    return *p;
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
std::atomic<int>& async_tile_flag() {
    static std::atomic<int> shape{static_cast<int>(AsyncTileShape::Cols64)};
    return shape;
}
std::atomic<int>& wgmma_pipeline_flag() {
    static std::atomic<int> pipeline{static_cast<int>(WgmmaPipeline::WaitEachSlice)};
    return pipeline;
}
std::atomic<int>& wgmma_ws_smem_flag() {
    static std::atomic<int> kib{0};
    return kib;
}
std::atomic<int>& wgmma_stores_flag() {
    static std::atomic<int> stores{static_cast<int>(WgmmaStores::ThroughShared)};
    return stores;
}
std::atomic<int>& wgmma_loads_flag() {
    static std::atomic<int> loads{static_cast<int>(WgmmaLoads::CpAsync)};
    return loads;
}
std::atomic<int>& wgmma_mma_n_flag() {
    static std::atomic<int> n{static_cast<int>(WgmmaMmaN::N128)};
    return n;
}
std::atomic<int>& gather_caching_flag() {
    static std::atomic<int> caching{static_cast<int>(GatherCaching::L2)};
    return caching;
}
std::atomic<int>& mask_sampler_flag() {
    static std::atomic<int> sampler{static_cast<int>(MaskSampler::Pin)};
    return sampler;
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

void internal::channel_sum_floats(const float* x, int64_t rows, int64_t channels, float* out, const char* name, const std::string& shape) {
    channel_sum(rows, channels, [x] __device__(int64_t i) { return static_cast<double>(x[i]); }, out, name, shape);
}

void set_math_mode(MathMode mode) { math_mode_flag() = static_cast<int>(mode); }
MathMode math_mode() { return static_cast<MathMode>(math_mode_flag().load()); }
void set_gather_mode(GatherMode mode) { gather_mode_flag() = static_cast<int>(mode); }
GatherMode gather_mode() { return static_cast<GatherMode>(gather_mode_flag().load()); }
namespace {
KernelCounts counts_by_kernel(const std::atomic<int64_t>* c) {
    auto at = [c](GemmKernel k) { return c[static_cast<int>(k)].load(); };
    KernelCounts k;
    k.fp32 = at(GemmKernel::Fp32);
    k.tensor_core = at(GemmKernel::TensorCore);
    k.wide = at(GemmKernel::Wide);
    k.one_output = at(GemmKernel::OneOutput);
    k.one_input = at(GemmKernel::OneInput);
    k.one_input_bands = at(GemmKernel::OneInputBands);
    k.async = at(GemmKernel::Async);
    k.async_cols128 = at(GemmKernel::AsyncCols128);
    k.wgmma_tma = at(GemmKernel::WgmmaTensorCopies);
    k.wgmma_wide = at(GemmKernel::WgmmaWide);
    k.wgmma_split = at(GemmKernel::WgmmaSplit);
    k.wgmma = at(GemmKernel::Wgmma);
    return k;
}
}  // namespace
KernelLaunches kernel_launches() { return counts_by_kernel(gemm_launches()); }
KernelFlops kernel_gemm_flops() { return counts_by_kernel(gemm_flops()); }
void set_activation_storage(ActivationStorage storage) { activation_storage_flag() = static_cast<int>(storage); }
ActivationStorage activation_storage() { return static_cast<ActivationStorage>(activation_storage_flag().load()); }
void set_async_tile(AsyncTileShape shape) { async_tile_flag() = static_cast<int>(shape); }
AsyncTileShape async_tile() { return static_cast<AsyncTileShape>(async_tile_flag().load()); }
void set_wgmma_pipeline(WgmmaPipeline pipeline) { wgmma_pipeline_flag() = static_cast<int>(pipeline); }
WgmmaPipeline wgmma_pipeline() { return static_cast<WgmmaPipeline>(wgmma_pipeline_flag().load()); }
void set_wgmma_ws_smem_kib(int kib) {
    PIN_CHECK(kib >= 0 && kib <= 227, "set_wgmma_ws_smem_kib: ", kib, " KiB is not 0 (no limit) or 1 .. 227 (what a block of sm_90 may have)");
    wgmma_ws_smem_flag() = kib;
}
int wgmma_ws_smem_kib() { return wgmma_ws_smem_flag().load(); }
void set_wgmma_stores(WgmmaStores stores) { wgmma_stores_flag() = static_cast<int>(stores); }
WgmmaStores wgmma_stores() { return static_cast<WgmmaStores>(wgmma_stores_flag().load()); }
void set_wgmma_loads(WgmmaLoads loads) { wgmma_loads_flag() = static_cast<int>(loads); }
WgmmaLoads wgmma_loads() { return static_cast<WgmmaLoads>(wgmma_loads_flag().load()); }
void set_wgmma_mma_n(WgmmaMmaN n) { wgmma_mma_n_flag() = static_cast<int>(n); }
WgmmaMmaN wgmma_mma_n() { return static_cast<WgmmaMmaN>(wgmma_mma_n_flag().load()); }
void set_gather_caching(GatherCaching caching) { gather_caching_flag() = static_cast<int>(caching); }
GatherCaching gather_caching() { return static_cast<GatherCaching>(gather_caching_flag().load()); }
void set_mask_sampler(MaskSampler sampler) { mask_sampler_flag() = static_cast<int>(sampler); }
MaskSampler mask_sampler() { return static_cast<MaskSampler>(mask_sampler_flag().load()); }

// ---- DeviceBuffer ----------------------------------------------------------------------------------
DeviceBuffer::DeviceBuffer(size_t floats) : floats_(floats), stream_(cur()) {
    if (floats == 0) return;
    check(cudaGetDevice(&device_), "cudaGetDevice", "");
    {
        std::lock_guard<std::mutex> lock(pool_mutex());
        auto it = pool().find({device_, stream_, floats});
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
        for (auto it = pool().begin(); it != pool().end();) {  // this device's blocks
            if (std::get<0>(it->first) != device_) {
                ++it;
                continue;
            }
            cudaFree(it->second);
            it = pool().erase(it);
        }
        e = cudaMalloc(&ptr_, floats * sizeof(float));
    }
    check(e, "cudaMalloc", "(" + std::to_string(floats * sizeof(float)) + " bytes)");
}
DeviceBuffer::~DeviceBuffer() {
    if (!ptr_) return;
    std::lock_guard<std::mutex> lock(pool_mutex());
    pool().emplace(PoolKey{device_, stream_, floats_}, ptr_);
}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
        DeviceBuffer tmp(std::move(*this));
        ptr_ = o.ptr_;
        floats_ = o.floats_;
        stream_ = o.stream_;
        device_ = o.device_;
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
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || cudaGetDeviceProperties(&prop, device) != cudaSuccess) return "no CUDA device";
    return prop.name;
}

// ---- element-wise ----------------------------------------------------------------------------------------
void prelu_forward(const float* x, const float* slope, float* y, int64_t n, int64_t channels) {
    launch_map(n, [=] __device__(int64_t i) { y[i] = x[i] > 0.0f ? x[i] : slope[i % channels] * x[i]; }, "prelu_forward");
}
void prelu_backward(const float* x, const float* slope, const float* dy, float* dx, float* dslope, int64_t n, int64_t channels) {
    // dx in the slope gradient's pass: the channel sum visits each element once, so x and dy are
    // read once for both (a separate map read them twice; 10 % of the fast training step was here).
    channel_sum(
        n / channels, channels,
        [=] __device__(int64_t i) {
            const float xi = x[i], g = dy[i];
            dx[i] = xi > 0.0f ? g : slope[i % channels] * g;
            return xi > 0.0f ? 0.0 : static_cast<double>(xi) * g;
        },
        dslope, "prelu_backward", dims(n / channels, channels));
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
