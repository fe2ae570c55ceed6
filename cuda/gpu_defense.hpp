// cuda/gpu_defense.hpp - the PIN defense forward on the GPU: DAE (two passes), ESN, selection head,
// Bernoulli masks (the CPU's Philox streams) and the batched projection, composed from cuda/ops.cuh.
// Weights are copied from a CPU Agent and EigenBasis once, explicitly, at construction.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "ops.cuh"
#include "pin/model/agent.hpp"
#include "pin/model/eigenbasis.hpp"

namespace pin::cuda {

class GpuDefense {
public:
    GpuDefense(model::Agent& agent, const model::EigenBasis& basis);
    // Device pointers: x (B, 112, 112) in [-1, 1]; p, q (B, N); y (B, 112, 112) the defended faces;
    // dae (B, 112, 112) optional. Masks: PhiloxStream(seed, first_image + b), as model::Defense.
    void forward(const float* x, int64_t batch, uint64_t seed, uint64_t first_image, float* p, float* q, float* y,
                 float* dae = nullptr);
    int64_t eigenvectors() const { return n_; }

private:
    const float* w(const std::string& name) const;
    DeviceBuffer res_block(const float* x, int64_t B, int64_t& H, int64_t& W, int64_t cin, int64_t cout, int64_t stride,
                           const std::string& prefix, bool shortcut);
    DeviceBuffer up_block(const float* x, int64_t B, int64_t& H, int64_t& W, int64_t cin, int64_t cout, bool last,
                          const std::string& prefix);
    std::map<std::string, DeviceBuffer> weights_;
    DeviceBuffer basis_, basis_t_, mean_;
    int64_t n_ = 0, d_ = 0;
};

}  // namespace pin::cuda
