// cuda/reduce_kernels.cuh - the GPU kernels that reduce in a fixed order (ops.cu launches them):
// per-channel sums, sums of squares, and PIN's per-mask costs and the fused local-expectation
// gradient, whose block-wide sums go through shared memory in a fixed tree. Compiled by nvcc for
// the GPU and by the host compiler for tests/test_reduce_emulated.cpp, which runs them on the CPU
// under tests/cuda_emulation.hpp against the CPU engine's functions.
#pragma once
#include <cmath>
#include <cstdint>

#if !defined(__CUDACC__) && !defined(PIN_CUDA_EMULATION)
#error "reduce_kernels.cuh: compile with nvcc, or include tests/cuda_emulation.hpp first"
#endif

#include "launch.cuh"
#include "pin/core/rng.hpp"
#include "pin/train/noise_stream.hpp"

// The kernels below that are not templates are defined here, once per program: include this header
// from one translation unit only (ops.cu; the emulated test).
namespace pin::cuda::kernels {
#if !defined(__CUDACC__)
using std::fmax;
using std::sqrt;
#endif

// Per-channel sums of f(i) over i = r * channels + c (rows x channels, channels fastest: NHWC
// activations, a batch of linear outputs), in two passes of a fixed order, so results repeat run to
// run. Pass 1: a block of 32 channels x 8 row lanes reads 32 consecutive floats of a row (one line
// per warp) and sums one chunk of rows into partial[chunk][channel]; pass 2: a thread per channel
// adds its chunks in order. (The first form, one block per channel, read one float every `channels`
// floats and launched only `channels` blocks: 64 for a 64-channel layer, on a 132-SM GPU.)
constexpr int kChannelSumLanes = 32, kChannelSumRowLanes = 8;
// The chunking is a function of the shape alone (at most 1024 chunks of at least 64 rows), so the
// order of the additions does not depend on the GPU.
struct ChannelSumChunks {
    int64_t rows_per_chunk, chunks;
};
inline ChannelSumChunks channel_sum_chunks(int64_t rows) {
    const int64_t per = (rows + 1023) / 1024 > 64 ? (rows + 1023) / 1024 : 64;
    const int64_t chunks = (rows + per - 1) / per;
    return {per, chunks > 1 ? chunks : 1};
}
template <class F>
__global__ void channel_sum_partial_kernel(int64_t rows, int64_t channels, int64_t rows_per_chunk, F f, double* partial) {
    PIN_SHARED_ARRAY(double, part, [kChannelSumRowLanes][kChannelSumLanes]);
    const int64_t c = static_cast<int64_t>(blockIdx.y) * kChannelSumLanes + threadIdx.x;
    const int64_t r0 = static_cast<int64_t>(blockIdx.x) * rows_per_chunk, r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
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

// Block-wide sums of two per-thread values (256 threads) in a fixed tree order: totals in a[0], b[0].
__device__ inline void block_sum_pair(double* a, double* b, double va, double vb) {
    a[threadIdx.x] = va;
    b[threadIdx.x] = vb;
    __syncthreads();
    for (unsigned w = 128; w > 0; w >>= 1) {
        if (threadIdx.x < w) {
            a[threadIdx.x] += a[threadIdx.x + w];
            b[threadIdx.x] += b[threadIdx.x + w];
        }
        __syncthreads();
    }
}

__global__ void mask_cost_kernel(const float* p, const float* g, const double* y2, double* cost, double* kept, int64_t n,
                                 int64_t k, bool l2, double lambda, int64_t pixels, uint64_t seed, uint64_t first_image) {
    PIN_SHARED_ARRAY(double, ss, [256]);
    PIN_SHARED_ARRAY(double, sk, [256]);
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
    PIN_SHARED_ARRAY(double, ss, [256]);
    PIN_SHARED_ARRAY(double, sk, [256]);
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

// Partial sums of squares, one per block: block i covers elements i * 256 + t, stepping by the grid
// (ops.cu launches a fixed kSumBlocks, so the order of the additions is fixed).
constexpr unsigned kSumBlocks = 512;
__global__ void sum_squares_kernel(const float* x, int64_t n, double* partial) {
    PIN_SHARED_ARRAY(double, a, [256]);
    PIN_SHARED_ARRAY(double, b, [256]);
    double s = 0;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * 256)
        s += static_cast<double>(x[i]) * x[i];
    block_sum_pair(a, b, s, 0.0);
    if (threadIdx.x == 0) partial[blockIdx.x] = a[0];
}

// One block per image: g for its N coefficients, and ||x - m||^2 by a fixed tree.
__global__ void mask_cost_terms_kernel(const float* c, const float* d, const float* x, const float* mean, float* g, double* y2,
                                       int64_t n, int64_t pixels) {
    PIN_SHARED_ARRAY(double, a, [256]);
    PIN_SHARED_ARRAY(double, b, [256]);
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

// The training noise (train/noise.hpp) of image blockIdx.x, on the GPU rather than on the host
// (which drew 3.2 million normals per batch of 256 and uploaded them): xn = x + s eta, eta the
// image's Philox normals (train::noise_stream), s = intensity ||x|| / ||eta|| from double sums in the
// fixed tree; eta is drawn again for the second pass instead of stored. 256 threads.
__global__ void relative_noise_kernel(const float* x, float* xn, int64_t D, double intensity, uint64_t seed, uint64_t first_image) {
    PIN_SHARED_ARRAY(double, a, [256]);
    PIN_SHARED_ARRAY(double, b, [256]);
    const int64_t img = blockIdx.x;
    const PhiloxStream rng = train::noise_stream(seed, first_image + static_cast<uint64_t>(img));
    const float* xb = x + img * D;
    float* nb = xn + img * D;
    double xs = 0, es = 0;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
        const double e = rng.normal(static_cast<uint64_t>(i));
        xs += static_cast<double>(xb[i]) * xb[i];
        es += e * e;
    }
    block_sum_pair(a, b, xs, es);
    const float scale = b[0] > 0 ? static_cast<float>(intensity * sqrt(a[0] / b[0])) : 0.0f;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) nb[i] = xb[i] + scale * rng.normal(static_cast<uint64_t>(i));
}

}  // namespace pin::cuda::kernels
