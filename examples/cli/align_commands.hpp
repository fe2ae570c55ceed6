// examples/cli/align_commands.hpp - `pin align`: photos in, aligned faces out (one PNG per face,
// mirroring the input tree) plus a JSON of boxes, scores and landmarks.
#pragma once
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/options.hpp"
#include "pin/core/progress.hpp"
#include "pin/detect/face_finder.hpp"
#include "pin/io/face_dataset.hpp"
#include "pin/io/file_util.hpp"
#include "pin/io/image.hpp"

namespace cli {

inline std::string face_api_dir(const Options& o) {
    namespace fs = std::filesystem;
    const std::string dir = o.get("face-api", PIN_FACE_API_DIR);
    for (const char* m : {"/tiny_face_detector_model-weights_manifest.json", "/face_landmark_68_model-weights_manifest.json"})
        if (!fs::exists(dir + m))
            throw pin::Error(dir + m + ": the face detector's weights are missing; ./setup.sh fetches them (npm pack "
                                       "@vladmandic/face-api@1.7.15), or pass --face-api DIR");
    return dir;
}

// Photos under `in` (a file or a folder, searched recursively), sorted, with the folder they are
// relative to.
inline std::vector<std::filesystem::path> list_photos(const std::string& in, std::filesystem::path& base) {
    namespace fs = std::filesystem;
    std::error_code ec;
    std::vector<fs::path> photos;
    if (fs::is_directory(in, ec)) {
        base = in;
        for (auto it = fs::recursive_directory_iterator(in, ec); !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
            if (it->is_regular_file() && pin::io::is_image_file(it->path())) photos.push_back(it->path());
        PIN_CHECK(!ec, in, ": cannot list the folder (", ec.message(), ")");
        PIN_CHECK(!photos.empty(), in, ": no images (.png, .jpg, .jpeg, .bmp, .pgm, .ppm, .tga) in this folder");
    } else {
        PIN_CHECK(fs::exists(in, ec), in, ": no such file or folder");
        base = fs::path(in).parent_path();
        photos.push_back(in);
    }
    std::sort(photos.begin(), photos.end());
    return photos;
}

inline int cmd_align(const Options& o) {
    namespace fs = std::filesystem;
    if (!o.has("in") || !o.has("out")) fail_usage("align needs --in PHOTO|DIR and --out DIR");
    pin::detect::DetectorOptions det;
    det.min_score = real_option(o, "min-score", 0.3, 0.0, 1.0);
    const std::string size_arg = o.get("input-size", "auto");
    det.input_size = size_arg == "auto" ? 0 : static_cast<int>(int_option(o, "input-size", 0, 32, 1024));
    if (det.input_size % 32 != 0) fail_usage("--input-size must be a multiple of 32 (or auto)");
    const bool color = o.has("color");
    const fs::path out_dir = o.get("out", "");
    const std::string json_path = o.get("json", (out_dir / "faces.json").string());

    fs::path base;
    const std::vector<fs::path> photos = list_photos(o.get("in", ""), base);
    const pin::detect::FaceFinder finder(face_api_dir(o));
    nlohmann::json results = nlohmann::json::array(), errors = nlohmann::json::array();
    int64_t with_face = 0, faces = 0;
    std::unique_ptr<pin::ProgressBar> bar;
    if (!o.has("no-progress")) bar = std::make_unique<pin::ProgressBar>("align", static_cast<int64_t>(photos.size()), "photos");
    for (size_t i = 0; i < photos.size(); ++i) {
        const fs::path& photo_path = photos[i];
        const fs::path rel = fs::relative(photo_path, base);
        nlohmann::json r;
        r["photo"] = rel.string();
        try {
            const pin::io::RgbImage photo = pin::io::load_rgb_image(photo_path.string());
            const std::vector<pin::detect::FoundFace> found = finder.find(photo, det);
            r["width"] = photo.width;
            r["height"] = photo.height;
            r["faces"] = nlohmann::json::array();
            for (size_t f = 0; f < found.size(); ++f) {
                // The best face keeps the photo's name (so LFW-style folders stay usable); others get _face2, ...
                fs::path chip = out_dir / rel;
                chip.replace_extension("");
                if (f > 0) chip += "_face" + std::to_string(f + 1);
                fs::create_directories(chip.parent_path());
                const pin::io::RgbImage aligned = pin::detect::warp_face(photo, found[f].points, 112);
                const std::vector<float> gray = pin::detect::to_gray_face(aligned);
                pin::io::write_face_png(chip.string() + ".png", gray.data(), 112);
                nlohmann::json face;
                face["file"] = fs::relative(chip.string() + ".png", out_dir).string();
                if (color) {
                    pin::io::write_rgb_png(chip.string() + ".rgb150.png", pin::detect::warp_face(photo, found[f].points, 150));
                    face["color_file"] = fs::relative(chip.string() + ".rgb150.png", out_dir).string();
                }
                const pin::detect::FaceBox& b = found[f].box;
                face["box"] = {b.x, b.y, b.width, b.height};
                face["score"] = b.score;
                nlohmann::json pts = nlohmann::json::array();
                for (const auto& p : found[f].points) pts.push_back({p.x, p.y});
                face["points"] = pts;
                nlohmann::json all = nlohmann::json::array();
                for (const auto& p : found[f].landmarks68) all.push_back({p.x, p.y});
                face["landmarks68"] = all;
                r["faces"].push_back(face);
            }
            with_face += found.empty() ? 0 : 1;
            faces += static_cast<int64_t>(found.size());
        } catch (const pin::Error& e) {  // one unreadable photo must not cost the others
            r["error"] = e.what();
            errors.push_back(e.what());
        }
        results.push_back(r);
        if (bar) bar->update(static_cast<int64_t>(i + 1));
    }
    if (bar) bar->finish();
    nlohmann::json j;
    j["photos"] = photos.size();
    j["photos_with_face"] = with_face;
    j["faces"] = faces;
    j["unreadable"] = errors.size();
    j["min_score"] = det.min_score;
    j["input_size"] = size_arg;
    j["template"] = "dlib 150x150 chip scaled to 112 (lfw112)";
    j["results"] = results;
    fs::create_directories(fs::path(json_path).parent_path().empty() ? fs::path(".") : fs::path(json_path).parent_path());
    const std::string text = j.dump(1);
    pin::io::write_file_atomically(json_path, text.data(), text.size());
    std::printf("align: %zu photos, %lld with a face, %lld faces -> %s (boxes and landmarks: %s)\n", photos.size(),
                static_cast<long long>(with_face), static_cast<long long>(faces), out_dir.string().c_str(), json_path.c_str());
    if (!errors.empty()) {
        std::fprintf(stderr, "align: %zu photos could not be read, e.g. %s (all listed in %s)\n", errors.size(),
                     errors[0].get<std::string>().c_str(), json_path.c_str());
        return 1;
    }
    return 0;
}

}  // namespace cli
