// pin/eval/verification.hpp - face verification on LFW-style pairs with a defense in front of the
// recognizer, clean or under attack (spec, evaluation protocol).
//
// Data: DIR/pairs.txt (LFW View 2 format, any number of folds) and DIR/images/<name>/<name>_NNNN.png
// (or DIR/<name>/...). Every face goes through the defense, then the recognizer; the pair score is
// the cosine similarity of the two embeddings. Under attack the first image of each pair is attacked
// and the second stays clean:
//   offline: the attack sees the bare recognizer; its output then goes through the defense.
//   online:  the attack sees recognizer(defense(x)). PCA is linear: exact gradient. PIN: a fresh mask
//            q ~ Bernoulli(p(x)) at every step and the gradient of B diag(q) B^T (x - m) + m with q
//            held fixed (straight-through for the agent; the paper's reparameterised attack).
// Defense randomness is keyed by image number and step, so the result does not depend on batching
// or threads.
#pragma once
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "pin/core/progress.hpp"
#include "pin/eval/attacks.hpp"
#include "pin/eval/metrics.hpp"
#include "pin/io/face_dataset.hpp"
#include "pin/io/image.hpp"
#include "pin/model/defense.hpp"
#include "pin/recognizer/face_recognizer.hpp"

namespace pin::eval {

enum class Protocol { Offline, Online };
inline Protocol parse_protocol(const std::string& s) {
    if (s == "offline") return Protocol::Offline;
    if (s == "online") return Protocol::Online;
    throw Error("unknown protocol '" + s + "' (expected offline or online)");
}

// How an online attack differentiates through PIN's random projection (spec: report the strongest).
//   sample       a fresh mask q ~ Bernoulli(p(x)) each step, gradient of B diag(q) B^T with q fixed
//   eot          the mean gradient over `eot_masks` fresh masks per step (expectation over transforms)
//   bpda         forward with the sampled mask, backward through the mask 1[p(x) > 0.5]
//   expectation  the surrogate B diag(p(x)) B^T (x - m) + m, with p(x) held fixed in the backward
// The agent's own dependence on x (dp/dx) is not differentiated in any of them (straight-through).
enum class PinGradient { Sample, Eot, Bpda, Expectation };
inline PinGradient parse_pin_gradient(const std::string& s) {
    if (s == "sample") return PinGradient::Sample;
    if (s == "eot") return PinGradient::Eot;
    if (s == "bpda") return PinGradient::Bpda;
    if (s == "expectation") return PinGradient::Expectation;
    throw Error("unknown PIN gradient '" + s + "' (expected sample, eot, bpda or expectation)");
}

struct VerificationOptions {
    std::vector<int> folds;  // empty: all
    AttackOptions attack;
    Protocol protocol = Protocol::Offline;
    PinGradient pin_gradient = PinGradient::Sample;
    int eot_masks = 20;
    int64_t batch = 32;
    bool progress = true;
};

struct VerificationResult {
    int64_t pairs = 0;
    std::vector<double> scores;  // per pair
    std::vector<int> same, fold;
    std::vector<RocPoint> roc;
    double eer = 0, auc = 0, tar_far_10 = 0, tar_far_1 = 0, tar_far_01 = 0;
    double threshold = 0;        // the clean EER threshold (same defense)
    double accuracy = 0;         // at that threshold
    double clean_eer = 0;
    Interval eer_over_folds, accuracy_over_folds;
    double mean_kept = 0;        // PIN: mean ||q||_0 of the scored faces
};

inline std::string pair_image_path(const std::string& root, const std::string& person, int index) {
    namespace fs = std::filesystem;
    char name[32];
    std::snprintf(name, sizeof name, "_%04d", index);
    for (const fs::path& base : {fs::path(root) / "images", fs::path(root)})
        for (const char* ext : {".png", ".jpg"}) {
            const fs::path p = base / person / (person + name + ext);
            if (fs::exists(p)) return p.string();
        }
    throw Error(root + ": no image for " + person + " #" + std::to_string(index) + " (looked for images/" + person + "/" + person +
                name + ".png and .jpg)");
}

inline std::vector<io::FacePair> load_pairs(const std::string& root, const std::vector<int>& folds) {
    namespace fs = std::filesystem;
    const fs::path pairs_path = fs::path(root) / "pairs.txt";
    PIN_CHECK(fs::is_directory(root), root, ": not a folder (expected a data folder with pairs.txt and images/)");
    PIN_CHECK(fs::is_regular_file(pairs_path), pairs_path.string(), ": no pairs.txt in ", root,
              " (verification needs LFW-style pairs: first line '<folds> <pairs per class>')");
    std::vector<io::FacePair> out;
    int max_fold = 0;
    for (const io::FacePair& p : io::read_pairs_file(pairs_path.string())) {
        max_fold = std::max(max_fold, p.fold);
        if (folds.empty() || std::find(folds.begin(), folds.end(), p.fold) != folds.end()) out.push_back(p);
    }
    PIN_CHECK(!out.empty(), pairs_path.string(), ": no pairs in the requested folds (the file has folds 1-", max_fold, ")");
    return out;
}

class VerificationRun {
public:
    VerificationRun(std::string root, recognizer::FaceRecognizer& rec, const model::Defense& defense, VerificationOptions o)
        : root_(std::move(root)), rec_(rec), defense_(defense), opt_(std::move(o)) {
        pairs_ = load_pairs(root_, opt_.folds);
        for (const io::FacePair& p : pairs_) {
            image_of(p.person_a, p.index_a);
            image_of(p.person_b, p.index_b);
        }
    }

    VerificationResult run() {
        const int64_t n_images = static_cast<int64_t>(paths_.size()), n_pairs = static_cast<int64_t>(pairs_.size());
        // Clean faces -> defense -> embeddings (image i's defense randomness keyed by i).
        faces_ = Tensor::empty({n_images, 1, 112, 112}, Layout::NHWC);
        {
            std::unique_ptr<ProgressBar> bar;
            if (opt_.progress) bar = std::make_unique<ProgressBar>("loading faces", n_images, "img");
            parallel_for(n_images, [&](int64_t i) {
                const io::FaceImage f = io::load_face_image(paths_[static_cast<size_t>(i)], 112);
                std::copy(f.pixels.begin(), f.pixels.end(), faces_.data() + i * 12544);
                if (bar) bar->update(i + 1);
            });
        }
        double kept_sum = 0;
        const Tensor clean = embed_defended(faces_, 0, &kept_sum);
        VerificationResult r;
        r.pairs = n_pairs;
        std::vector<double> clean_scores(static_cast<size_t>(n_pairs));
        for (int64_t k = 0; k < n_pairs; ++k)
            clean_scores[static_cast<size_t>(k)] = cosine_similarity(clean.data() + index_a_[static_cast<size_t>(k)] * rec_.dim(),
                                                                      clean.data() + index_b_[static_cast<size_t>(k)] * rec_.dim(), rec_.dim());
        for (const io::FacePair& p : pairs_) {
            r.same.push_back(p.same);
            r.fold.push_back(p.fold);
        }
        const std::vector<RocPoint> clean_roc = roc_curve(clean_scores, r.same);
        r.clean_eer = equal_error_rate(clean_roc);
        r.threshold = eer_threshold(clean_roc);
        r.mean_kept = kept_sum / static_cast<double>(n_images);
        if (opt_.attack.kind == AttackKind::None) {
            r.scores = clean_scores;
        } else {
            r.scores = attacked_scores(clean);
        }
        r.roc = roc_curve(r.scores, r.same);
        r.eer = equal_error_rate(r.roc);
        r.auc = area_under_curve(r.roc);
        r.tar_far_10 = tar_at_far(r.roc, 0.10);
        r.tar_far_1 = tar_at_far(r.roc, 0.01);
        r.tar_far_01 = tar_at_far(r.roc, 0.001);
        r.accuracy = accuracy_at(r.scores, r.same, r.threshold);
        // Per fold: EER on that fold's pairs and accuracy at the global threshold.
        std::map<int, std::pair<std::vector<double>, std::vector<int>>> by_fold;
        for (int64_t k = 0; k < n_pairs; ++k) {
            by_fold[r.fold[static_cast<size_t>(k)]].first.push_back(r.scores[static_cast<size_t>(k)]);
            by_fold[r.fold[static_cast<size_t>(k)]].second.push_back(r.same[static_cast<size_t>(k)]);
        }
        std::vector<double> eers, accs;
        for (const auto& kv : by_fold) {
            eers.push_back(equal_error_rate(roc_curve(kv.second.first, kv.second.second)));
            accs.push_back(accuracy_at(kv.second.first, kv.second.second, r.threshold));
        }
        r.eer_over_folds = fold_interval(eers);
        r.accuracy_over_folds = fold_interval(accs);
        return r;
    }

    int64_t images() const { return static_cast<int64_t>(paths_.size()); }

private:
    int64_t image_of(const std::string& person, int index) {
        const std::string key = person + "#" + std::to_string(index);
        auto it = index_.find(key);
        int64_t id;
        if (it != index_.end()) {
            id = it->second;
        } else {
            id = static_cast<int64_t>(paths_.size());
            paths_.push_back(pair_image_path(root_, person, index));
            index_[key] = id;
        }
        if (index_a_.size() == index_b_.size()) index_a_.push_back(id);
        else index_b_.push_back(id);
        return id;
    }

    // Defense then recognizer, in batches. `stream` separates the defense randomness of the clean
    // pass (0) from the attacked faces' (1).
    Tensor embed_defended(const Tensor& faces, uint64_t stream, double* kept_sum) {
        const int64_t n = faces.n(), dim = rec_.dim();
        Tensor out = Tensor::empty({n, dim});
        std::unique_ptr<ProgressBar> bar;
        if (opt_.progress) bar = std::make_unique<ProgressBar>(stream == 0 ? "embedding clean faces" : "embedding attacked faces", n, "img");
        for (int64_t b0 = 0; b0 < n; b0 += opt_.batch) {
            const int64_t bn = std::min(opt_.batch, n - b0);
            const Tensor x = faces.slice(b0, b0 + bn);
            const model::DefenseOutput d = defense_.inactivate(x, stream * (uint64_t{1} << 40) + static_cast<uint64_t>(b0));
            if (kept_sum && d.q.defined())
                for (int64_t i = 0; i < d.q.numel(); ++i) *kept_sum += d.q.data()[i];
            const Tensor e = rec_.embed(d.defended);
            std::copy(e.data(), e.data() + e.numel(), out.data() + b0 * dim);
            if (bar) bar->update(b0 + bn);
        }
        return out;
    }

    std::vector<double> attacked_scores(const Tensor& clean) {
        const int64_t n_pairs = static_cast<int64_t>(pairs_.size()), dim = rec_.dim();
        PIN_CHECK(opt_.protocol == Protocol::Offline || defense_.kind() != model::DefenseKind::DAE,
                  "online attacks through the DAE-only defense are not implemented (use --protocol offline)");
        Tensor attacked = Tensor::empty({n_pairs, 1, 112, 112}, Layout::NHWC);
        std::unique_ptr<ProgressBar> bar;
        if (opt_.progress) bar = std::make_unique<ProgressBar>("attacking", n_pairs, "pairs");
        // Offline attacks aim at the bare recognizer's embedding of the clean partner.
        Tensor bare;
        if (opt_.protocol == Protocol::Offline) {
            bare = Tensor::empty({n_pairs, dim});
            for (int64_t b0 = 0; b0 < n_pairs; b0 += opt_.batch) {
                const int64_t bn = std::min(opt_.batch, n_pairs - b0);
                Tensor x = Tensor::empty({bn, 1, 112, 112}, Layout::NHWC);
                for (int64_t i = 0; i < bn; ++i)
                    std::copy(faces_.data() + index_b_[static_cast<size_t>(b0 + i)] * 12544,
                              faces_.data() + (index_b_[static_cast<size_t>(b0 + i)] + 1) * 12544, x.data() + i * 12544);
                const Tensor e = rec_.embed(x);
                std::copy(e.data(), e.data() + e.numel(), bare.data() + b0 * dim);
            }
        }
        for (int64_t b0 = 0; b0 < n_pairs; b0 += opt_.batch) {
            const int64_t bn = std::min(opt_.batch, n_pairs - b0);
            Tensor x0 = Tensor::empty({bn, 1, 112, 112}, Layout::NHWC);
            std::vector<float> target(static_cast<size_t>(bn * dim));
            std::vector<double> sign(static_cast<size_t>(bn));
            for (int64_t i = 0; i < bn; ++i) {
                const int64_t k = b0 + i;
                std::copy(faces_.data() + index_a_[static_cast<size_t>(k)] * 12544,
                          faces_.data() + (index_a_[static_cast<size_t>(k)] + 1) * 12544, x0.data() + i * 12544);
                const float* t = opt_.protocol == Protocol::Offline ? bare.data() + k * dim
                                                                    : clean.data() + index_b_[static_cast<size_t>(k)] * dim;
                std::copy(t, t + dim, target.data() + i * dim);
                sign[static_cast<size_t>(i)] = pairs_[static_cast<size_t>(k)].same ? -1.0 : 1.0;  // dodging / impersonation
            }
            int step = 0;
            const GradientOracle oracle = [&](const Tensor& x, Tensor& grad) {
                const bool through_defense = opt_.protocol == Protocol::Online && defense_.kind() != model::DefenseKind::None;
                const uint64_t key = (uint64_t{2} + static_cast<uint64_t>(step)) * (uint64_t{1} << 40) + static_cast<uint64_t>(b0);
                ++step;
                // The faces the recognizer sees, each with the mask its gradient flows back through.
                std::vector<Tensor> inputs;
                std::vector<std::vector<float>> back_masks;  // empty: no projection (or PCA: all ones)
                if (!through_defense) {
                    inputs.push_back(x);
                } else if (defense_.kind() == model::DefenseKind::PCA) {
                    inputs.push_back(defense_.inactivate(x, key).defended);
                    back_masks.emplace_back();
                } else {
                    const model::DefenseOutput d = defense_.inactivate(x, key);
                    const model::EigenBasis& basis = *defense_.basis();
                    const int64_t N = basis.count();
                    const std::vector<float> p(d.p.data(), d.p.data() + d.p.numel()), q(d.q.data(), d.q.data() + d.q.numel());
                    auto project = [&](const std::vector<float>& mask) {
                        Tensor out = Tensor::empty(x.shape(), Layout::NHWC);
                        basis.project(x.data(), mask.data(), bn, out.data());
                        return out;
                    };
                    if (opt_.pin_gradient == PinGradient::Sample) {
                        inputs.push_back(d.defended);
                        back_masks.push_back(q);
                    } else if (opt_.pin_gradient == PinGradient::Bpda) {
                        std::vector<float> hard(p.size());
                        for (size_t i = 0; i < p.size(); ++i) hard[i] = p[i] > 0.5f ? 1.0f : 0.0f;
                        inputs.push_back(d.defended);
                        back_masks.push_back(hard);
                    } else if (opt_.pin_gradient == PinGradient::Expectation) {
                        inputs.push_back(project(p));
                        back_masks.push_back(p);
                    } else {
                        for (int m = 0; m < opt_.eot_masks; ++m) {
                            std::vector<float> qm(p.size());
                            for (int64_t i = 0; i < bn; ++i) {
                                const PhiloxStream rng(opt_.attack.seed ^ 0x656F74ull, key + static_cast<uint64_t>(m) * 4096 + static_cast<uint64_t>(i));
                                for (int64_t j = 0; j < N; ++j)
                                    qm[static_cast<size_t>(i * N + j)] = rng.bernoulli(static_cast<uint64_t>(j), p[static_cast<size_t>(i * N + j)]);
                            }
                            inputs.push_back(project(qm));
                            back_masks.push_back(qm);
                        }
                    }
                }
                std::vector<double> objective(static_cast<size_t>(bn), 0.0);
                std::fill(grad.data(), grad.data() + grad.numel(), 0.0f);
                const double share = 1.0 / static_cast<double>(inputs.size());
                for (size_t v = 0; v < inputs.size(); ++v) {
                    const Tensor e = rec_.embed_for_gradient(inputs[v]);
                    Tensor de = Tensor::empty({bn, dim});
                    const std::vector<double> part = signed_cosine_and_gradient(e, target.data(), sign, de);
                    for (int64_t i = 0; i < bn; ++i) objective[static_cast<size_t>(i)] += share * part[static_cast<size_t>(i)];
                    Tensor g = rec_.input_gradient(de);
                    if (v < back_masks.size()) {
                        // d/dx of B diag(w) B^T (x - m) + m is B diag(w) B^T: project (g + m), subtract m.
                        const model::EigenBasis& basis = *defense_.basis();
                        Tensor gm = Tensor::empty(g.shape(), Layout::NHWC), out = Tensor::empty(g.shape(), Layout::NHWC);
                        for (int64_t i = 0; i < bn; ++i)
                            for (int64_t j = 0; j < 12544; ++j) gm.data()[i * 12544 + j] = g.data()[i * 12544 + j] + basis.mean().data()[j];
                        basis.project(gm.data(), back_masks[v].empty() ? nullptr : back_masks[v].data(), bn, out.data());
                        for (int64_t i = 0; i < bn; ++i)
                            for (int64_t j = 0; j < 12544; ++j) out.data()[i * 12544 + j] -= basis.mean().data()[j];
                        g = out;
                    }
                    for (int64_t i = 0; i < g.numel(); ++i) grad.data()[i] += static_cast<float>(share * g.data()[i]);
                }
                return objective;
            };
            AttackOptions ao = opt_.attack;
            const Tensor xa = run_attack(x0, ao, oracle, static_cast<uint64_t>(b0));
            std::copy(xa.data(), xa.data() + xa.numel(), attacked.data() + b0 * 12544);
            if (bar) bar->update(b0 + bn);
        }
        if (bar) bar->finish();
        const Tensor e = embed_defended(attacked, 1, nullptr);
        std::vector<double> scores(static_cast<size_t>(n_pairs));
        for (int64_t k = 0; k < n_pairs; ++k)
            scores[static_cast<size_t>(k)] =
                cosine_similarity(e.data() + k * dim, clean.data() + index_b_[static_cast<size_t>(k)] * dim, dim);
        attacked_ = attacked;
        return scores;
    }

public:
    // The attacked first images of the pairs (after run() with an attack), for pictures.
    const Tensor& attacked_faces() const { return attacked_; }
    // The clean first images of pairs [0, count) (after run()).
    Tensor clean_first_faces(int64_t count) const {
        count = std::min<int64_t>(count, static_cast<int64_t>(index_a_.size()));
        Tensor out = Tensor::empty({count, 1, 112, 112}, Layout::NHWC);
        for (int64_t k = 0; k < count; ++k)
            std::copy(faces_.data() + index_a_[static_cast<size_t>(k)] * 12544,
                      faces_.data() + (index_a_[static_cast<size_t>(k)] + 1) * 12544, out.data() + k * 12544);
        return out;
    }

private:
    std::string root_;
    recognizer::FaceRecognizer& rec_;
    const model::Defense& defense_;
    VerificationOptions opt_;
    std::vector<io::FacePair> pairs_;
    std::vector<std::string> paths_;
    std::map<std::string, int64_t> index_;
    std::vector<int64_t> index_a_, index_b_;
    Tensor faces_, attacked_;
};

}  // namespace pin::eval
