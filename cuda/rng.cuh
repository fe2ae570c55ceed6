// cuda/rng.cuh - device side of pin's counter-based RNG: the same Philox4x32-10 source
// (include/pin/core/rng.hpp) compiled for the GPU, so a mask drawn on the device equals the mask
// drawn on the CPU for the same (seed, stream, index).
#pragma once
#include <cstdint>
#include <string>

namespace pin::cuda {

// True when a CUDA device is present and usable; `reason` says why not otherwise.
bool device_available(std::string* reason);

// out[i] = PhiloxStream(seed, stream).uniform(offset + i) for i < count, computed on the GPU and
// copied back to the host array `out`.
void philox_uniform(uint64_t seed, uint64_t stream, uint64_t offset, int64_t count, float* out);

// q[i] = PhiloxStream(seed, stream).bernoulli(offset + i, p[i]), on the GPU, host arrays in and out.
void philox_bernoulli(uint64_t seed, uint64_t stream, uint64_t offset, const float* p, int64_t count, float* q);

}  // namespace pin::cuda
