// pin/model/sampling.hpp - from selection probabilities p to the eigenface mask q.
//
//   Bernoulli       q_j ~ Bernoulli(p_j): the released code's q = p > U(0, 1), with Philox
//   Threshold       q_j = p_j > 0.5
//   MeanThreshold   q_j = p_j > mean(p) of that image (in the released code, unused there)
//   Expectation     q = p itself (the expectation B diag(p) B^T (x - m) + m)
// Bernoulli draws use stream (seed, image index), element j: image i of a run gets the same mask
// whatever the batch size, the thread count or the device.
#pragma once
#include <cstdint>
#include <string>

#include "pin/core/error.hpp"
#include "pin/core/parallel.hpp"
#include "pin/core/rng.hpp"
#include "pin/core/tensor.hpp"

namespace pin::model {

enum class SamplingMode { Bernoulli, Threshold, MeanThreshold, Expectation };

inline SamplingMode parse_sampling_mode(const std::string& s) {
    if (s == "sample" || s == "bernoulli") return SamplingMode::Bernoulli;
    if (s == "threshold") return SamplingMode::Threshold;
    if (s == "mean-threshold") return SamplingMode::MeanThreshold;
    if (s == "expectation") return SamplingMode::Expectation;
    PIN_CHECK(false, "unknown sampling mode '", s, "' (expected sample, threshold, mean-threshold or expectation)");
    return SamplingMode::Bernoulli;
}

// q (batch, N) from p (batch, N); image b of this batch is image first_image + b of the run.
inline void sample_mask(const Tensor& p, SamplingMode mode, uint64_t seed, uint64_t first_image, Tensor& q) {
    PIN_CHECK(p.rank() == 2, "sample_mask: p must be (batch, N), got ", shape_to_string(p.shape()));
    check_shape(q, p.shape(), "sample_mask output");
    const int64_t B = p.dim(0), N = p.dim(1);
    const float* pd = p.data();
    float* qd = q.data();
    parallel_for(B, [&](int64_t b) {
        const float* pr = pd + b * N;
        float* qr = qd + b * N;
        switch (mode) {
            case SamplingMode::Bernoulli: {
                const PhiloxStream rng(seed, first_image + static_cast<uint64_t>(b));
                for (int64_t j = 0; j < N; ++j) qr[j] = rng.bernoulli(static_cast<uint64_t>(j), pr[j]);
                break;
            }
            case SamplingMode::Threshold:
                for (int64_t j = 0; j < N; ++j) qr[j] = pr[j] > 0.5f ? 1.0f : 0.0f;
                break;
            case SamplingMode::MeanThreshold: {
                double mean = 0;
                for (int64_t j = 0; j < N; ++j) mean += pr[j];
                mean /= static_cast<double>(N);
                for (int64_t j = 0; j < N; ++j) qr[j] = pr[j] > mean ? 1.0f : 0.0f;
                break;
            }
            case SamplingMode::Expectation:
                for (int64_t j = 0; j < N; ++j) qr[j] = pr[j];
                break;
        }
    });
}

}  // namespace pin::model
