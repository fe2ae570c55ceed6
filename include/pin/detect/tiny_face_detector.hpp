// pin/detect/tiny_face_detector.hpp - face-api's Tiny Face Detector on the engine: a TinyYOLOv2-style
// network (a 3x3 convolution, five depthwise-separable 3x3 convolutions with leaky ReLU 0.1 and max
// pooling, a 1x1 output convolution) that predicts, on a 13 x 13 grid for a 416 input, five anchor
// boxes per cell; followed by non-maximum suppression. Weights: `model/tiny_face_detector_model*` of
// the npm package @vladmandic/face-api 1.7.15 (MIT), the behaviour its TinyFaceDetector/TinyYolov2Base
// sources describe (padding the photo to a square at the bottom/right, resizing, mean subtraction).
#pragma once
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "pin/detect/tf_layers.hpp"
#include "pin/io/image.hpp"
#include "pin/io/tfjs_weights.hpp"

namespace pin::detect {

// A face box in photo pixels (x, y top-left; may reach past the borders) and its score in (0, 1).
struct FaceBox {
    double x = 0, y = 0, width = 0, height = 0, score = 0;
};

inline double box_iou(const FaceBox& a, const FaceBox& b) {
    const double w = std::max(0.0, std::min(a.x + a.width, b.x + b.width) - std::max(a.x, b.x));
    const double h = std::max(0.0, std::min(a.y + a.height, b.y + b.height) - std::max(a.y, b.y));
    const double inter = w * h, uni = a.width * a.height + b.width * b.height - inter;
    return uni > 0 ? inter / uni : 0.0;
}

// Greedy non-maximum suppression: highest score first, drop boxes overlapping a kept one by more
// than iou_threshold. Returns the kept boxes, best first.
inline std::vector<FaceBox> non_max_suppression(std::vector<FaceBox> boxes, double iou_threshold) {
    std::stable_sort(boxes.begin(), boxes.end(), [](const FaceBox& a, const FaceBox& b) { return a.score > b.score; });
    std::vector<FaceBox> kept;
    for (const FaceBox& b : boxes) {
        bool overlaps = false;
        for (const FaceBox& k : kept) overlaps = overlaps || box_iou(b, k) > iou_threshold;
        if (!overlaps) kept.push_back(b);
    }
    return kept;
}

// face-api's defaults are input 416 and score 0.5. Ours differ, measured on the 871 LFW fold-5 photos
// (bench/align_check.sh): upsampling a small photo adds nothing, and at 0.5 a few faces in 100 are lost.
struct DetectorOptions {
    int input_size = 0;       // the network's square input, a multiple of 32; 0 = auto_input_size
    double min_score = 0.3;   // boxes scoring at or below this are dropped
    double iou_threshold = 0.4;
};

// The photo's longer side rounded up to a multiple of 32, between 160 and 416. On the 150 x 150 LFW
// photos, 160 finds a face in 199 of the first 200 at score 0.3, 416 in 190.
inline int auto_input_size(int width, int height) {
    const int side = std::max(width, height);
    return std::clamp((side + 31) / 32 * 32, 160, 416);
}

class TinyFaceDetector {
public:
    explicit TinyFaceDetector(const std::string& manifest_path) : TinyFaceDetector(io::load_tfjs_weights(manifest_path), manifest_path) {}
    TinyFaceDetector(const io::TfjsWeights& ws, const std::string& path) {
        conv0_ = TfConv::from(ws, "conv0/filters", "conv0/bias", path);
        PIN_CHECK(conv0_.cin == 3 && conv0_.k == 3, path, ": conv0 is not a 3x3 convolution of RGB (another model?)");
        for (int i = 1; i <= 5; ++i) sep_.push_back(TfSeparableConv::from(ws, "conv" + std::to_string(i), path));
        conv8_ = TfConv::from(ws, "conv8/filters", "conv8/bias", path);
        PIN_CHECK(conv8_.cout == 25 && conv8_.k == 1, path, ": conv8 has ", conv8_.cout, " outputs, the face detector has 25 (5 anchors x 5)");
        PIN_CHECK(ws.tensors.size() == 2 + 5 * 3 + 2, path, ": ", ws.tensors.size(), " weights, the tiny face detector has 19 (another model?)");
    }

    // The raw network output for a photo: (1, 25, cells, cells) NHWC.
    Tensor forward(const io::RgbImage& photo, int input_size) const {
        PIN_CHECK(input_size >= 32 && input_size % 32 == 0 && input_size <= 1024, "--input-size ", input_size,
                  ": must be a multiple of 32 between 32 and 1024");
        // Padded to a square at the bottom or right, resized, mean subtracted.
        const float mean[3] = {117.001f, 114.697f, 97.404f};
        const Tensor x = tf_network_input(photo, 0, 0, input_size, mean);
        Tensor h = conv0_.forward(x, 1, false);
        leaky_relu_inplace(h);
        h = maxpool_same(h, 2, 2);
        for (size_t i = 0; i < sep_.size(); ++i) {
            h = sep_[i].forward(h, 1);
            leaky_relu_inplace(h);
            h = maxpool_same(h, 2, i + 1 < sep_.size() ? 2 : 1);
        }
        return conv8_.forward(h, 1, false);
    }

    std::vector<FaceBox> detect(const io::RgbImage& photo, DetectorOptions opt = {}) const {
        if (opt.input_size == 0) opt.input_size = auto_input_size(photo.width, photo.height);
        const Tensor out = forward(photo, opt.input_size);
        const int64_t cells = out.h();
        // Boxes are predicted relative to the padded square; the correction maps them to the photo.
        const double scale = static_cast<double>(opt.input_size) / std::max(photo.width, photo.height);
        const double reshaped_w = std::round(photo.width * scale), reshaped_h = std::round(photo.height * scale);
        const double fix_x = opt.input_size / reshaped_w, fix_y = opt.input_size / reshaped_h;
        static const double anchors[5][2] = {{1.603231, 2.094468}, {6.041143, 7.080126}, {2.882459, 3.518061}, {4.266906, 5.178857},
                                             {9.041765, 10.66308}};
        auto sigmoid = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
        std::vector<FaceBox> boxes;
        for (int64_t row = 0; row < cells; ++row)
            for (int64_t col = 0; col < cells; ++col)
                for (int a = 0; a < 5; ++a) {
                    const float* v = out.data() + (row * cells + col) * 25 + a * 5;
                    const double score = sigmoid(v[4]);
                    if (score <= opt.min_score) continue;
                    const double cx = (col + sigmoid(v[0])) / cells * fix_x, cy = (row + sigmoid(v[1])) / cells * fix_y;
                    const double w = std::exp(v[2]) * anchors[a][0] / cells * fix_x, h = std::exp(v[3]) * anchors[a][1] / cells * fix_y;
                    FaceBox b;
                    b.x = (cx - w / 2) * photo.width;
                    b.y = (cy - h / 2) * photo.height;
                    b.width = w * photo.width;
                    b.height = h * photo.height;
                    b.score = score;
                    boxes.push_back(b);
                }
        return non_max_suppression(std::move(boxes), opt.iou_threshold);
    }

private:
    TfConv conv0_, conv8_;
    std::vector<TfSeparableConv> sep_;
};

}  // namespace pin::detect
