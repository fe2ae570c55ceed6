// pin/detect/face_alignment.hpp - aligning a face by five landmarks: the least-squares similarity
// transform that maps the landmarks onto dlib's 150 x 150 face-chip template scaled to the output size
// (the geometry of ../shared/data/lfw112, which the eigenfaces and the recognizer expect), then a
// bilinear warp of the photo.
#pragma once
#include <array>
#include <cmath>
#include <vector>

#include "pin/core/error.hpp"
#include "pin/detect/face_landmarks.hpp"
#include "pin/io/image.hpp"

namespace pin::detect {

// dlib's chip template at 112 x 112: eye centres, nose tip, mouth corners (lfw112/README.md).
inline FivePoints chip_template(double size = 112) {
    const double s = size / 112.0;
    return {Point2{35.50 * s, 34.79 * s}, Point2{75.02 * s, 34.79 * s}, Point2{55.26 * s, 57.17 * s}, Point2{37.64 * s, 76.92 * s},
            Point2{72.88 * s, 76.92 * s}};
}

// u = a x - b y + tx, v = b x + a y + ty (a = s cos t, b = s sin t).
struct Similarity {
    double a = 1, b = 0, tx = 0, ty = 0;
    Point2 apply(const Point2& p) const { return {a * p.x - b * p.y + tx, b * p.x + a * p.y + ty}; }
    Similarity inverse() const {
        const double d = a * a + b * b;
        PIN_CHECK(d > 0, "Similarity::inverse: a degenerate transform");
        Similarity r;
        r.a = a / d, r.b = -b / d;
        r.tx = -(r.a * tx - r.b * ty);
        r.ty = -(r.b * tx + r.a * ty);
        return r;
    }
    double scale() const { return std::sqrt(a * a + b * b); }
};

// The similarity minimising sum |T(from_i) - to_i|^2 (closed form: centre both sets, then a and b
// are the normalised dot and cross products).
inline Similarity fit_similarity(const FivePoints& from, const FivePoints& to) {
    Point2 cf, ct;
    for (size_t i = 0; i < from.size(); ++i) cf.x += from[i].x / 5, cf.y += from[i].y / 5, ct.x += to[i].x / 5, ct.y += to[i].y / 5;
    double dot = 0, cross = 0, norm = 0;
    for (size_t i = 0; i < from.size(); ++i) {
        const double fx = from[i].x - cf.x, fy = from[i].y - cf.y, tx = to[i].x - ct.x, ty = to[i].y - ct.y;
        dot += fx * tx + fy * ty;
        cross += fx * ty - fy * tx;
        norm += fx * fx + fy * fy;
    }
    PIN_CHECK(norm > 1e-12, "fit_similarity: the landmarks coincide");
    Similarity s;
    s.a = dot / norm, s.b = cross / norm;
    s.tx = ct.x - (s.a * cf.x - s.b * cf.y);
    s.ty = ct.y - (s.b * cf.x + s.a * cf.y);
    return s;
}

// The aligned face, size x size, RGB 0..255 (pixel centres at integer coordinates; outside the photo
// the nearest border pixel).
inline io::RgbImage warp_face(const io::RgbImage& photo, const FivePoints& landmarks, int size = 112) {
    const Similarity to_chip = fit_similarity(landmarks, chip_template(size));
    const Similarity from_chip = to_chip.inverse();
    io::RgbImage out;
    out.width = out.height = size;
    out.rgb.resize(static_cast<size_t>(size) * size * 3);
    for (int v = 0; v < size; ++v)
        for (int u = 0; u < size; ++u) {
            const Point2 p = from_chip.apply({static_cast<double>(u), static_cast<double>(v)});
            const double x = std::clamp(p.x, 0.0, photo.width - 1.0), y = std::clamp(p.y, 0.0, photo.height - 1.0);
            const int x0 = static_cast<int>(x), y0 = static_cast<int>(y);
            const int x1 = std::min(x0 + 1, photo.width - 1), y1 = std::min(y0 + 1, photo.height - 1);
            const double fx = x - x0, fy = y - y0;
            for (int c = 0; c < 3; ++c) {
                const double top = photo.at(x0, y0, c) * (1 - fx) + photo.at(x1, y0, c) * fx;
                const double bot = photo.at(x0, y1, c) * (1 - fx) + photo.at(x1, y1, c) * fx;
                out.rgb[(static_cast<size_t>(v) * size + u) * 3 + c] = static_cast<float>(top * (1 - fy) + bot * fy);
            }
        }
    return out;
}

// ITU-R 601 luma in [-1, 1] (pin's face convention).
inline std::vector<float> to_gray_face(const io::RgbImage& face) {
    std::vector<float> g(static_cast<size_t>(face.width) * face.height);
    for (size_t i = 0; i < g.size(); ++i)
        g[i] = static_cast<float>((0.299 * face.rgb[3 * i] + 0.587 * face.rgb[3 * i + 1] + 0.114 * face.rgb[3 * i + 2]) / 127.5 - 1.0);
    return g;
}

}  // namespace pin::detect
