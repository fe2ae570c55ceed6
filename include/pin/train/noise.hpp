// pin/train/noise.hpp - the training noise of the spec: x_n = x + eta with eta Gaussian and
// ||eta|| / ||x|| = intensity for each image (the paper's definition; the released code scales by
// the norm of the whole batch). eta of image i is drawn from Philox(seed, first_image + i), so an
// image's noise depends only on its number in the run, never on batching or threads.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "pin/core/parallel.hpp"
#include "pin/core/rng.hpp"
#include "pin/core/tensor.hpp"
#include "pin/train/noise_stream.hpp"

namespace pin::train {

// xn = x + eta per image of D values (B images, contiguous), as add_relative_noise below.
inline void add_relative_noise(const float* x, float* xn, int64_t B, int64_t D, double intensity, uint64_t seed, uint64_t first_image) {
    parallel_for(B, [&](int64_t b) {
        std::vector<float> eta(static_cast<size_t>(D));
        const float* xb = x + b * D;
        float* nb = xn + b * D;
        const PhiloxStream rng = noise_stream(seed, first_image + static_cast<uint64_t>(b));
        double xnorm = 0, enorm = 0;
        for (int64_t i = 0; i < D; ++i) {
            eta[static_cast<size_t>(i)] = rng.normal(static_cast<uint64_t>(i));
            xnorm += static_cast<double>(xb[i]) * xb[i];
            enorm += static_cast<double>(eta[static_cast<size_t>(i)]) * eta[static_cast<size_t>(i)];
        }
        const float scale = enorm > 0 ? static_cast<float>(intensity * std::sqrt(xnorm / enorm)) : 0.0f;
        for (int64_t i = 0; i < D; ++i) nb[i] = xb[i] + scale * eta[static_cast<size_t>(i)];
    });
}

inline Tensor add_relative_noise(const Tensor& x, double intensity, uint64_t seed, uint64_t first_image) {
    const int64_t B = x.n(), D = x.numel() / std::max<int64_t>(B, 1);
    Tensor xn = Tensor::empty(x.shape(), x.layout());
    add_relative_noise(x.data(), xn.data(), B, D, intensity, seed, first_image);
    return xn;
}

}  // namespace pin::train
