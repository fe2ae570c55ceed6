// cuda/wgmma.cuh - sm_90a's asynchronous warpgroup matrix multiply (wgmma.mma_async), bfloat16 in,
// fp32 accumulators, both operands read from shared memory through matrix descriptors: the
// instructions a Hopper GPU's tensor cores reach their dense rate with (WMMA's mma.sync reaches only
// part of it). Compiled into SASS only for sm_90a (cuda/CMakeLists.txt: pin_cuda_sm90a); under
// tests/cuda_emulation.hpp the same calls run on the CPU as the PTX ISA describes them, so the
// kernels built on them (wgmma_gemm.cuh) are tested in CI.
//
// The shared-memory layout used here is the PTX ISA's "no swizzle" canonical layout for K-major
// operands: the matrix is cut into core matrices of 8 rows x 8 bfloat16 (16 bytes a row), each
// stored as 128 contiguous bytes, row after row; the descriptor's leading-dimension byte offset
// (LBO) is the distance between core matrices next to each other along K, the stride-dimension byte
// offset (SBO) between those next to each other along M (or N). Element (r, k) of an operand whose
// descriptor starts at byte s is at s + (r / 8) SBO + (k / 8) LBO + (r % 8) 16 + (k % 8) 2.
//
// Usage within a warpgroup (128 consecutive threads, all of them): wgmma_fence() before the first
// wgmma_bf16 and whenever the accumulators were touched by other instructions; then any
// number of wgmma_bf16 on the same accumulators; wgmma_commit() closes them into a group;
// wgmma_wait<N>() waits until at most N groups are in flight, after which the accumulators may be
// read and the shared memory the finished groups read may be overwritten. Shared memory written by
// ordinary stores or cp.async must be made visible to the tensor cores' (asynchronous) proxy with
// fence_proxy_async() by the writing threads, before the barrier after which a wgmma reads it.
#pragma once

#include <cstdint>

#if defined(PIN_CUDA_EMULATION)
#elif defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

// Defined where the wgmma instructions exist: nvcc's pass for sm_90a (arch-specific features).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define PIN_WGMMA_DEVICE 1
#endif

namespace pin::cuda {

// The shared-memory address of p (dynamic shared memory), as the descriptors and PTX take it.
__device__ inline uint32_t shared_address(const void* p) {
#if defined(PIN_CUDA_EMULATION)
    return ::pin_emulation::shared_address(p);
#elif defined(__CUDA_ARCH__)
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#else
    (void)p;
    return 0;
#endif
}

// A matrix descriptor: start address, LBO and SBO in bytes (multiples of 16, under 256 KB), no
// swizzle, base offset 0 (bits 0-13, 16-29, 32-45 hold them divided by 16; bits 62-63 the swizzle).
__host__ __device__ constexpr uint64_t wgmma_descriptor(uint32_t address, uint32_t lbo, uint32_t sbo) {
    return static_cast<uint64_t>((address >> 4) & 0x3FFF) | static_cast<uint64_t>((lbo >> 4) & 0x3FFF) << 16 |
           static_cast<uint64_t>((sbo >> 4) & 0x3FFF) << 32;
}

// A descriptor of a K-major operand in the 128-byte swizzled layout (as tma.cuh's copies leave it):
// rows of 64 bfloat16 (128 bytes), 8 rows to an atom of 1024 bytes whose 16-byte chunks are
// permuted by the row (chunk c of row r at chunk c ^ r, r = the address's bits 7-9), atoms `sbo`
// bytes apart along M / N. The atom must be 1024-byte aligned; the start may move 32 bytes on per
// 16 K values (the hardware applies the permutation to the address it computes). LBO is unused
// with K within one row (16 written, as is customary); bits 62-63 = 1: the 128-byte swizzle.
__host__ __device__ constexpr uint64_t wgmma_descriptor_sw128(uint32_t address, uint32_t sbo) {
    return wgmma_descriptor(address, 16, sbo) | uint64_t{1} << 62;
}

__device__ inline void wgmma_fence() {
#if defined(PIN_CUDA_EMULATION)
    ::pin_emulation::wgmma_fence();
#elif defined(PIN_WGMMA_DEVICE)
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ inline void wgmma_commit() {
#if defined(PIN_CUDA_EMULATION)
    ::pin_emulation::wgmma_commit();
#elif defined(PIN_WGMMA_DEVICE)
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int kPending>
__device__ inline void wgmma_wait() {
#if defined(PIN_CUDA_EMULATION)
    ::pin_emulation::wgmma_wait(kPending);
#elif defined(PIN_WGMMA_DEVICE)
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}
// Orders this thread's earlier shared-memory writes (stores, landed cp.async copies) before later
// reads by the asynchronous proxy (wgmma), once a barrier has passed them on to the other threads.
__device__ inline void fence_proxy_async() {
#if defined(PIN_WGMMA_DEVICE)
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Keeps the compiler from moving accesses of an accumulator across the asynchronous MMA that owns
// it (the instructions above do not name the registers they wait for).
__device__ inline void wgmma_hold(float& r) {
#if defined(PIN_WGMMA_DEVICE)
    asm volatile("" : "+f"(r)::"memory");
#else
    (void)r;
#endif
}

// Moves registers between a block's warpgroups (setmaxnreg; every warp of the warpgroup executes
// it): a warpgroup that needs few (a producer whose one lane issues tensor copies) gives its own
// back to the SM's pool down to kCount a thread (Release), and one that needs more (consumers
// holding 128 accumulators) waits until the pool has enough to raise its own to kCount (Take).
// The kernel launches with its __launch_bounds__ count for every thread (168 for 384 threads);
// ptxas allocates the code after each instruction within the new count. No-ops on the emulation,
// which has no register file.
enum class RegisterMove { Release, Take };
template <RegisterMove kMove, int kCount>
__device__ inline void warpgroup_registers() {
    static_assert(kCount >= 24 && kCount <= 256 && kCount % 8 == 0, "setmaxnreg takes 24 .. 256, a multiple of 8");
#if defined(PIN_WGMMA_DEVICE)
    if constexpr (kMove == RegisterMove::Release)
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kCount));
    else
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kCount));
#endif
}

// Where an accumulator of wgmma_bf16 (below) sits in the warpgroup's 64 x kN result: thread l of
// warp w of the warpgroup holds d[4 j + e] (j < kN / 8, e < 4) at row 16 w + l / 4 + 8 (e / 2),
// column 8 j + 2 (l % 4) + e % 2. Every epilogue that moves the accumulators out asks here.
struct AccumulatorPlace {
    int row, col;
};
__host__ __device__ constexpr AccumulatorPlace accumulator_place(int w, int l, int j, int e) {
    return {16 * w + l / 4 + 8 * (e / 2), 8 * j + 2 * (l % 4) + e % 2};
}

// The inline PTX below, one instruction for every shape: the accumulators are its operands %0 ...
// %(kN / 2 - 1) (read and written), then the descriptors a and b, the accumulate flag and the
// transpose immediate. The lists grow shape by shape, each number written once.
#define PIN_WGMMA_ACC4(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
#define PIN_WGMMA_ACC8(i) PIN_WGMMA_ACC4(i), PIN_WGMMA_ACC4(i + 4)
#define PIN_WGMMA_OUT64 PIN_WGMMA_ACC8(0), PIN_WGMMA_ACC8(8), PIN_WGMMA_ACC8(16), PIN_WGMMA_ACC8(24)
#define PIN_WGMMA_OUT112 PIN_WGMMA_OUT64, PIN_WGMMA_ACC8(32), PIN_WGMMA_ACC8(40), PIN_WGMMA_ACC8(48)
#define PIN_WGMMA_OUT128 PIN_WGMMA_OUT112, PIN_WGMMA_ACC8(56)
#define PIN_WGMMA_OUT200 PIN_WGMMA_OUT128, PIN_WGMMA_ACC8(64), PIN_WGMMA_ACC8(72), PIN_WGMMA_ACC8(80), PIN_WGMMA_ACC8(88), PIN_WGMMA_ACC4(96)
#define PIN_WGMMA_OUT224 PIN_WGMMA_OUT200, PIN_WGMMA_ACC4(100), PIN_WGMMA_ACC8(104)
#define PIN_WGMMA_OUT256 PIN_WGMMA_OUT224, PIN_WGMMA_ACC8(112), PIN_WGMMA_ACC8(120)
#define PIN_WGMMA_REGS64 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define PIN_WGMMA_REGS112 PIN_WGMMA_REGS64 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55"
#define PIN_WGMMA_REGS128 PIN_WGMMA_REGS112 ", %56, %57, %58, %59, %60, %61, %62, %63"
#define PIN_WGMMA_REGS200 PIN_WGMMA_REGS128 ", %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99"
#define PIN_WGMMA_REGS224 PIN_WGMMA_REGS200 ", %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111"
#define PIN_WGMMA_REGS256 PIN_WGMMA_REGS224 ", %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
// wgmma.mma_async m64n<N>k16 with the accumulate flag as a predicate; A, B, P and T are the numbers
// of the descriptors', the flag's and the transpose immediate's operands (N / 2 and on).
#define PIN_WGMMA_MMA(N, A, B, P, T)                                                                              \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #P ", 0;\n"                                               \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32.bf16.bf16 {" PIN_WGMMA_REGS##N "}, %" #A ", %" #B   \
                 ", p, 1, 1, %" #T ", %" #T ";\n}\n"                                                                \
                 : PIN_WGMMA_OUT##N                                                                               \
                 : "l"(a), "l"(b), "r"(static_cast<int>(accumulate)), "n"(transpose))

// D (64 x kN per warpgroup, this thread's kN / 2 values) = A (64 x 16, descriptor a) B^T (B: kN x 16,
// descriptor b) + (accumulate ? D : 0), kN = 64, 112, 128, 200, 224 or 256; thread t of the warpgroup holds d[4 j + e]
// at accumulator_place(t / 32, t % 32, j, e).
// kMnMajor: both operands in the no-swizzle M/N-major layout instead (the instruction's transpose
// immediates, which 16-bit types allow): each core matrix is the K-major one transposed, 8 rows
// along K of 8 consecutive M (or N) values, so element (r, k) is at s + (r / 8) SBO + (k / 8) LBO +
// (k % 8) 16 + (r % 8) 2 (the PTX ISA's no-swizzle M/N-major canonical layout; SBO is still the
// stride along M / N). The weight gradients' operands arrive contiguous along M and N (wgmma_gemm.cuh).
template <int kN, bool kMnMajor = false>
__device__ inline void wgmma_bf16(float (&d)[kN / 2], uint64_t a, uint64_t b, bool accumulate) {
    static_assert(kN == 64 || kN == 112 || kN == 128 || kN == 200 || kN == 224 || kN == 256,
                  "the instantiated shapes: m64n{64,112,128,200,224,256}k16 (the PTX ISA allows any multiple of 8 to 256)");
    constexpr int transpose = kMnMajor ? 1 : 0;
#if defined(PIN_CUDA_EMULATION)
    (void)transpose;
    ::pin_emulation::wgmma_bf16(d, kN, a, b, accumulate, kMnMajor);
#elif defined(PIN_WGMMA_DEVICE)
    // m64n256k16: 128 accumulators a thread, only where the consumers hold 232 registers (setmaxnreg,
    // warpgroup_registers above; wgmma_gemm.cuh's wide tiles). m64n200k16: the wide split-column
    // tile's 200 pixels (7 rows of 28, a 14 x 14 image, four 7 x 7 ones) and m64n224k16: the wide
    // ping-pong tile's 224 (whole output rows of widths 112, 56, 28, 14), both with the consumers'
    // 232 registers as m64n256k16. m64n112k16: the tensor-copy swapped tiles' 112 pixels
    // (WgmmaTensorConvOperands: whole output rows).
    if constexpr (kN == 256)
        PIN_WGMMA_MMA(256, 128, 129, 130, 131);
    else if constexpr (kN == 200)
        PIN_WGMMA_MMA(200, 100, 101, 102, 103);
    else if constexpr (kN == 224)
        PIN_WGMMA_MMA(224, 112, 113, 114, 115);
    else if constexpr (kN == 128)
        PIN_WGMMA_MMA(128, 64, 65, 66, 67);
    else if constexpr (kN == 112)
        PIN_WGMMA_MMA(112, 56, 57, 58, 59);
    else
        PIN_WGMMA_MMA(64, 32, 33, 34, 35);
#else
    (void)d, (void)a, (void)b, (void)accumulate, (void)transpose;
#endif
}
#undef PIN_WGMMA_MMA
#undef PIN_WGMMA_REGS256
#undef PIN_WGMMA_REGS224
#undef PIN_WGMMA_REGS200
#undef PIN_WGMMA_REGS128
#undef PIN_WGMMA_REGS112
#undef PIN_WGMMA_REGS64
#undef PIN_WGMMA_OUT256
#undef PIN_WGMMA_OUT224
#undef PIN_WGMMA_OUT200
#undef PIN_WGMMA_OUT128
#undef PIN_WGMMA_OUT112
#undef PIN_WGMMA_OUT64
#undef PIN_WGMMA_ACC8
#undef PIN_WGMMA_ACC4

}  // namespace pin::cuda
