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

class FaceFinder {
public:
    // `face_api_dir` holds tiny_face_detector_model* and face_landmark_68_model* (setup.sh fetches them).
    explicit FaceFinder(const std::string& face_api_dir)
        : detector_(face_api_dir + "/tiny_face_detector_model-weights_manifest.json"),
          landmarks_(face_api_dir + "/face_landmark_68_model-weights_manifest.json") {}

    // Faces, best score first.
    std::vector<FoundFace> find(const io::RgbImage& photo, const DetectorOptions& options = {}) const {
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
