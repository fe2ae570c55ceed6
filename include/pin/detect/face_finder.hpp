// pin/detect/face_finder.hpp - from a photo to aligned faces: detection (TinyFaceDetector), 68 landmarks
// per face (FaceLandmarkNet), their 5 points, and the aligned 112 x 112 chip (face_alignment.hpp).
#pragma once
#include <algorithm>
#include <string>
#include <vector>

#include "pin/detect/face_alignment.hpp"
#include "pin/detect/face_landmarks.hpp"
#include "pin/detect/tiny_face_detector.hpp"

namespace pin::detect {

struct FoundFace {
    FaceBox box;
    std::vector<Point2> landmarks68;
    FivePoints points;
};

// The detector's input size when none is given: the photo's longer side rounded up to a multiple of
// 32, between 160 and 416 (face-api's default). Upsampling a small photo adds nothing: on the 150 x 150
// LFW photos, 160 finds a face in 199 of the first 200 at score 0.3, 416 in 190.
inline int auto_input_size(int width, int height) {
    const int side = std::max(width, height);
    return std::clamp((side + 31) / 32 * 32, 160, 416);
}

class FaceFinder {
public:
    // `face_api_dir` holds tiny_face_detector_model* and face_landmark_68_model* (setup.sh fetches them).
    explicit FaceFinder(const std::string& face_api_dir)
        : detector_(face_api_dir + "/tiny_face_detector_model-weights_manifest.json"),
          landmarks_(face_api_dir + "/face_landmark_68_model-weights_manifest.json") {}

    // Faces, best score first. options.input_size 0 = auto_input_size.
    std::vector<FoundFace> find(const io::RgbImage& photo, DetectorOptions options) const {
        if (options.input_size == 0) options.input_size = auto_input_size(photo.width, photo.height);
        std::vector<FoundFace> out;
        for (const FaceBox& box : detector_.detect(photo, options)) {
            FoundFace f;
            f.box = box;
            // A box (almost) entirely outside the photo has nothing to crop.
            const double w = std::min<double>(photo.width, box.x + box.width) - std::max(0.0, box.x);
            const double h = std::min<double>(photo.height, box.y + box.height) - std::max(0.0, box.y);
            if (w < 8 || h < 8) continue;
            f.landmarks68 = landmarks_.landmarks(photo, box);
            f.points = five_points_from_68(f.landmarks68);
            out.push_back(std::move(f));
        }
        return out;
    }

private:
    TinyFaceDetector detector_;
    FaceLandmarkNet landmarks_;
};

}  // namespace pin::detect
