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

#if !defined(PIN_CUDA_ARCHITECTURES)
#define PIN_CUDA_ARCHITECTURES "(not recorded)"
#endif
bool device_available(std::string* reason) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        if (reason) *reason = e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device";
        return false;
    }
    // A device the build has neither machine code nor PTX for (its compute capability not in
    // CMAKE_CUDA_ARCHITECTURES) would fail at the first launch with "no kernel image is available";
    // say so before any work starts, with the configure flag that builds for it. Every kernel of
    // pin_cuda is built for the same architectures, so one kernel answers for all.
    cudaFuncAttributes attributes{};
    const cudaError_t image = cudaFuncGetAttributes(&attributes, reinterpret_cast<const void*>(philox_uniform_kernel));
    if (image == cudaSuccess) return true;
    (void)cudaGetLastError();  // the failed query is not to be reported by the next launch's check
    int device = 0, major = 0, minor = 0;
    const bool known = cudaGetDevice(&device) == cudaSuccess &&
                       cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
                       cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess;
    if (reason) {
        *reason = cudaGetErrorString(image);
        if (known) {
            const std::string capability = std::to_string(major) + "." + std::to_string(minor);
            *reason = "device " + std::to_string(device) + " has compute capability " + capability +
                      ", and this build's kernels are for CUDA architectures " PIN_CUDA_ARCHITECTURES " (" + *reason + "); " +
                      (major < 8 ? std::string("pin's kernels need 8.0 or later (cp.async, bfloat16 and TF32 tensor cores)")
                                 : "configure with -DCMAKE_CUDA_ARCHITECTURES=" + std::to_string(major) + std::to_string(minor));
        }
    }
    return false;
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
