// cuda/launch.cuh - how pin::cuda launches its kernels: PIN_LAUNCH(grid, block, stream, kernel)(args...)
// is kernel<<<grid, block, 0, stream>>>(args...) under nvcc. Under tests/cuda_emulation.hpp (host
// compiler, PIN_CUDA_EMULATION) the same kernel runs on the CPU, every thread of every block, before
// the launch returns (the emulation has no streams: every launch and copy is synchronous), so the
// whole backend, host code included, runs in CI, which has no GPU (tests/emulated_backend.cpp).
#pragma once

// PIN_LAUNCH_SHARED(grid, block, bytes, stream, kernel)(args...) launches with `bytes` of dynamic
// shared memory, which the kernel declares with PIN_DYNAMIC_SHARED(name) (an unsigned char array,
// 128-byte aligned). Above 48 KB the kernel must be allowed them first
// (cudaFuncSetAttribute(..., cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)); the emulation
// checks that, and the 227 KB limit, at the launch.
#if defined(PIN_CUDA_EMULATION)
// The kernel goes last because a template-id may hold commas; a generic lambda wraps it so that its
// template arguments are deduced per launch, as at a <<<>>> launch.
#define PIN_LAUNCH(grid, block, stream, ...) \
    ::pin_emulation::make_launch(grid, block, [](auto&... pin_launch_args) { __VA_ARGS__(pin_launch_args...); })
#define PIN_LAUNCH_SHARED(grid, block, bytes, stream, ...)                                                    \
    ::pin_emulation::make_launch(                                                                             \
        grid, block, [](auto&... pin_launch_args) { __VA_ARGS__(pin_launch_args...); }, bytes,                \
        [](auto&... pin_launch_args) { return ::pin_emulation::kernel_address(__VA_ARGS__, pin_launch_args...); })
#define PIN_DYNAMIC_SHARED(name) unsigned char* const name = ::pin_emulation::dynamic_shared()
#else
#define PIN_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<grid, block, 0, stream>>>
#define PIN_LAUNCH_SHARED(grid, block, bytes, stream, ...) __VA_ARGS__<<<grid, block, bytes, stream>>>
#define PIN_DYNAMIC_SHARED(name) extern __shared__ __align__(128) unsigned char name[]
#endif

namespace pin::cuda {
// Every kernel calls this on its __shared__ arrays, right after declaring them. On a GPU it does
// nothing (shared memory starts undefined in each block). Under the emulation, whose arrays would
// keep the previous block's values, it fills them with 0xFF bytes once per block (NaN as float,
// double and bfloat16), so a read of an element the block never wrote spoils the result there as
// it may on a GPU, instead of finding a stale or zero value that happens to work.
template <class T>
__device__ inline void shared_contents_undefined(T& array) {
#if defined(PIN_CUDA_EMULATION)
    ::pin_emulation::poison_shared(&array, sizeof(T));
#else
    (void)array;
#endif
}
}  // namespace pin::cuda
