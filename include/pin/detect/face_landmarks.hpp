// pin/detect/face_landmarks.hpp - face-api's 68-point landmark network on the engine (FaceLandmark68Net:
// four dense blocks of depthwise-separable convolutions, 112 -> 7, a 7x7 average pool and a fully
// connected layer to 136 coordinates), and the reduction of the 68 points to the 5 that alignment uses.
// Weights: `model/face_landmark_68_model*` of @vladmandic/face-api 1.7.15 (MIT).
#pragma once
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "pin/detect/tf_layers.hpp"
#include "pin/detect/tiny_face_detector.hpp"
#include "pin/io/image.hpp"
#include "pin/io/tfjs_weights.hpp"

namespace pin::detect {

struct Point2 {
    double x = 0, y = 0;
};

// Eye centres (the image-left eye first), nose tip, mouth corners (image-left first): the order of
// LFW's published landmarks and of the alignment template.
using FivePoints = std::array<Point2, 5>;

inline FivePoints five_points_from_68(const std::vector<Point2>& p) {
    PIN_CHECK(p.size() == 68, "five_points_from_68: ", p.size(), " points, expected 68");
    auto mean = [&](int from, int to) {
        Point2 m;
        for (int i = from; i < to; ++i) m.x += p[i].x / (to - from), m.y += p[i].y / (to - from);
        return m;
    };
    return {mean(36, 42), mean(42, 48), p[30], p[48], p[54]};
}

class FaceLandmarkNet {
public:
    explicit FaceLandmarkNet(const std::string& manifest_path) : FaceLandmarkNet(io::load_tfjs_weights(manifest_path), manifest_path) {}
    FaceLandmarkNet(const io::TfjsWeights& ws, const std::string& path) {
        first_ = TfConv::from(ws, "dense0/conv0/filters", "dense0/conv0/bias", path);
        PIN_CHECK(first_.cin == 3 && first_.k == 3, path, ": dense0/conv0 is not a 3x3 convolution of RGB (another model?)");
        for (int b = 0; b < 4; ++b) {
            Block blk;
            for (int c = b == 0 ? 1 : 0; c < 4; ++c)
                blk.sep.push_back(TfSeparableConv::from(ws, "dense" + std::to_string(b) + "/conv" + std::to_string(c), path));
            blocks_.push_back(std::move(blk));
        }
        const Tensor& fc = ws.at("fc/weights", path);
        PIN_CHECK(fc.shape() == Shape({256, 136}), path, ": fc/weights has shape ", shape_to_string(fc.shape()), ", expected (256, 136)");
        fc_.assign(fc.data(), fc.data() + fc.numel());
        const Tensor& fb = ws.at("fc/bias", path);
        PIN_CHECK(fb.numel() == 136, path, ": fc/bias has ", fb.numel(), " values, expected 136");
        fc_bias_.assign(fb.data(), fb.data() + fb.numel());
    }

    // 68 points in the crop's pixel coordinates.
    std::vector<Point2> landmarks(const io::RgbImage& crop) const {
        PIN_CHECK(crop.width > 0 && crop.height > 0, "FaceLandmarkNet: empty crop");
        // Pad to a centred square with zeros (the odd pixel before), resize to 112, subtract the mean.
        const int side = std::max(crop.width, crop.height), diff = side - std::min(crop.width, crop.height);
        const int after = static_cast<int>(std::round(diff * 0.5)), before = diff - after;
        const int ox = crop.width < crop.height ? before : 0, oy = crop.height < crop.width ? before : 0;
        const float mean[3] = {122.782f, 117.001f, 104.298f};
        const Tensor x = tf_network_input(crop, ox, oy, 112, mean);
        Tensor h = x;
        for (size_t b = 0; b < blocks_.size(); ++b) h = dense_block(h, b);
        // 7x7 average pool (stride 2, valid) of a 7x7 map: the mean of each channel.
        PIN_CHECK(h.h() == 7 && h.w() == 7 && h.c() == 256, "FaceLandmarkNet: features ", shape_to_string(h.shape()));
        std::vector<double> feat(256, 0.0);
        for (int64_t i = 0; i < 49; ++i)
            for (int64_t c = 0; c < 256; ++c) feat[c] += h.data()[i * 256 + c] / 49.0;
        // Outputs are positions in the padded 112 square, as fractions; undo the padding.
        const double scale = 112.0 / side, sw = crop.width * scale, sh = crop.height * scale;
        const double pad_x = crop.width < crop.height ? (sh - sw) / 2 : 0, pad_y = crop.height < crop.width ? (sw - sh) / 2 : 0;
        std::vector<Point2> pts(68);
        for (int o = 0; o < 136; ++o) {
            double v = fc_bias_[o];
            for (int i = 0; i < 256; ++i) v += feat[i] * fc_[static_cast<size_t>(i) * 136 + o];
            if (o % 2 == 0)
                pts[o / 2].x = (v * 112 - pad_x) / sw * crop.width;
            else
                pts[o / 2].y = (v * 112 - pad_y) / sh * crop.height;
        }
        return pts;
    }

    // The 68 points of the face in `box` of `photo`, in photo coordinates (face-api crops the box,
    // clipped to the photo, with its corners floored).
    std::vector<Point2> landmarks(const io::RgbImage& photo, const FaceBox& box) const {
        const int x0 = static_cast<int>(std::floor(std::max(0.0, box.x))), y0 = static_cast<int>(std::floor(std::max(0.0, box.y)));
        const int x1 = static_cast<int>(std::floor(std::min<double>(photo.width, box.x + box.width)));
        const int y1 = static_cast<int>(std::floor(std::min<double>(photo.height, box.y + box.height)));
        PIN_CHECK(x1 > x0 && y1 > y0, "FaceLandmarkNet: the face box lies outside the photo");
        io::RgbImage crop;
        crop.width = x1 - x0, crop.height = y1 - y0;
        crop.rgb.resize(static_cast<size_t>(crop.width) * crop.height * 3);
        for (int y = 0; y < crop.height; ++y)
            std::copy(photo.rgb.begin() + (static_cast<std::ptrdiff_t>(y + y0) * photo.width + x0) * 3,
                      photo.rgb.begin() + (static_cast<std::ptrdiff_t>(y + y0) * photo.width + x1) * 3,
                      crop.rgb.begin() + static_cast<std::ptrdiff_t>(y) * crop.width * 3);
        std::vector<Point2> pts = landmarks(crop);
        for (Point2& p : pts) p.x += x0, p.y += y0;
        return pts;
    }

private:
    struct Block {
        std::vector<TfSeparableConv> sep;  // conv0 (all but the first block), conv1..conv3
    };
    // face-api's denseBlock4: out1 = relu(conv0 (stride 2)), out_k = sepconv(relu(out1 + ... + out_{k-1})),
    // result relu(out1 + out2 + out3 + out4).
    Tensor dense_block(const Tensor& x, size_t b) const {
        const Block& blk = blocks_[b];
        size_t next = 0;
        Tensor out1 = b == 0 ? first_.forward(x, 2, true) : blk.sep[next++].forward(x, 2);
        relu_inplace(out1);
        Tensor sum = out1.clone();  // Tensor copies share storage: the running sum needs its own
        for (int k = 0; k < 3; ++k) {
            Tensor in = k == 0 ? out1 : sum.clone();
            if (k > 0) relu_inplace(in);
            const Tensor out = blk.sep[next++].forward(in, 1);
            add_inplace(sum, out);
        }
        relu_inplace(sum);
        return sum;
    }
    TfConv first_;
    std::vector<Block> blocks_;
    std::vector<float> fc_, fc_bias_;
};

}  // namespace pin::detect
