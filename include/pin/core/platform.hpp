// pin/core/platform.hpp - macros that let one source serve the host compiler and nvcc.
#pragma once

#if defined(__CUDACC__)
#define PIN_HOST_DEVICE __host__ __device__
#define PIN_FORCEINLINE __forceinline__
#else
#define PIN_HOST_DEVICE
#if defined(__GNUC__) || defined(__clang__)
#define PIN_FORCEINLINE inline __attribute__((always_inline))
#else
#define PIN_FORCEINLINE inline
#endif
#endif
