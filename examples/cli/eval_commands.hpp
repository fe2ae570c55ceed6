// examples/cli/eval_commands.hpp - `pin eval` (verification on LFW-style pairs, with a defense and
// optionally an attack; JSON out) and `pin embed` (recognizer embeddings of faces, safetensors out).
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/device.hpp"
#include "cli/options.hpp"
#include "pin/core/allocator.hpp"
#include "pin/eval/verification.hpp"
#include "pin/io/face_dataset.hpp"
#include "pin/io/file_util.hpp"
#include "pin/io/image.hpp"
#include "pin/io/safetensors.hpp"
#include "pin/model/defense.hpp"
#include "pin/recognizer/dlib_resnet.hpp"

#ifndef PIN_FACE_API_DIR
#define PIN_FACE_API_DIR "weights/face-api"
#endif

namespace cli {

inline std::unique_ptr<pin::recognizer::FaceRecognizer> load_recognizer(const Options& o) {
    namespace fs = std::filesystem;
    const std::string manifest =
        o.get("recognizer", (fs::path(PIN_FACE_API_DIR) / "face_recognition_model-weights_manifest.json").string());
    if (!fs::exists(manifest))
        throw pin::Error(manifest + ": the face recognizer's weights are missing; ./setup.sh fetches them (npm pack "
                                    "@vladmandic/face-api@1.7.15), or pass --recognizer MANIFEST");
    return std::make_unique<pin::recognizer::DlibResNet>(manifest);
}

// none | pin | pca-K | dae | jpeg-Q | bits-K, with the model folder / eigenbasis of the options.
inline pin::model::Defense load_defense(const Options& o, const std::string& default_model_dir, const std::string& default_name = "none") {
    namespace fs = std::filesystem;
    const std::string name = o.get("defense", default_name);
    const std::string model_dir = o.get("model", default_model_dir);
    const uint64_t seed = static_cast<uint64_t>(int_option(o, "seed", 0, 0, INT64_MAX));
    if (name == "none") return pin::model::Defense::none();
    if (name == "pin")
        return pin::model::Defense::load_pin(model_dir, pin::model::parse_sampling_mode(o.get("mode", "sample")), seed);
    if (name == "dae") return pin::model::Defense::load_dae(model_dir);
    auto level = [&](size_t prefix, long lo, long hi, const char* what) {
        char* end = nullptr;
        const long v = std::strtol(name.c_str() + prefix, &end, 10);
        if (end == name.c_str() + prefix || *end != '\0' || v < lo || v > hi)
            fail_usage("--defense " + name + ": " + what + " must be " + std::to_string(lo) + "-" + std::to_string(hi));
        return static_cast<int>(v);
    };
    if (name.rfind("jpeg-", 0) == 0) return pin::model::Defense::jpeg(level(5, 1, 100, "the JPEG quality"));
    if (name.rfind("bits-", 0) == 0) return pin::model::Defense::bit_depth(level(5, 1, 8, "the bit depth"));
    if (name.rfind("pca-", 0) == 0) {
        char* end = nullptr;
        const long k = std::strtol(name.c_str() + 4, &end, 10);
        if (*end != '\0' || k < 1) fail_usage("--defense pca-K needs a positive K, got '" + name + "'");
        const std::string basis_path = o.get("basis", (fs::path(model_dir) / "eigenbasis.safetensors").string());
        const pin::model::EigenBasis basis = pin::model::EigenBasis::load(basis_path);
        if (k > basis.count()) fail_usage(name + ": " + basis_path + " holds only " + std::to_string(basis.count()) + " eigenfaces");
        return pin::model::Defense::pca(basis, k);
    }
    fail_usage("unknown defense '" + name + "' (expected none, pin, pca-K, dae, jpeg-Q or bits-K)");
}

inline std::vector<int> parse_folds(const std::string& s) {
    std::vector<int> folds;
    if (s == "all") return folds;
    for (const std::string& part : comma_items("folds", s)) {
        const size_t dash = part.find('-');
        char* end = nullptr;
        const long a = std::strtol(part.c_str(), &end, 10);
        long b = a;
        if (dash != std::string::npos) b = std::strtol(part.c_str() + dash + 1, &end, 10);
        if (*end != '\0' || a < 1 || b < a || b > 1000) fail_usage("--folds expects e.g. 5-8 or 1,3,5, got '" + s + "'");
        for (long f = a; f <= b; ++f) folds.push_back(static_cast<int>(f));
    }
    // A set: "8,5" and "5-8,6" name the same pairs as "5,8" and "5-8", and so the same cache entries.
    std::sort(folds.begin(), folds.end());
    folds.erase(std::unique(folds.begin(), folds.end()), folds.end());
    return folds;
}

// Pictures for --examples DIR: a few scored faces (same-person and different-person pairs, or the
// sticker's faces), clean, attacked, and what the defense makes of the attacked one.
inline void write_examples(const Options& o, const pin::eval::VerificationRun& run, const pin::model::Defense& defense,
                           const pin::eval::VerificationResult& r, const pin::eval::VerificationOptions& vo) {
    if (!o.has("examples")) return;
    namespace fs = std::filesystem;
    const std::string dir = o.get("examples", "");
    fs::create_directories(dir);
    std::vector<int64_t> picks;
    if (vo.attack.kind == pin::eval::AttackKind::Sticker) {
        for (int64_t k = 0; k < std::min<int64_t>(6, r.identities); ++k) picks.push_back(k);
    } else {
        for (int want_same = 1; want_same >= 0; --want_same)
            for (int64_t k = 0, n = 0; k < r.pairs && n < 3; ++k)
                if (r.same[static_cast<size_t>(k)] == want_same) picks.push_back(k), ++n;
    }
    const int64_t upto = picks.empty() ? 0 : *std::max_element(picks.begin(), picks.end()) + 1;
    const pin::Tensor clean = run.clean_first_faces(upto);
    const pin::Tensor& attacked = vo.attack.kind == pin::eval::AttackKind::None ? clean : run.attacked_faces();
    for (const int64_t k : picks) {
        const pin::Tensor a = attacked.slice(k, k + 1);
        const pin::model::DefenseOutput d = defense.inactivate(a.reshape(a.shape(), pin::Layout::NHWC), 7000 + static_cast<uint64_t>(k));
        const std::string stem = (fs::path(dir) / ("pair" + std::to_string(k))).string();
        pin::io::write_face_png(stem + "_clean.png", clean.data() + k * 12544, 112);
        pin::io::write_face_png(stem + "_attacked.png", a.data(), 112);
        pin::io::write_face_png(stem + "_defended.png", d.defended.data(), 112);
    }
}

// `o` by value: --gpu-tune writes the configuration it chose into it (apply_device), which the
// cache key and the JSON then record.
inline int cmd_eval(Options o, const std::string& default_model_dir) {
    if (!o.has("data")) fail_usage("eval needs --data DIR (pairs.txt and images/)");
    pin::eval::VerificationOptions vo;
    vo.folds = parse_folds(o.get("folds", "all"));
    vo.attack.kind = pin::eval::parse_attack(o.get("attack", "none"));
    vo.attack.intensity = real_option(o, "eps", 0.04, 0, 10);
    vo.attack.iterations = static_cast<int>(int_option(o, "iterations", 10, 1, 100000));
    vo.attack.seed = static_cast<uint64_t>(int_option(o, "seed", 0, 0, INT64_MAX));
    vo.protocol = pin::eval::parse_protocol(o.get("protocol", "offline"));
    vo.pin_gradient = pin::eval::parse_pin_gradient(o.get("pin-gradient", "sample"));
    vo.eot_masks = static_cast<int>(int_option(o, "eot", 20, 1, 1000));
    vo.attack.queries = static_cast<int>(int_option(o, "queries", vo.attack.kind == pin::eval::AttackKind::Evolutionary ? 10000 : 20, 1, 10000000));
    vo.attack.overshoot = real_option(o, "overshoot", 0.02, 0, 10);
    vo.attack.momentum = real_option(o, "momentum", 1.0, 0, 10);
    vo.attack.sticker_step = real_option(o, "sticker-step", 0.04, 0, 2);
    vo.max_pairs = int_option(o, "pairs", 0, 0, INT64_MAX);
    vo.identities = int_option(o, "identities", 1000, 1, INT64_MAX);
    vo.cache_dir = o.get("cache", "");
    vo.batch = int_option(o, "batch", 32, 1, 4096);
    pin::check_batch_memory(vo.batch, 40e6, "pin eval");  // the agent's activations and the attack's caches
    vo.progress = !o.has("no-progress");
    // The pairs first: a bad data folder fails before any model is loaded.
    const int64_t images = pin::io::count_pair_images(pin::eval::load_pairs(o.get("data", ""), vo.folds));
    pin::model::Defense defense = load_defense(o, default_model_dir);
    // --gpu-tune times the forward at the largest batch the run defends: --batch, or all its faces.
    if (!apply_device(o, defense, "eval", std::min(vo.batch, images))) return 1;
    // After apply_device: the GPU settings in the key are those the run uses, --gpu-tune's choice included.
    vo.defense_tag = o.get("defense", "none") + " model " + o.get("model", default_model_dir) + " basis " + o.get("basis", "") +
                     " mode " + o.get("mode", "sample") + " seed " + o.get("seed", "0") +
                     (o.get("device", "cpu") == "cpu" ? "" : " device " + o.get("device", "") + " " + gpu_settings_tag(o));
    const std::unique_ptr<pin::recognizer::FaceRecognizer> rec = load_recognizer(o);
    const auto t0 = std::chrono::steady_clock::now();
    pin::eval::VerificationRun run(o.get("data", ""), *rec, defense, vo);
    const pin::eval::VerificationResult r = run.run();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    nlohmann::json j;
    j["data"] = o.get("data", "");
    j["folds"] = o.get("folds", "all");
    j["pairs"] = r.pairs;
    j["images"] = run.images();
    j["recognizer"] = rec->name();
    j["defense"] = o.get("defense", "none");
    j["attack"] = o.get("attack", "none");
    j["protocol"] = o.get("protocol", "offline");
    j["device"] = o.get("device", "cpu");
    if (o.has("gpu-tune")) j["gpu_tuned"] = true;  // the gpu_* settings below are the ones tuning chose
    if (o.get("device", "cpu") == "cuda")  // gpu_math, gpu_gather, ..., gpu_gather_cache (defaults filled in)
        for (const GpuSetting& s : gpu_settings()) {
            std::string key = std::string("gpu_") + (s.flag + 4);
            std::replace(key.begin(), key.end(), '-', '_');
            j[key] = gpu_setting_value(o, s);
        }
    if (o.get("device", "cpu") == "cuda") {  // which kernels the settings reached (report_gpu_gemm_launches)
        for (const auto& [kernel, count] : gpu_gemm_launches()) j["gpu_gemm_launches"][kernel] = count;
        for (const auto& [kernel, gflop] : gpu_gemm_gflop()) j["gpu_gemm_gflop"][kernel] = gflop;
        j["gpu_gemm_gflop_total"] = gpu_gemm_gflop_total();
        j["gpu_runs_wgmma"] = gpu_runs_wgmma();
    }
    j["intensity"] = vo.attack.intensity;
    j["iterations"] = vo.attack.iterations;
    if (vo.max_pairs > 0) j["pairs_selected"] = "evenly spaced subset (half from each class when an even spread misses one)";
    if (vo.protocol == pin::eval::Protocol::Online && o.get("defense", "none") == "pin") {
        j["pin_gradient"] = o.get("pin-gradient", "sample");
        if (o.get("pin-gradient", "sample") == "eot") j["eot_masks"] = vo.eot_masks;
    }
    j["seed"] = vo.attack.seed;
    j["pairs_in_folds"] = r.pairs_total;
    if (pin::eval::attack_needs_threshold(vo.attack.kind)) j["attack_threshold"] = r.attack_threshold;
    if (vo.attack.kind == pin::eval::AttackKind::RandomSearch || vo.attack.kind == pin::eval::AttackKind::Evolutionary)
        j["queries"] = vo.attack.queries;
    if (vo.attack.kind == pin::eval::AttackKind::Evolutionary) {
        nlohmann::json mse = nlohmann::json::object();
        for (size_t c = 0; c < r.checkpoints.size(); ++c) mse[std::to_string(r.checkpoints[c])] = r.mean_mse[c];
        j["mse_at_queries"] = mse;
        j["started"] = r.started;
    }
    if (vo.attack.kind == pin::eval::AttackKind::Sticker) {
        j["identities"] = r.identities;
        j["target"] = r.target;
        j["error_rate"] = r.sticker_error_rate;
        j["clean_error_rate"] = r.sticker_clean_error_rate;
        j["threshold"] = r.threshold;
        j["clean_eer"] = r.clean_eer;
        j["sticker"] = {{"top", 8}, {"left", 19}, {"height", 20}, {"width", 72}};
        j["scores"] = r.scores;
        j["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("%s | defense %s | sticker (%s) | %lld identities vs %s: error rate %.2f %% (clean %.2f %%) at threshold %.4f\n",
                    o.get("data", "").c_str(), o.get("defense", "none").c_str(), o.get("protocol", "offline").c_str(),
                    static_cast<long long>(r.identities), r.target.c_str(), 100 * r.sticker_error_rate, 100 * r.sticker_clean_error_rate,
                    r.threshold);
        write_examples(o, run, defense, r, vo);
        if (o.has("json")) {
            const std::string text = j.dump(1);
            pin::io::write_file_atomically(o.get("json", ""), text.data(), text.size());
        }
        return 0;
    }
    j["eer"] = r.eer;
    j["auc"] = r.auc;
    j["tar_at_far"] = {{"0.1", r.tar_far_10}, {"0.01", r.tar_far_1}, {"0.001", r.tar_far_01}};
    j["clean_eer"] = r.clean_eer;
    j["threshold"] = r.threshold;
    j["accuracy"] = r.accuracy;
    j["error_rate"] = 1 - r.accuracy;
    j["eer_over_folds"] = {{"mean", r.eer_over_folds.mean}, {"ci95", r.eer_over_folds.half_width}};
    j["accuracy_over_folds"] = {{"mean", r.accuracy_over_folds.mean}, {"ci95", r.accuracy_over_folds.half_width}};
    if (defense.kind() == pin::model::DefenseKind::PIN) j["mean_kept"] = r.mean_kept;
    j["seconds"] = seconds;
    nlohmann::json roc = nlohmann::json::array();
    const size_t stride = std::max<size_t>(1, r.roc.size() / 400);
    for (size_t i = 0; i < r.roc.size(); i += stride) roc.push_back({r.roc[i].far, r.roc[i].tar});
    roc.push_back({r.roc.back().far, r.roc.back().tar});
    j["roc"] = roc;
    j["scores"] = r.scores;
    j["same"] = r.same;
    std::printf("%s | defense %s | attack %s (%s) | %lld pairs: EER %.2f %% (folds %.2f +- %.2f), AUC %.4f, TAR@FAR1%% %.3f, "
                "accuracy %.2f %% at the clean EER threshold%s\n",
                o.get("data", "").c_str(), o.get("defense", "none").c_str(), o.get("attack", "none").c_str(),
                o.get("protocol", "offline").c_str(), static_cast<long long>(r.pairs), 100 * r.eer, 100 * r.eer_over_folds.mean,
                100 * r.eer_over_folds.half_width, r.auc, r.tar_far_1, 100 * r.accuracy,
                defense.kind() == pin::model::DefenseKind::PIN ? (", mean kept " + std::to_string(r.mean_kept)).c_str() : "");
    write_examples(o, run, defense, r, vo);
    if (o.has("json")) {
        const std::string text = j.dump(1);
        pin::io::write_file_atomically(o.get("json", ""), text.data(), text.size());
    }
    return 0;
}

inline int cmd_embed(const Options& o) {
    if (!o.has("in") || !o.has("out")) fail_usage("embed needs --in LIST|DIR and --out FILE");
    const pin::io::FaceListing listing = pin::io::list_face_images(o.get("in", ""), "all");
    const std::unique_ptr<pin::recognizer::FaceRecognizer> rec = load_recognizer(o);
    const int64_t n = static_cast<int64_t>(listing.files.size()), batch = int_option(o, "batch", 32, 1, 4096);
    pin::Tensor e = pin::Tensor::empty({n, rec->dim()});
    for (int64_t b0 = 0; b0 < n; b0 += batch) {
        const int64_t bn = std::min(batch, n - b0);
        pin::Tensor x = pin::Tensor::empty({bn, 1, 112, 112}, pin::Layout::NHWC);
        pin::parallel_for(bn, [&](int64_t i) {
            const pin::io::FaceImage f = pin::io::load_face_image(listing.files[static_cast<size_t>(b0 + i)], 112);
            std::copy(f.pixels.begin(), f.pixels.end(), x.data() + i * 12544);
        });
        const pin::Tensor eb = rec->embed(x);
        std::copy(eb.data(), eb.data() + eb.numel(), e.data() + b0 * rec->dim());
    }
    nlohmann::json files = listing.files;
    pin::io::write_safetensors(o.get("out", ""), {{"embeddings", e}}, {{"files", files.dump()}});
    std::printf("wrote %s: %lld embeddings of %lld dimensions\n", o.get("out", "").c_str(), static_cast<long long>(n),
                static_cast<long long>(rec->dim()));
    return 0;
}

}  // namespace cli
