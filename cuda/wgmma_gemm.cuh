// cuda/wgmma_gemm.cuh - a plain GEMM on sm_90a's warpgroup MMA (wgmma.cuh): C = A B^T, A (M x K) and
// B (N x K) bfloat16 with K contiguous, C fp32 (M x N, row-major). It is the probe for the
// question the WMMA kernels (gemm_kernels.cuh) cannot answer without a GPU: how much of the H200's
// dense BF16 rate a kernel of ours reaches with the instructions that rate is specified for, and
// whether our reading of the PTX ISA's descriptors and layouts holds on hardware (the GPU test
// compares it with the CPU; pin-bench-gpu times it against the same GEMM in PyTorch). If it does,
// the convolutions' asynchronous-copy operand forms can feed it (their copies are already 16-byte
// cp.async copies of 8 channels: one row of a core matrix).
//
// A block is two warpgroups (256 threads) and a 128 x 128 tile of C; warpgroup g computes rows
// 64 g .. 64 g + 63 with one m64n128k16 per 16-deep step. K goes in slices of 64 through three
// shared-memory stages filled by cp.async (two slices in flight while the tensor cores work on one).
// Shared memory is the no-swizzle K-major layout (wgmma.cuh) with core matrices 144 bytes apart
// along K (LBO = 128 + 16): the 8 copies a quarter-warp issues for one row (its 64 K values, 128
// contiguous bytes of global memory) then land on 8 different 16-byte bank groups, where 128 would
// put all 8 on the same one. 110,592 bytes a block, two blocks an SM.
#pragma once
#include <cstdint>

#if !defined(__CUDACC__) && !defined(PIN_CUDA_EMULATION)
#error "wgmma_gemm.cuh: compile with nvcc, or include tests/cuda_emulation.hpp first"
#endif

#include "async_copy.cuh"
#include "bfloat16.cuh"
#include "launch.cuh"
#include "wgmma.cuh"

namespace pin::cuda::gemm {

struct WgmmaGemmTile {
    static constexpr int threads = 256, rows = 128, cols = 128, depth = 64, stages = 3;
    static constexpr int chunks = depth / 8;                          // 16-byte copies per row and slice
    static constexpr int lbo = 128 + 16, sbo = chunks * lbo;          // bytes between core matrices along K, along M / N
    static constexpr int a_bytes = rows / 8 * sbo, b_bytes = cols / 8 * sbo, stage_bytes = a_bytes + b_bytes;
    static constexpr int smem_bytes = stages * stage_bytes;
    static constexpr int copies = rows * chunks / threads;            // per operand, thread and slice (rows == cols)
    static_assert(rows == cols && rows * chunks % threads == 0, "whole copies per thread");
    static_assert(smem_bytes <= 227 * 1024 && 2 * (smem_bytes + 1024) <= 228 * 1024, "two blocks fit an sm_90 SM");
    // Byte offset of element (r, k) in an operand's tile.
    __host__ __device__ static constexpr int offset(int r, int k) { return (r / 8) * sbo + (k / 8) * lbo + (r % 8) * 16 + (k % 8) * 2; }
    // Thread t copies rows t / 8 + 32 i (i < copies), K values 8 (t % 8) .. + 7 of each.
    __host__ __device__ static constexpr int copy_row(int t, int i) { return t / 8 + (threads / chunks) * i; }
    __host__ __device__ static constexpr int copy_k(int t) { return (t % chunks) * 8; }
};

// Grid: (ceil(M / 128), ceil(N / 128)); WgmmaGemmTile::smem_bytes of dynamic shared memory.
// Requires K % 8 == 0 and a, b 16-byte aligned (every copy is 16 bytes, whole or zero-filled).
__global__ void __launch_bounds__(256, 2)
    gemm_bf16_wgmma_kernel(int64_t M, int64_t N, int64_t K, const Bf16* a, const Bf16* b, float* c) {
    using T = WgmmaGemmTile;
    PIN_DYNAMIC_SHARED(smem);
    const int tid = static_cast<int>(threadIdx.x), group = tid / 128;
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) * T::rows, n0 = static_cast<int64_t>(blockIdx.y) * T::cols;
    const int64_t slices = (K + T::depth - 1) / T::depth;
    // The next slice's copies into its stage, then a commit (possibly of nothing: the waits below
    // count groups, so every slice index has one).
    auto issue = [&](int64_t s) {
        if (s < slices) {
            unsigned char* stage = smem + (s % T::stages) * T::stage_bytes;
            const int64_t k = s * T::depth + T::copy_k(tid);
            const bool k_in = k < K;  // K % 8 == 0: a copy is all inside or all outside
            for (int i = 0; i < T::copies; ++i) {
                const int r = T::copy_row(tid, i);
                const bool a_in = k_in && m0 + r < M, b_in = k_in && n0 + r < N;
                async_copy16(stage + T::offset(r, T::copy_k(tid)), a_in ? a + (m0 + r) * K + k : a, a_in);
                async_copy16(stage + T::a_bytes + T::offset(r, T::copy_k(tid)), b_in ? b + (n0 + r) * K + k : b, b_in);
            }
        }
        async_commit();
    };
    issue(0);
    issue(1);
    float d[64];
    for (float& v : d) v = 0.0f;
    for (int64_t s = 0; s < slices; ++s) {
        async_wait<1>();      // this thread's copies of slice s have landed (s + 1's may be in flight)
        fence_proxy_async();  // ... and are visible to the tensor cores' proxy once the barrier passes them on
        __syncthreads();      // every thread's copies of slice s; every wgmma of slice s - 1 is done
        issue(s + 2);         // into the stage slice s - 1 used
        const uint32_t stage = shared_address(smem + (s % T::stages) * T::stage_bytes);
        const uint32_t a_tile = stage + group * (64 / 8) * T::sbo, b_tile = stage + T::a_bytes;
        for (float& v : d) wgmma_hold(v);
        wgmma_fence();
        for (int k = 0; k < T::depth / 16; ++k)  // 16 K values = 2 core matrices along K
            wgmma_m64n128k16(d, wgmma_descriptor(a_tile + 2 * k * T::lbo, T::lbo, T::sbo),
                             wgmma_descriptor(b_tile + 2 * k * T::lbo, T::lbo, T::sbo), true);
        wgmma_commit();
        wgmma_wait<0>();
        for (float& v : d) wgmma_hold(v);
    }
    // Thread t of warpgroup g: rows 64 g + 16 w + l / 4 (+ 8), columns 8 j + 2 (l % 4) (+ 1), where
    // w = (t % 128) / 32 and l = t % 32 (wgmma.cuh).
    const int w = (tid % 128) / 32, l = tid % 32;
    for (int h = 0; h < 2; ++h) {
        const int64_t m = m0 + group * 64 + 16 * w + l / 4 + 8 * h;
        if (m >= M) continue;
        for (int j = 0; j < 16; ++j) {
            const int64_t n = n0 + 8 * j + 2 * (l % 4);
            if (n < N) c[m * N + n] = d[4 * j + 2 * h];
            if (n + 1 < N) c[m * N + n + 1] = d[4 * j + 2 * h + 1];
        }
    }
}

}  // namespace pin::cuda::gemm
