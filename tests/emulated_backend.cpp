// The CUDA backend's kernels and host code (cuda/ops.cu; the GEMMs in emulated_conv_*.cpp and
// emulated_linear.cpp, one per translation unit of cuda/) compiled by the host compiler, to run on the
// CPU under tests/cuda_emulation.hpp: pin_tests_cuda_emulated is tests/test_cuda.cpp against it,
// the GPU tests in every CI run although CI has no GPU. See cuda/launch.cuh.
#include "cuda_emulation.hpp"  // first: the kernels' headers check for it

#include "ops.cu"

// What only the emulation can count, for the tests (tests/test_cuda.cpp, PIN_TESTS_ON_EMULATION):
// the cp.async copies issued with the L1 hint so far.
int64_t pin_emulation_l1_cached_copies() { return ::pin_emulation::l1_cached_copies().load(); }
