// cuda/async_copy.cuh - 16-byte copies from global to shared memory that do not pass through the
// registers (cp.async, sm_80 and later), for the GEMM kernel whose operands are already bfloat16 in
// memory (gemm_kernels.cuh gemm_async_kernel). A thread issues copies, closes them into a group
// (async_commit), and later waits until all but its newest N groups have landed (async_wait<N>);
// a __syncthreads after the wait makes every thread's landed copies visible to the block.
//
// Under tests/cuda_emulation.hpp the copies are held back until the wait that covers them, so a
// kernel that reads a stage before waiting for it reads the block's undefined shared memory (NaN)
// and fails its test, as it could fail on a GPU.
#pragma once

#if defined(PIN_CUDA_EMULATION)
#elif defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

namespace pin::cuda {

// Copies the 16 bytes at src to dst (both 16-byte aligned; dst in shared memory), or, when !valid,
// writes 16 zero bytes there and reads nothing (src must still be a valid address: pass the
// tensor's base). The bytes are cached on their way in L2 only (cp.async.cg), or with cache_l1
// also in the SM's L1 (cp.async.ca), where this SM's next copies of the same bytes may find them
// (ops.cuh GatherCaching: the gathered activations, copied once per tap).
__device__ inline void async_copy16(void* dst, const void* src, bool valid, bool cache_l1 = false) {
#if defined(PIN_CUDA_EMULATION)
    ::pin_emulation::async_copy16(dst, src, valid, cache_l1);
#elif defined(__CUDA_ARCH__)
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    if (cache_l1)
        asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(valid ? 16 : 0) : "memory");
    else
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(valid ? 16 : 0) : "memory");
#else
    (void)cache_l1;
#endif
}
// Closes this thread's copies issued since the last commit into a group (possibly empty).
__device__ inline void async_commit() {
#if defined(PIN_CUDA_EMULATION)
    ::pin_emulation::async_commit();
#elif defined(__CUDA_ARCH__)
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Waits until at most `kPending` of this thread's newest committed groups are still in flight.
template <int kPending>
__device__ inline void async_wait() {
#if defined(PIN_CUDA_EMULATION)
    ::pin_emulation::async_wait(kPending);
#elif defined(__CUDA_ARCH__)
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

}  // namespace pin::cuda
