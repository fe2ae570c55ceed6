// cuda/gpu_defense.hpp - the PIN defense forward on the GPU: DAE (two passes), ESN, selection head,
// Bernoulli masks (the CPU's Philox streams) and the batched projection, composed from cuda/ops.cuh.
// Weights are copied from a CPU Agent and EigenBasis once, explicitly, at construction.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "op_profiler.hpp"
#include "ops.cuh"
#include "pin/model/agent.hpp"
#include "pin/model/defense.hpp"
#include "pin/model/eigenbasis.hpp"

namespace pin::cuda {

class GpuDefense {
public:
    GpuDefense(model::Agent& agent, const model::EigenBasis& basis);
    // Device pointers: x (B, 112, 112) in [-1, 1]; p, q (B, N); y (B, 112, 112) the defended faces;
    // dae (B, 112, 112) optional. Masks: PhiloxStream(seed, first_image + b), as model::Defense.
    // Runs on the calling thread's current stream (ops.cuh); several threads may call it at once.
    // The convolutions' activations are stored as activation_storage() says (ops.cuh).
    void forward(const float* x, int64_t batch, uint64_t seed, uint64_t first_image, float* p, float* q, float* y,
                 float* dae = nullptr);
    // The frozen DAE alone (both passes): x, out (B, 112, 112), device pointers.
    void dae_forward(const float* x, int64_t batch, float* out);
    int64_t eigenvectors() const { return n_; }
    // The eigenbasis on the device: basis (D, N) row-major and the mean face (D).
    const float* basis() const { return basis_.data(); }
    const float* mean() const { return mean_.data(); }

    // Profiling, for pin-bench-gpu's breakdown of a forward (one calling thread only): when on,
    // each layer synchronizes the device before and after it and adds its wall time to a total per
    // kind of layer ("dae conv 3x3/1", "esn conv, 1 input channel", "head", ...). Slower; off by
    // default.
    void set_profiling(bool on) { profiler_.set_enabled(on); }
    const std::map<std::string, double>& profile_ms() const { return profiler_.totals_ms(); }
    void clear_profile() { profiler_.clear(); }

private:
    // The profile's name for a convolution of weight `name` ("dae..." or "esn..."): its part and
    // the kernel family its shape reaches.
    static std::string conv_kind(const std::string& name, const ConvShape& s, bool transposed);
    // profiler_.time with that name, built only when profiling.
    template <class F>
    void timed_conv(const std::string& name, const ConvShape& s, bool transposed, F&& f) {
        profiler_.time([&] { return conv_kind(name, s, transposed); }, std::forward<F>(f));
    }
    const float* w(const std::string& name) const;
    const float* dae_forward(const float* x, int64_t batch, bool bf16, DeviceBuffer& scratch);  // result (fp32) in scratch
    // Weight `name` in the GEMM layout of a forward convolution of shape s (packed on first use:
    // repacking 22 weights on every batch cost launches and memory traffic for nothing).
    PackedWeight packed(const std::string& name, const ConvShape& s, bool transposed);
    // A linear layer's weight `name` (out, in), transposed for the GEMM on first use.
    const float* packed_linear(const std::string& name, int64_t in, int64_t out);
    const float* packed_once(const std::string& name, const std::function<DeviceBuffer()>& pack);
    // Blocks whose outputs are stored as bfloat16 when `bf16` (up_block's last: fp32 always).
    DeviceBuffer res_block(ConstActivations x, int64_t B, int64_t& H, int64_t& W, int64_t cin, int64_t cout, int64_t stride,
                           const std::string& prefix, bool shortcut, bool bf16);
    DeviceBuffer up_block(ConstActivations x, int64_t B, int64_t& H, int64_t& W, int64_t cin, int64_t cout, bool last,
                          const std::string& prefix, bool bf16);
    std::map<std::string, DeviceBuffer> weights_, packed_;
    std::mutex packed_mutex_;
    DeviceBuffer basis_, basis_t_, mean_;
    int64_t n_ = 0, d_ = 0;
    OpProfiler profiler_;
};

// A model::Defense::Accelerator running `defense`'s PIN forward on the GPU: its weights are copied
// to the device now, once; each call uploads the batch and downloads defended, p and q. The masks
// are the CPU's (same seed and image numbers); the faces agree to float rounding. Later changes to
// the CPU agent's weights are not seen (make a new one).
// `defense` must be a PIN defense; check device_available() (rng.cuh) first. Thread-safe: each
// calling thread runs on its own stream.
model::Defense::Accelerator make_accelerator(const model::Defense& defense);
// The same on weights already on the device (GPU tuning's, whose packed weights it keeps).
model::Defense::Accelerator make_accelerator(std::shared_ptr<GpuDefense> gpu);

}  // namespace pin::cuda
