// pin/model/input_transforms.hpp - cheap input-transformation defenses, the baselines next to PIN:
// JPEG compression (Dziugaite et al. 2016; Guo et al. 2018) and bit-depth reduction (feature
// squeezing, Xu et al. 2018). Faces are gray, (B, 112 * 112) values in [-1, 1]; both map the face to
// 8-bit pixels first, as a stored image would be.
// Neither is differentiable in any useful sense; online attacks go through them by BPDA with the
// identity (Athalye et al. 2018), which is what eval/verification.hpp does.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "pin/core/error.hpp"
#include "pin/core/parallel.hpp"
#include "pin/io/image.hpp"

namespace pin::model {

inline unsigned char face_to_byte(float v) { return static_cast<unsigned char>(std::lround(std::clamp((v + 1.0f) * 127.5f, 0.0f, 255.0f))); }

// Encode each face as a baseline JPEG at `quality` (1-100, stb_image_write) and decode it again.
inline void jpeg_round_trip(const float* x, int64_t batch, int64_t side, int quality, float* out) {
    PIN_CHECK(quality >= 1 && quality <= 100, "jpeg_round_trip: quality must be 1-100, got ", quality);
    const int64_t D = side * side;
    parallel_for(batch, [&](int64_t b) {
        std::vector<unsigned char> pixels(static_cast<size_t>(D)), encoded;
        for (int64_t i = 0; i < D; ++i) pixels[static_cast<size_t>(i)] = face_to_byte(x[b * D + i]);
        auto sink = [](void* context, void* data, int size) {
            auto* v = static_cast<std::vector<unsigned char>*>(context);
            v->insert(v->end(), static_cast<unsigned char*>(data), static_cast<unsigned char*>(data) + size);
        };
        PIN_CHECK(stbi_write_jpg_to_func(sink, &encoded, static_cast<int>(side), static_cast<int>(side), 1, pixels.data(), quality),
                  "jpeg_round_trip: the JPEG encoder failed");
        int w = 0, h = 0, c = 0;
        unsigned char* decoded = stbi_load_from_memory(encoded.data(), static_cast<int>(encoded.size()), &w, &h, &c, 1);
        PIN_CHECK(decoded && w == side && h == side, "jpeg_round_trip: decoding our own JPEG failed (", stbi_failure_reason(), ")");
        for (int64_t i = 0; i < D; ++i) out[b * D + i] = static_cast<float>(decoded[i]) / 127.5f - 1.0f;
        stbi_image_free(decoded);
    });
}

// Quantise each pixel to 2^bits levels spread over [-1, 1] (bits 1-8).
inline void reduce_bit_depth(const float* x, int64_t n, int bits, float* out) {
    PIN_CHECK(bits >= 1 && bits <= 8, "reduce_bit_depth: bits must be 1-8, got ", bits);
    const float levels = static_cast<float>((1 << bits) - 1);
    for (int64_t i = 0; i < n; ++i) {
        const float v01 = static_cast<float>(face_to_byte(x[i])) / 255.0f;
        out[i] = 2.0f * std::round(v01 * levels) / levels - 1.0f;
    }
}

}  // namespace pin::model
