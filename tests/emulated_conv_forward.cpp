// cuda/ops_conv_forward.cu compiled by the host compiler for the CPU emulation of CUDA: see emulated_backend.cpp.
#include "cuda_emulation.hpp"  // first: the kernels' headers check for it

#include "ops_conv_forward.cu"
