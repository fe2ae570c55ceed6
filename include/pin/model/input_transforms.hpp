// pin/model/input_transforms.hpp - cheap input-transformation defenses, the baselines next to PIN:
// JPEG compression (Dziugaite et al. 2016; Guo et al. 2018) and bit-depth reduction (feature
// squeezing, Xu et al. 2018). Faces are gray, (B, 112 * 112) values in [-1, 1]; both map the face to
// 8-bit pixels first, as a stored image would be. No image library is involved.
// Neither is differentiable in any useful sense; online attacks go through them by BPDA with the
// identity (Athalye et al. 2018), which is what eval/verification.hpp does.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "pin/core/error.hpp"
#include "pin/core/parallel.hpp"

namespace pin::model {

inline unsigned char face_to_byte(float v) { return static_cast<unsigned char>(std::lround(std::clamp((v + 1.0f) * 127.5f, 0.0f, 255.0f))); }

// JPEG compression of gray faces at `quality` (1-100): what baseline JPEG loses, computed directly.
// Each 8 x 8 block of the level-shifted 8-bit image goes through the DCT, is quantised with the
// standard luminance table (ITU T.81 Annex K) scaled by quality as libjpeg does, dequantised and
// transformed back; the result is rounded to 8 bits. The entropy coding of a real file is lossless,
// so it is left out. (stb_image_write's encoder was the first choice; it shifts negative values,
// which UBSan reports as undefined.) Sides must be multiples of 8 (112 is).
inline void jpeg_round_trip(const float* x, int64_t batch, int64_t side, int quality, float* out) {
    PIN_CHECK(quality >= 1 && quality <= 100, "jpeg_round_trip: quality must be 1-100, got ", quality);
    PIN_CHECK(side % 8 == 0, "jpeg_round_trip: the side must be a multiple of 8, got ", side);
    static const int kLuminance[64] = {16, 11, 10, 16, 24,  40,  51,  61,  12, 12, 14, 19, 26,  58,  60,  55,
                                       14, 13, 16, 24, 40,  57,  69,  56,  14, 17, 22, 29, 51,  87,  80,  62,
                                       18, 22, 37, 56, 68,  109, 103, 77,  24, 35, 55, 64, 81,  104, 113, 92,
                                       49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99};
    const int scale = quality < 50 ? 5000 / quality : 200 - 2 * quality;
    double q[64], dct[8][8], dct_t[8][8];  // the orthonormal DCT-II matrix A and its transpose
    for (int i = 0; i < 64; ++i) q[i] = std::clamp((kLuminance[i] * scale + 50) / 100, 1, 255);
    for (int u = 0; u < 8; ++u)
        for (int k = 0; k < 8; ++k)
            dct_t[k][u] = dct[u][k] = (u == 0 ? std::sqrt(0.125) : 0.5) * std::cos((2 * k + 1) * u * 3.14159265358979323846 / 16);
    auto multiply = [](const double a[8][8], const double b[8][8], double out[8][8]) {
        for (int i = 0; i < 8; ++i)
            for (int j = 0; j < 8; ++j) {
                double s = 0;
                for (int k = 0; k < 8; ++k) s += a[i][k] * b[k][j];
                out[i][j] = s;
            }
    };
    const int64_t D = side * side;
    parallel_for(batch, [&](int64_t b) {
        for (int64_t by = 0; by < side; by += 8)
            for (int64_t bx = 0; bx < side; bx += 8) {
                double block[8][8], tmp[8][8], coef[8][8];
                for (int y = 0; y < 8; ++y)
                    for (int x0 = 0; x0 < 8; ++x0) block[y][x0] = face_to_byte(x[b * D + (by + y) * side + bx + x0]) - 128.0;
                multiply(dct, block, tmp);  // C = A X A^T, quantised
                multiply(tmp, dct_t, coef);
                for (int i = 0; i < 64; ++i) coef[i / 8][i % 8] = std::round(coef[i / 8][i % 8] / q[i]) * q[i];
                multiply(dct_t, coef, tmp);  // X = A^T C A
                multiply(tmp, dct, block);
                for (int y = 0; y < 8; ++y)
                    for (int x0 = 0; x0 < 8; ++x0) {
                        const double pixel = std::clamp(std::round(block[y][x0] + 128.0), 0.0, 255.0);
                        out[b * D + (by + y) * side + bx + x0] = static_cast<float>(pixel / 127.5 - 1.0);
                    }
            }
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
