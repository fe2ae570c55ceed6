// cuda/mbarrier.cuh - shared-memory barriers between groups of a block's threads (mbarrier, sm_80
// and later; named barriers), for kernels whose warps do different work: producers that copy K
// slices into shared memory and consumers whose tensor cores read them (wgmma_gemm.cuh
// gemm_wgmma_ws_kernel). __syncthreads would make every warp wait for the slowest one at every
// slice; an mbarrier lets each side wait only for what it needs: a stage full, or a stage free.
//
// An mbarrier is 8 bytes of shared memory (8-byte aligned) counting arrivals: initialised with a
// count, each arrival takes one off, and when none are left its current phase completes (the
// parity bit flips) and the count starts again. A thread waits for the completion of the phase
// whose parity it names (the first phase has parity 0). cp.async copies can arrive for their
// issuing thread once they have landed (async_copies_arrive), so a consumer that waits on the
// barrier sees the stage complete, as a cp.async wait followed by __syncthreads would give it.
//
// Under tests/cuda_emulation.hpp a wait that finds the phase open yields the thread (fiber) to the
// others, the copies a barrier was given land when its phase completes (not earlier: a consumer that
// reads a stage without waiting finds NaN), the barrier's 8 bytes are checked on every use (shared
// memory written over it fails the launch), and a thread that waits for ever fails the launch.
#pragma once

#include <cstdint>

#if defined(PIN_CUDA_EMULATION)
#elif defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

namespace pin::cuda {

// One thread initialises each barrier with the number of arrivals that complete a phase; a
// __syncthreads must follow before any other thread uses it.
__device__ inline void mbarrier_init(uint64_t* bar, unsigned count) {
#if defined(PIN_CUDA_EMULATION)
    ::pin_emulation::mbarrier_init(bar, count);
#elif defined(__CUDA_ARCH__)
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(bar));
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(s), "r"(count) : "memory");
#else
    (void)bar, (void)count;
#endif
}
// One arrival of this thread (release: its earlier shared-memory accesses happen before the phase
// completes, for whoever waits on it).
__device__ inline void mbarrier_arrive(uint64_t* bar) {
#if defined(PIN_CUDA_EMULATION)
    ::pin_emulation::mbarrier_arrive(bar);
#elif defined(__CUDA_ARCH__)
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(bar));
    asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(s) : "memory");
#else
    (void)bar;
#endif
}
// One arrival of this thread that also tells the phase to wait for `bytes` bytes of tensor copies
// (tma.cuh tma_load), which complete them on this barrier as they land.
__device__ inline void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
#if defined(PIN_CUDA_EMULATION)
    ::pin_emulation::mbarrier_arrive_expect_tx(bar, bytes);
#elif defined(__CUDA_ARCH__)
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(bar));
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(s), "r"(bytes) : "memory");
#else
    (void)bar, (void)bytes;
#endif
}
// One arrival of this thread once every cp.async it issued before has landed (.noinc: the arrival
// is one of the `count` the barrier was initialised with).
__device__ inline void async_copies_arrive(uint64_t* bar) {
#if defined(PIN_CUDA_EMULATION)
    ::pin_emulation::async_copies_arrive(bar);
#elif defined(__CUDA_ARCH__)
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(bar));
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(s) : "memory");
#else
    (void)bar;
#endif
}
// Returns once the phase of parity `parity` has completed (acquire: what the arrivals released is
// visible to this thread). The phase it names is the current one or the one before (a freshly
// initialised barrier's "phase before", parity 1, counts as complete): a waiter must never be two
// phases behind, whose parity is the current one's. Every lane of the calling warp calls it.
__device__ inline void mbarrier_wait(uint64_t* bar, unsigned parity) {
#if defined(PIN_CUDA_EMULATION)
    while (!::pin_emulation::mbarrier_try_wait(bar, parity)) {
    }
#elif defined(__CUDA_ARCH__)
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(bar));
    unsigned done = 0;
    do {
        // try_wait suspends the thread for a while (a hardware-chosen time) before it gives up,
        // so this loop does not spin on the barrier's memory.
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(s), "r"(parity)
            : "memory");
    } while (!done);
    // The lanes may leave the loop in different rounds; the warp goes on converged, since what
    // follows a wait is often .aligned (wgmma.fence, wgmma.mma_async: every lane at once).
    __syncwarp();
#else
    (void)bar, (void)parity;
#endif
}
// Named barrier `id` (1-15; 0 is __syncthreads') for `count` threads, whole warps: the consumers of a
// block meeting without its producers.
__device__ inline void named_barrier_sync(unsigned id, unsigned count) {
#if defined(PIN_CUDA_EMULATION)
    ::pin_emulation::named_barrier_sync(id, count);
#elif defined(__CUDA_ARCH__)
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
#else
    (void)id, (void)count;
#endif
}

// Where the i-th use of a ring of `stages` stages, each with its mbarriers, falls: stage i % stages,
// in the barriers' phase of parity (i / stages) % 2; kept as i goes rather than divided out at each
// use (the producer and consumers of wgmma_gemm.cuh gemm_wgmma_ws_kernel step through slices). The
// ring's size is the launch's (WgmmaWsTile::stages_within), not the type's.
struct StageCursor {
    int stages;
    int stage = 0;
    unsigned phase = 0;
    __host__ __device__ explicit StageCursor(int ring) : stages(ring) {}
    __host__ __device__ void next() {
        if (++stage == stages) {
            stage = 0;
            phase ^= 1u;
        }
    }
    __host__ __device__ void skip(int64_t n) {  // n uses on
        const int64_t at = stage + n;
        stage = static_cast<int>(at % stages);
        phase ^= static_cast<unsigned>(at / stages) & 1u;
    }
};

}  // namespace pin::cuda
