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

// PIN_SHARED_ARRAY(type, name, dims) declares a block's static shared array, `type name dims`
// (`PIN_SHARED_ARRAY(float, tile, [16][68]);`), whose contents are undefined when the block starts,
// as on a GPU; PIN_SHARED_ARRAY_ALIGNED(bytes, type, name, dims) the same aligned to `bytes`. Under
// nvcc they are the plain __shared__ declarations. Under the emulation each array is a heap block of
// exactly its size, one per OS thread (shared by the block's fibers; launches on other threads have
// their own), filled with 0xFF bytes (NaN as float, double and bfloat16) at the start of every
// block: a read of an element the block never wrote spoils the result there as it may on a GPU
// (rather than finding the previous block's value, which may happen to fit), and an index past either
// end of the array is a heap overflow AddressSanitizer reports (a GPU would read or write the
// neighbouring shared array without a word). Kernels declare every static shared array this way:
// under the emulation a bare __shared__ does not compile.
#if defined(PIN_CUDA_EMULATION)
#define PIN_SHARED_ARRAY_ALIGNED(bytes, type, name, dims)                                           \
    static thread_local ::pin_emulation::StaticShared<type dims, bytes> pin_static_shared_##name; \
    auto& name = pin_static_shared_##name.block_copy()
#else
#define PIN_SHARED_ARRAY_ALIGNED(bytes, type, name, dims) __shared__ __align__(bytes) type name dims
#endif
#define PIN_SHARED_ARRAY(type, name, dims) PIN_SHARED_ARRAY_ALIGNED(alignof(type), type, name, dims)
