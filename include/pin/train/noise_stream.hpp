// pin/train/noise_stream.hpp - which Philox stream draws the training noise of an image (host and
// device code): train/noise.hpp draws it on the CPU, cuda/reduce_kernels.cuh relative_noise_kernel
// on the GPU, the same normals for the same seed and image number.
#pragma once
#include <cstdint>

#include "pin/core/rng.hpp"

namespace pin::train {

PIN_HOST_DEVICE inline PhiloxStream noise_stream(uint64_t seed, uint64_t image) { return PhiloxStream(seed ^ 0x6E6F697365ull, image); }

}  // namespace pin::train
