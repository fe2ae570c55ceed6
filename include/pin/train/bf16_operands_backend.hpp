// pin/train/bf16_operands_backend.hpp - the CPU training step with the GEMM operands rounded to
// bfloat16, as the GPU's fast settings round them (`--gpu-math bf16`: tensor cores multiply
// bfloat16 operands and sum in fp32), to ask on a machine without a GPU whether PIN trains as well
// that way (`pin train --emulate-gpu-bf16`, docs/training.md).
//
// What it rounds: copies of both operands of every convolution pass (forward: x and w; input
// gradient: dy and w; weight gradient: x and dy) and of every linear layer's three GEMMs (forward:
// x and w; input gradient: dy and w; weight gradient: x and dy). The master weights, the
// activations kept for the backward pass, the bias gradients (per-channel sums on the GPU), PReLU,
// the estimator and the update stay fp32, as on the GPU. Not modelled: the order of the fp32 sums
// (each engine sums in its own order), the frozen DAE's own rounding on the GPU (its output enters
// the ESN through the 1-channel stem, which the GPU runs in fp32 and so does this) and bfloat16
// storage (the GPU training step keeps its activations in fp32).
#pragma once
#include <algorithm>
#include <vector>

#include "pin/core/parallel.hpp"
#include "pin/io/half.hpp"
#include "pin/train/cpu_training_backend.hpp"

namespace pin::train {

class Bf16OperandsCpuBackend : public CpuTrainingBackend {
public:
    using CpuTrainingBackend::CpuTrainingBackend;

    void conv2d_forward(const float* x, const float* w, float* y, const ConvGeometry& g) {
        // The 1-channel stem runs on the GPU's per-pixel fp32 kernel (GatherMode::Vector).
        if (g.in_c == 1) return CpuTrainingBackend::conv2d_forward(x, w, y, g);
        CpuTrainingBackend::conv2d_forward(rounded(x, activations(g, g.in_c, g.in_h, g.in_w), 0),
                                           rounded(w, weights(g), 1), y, g);
    }
    void conv2d_backward(const float* x, const float* dy, const float* w, float* dx, float* dw, const ConvGeometry& g,
                         bool accumulate) {
        CpuTrainingBackend::conv2d_backward(rounded(x, activations(g, g.in_c, g.in_h, g.in_w), 0),
                                            rounded(dy, activations(g, g.out_c, g.out_h(), g.out_w()), 1),
                                            rounded(w, weights(g), 2), dx, dw, g, accumulate);
    }
    void linear_forward(const float* x, const float* w, const float* b, float* y, int64_t B, int64_t in, int64_t out) {
        CpuTrainingBackend::linear_forward(rounded(x, B * in, 0), rounded(w, out * in, 1), b, y, B, in, out);
    }
    void linear_backward_input(const float* dy, const float* w, float* dx, int64_t B, int64_t in, int64_t out) {
        CpuTrainingBackend::linear_backward_input(rounded(dy, B * out, 0), rounded(w, out * in, 1), dx, B, in, out);
    }
    // dw from bfloat16 operands; db, a per-output sum, from the fp32 dy.
    void linear_backward_params(const float* x, const float* dy, float* dw, float* db, int64_t B, int64_t in, int64_t out) {
        CpuTrainingBackend::linear_backward_params(rounded(x, B * in, 0), rounded(dy, B * out, 1), dw, db, B, in, out);
        for (int64_t j = 0; j < out; ++j) {
            double s = 0;
            for (int64_t b = 0; b < B; ++b) s += dy[b * out + j];
            db[j] = static_cast<float>(s);
        }
    }

private:
    static int64_t activations(const ConvGeometry& g, int64_t c, int64_t h, int64_t w) { return g.batch * c * h * w; }
    static int64_t weights(const ConvGeometry& g) { return g.out_c * g.in_c * g.kernel * g.kernel; }
    // A copy of p[0, n) rounded to bfloat16, in scratch buffer `slot` (an op rounds up to three
    // operands; the buffers are reused from op to op). Each element alone, so any split over the
    // threads gives the same bits; in blocks of 64 Ki floats (on one thread the rounding took 3 %
    // of a step).
    const float* rounded(const float* p, int64_t n, int slot) {
        std::vector<float>& s = scratch_[slot];
        s.resize(static_cast<size_t>(n));
        float* out = s.data();
        constexpr int64_t kBlock = int64_t{1} << 16;
        parallel_for((n + kBlock - 1) / kBlock, [&](int64_t blk) {
            const int64_t end = std::min(n, (blk + 1) * kBlock);
            for (int64_t i = blk * kBlock; i < end; ++i) out[i] = io::round_to_bfloat16(p[i]);
        });
        return out;
    }
    std::vector<float> scratch_[3];
};

}  // namespace pin::train
