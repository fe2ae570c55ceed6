// cuda/rng.cu compiled by the host compiler for the emulated backend (tests/emulated_backend.cpp).
#include "cuda_emulation.hpp"

#include "rng.cu"
