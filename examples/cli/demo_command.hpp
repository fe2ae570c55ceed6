// examples/cli/demo_command.hpp - `pin demo`, the main job: photos in, every face found and aligned,
// attacked with L2 PGD against the recognizer (dodging: pushed away from its own clean embedding),
// then defended with PIN. Prints the cosine similarity to the clean face for the clean, attacked and
// attacked + PIN face, and writes one montage PNG (photo crop | aligned | attacked | attacked + PIN).
#pragma once
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/align_commands.hpp"
#include "cli/eval_commands.hpp"
#include "cli/options.hpp"
#include "pin/detect/face_finder.hpp"
#include "pin/eval/attacks.hpp"
#include "pin/eval/metrics.hpp"
#include "pin/model/defense.hpp"

namespace cli {

inline int cmd_demo(const Options& o, const std::string& default_model_dir) {
    namespace fs = std::filesystem;
    const std::string in = o.get("in", PIN_FACE_API_DIR);
    const fs::path out_dir = o.get("out", "demo");
    pin::eval::AttackOptions attack;
    attack.kind = pin::eval::AttackKind::PgdL2;
    attack.intensity = real_option(o, "eps", 0.04, 0.0, 1.0);
    attack.iterations = static_cast<int>(int_option(o, "iterations", 10, 1, 1000));
    attack.seed = static_cast<uint64_t>(int_option(o, "seed", 0, 0, INT64_MAX));

    // 1. Faces: every face of every photo, aligned to the 112 x 112 template.
    fs::path base;
    const std::vector<fs::path> photos = list_photos(in, base);
    const pin::detect::FaceFinder finder(face_api_dir(o));
    struct Face {
        std::string name;
        std::vector<float> crop, aligned;  // gray [-1, 1], 112 x 112
    };
    std::vector<Face> faces;
    for (const fs::path& p : photos) {
        const pin::io::RgbImage photo = pin::io::load_rgb_image(p.string());
        const std::vector<pin::detect::FoundFace> found = finder.find(photo);
        for (size_t f = 0; f < found.size(); ++f) {
            Face face;
            face.name = fs::relative(p, base).string() + (found.size() > 1 ? " #" + std::to_string(f + 1) : "");
            face.aligned = pin::detect::to_gray_face(pin::detect::warp_face(photo, found[f].points, 112));
            // The detector's box, squared around its centre, as the photo shows it.
            const pin::detect::FaceBox& b = found[f].box;
            const double side = std::max(b.width, b.height), cx = b.x + b.width / 2, cy = b.y + b.height / 2;
            pin::io::RgbImage crop;
            crop.width = crop.height = 112;
            crop.rgb.resize(112 * 112 * 3);
            for (int y = 0; y < 112; ++y)
                for (int x = 0; x < 112; ++x) {
                    const int sx = std::clamp(static_cast<int>(cx - side / 2 + (x + 0.5) * side / 112), 0, photo.width - 1);
                    const int sy = std::clamp(static_cast<int>(cy - side / 2 + (y + 0.5) * side / 112), 0, photo.height - 1);
                    for (int c = 0; c < 3; ++c) crop.rgb[(static_cast<size_t>(y) * 112 + x) * 3 + c] = photo.at(sx, sy, c);
                }
            face.crop = pin::detect::to_gray_face(crop);
            faces.push_back(std::move(face));
        }
    }
    PIN_CHECK(!faces.empty(), in, ": no face found in ", photos.size(), " photos");
    const int64_t n = static_cast<int64_t>(faces.size());
    std::printf("demo: %zu photos, %lld faces found and aligned\n", photos.size(), static_cast<long long>(n));

    // 2. The recognizer, the clean embeddings, the attack (offline: against the bare recognizer).
    const std::unique_ptr<pin::recognizer::FaceRecognizer> rec = load_recognizer(o);
    const int64_t dim = rec->dim();
    pin::Tensor clean = pin::Tensor::empty({n, 1, 112, 112}, pin::Layout::NHWC);
    for (int64_t i = 0; i < n; ++i) std::copy(faces[i].aligned.begin(), faces[i].aligned.end(), clean.data() + i * 12544);
    const pin::Tensor e_clean = rec->embed(clean);
    const std::vector<double> dodge(static_cast<size_t>(n), -1.0);
    const pin::eval::GradientOracle oracle = [&](const pin::Tensor& x, pin::Tensor& grad) {
        const pin::Tensor e = rec->embed_for_gradient(x);
        pin::Tensor de = pin::Tensor::empty({x.n(), dim});
        const std::vector<double> objective = pin::eval::signed_cosine_and_gradient(e, e_clean.data(), dodge, de);
        grad = rec->input_gradient(de);
        return objective;
    };
    std::printf("demo: L2 PGD, %d steps, ||eta|| <= %.3g ||x|| (dodging the face's own clean embedding)\n", attack.iterations,
                attack.intensity);
    const pin::Tensor attacked = pin::eval::run_attack(clean, attack, oracle);
    const pin::Tensor e_attacked = rec->embed(attacked);

    // 3. The defense: PIN from the model folder, if trained weights are there.
    const std::string model_dir = o.get("model", default_model_dir);
    std::unique_ptr<pin::model::Defense> pin_defense;
    std::string missing;
    try {
        pin_defense = std::make_unique<pin::model::Defense>(pin::model::Defense::load_pin(model_dir, pin::model::SamplingMode::Bernoulli, attack.seed));
    } catch (const pin::Error& e) {
        missing = e.what();
    }
    pin::Tensor defended, defended_clean, e_def, e_def_clean;
    if (pin_defense) {
        defended = pin_defense->inactivate(attacked).defended;
        defended_clean = pin_defense->inactivate(clean).defended;
        e_def = rec->embed(defended);
        e_def_clean = rec->embed(defended_clean);
    }

    // 4. The table and the montage.
    auto cos = [&](const pin::Tensor& e, int64_t i) { return pin::eval::cosine_similarity(e.data() + i * dim, e_clean.data() + i * dim, dim); };
    std::printf("\ncosine similarity to the clean face's embedding (1 = same; the recognizer's same-person threshold at its EER on LFW is about 0.91)\n");
    std::printf("%-34s %8s %10s %10s %12s\n", "face", "attacked", "clean+PIN", "attacked+PIN", "");
    nlohmann::json rows = nlohmann::json::array();
    double sum_att = 0, sum_def = 0, sum_def_clean = 0;
    for (int64_t i = 0; i < n; ++i) {
        nlohmann::json r;
        r["face"] = faces[i].name;
        r["attacked"] = cos(e_attacked, i);
        sum_att += cos(e_attacked, i);
        if (pin_defense) {
            r["clean_pin"] = cos(e_def_clean, i);
            r["attacked_pin"] = cos(e_def, i);
            sum_def += cos(e_def, i);
            sum_def_clean += cos(e_def_clean, i);
            std::printf("%-34s %8.3f %10.3f %10.3f\n", faces[i].name.c_str(), cos(e_attacked, i), cos(e_def_clean, i), cos(e_def, i));
        } else {
            std::printf("%-34s %8.3f %10s %10s\n", faces[i].name.c_str(), cos(e_attacked, i), "-", "-");
        }
        rows.push_back(r);
    }
    if (pin_defense)
        std::printf("%-34s %8.3f %10.3f %10.3f\n", "mean", sum_att / n, sum_def_clean / n, sum_def / n);
    else
        std::printf("%-34s %8.3f\n", "mean", sum_att / n);

    fs::create_directories(out_dir);
    const int cols = pin_defense ? 4 : 3;
    std::vector<float> montage(static_cast<size_t>(n) * 112 * cols * 112);
    auto put = [&](int64_t row, int col, const float* img) {
        for (int y = 0; y < 112; ++y)
            std::copy(img + y * 112, img + (y + 1) * 112, montage.begin() + ((row * 112 + y) * cols * 112 + col * 112));
    };
    for (int64_t i = 0; i < n; ++i) {
        put(i, 0, faces[i].crop.data());
        put(i, 1, clean.data() + i * 12544);
        put(i, 2, attacked.data() + i * 12544);
        if (pin_defense) put(i, 3, defended.data() + i * 12544);
    }
    const std::string montage_path = (out_dir / "montage.png").string();
    pin::io::write_gray_png(montage_path, montage.data(), cols * 112, static_cast<int>(n) * 112);
    nlohmann::json j;
    j["photos"] = photos.size();
    j["faces"] = rows;
    j["attack"] = {{"kind", "pgd (L2)"}, {"intensity", attack.intensity}, {"iterations", attack.iterations}, {"protocol", "offline"}};
    j["defense"] = pin_defense ? model_dir : "none (" + missing + ")";
    const std::string text = j.dump(1);
    pin::io::write_file_atomically((out_dir / "demo.json").string(), text.data(), text.size());
    std::printf("\nmontage (photo crop | aligned | attacked%s): %s\n", pin_defense ? " | attacked + PIN" : "", montage_path.c_str());
    if (!pin_defense) {
        std::printf("\nNo trained PIN model: %s\nThe defended column is left out until trained weights are in %s (docs/training.md).\n",
                    missing.c_str(), model_dir.c_str());
    }
    return 0;
}

}  // namespace cli
