// cuda/rng.cu - Philox uniform and Bernoulli kernels sharing pin/core/rng.hpp with the CPU.
#include "rng.cuh"
#include "launch.cuh"

#include <cuda_runtime.h>

#include "pin/core/error.hpp"
#include "pin/core/rng.hpp"

namespace pin::cuda {

namespace {
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

void philox_uniform(uint64_t seed, uint64_t stream, uint64_t offset, int64_t count, float* out) {
    if (count <= 0) return;
    float* d = nullptr;
    check(cudaMalloc(&d, static_cast<size_t>(count) * sizeof(float)), "cudaMalloc philox_uniform", count);
    const int threads = 256;
    const int blocks = static_cast<int>((count + threads - 1) / threads);
    PIN_LAUNCH(blocks, threads, nullptr, philox_uniform_kernel)(seed, stream, offset, count, d);
    check(cudaGetLastError(), "launch philox_uniform_kernel", count);
    check(cudaMemcpy(out, d, static_cast<size_t>(count) * sizeof(float), cudaMemcpyDeviceToHost),
          "copy philox_uniform", count);
    cudaFree(d);
}

void philox_bernoulli(uint64_t seed, uint64_t stream, uint64_t offset, const float* p, int64_t count, float* q) {
    if (count <= 0) return;
    float *dp = nullptr, *dq = nullptr;
    const size_t bytes = static_cast<size_t>(count) * sizeof(float);
    check(cudaMalloc(&dp, bytes), "cudaMalloc philox_bernoulli", count);
    check(cudaMalloc(&dq, bytes), "cudaMalloc philox_bernoulli", count);
    check(cudaMemcpy(dp, p, bytes, cudaMemcpyHostToDevice), "copy p philox_bernoulli", count);
    const int threads = 256;
    const int blocks = static_cast<int>((count + threads - 1) / threads);
    PIN_LAUNCH(blocks, threads, nullptr, philox_bernoulli_kernel)(seed, stream, offset, dp, count, dq);
    check(cudaGetLastError(), "launch philox_bernoulli_kernel", count);
    check(cudaMemcpy(q, dq, bytes, cudaMemcpyDeviceToHost), "copy q philox_bernoulli", count);
    cudaFree(dp);
    cudaFree(dq);
}

}  // namespace pin::cuda
