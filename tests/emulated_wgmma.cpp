// cuda/ops_wgmma.cu (the sm_90a kernels' host side, wgmma_gemm.cuh) compiled by the host compiler for
// the CPU emulation of CUDA, beside tests/emulated_backend.cpp's other translation units of cuda/.
#include "cuda_emulation.hpp"  // first: the kernels' headers check for it

#include "ops_wgmma.cu"
