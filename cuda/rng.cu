// cuda/rng.cu - Philox uniform and Bernoulli kernels sharing pin/core/rng.hpp with the CPU.
#include "rng.cuh"

#include "ops_internal.cuh"  // DeviceBuffer, the current stream, PIN_LAUNCH

#include "pin/core/error.hpp"
#include "pin/core/rng.hpp"

namespace pin::cuda {

namespace {
constexpr int kThreads = 256;
unsigned blocks_for(int64_t count) { return static_cast<unsigned>((count + kThreads - 1) / kThreads); }
void check(cudaError_t e, const char* what, int64_t count) {
    if (e != cudaSuccess)
        ::pin::detail::throw_error("CUDA error in ", what, " (", count, " elements): ", cudaGetErrorString(e));
}

__global__ void philox_uniform_kernel(uint64_t seed, uint64_t stream, uint64_t offset, int64_t count, float* out) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < count) out[i] = PhiloxStream(seed, stream).uniform(offset + static_cast<uint64_t>(i));
}

__global__ void philox_bernoulli_kernel(uint64_t seed, uint64_t stream, uint64_t offset, const float* p,
                                        int64_t count, float* q) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < count) q[i] = PhiloxStream(seed, stream).bernoulli(offset + static_cast<uint64_t>(i), p[i]);
}
}  // namespace

bool device_available(std::string* reason) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        if (reason) *reason = e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device";
        return false;
    }
    return true;
}

// Both go through DeviceBuffer (the caching allocator, freed also when a launch fails) on the
// calling thread's current stream, as every other op does.
void philox_uniform(uint64_t seed, uint64_t stream, uint64_t offset, int64_t count, float* out) {
    if (count <= 0) return;
    DeviceBuffer d(static_cast<size_t>(count));
    PIN_LAUNCH(blocks_for(count), kThreads, internal::cur(), philox_uniform_kernel)(seed, stream, offset, count, d.data());
    check(cudaGetLastError(), "launch philox_uniform_kernel", count);
    d.download(out, static_cast<size_t>(count));
}

void philox_bernoulli(uint64_t seed, uint64_t stream, uint64_t offset, const float* p, int64_t count, float* q) {
    if (count <= 0) return;
    DeviceBuffer dp(static_cast<size_t>(count)), dq(static_cast<size_t>(count));
    dp.upload(p, static_cast<size_t>(count));
    PIN_LAUNCH(blocks_for(count), kThreads, internal::cur(), philox_bernoulli_kernel)(seed, stream, offset, dp.data(), count, dq.data());
    check(cudaGetLastError(), "launch philox_bernoulli_kernel", count);
    dq.download(q, static_cast<size_t>(count));
}

}  // namespace pin::cuda
