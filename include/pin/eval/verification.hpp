// pin/eval/verification.hpp - face verification on LFW-style pairs with a defense in front of the
// recognizer, clean or under attack (spec, evaluation protocol).
//
// Data: DIR/pairs.txt (LFW View 2 format, any number of folds) and DIR/images/<name>/<name>_NNNN.png
// (or DIR/<name>/...). Every face goes through the defense, then the recognizer; the pair score is
// the cosine similarity of the two embeddings. Under attack the first image of each pair is attacked
// and the second stays clean:
//   offline: the attack sees the bare recognizer; its output then goes through the defense.
//   online:  the attack sees recognizer(defense(x)). PCA is linear: exact gradient. DAE: exact
//            gradient through both passes. JPEG and bit-depth reduction: BPDA with the identity. PIN:
//            see PinGradient below.
// Attacks that stop or are judged at the decision boundary (DeepFool, random search, the
// evolutionary attack) use the clean EER threshold of what they attack: the bare recognizer's
// offline, the defended system's online. The sticker attack has its own protocol: `identities`
// faces of different people each get a forehead patch that tries to impersonate one target person;
// the error rate is the fraction accepted as the target at the system's clean EER threshold.
// Offline attacks do not depend on the defense, so with a cache folder the attacked faces (and the
// clean defended embeddings) are computed once and shared by every cell that needs them.
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
#include "pin/eval/blackbox_attacks.hpp"
#include "pin/io/safetensors.hpp"
#include "pin/eval/metrics.hpp"
#include "pin/io/face_dataset.hpp"
#include "pin/io/image.hpp"
#include "pin/model/defense.hpp"
#include "pin/recognizer/face_recognizer.hpp"

namespace pin::eval {

namespace detail {
// FNV-1a, one value at a time: the cache files' names (which data, defense, attack and pairs).
constexpr uint64_t kFnv1aOffset = 1469598103934665603ull;
constexpr uint64_t fnv1a(uint64_t h, uint64_t v) { return (h ^ v) * 1099511628211ull; }
}  // namespace detail

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
//   fixed        the mask PIN draws for the clean face, held for the whole attack (forward and
//                backward): PIN seen as a fixed linear projection. If this succeeds, the randomness
//                is not what protects (Carlini et al. 2019's sanity check)
//   expectation-agent  the expectation surrogate differentiated through the agent as well:
//                d/dx [B diag(p(x)) B^T (x - m)] = B diag(p) B^T + B diag(B^T (x - m)) dp/dx
// The others treat p(x) as a constant (straight-through for the agent).
enum class PinGradient { Sample, Eot, Bpda, Expectation, Fixed, ExpectationAgent };
inline PinGradient parse_pin_gradient(const std::string& s) {
    if (s == "sample") return PinGradient::Sample;
    if (s == "eot") return PinGradient::Eot;
    if (s == "bpda") return PinGradient::Bpda;
    if (s == "expectation") return PinGradient::Expectation;
    if (s == "fixed") return PinGradient::Fixed;
    if (s == "expectation-agent") return PinGradient::ExpectationAgent;
    throw Error("unknown PIN gradient '" + s + "' (expected sample, eot, bpda, expectation, expectation-agent or fixed)");
}

struct VerificationOptions {
    std::vector<int> folds;  // empty: all
    AttackOptions attack;
    Protocol protocol = Protocol::Offline;
    PinGradient pin_gradient = PinGradient::Sample;
    int eot_masks = 20;
    int64_t batch = 32;
    bool progress = true;
    int64_t max_pairs = 0;      // attack and score only this many pairs, spread evenly (0: all)
    int64_t identities = 1000;  // sticker: faces of different people
    std::string cache_dir;      // where clean embeddings and offline-attacked faces are shared ("" = none)
    std::string defense_tag;    // names the defense in cache keys (kind, model, seed)
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
    int64_t pairs_total = 0;     // pairs in the folds (the clean threshold uses them all)
    double attack_threshold = 0; // the threshold DeepFool / the black-box attacks aim at
    // Evolutionary attack: mean MSE ([0, 1] scale) at each checkpoint over the pairs it could start.
    std::vector<int> checkpoints;
    std::vector<double> mean_mse;
    int64_t started = 0;
    // Sticker attack.
    int64_t identities = 0;
    std::string target;
    double sticker_error_rate = 0, sticker_clean_error_rate = 0;
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
        PIN_CHECK(opt_.protocol == Protocol::Offline || defense_.kind() != model::DefenseKind::PIN ||
                      opt_.attack.kind == AttackKind::None || !(opt_.pin_gradient == PinGradient::Eot && opt_.eot_masks < 1),
                  "--eot needs at least one mask");
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
        VerificationResult r;
        double kept_sum = 0;
        const Tensor clean = clean_embeddings(&kept_sum);
        r.pairs_total = n_pairs;
        std::vector<double> clean_scores = pair_scores(clean, clean);
        std::vector<int> all_same;
        for (const io::FacePair& p : pairs_) all_same.push_back(p.same);
        const std::vector<RocPoint> clean_roc = roc_curve(clean_scores, all_same);
        r.clean_eer = equal_error_rate(clean_roc);
        r.threshold = eer_threshold(clean_roc);
        r.mean_kept = kept_sum / static_cast<double>(n_images);
        if (opt_.attack.kind == AttackKind::Sticker) {
            sticker_run(clean, r);
            return r;
        }
        // The pairs scored: all, or max_pairs of them spread evenly over the folds.
        selected_.clear();
        const int64_t n_sel = opt_.max_pairs > 0 ? std::min(opt_.max_pairs, n_pairs) : n_pairs;
        for (int64_t i = 0; i < n_sel; ++i) selected_.push_back(i * n_pairs / n_sel);
        // A handful of pairs spread evenly can all fall on one class (4 of folds 5-8: the first pair
        // of each fold, all same-person); then half are spread over each class instead, so the
        // cell still has dodging and impersonation pairs and an ROC.
        int64_t same_selected = 0;
        for (int64_t k : selected_) same_selected += pairs_[static_cast<size_t>(k)].same;
        if (n_sel >= 2 && (same_selected == 0 || same_selected == n_sel)) {
            std::vector<int64_t> by_class[2];
            for (int64_t k = 0; k < n_pairs; ++k) by_class[pairs_[static_cast<size_t>(k)].same ? 1 : 0].push_back(k);
            if (!by_class[0].empty() && !by_class[1].empty()) {
                selected_.clear();
                const int64_t take[2] = {n_sel - n_sel / 2, n_sel / 2};
                for (int c = 0; c < 2; ++c) {
                    const int64_t m = std::min<int64_t>(take[c], static_cast<int64_t>(by_class[c].size()));
                    for (int64_t i = 0; i < m; ++i)
                        selected_.push_back(by_class[c][static_cast<size_t>(i * static_cast<int64_t>(by_class[c].size()) / m)]);
                }
                std::sort(selected_.begin(), selected_.end());
            }
        }
        for (int64_t k : selected_) {
            r.same.push_back(pairs_[static_cast<size_t>(k)].same);
            r.fold.push_back(pairs_[static_cast<size_t>(k)].fold);
        }
        r.pairs = n_sel;
        if (opt_.attack.kind == AttackKind::None) {
            for (int64_t k : selected_) r.scores.push_back(clean_scores[static_cast<size_t>(k)]);
        } else {
            r.attack_threshold = attack_needs_threshold(opt_.attack.kind) ? attack_threshold(r.threshold) : 0.0;
            r.scores = attacked_scores(clean, r);
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
        for (size_t k = 0; k < r.scores.size(); ++k) {
            by_fold[r.fold[k]].first.push_back(r.scores[k]);
            by_fold[r.fold[k]].second.push_back(r.same[k]);
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
            person_of_.push_back(person);
            index_[key] = id;
        }
        if (index_a_.size() == index_b_.size()) index_a_.push_back(id);
        else index_b_.push_back(id);
        return id;
    }

    // Cosine similarity of every pair: first image from `a`, second from `b` (image-indexed).
    std::vector<double> pair_scores(const Tensor& a, const Tensor& b) const {
        std::vector<double> out(pairs_.size());
        for (size_t k = 0; k < pairs_.size(); ++k)
            out[k] = cosine_similarity(a.data() + index_a_[k] * rec_.dim(), b.data() + index_b_[k] * rec_.dim(), rec_.dim());
        return out;
    }

    // ---- cache: clean embeddings per defense and of the bare recognizer, offline-attacked faces ----
    std::string cache_file(const std::string& kind, const std::string& key) const {
        uint64_t h = detail::kFnv1aOffset;
        for (unsigned char c : key) h = detail::fnv1a(h, c);
        char name[40];
        std::snprintf(name, sizeof name, "-%016llx.safetensors", static_cast<unsigned long long>(h));
        return (std::filesystem::path(opt_.cache_dir) / (kind + name)).string();
    }
    std::string data_key() const {
        std::string k = std::filesystem::absolute(root_).lexically_normal().string() + "|folds";
        for (int f : opt_.folds) k += " " + std::to_string(f);
        return k + "|" + rec_.name() + "|batch-independent";
    }
    // Tensors of a cache entry whose stored key matches, or none.
    std::map<std::string, Tensor> cache_load(const std::string& kind, const std::string& key) const {
        if (opt_.cache_dir.empty()) return {};
        const std::string path = cache_file(kind, key);
        if (!std::filesystem::exists(path)) return {};
        io::SafetensorsContents c = io::read_safetensors(path);
        auto it = c.metadata.find("key");
        if (it == c.metadata.end() || it->second != key) return {};
        return c.tensors;
    }
    void cache_store(const std::string& kind, const std::string& key, const std::vector<io::SafetensorsEntry>& entries) const {
        if (opt_.cache_dir.empty()) return;
        std::filesystem::create_directories(opt_.cache_dir);
        io::write_safetensors(cache_file(kind, key), entries, {{"key", key}});
    }

    Tensor clean_embeddings(double* kept_sum) {
        const std::string key = data_key() + "|defense " + opt_.defense_tag;
        std::map<std::string, Tensor> hit = opt_.defense_tag.empty() ? std::map<std::string, Tensor>{} : cache_load("clean", key);
        if (hit.count("embeddings") && hit.count("kept") && hit["embeddings"].dim(0) == images()) {
            *kept_sum = hit["kept"].data()[0];
            return hit["embeddings"];
        }
        Tensor e = embed_defended(faces_, 0, kept_sum);
        Tensor kept = Tensor::empty({1});
        kept.data()[0] = static_cast<float>(*kept_sum);
        if (!opt_.defense_tag.empty()) cache_store("clean", key, {{"embeddings", e}, {"kept", kept}});
        return e;
    }

    // The bare recognizer's clean EER threshold (offline) or the defended system's (online).
    double attack_threshold(double defended_threshold) {
        if (opt_.protocol == Protocol::Online || defense_.kind() == model::DefenseKind::None) return defended_threshold;
        // The bare embeddings do not depend on the defense: every defense's cells share one entry.
        const std::string key = data_key() + "|bare recognizer";
        std::map<std::string, Tensor> hit = cache_load("bare", key);
        Tensor bare;
        if (hit.count("embeddings") && hit["embeddings"].dim(0) == images()) {
            bare = hit["embeddings"];
        } else {
            bare = embed_bare(faces_);
            cache_store("bare", key, {{"embeddings", bare}});
        }
        std::vector<int> same;
        for (const io::FacePair& p : pairs_) same.push_back(p.same);
        return eer_threshold(roc_curve(pair_scores(bare, bare), same));
    }

    Tensor embed_bare(const Tensor& faces) {
        const int64_t n = faces.n(), dim = rec_.dim();
        Tensor out = Tensor::empty({n, dim});
        for (int64_t b0 = 0; b0 < n; b0 += opt_.batch) {
            const int64_t bn = std::min(opt_.batch, n - b0);
            const Tensor e = rec_.embed(faces.slice(b0, b0 + bn));
            std::copy(e.data(), e.data() + e.numel(), out.data() + b0 * dim);
        }
        return out;
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

    // ---- the system under attack -----------------------------------------------------------------
    // One batch of attacked faces: their clean partners' embeddings (targets), dodging (-1) or
    // impersonation (+1), and the key that makes the defense's randomness batch-independent.
    struct AttackBatch {
        int64_t size = 0;
        uint64_t first = 0;
        std::vector<float> target;
        std::vector<double> sign;
        std::vector<float> fixed_mask;  // PinGradient::Fixed: the clean face's mask, drawn at the first call
        int step = 0;
    };

    // The objective sign * cos(recognizer(view(x)), target) of each face and, when grad is given, its
    // gradient with respect to x. Offline the view is the identity; online it is the defense.
    std::vector<double> evaluate(const Tensor& x, Tensor* grad, AttackBatch& ab) {
        const int64_t bn = ab.size, dim = rec_.dim();
        const bool through_defense = opt_.protocol == Protocol::Online && defense_.kind() != model::DefenseKind::None;
        const uint64_t key = (uint64_t{2} + static_cast<uint64_t>(ab.step)) * (uint64_t{1} << 40) + ab.first;
        ++ab.step;
        // The faces the recognizer sees, each with the mask its gradient flows back through.
        std::vector<Tensor> inputs;
        std::vector<std::vector<float>> back_masks;  // empty vector: all ones (PCA)
        bool through_dae = false, through_agent = false;
        if (!through_defense) {
            inputs.push_back(x);
        } else if (defense_.kind() == model::DefenseKind::PCA) {
            inputs.push_back(defense_.inactivate(x, key).defended);
            back_masks.emplace_back();
        } else if (defense_.kind() == model::DefenseKind::DAE) {
            inputs.push_back(defense_.inactivate(x, key).defended);
            through_dae = true;
        } else if (defense_.kind() != model::DefenseKind::PIN) {
            inputs.push_back(defense_.inactivate(x, key).defended);  // BPDA: the identity backward
        } else {
            const model::EigenBasis& basis = *defense_.basis();
            const int64_t N = basis.count();
            auto project = [&](const std::vector<float>& mask) {
                Tensor out = Tensor::empty(x.shape(), Layout::NHWC);
                basis.project(x.data(), mask.data(), bn, out.data());
                return out;
            };
            if (opt_.pin_gradient == PinGradient::Fixed) {
                if (ab.fixed_mask.empty()) {  // the mask of the clean face (first call: x is still clean)
                    const model::DefenseOutput d = defense_.inactivate(x, key);
                    ab.fixed_mask.assign(d.q.data(), d.q.data() + d.q.numel());
                }
                inputs.push_back(project(ab.fixed_mask));
                back_masks.push_back(ab.fixed_mask);
            } else {
                const model::DefenseOutput d = defense_.inactivate(x, key);
                const std::vector<float> p(d.p.data(), d.p.data() + d.p.numel()), q(d.q.data(), d.q.data() + d.q.numel());
                if (opt_.pin_gradient == PinGradient::Sample || !grad) {
                    inputs.push_back(d.defended);
                    back_masks.push_back(q);
                } else if (opt_.pin_gradient == PinGradient::Bpda) {
                    std::vector<float> hard(p.size());
                    for (size_t i = 0; i < p.size(); ++i) hard[i] = p[i] > 0.5f ? 1.0f : 0.0f;
                    inputs.push_back(d.defended);
                    back_masks.push_back(hard);
                } else if (opt_.pin_gradient == PinGradient::Expectation || opt_.pin_gradient == PinGradient::ExpectationAgent) {
                    inputs.push_back(project(p));
                    back_masks.push_back(p);
                    through_agent = opt_.pin_gradient == PinGradient::ExpectationAgent;
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
        }
        std::vector<double> objective(static_cast<size_t>(bn), 0.0);
        if (grad) std::fill(grad->data(), grad->data() + grad->numel(), 0.0f);
        const double share = 1.0 / static_cast<double>(inputs.size());
        for (size_t v = 0; v < inputs.size(); ++v) {
            const Tensor e = grad ? rec_.embed_for_gradient(inputs[v]) : rec_.embed(inputs[v]);
            Tensor de = Tensor::empty({bn, dim});
            const std::vector<double> part = signed_cosine_and_gradient(e, ab.target.data(), ab.sign, de);
            for (int64_t i = 0; i < bn; ++i) objective[static_cast<size_t>(i)] += share * part[static_cast<size_t>(i)];
            if (!grad) continue;
            Tensor g = rec_.input_gradient(de);
            if (through_dae) g = defense_.agent()->dae().input_gradient(x.reshape(x.shape(), Layout::NHWC), g);
            Tensor agent_part;
            if (through_agent) {  // dL/dp_j = (B^T (x - m))_j (B^T g)_j, then back through the agent
                const model::EigenBasis& basis = *defense_.basis();
                const int64_t N = basis.count();
                Tensor centred = Tensor::empty({bn, 12544}), c = Tensor::empty({bn, N}), h = Tensor::empty({bn, N});
                for (int64_t i = 0; i < bn; ++i)
                    for (int64_t j = 0; j < 12544; ++j) centred.data()[i * 12544 + j] = x.data()[i * 12544 + j] - basis.mean().data()[j];
                basis.coefficients(centred.data(), bn, c.data());
                basis.coefficients(g.data(), bn, h.data());
                for (int64_t i = 0; i < c.numel(); ++i) c.data()[i] *= h.data()[i];
                agent_part = defense_.agent()->input_gradient(x.reshape(x.shape(), Layout::NHWC), c);
            }
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
            if (agent_part.defined())
                for (int64_t i = 0; i < g.numel(); ++i) g.data()[i] += agent_part.data()[i];
            for (int64_t i = 0; i < g.numel(); ++i) grad->data()[i] += static_cast<float>(share * g.data()[i]);
        }
        return objective;
    }

    std::string attack_key() const {
        const AttackOptions& a = opt_.attack;
        char buf[256];
        std::snprintf(buf, sizeof buf, "|attack %d eps %.9g it %d seed %llu os %.9g mom %.9g div %.9g q %d step %.9g|pairs %lld",
                      static_cast<int>(a.kind), a.intensity, a.iterations, static_cast<unsigned long long>(a.seed), a.overshoot, a.momentum,
                      a.diversity, a.queries, a.sticker_step, static_cast<long long>(opt_.max_pairs));
        uint64_t h = detail::kFnv1aOffset;  // which pairs: the selection rule may change, the key must follow
        for (int64_t k : selected_) h = detail::fnv1a(h, static_cast<uint64_t>(k));
        return data_key() + buf + "|selected " + std::to_string(h);
    }

    // The first face of every selected pair, attacked; returns the scores against the clean partners
    // (both through the defense).
    std::vector<double> attacked_scores(const Tensor& clean, VerificationResult& r) {
        const int64_t n_sel = static_cast<int64_t>(selected_.size()), dim = rec_.dim();
        const bool evolutionary = opt_.attack.kind == AttackKind::Evolutionary;
        std::vector<int> checkpoints;  // MSE at the start (query 1) and at 1,000 / 5,000 / 10,000 queries
        for (int c : {1, 1000, 5000, 10000})
            if (c <= opt_.attack.queries) checkpoints.push_back(c);
        // Offline attacks see only the bare recognizer: shared by every defense through the cache.
        const bool shareable = opt_.protocol == Protocol::Offline;
        Tensor attacked, mse;
        if (shareable) {
            std::map<std::string, Tensor> hit = cache_load("offline-attack", attack_key());
            if (hit.count("attacked") && hit["attacked"].dim(0) == n_sel) {
                attacked = hit["attacked"].reshape({n_sel, 1, 112, 112}, Layout::NHWC);
                if (hit.count("mse")) mse = hit["mse"];
            }
        }
        if (!attacked.defined()) {
            attacked = Tensor::empty({n_sel, 1, 112, 112}, Layout::NHWC);
            if (evolutionary) mse = Tensor::empty({static_cast<int64_t>(checkpoints.size()), n_sel});
            run_attacks(clean, r, attacked, mse, checkpoints);
            if (shareable) {
                std::vector<io::SafetensorsEntry> entries{{"attacked", attacked}};
                if (mse.defined()) entries.push_back({"mse", mse});
                cache_store("offline-attack", attack_key(), entries);
            }
        }
        if (evolutionary) {
            r.checkpoints = checkpoints;
            int64_t started = 0;
            r.mean_mse.assign(checkpoints.size(), 0.0);
            for (int64_t k = 0; k < n_sel; ++k) {
                if (std::isnan(mse.data()[k])) continue;
                ++started;
                for (size_t c = 0; c < checkpoints.size(); ++c) r.mean_mse[c] += mse.data()[static_cast<int64_t>(c) * n_sel + k];
            }
            for (double& m : r.mean_mse) m = started ? m / static_cast<double>(started) : std::numeric_limits<double>::quiet_NaN();
            r.started = started;
        }
        const Tensor e = embed_defended(attacked, 1, nullptr);
        std::vector<double> scores(static_cast<size_t>(n_sel));
        for (int64_t s = 0; s < n_sel; ++s)
            scores[static_cast<size_t>(s)] = cosine_similarity(
                e.data() + s * dim, clean.data() + index_b_[static_cast<size_t>(selected_[static_cast<size_t>(s)])] * dim, dim);
        attacked_ = attacked;
        return scores;
    }

    // Runs an attack over faces [0, n) in batches into `out`: set_up(j, i, ab) gives batch slot i the
    // target and sign of face j (and returns its image), attack(x0, ab, b0, bar) the attacked batch.
    template <class SetUp, class Attack>
    void attack_in_batches(int64_t n, const char* label, Tensor& out, SetUp set_up, Attack attack) {
        std::unique_ptr<ProgressBar> bar;
        if (opt_.progress) bar = std::make_unique<ProgressBar>(label, n, "faces");
        for (int64_t b0 = 0; b0 < n; b0 += opt_.batch) {
            const int64_t bn = std::min(opt_.batch, n - b0);
            Tensor x0 = Tensor::empty({bn, 1, 112, 112}, Layout::NHWC);
            AttackBatch ab;
            ab.size = bn;
            ab.first = static_cast<uint64_t>(b0);
            ab.target.resize(static_cast<size_t>(bn * rec_.dim()));
            ab.sign.resize(static_cast<size_t>(bn));
            for (int64_t i = 0; i < bn; ++i) copy_face(set_up(b0 + i, i, ab), x0, i);
            const Tensor xa = attack(x0, ab, b0, bar.get());
            std::copy(xa.data(), xa.data() + xa.numel(), out.data() + b0 * 12544);
            if (bar) bar->update(b0 + bn);
        }
        if (bar) bar->finish();
    }

    void run_attacks(const Tensor& clean, const VerificationResult& r, Tensor& attacked, Tensor& mse, const std::vector<int>& checkpoints) {
        const int64_t n_sel = static_cast<int64_t>(selected_.size()), dim = rec_.dim();
        // Offline attacks aim at the bare recognizer's embedding of the clean partner.
        Tensor bare;
        if (opt_.protocol == Protocol::Offline) {
            Tensor partners = Tensor::empty({n_sel, 1, 112, 112}, Layout::NHWC);
            for (int64_t s = 0; s < n_sel; ++s) copy_face(index_b_[static_cast<size_t>(selected_[static_cast<size_t>(s)])], partners, s);
            bare = embed_bare(partners);
        }
        auto set_up = [&](int64_t s, int64_t i, AttackBatch& ab) {
            const int64_t k = selected_[static_cast<size_t>(s)];
            const float* t = opt_.protocol == Protocol::Offline ? bare.data() + s * dim : clean.data() + index_b_[static_cast<size_t>(k)] * dim;
            std::copy(t, t + dim, ab.target.data() + i * dim);
            ab.sign[static_cast<size_t>(i)] = pairs_[static_cast<size_t>(k)].same ? -1.0 : 1.0;  // dodging / impersonation
            return index_a_[static_cast<size_t>(k)];
        };
        auto attack = [&](const Tensor& x0, AttackBatch& ab, int64_t b0, ProgressBar* bar) {
            std::vector<double> goal;  // success: sign * cos > sign * threshold
            for (double sign : ab.sign) goal.push_back(sign * r.attack_threshold);
            const GradientOracle oracle = [&](const Tensor& x, Tensor& grad) { return evaluate(x, &grad, ab); };
            const QueryOracle query = [&](const Tensor& x) { return evaluate(x, nullptr, ab); };
            switch (opt_.attack.kind) {
                case AttackKind::DeepFool: return deepfool_attack(x0, opt_.attack, oracle, goal);
                case AttackKind::RandomSearch: return random_search_attack(x0, opt_.attack, query, static_cast<uint64_t>(b0));
                case AttackKind::Evolutionary: {
                    auto tick = [&](int used) {
                        if (bar) bar->update(b0 + ab.size * used / std::max(1, opt_.attack.queries));
                    };
                    const EvolutionaryResult er = evolutionary_attack(x0, evolutionary_starts(b0, ab.size), goal, opt_.attack, query,
                                                                      static_cast<uint64_t>(b0), checkpoints, tick);
                    for (size_t c = 0; c < checkpoints.size(); ++c)
                        for (int64_t i = 0; i < ab.size; ++i)
                            mse.data()[static_cast<int64_t>(c) * n_sel + b0 + i] = static_cast<float>(er.mse[c][static_cast<size_t>(i)]);
                    return er.x;
                }
                default: return run_attack(x0, opt_.attack, oracle, static_cast<uint64_t>(b0));
            }
        };
        attack_in_batches(n_sel, "attacking", attacked, set_up, attack);
    }

    void copy_face(int64_t image, Tensor& dst, int64_t slot) const {
        std::copy(faces_.data() + image * 12544, faces_.data() + (image + 1) * 12544, dst.data() + slot * 12544);
    }

    // Where the evolutionary attack starts: impersonation from the partner's face itself; dodging from
    // the first face after this pair (in pair order) that shows somebody else.
    Tensor evolutionary_starts(int64_t b0, int64_t bn) const {
        Tensor start = Tensor::empty({bn, 1, 112, 112}, Layout::NHWC);
        const int64_t n_pairs = static_cast<int64_t>(pairs_.size());
        for (int64_t i = 0; i < bn; ++i) {
            const int64_t k = selected_[static_cast<size_t>(b0 + i)];
            const io::FacePair& p = pairs_[static_cast<size_t>(k)];
            int64_t image = index_b_[static_cast<size_t>(k)];
            if (p.same)
                for (int64_t j = 1; j < n_pairs; ++j) {
                    const int64_t other = index_b_[static_cast<size_t>((k + j) % n_pairs)];
                    if (person_of_[static_cast<size_t>(other)] != p.person_a) {
                        image = other;
                        break;
                    }
                }
            copy_face(image, start, i);
        }
        return start;
    }

    // Sticker: the first image of each person (in pair order) except the target's, up to
    // `identities`, each with a forehead patch optimised to be accepted as the target.
    void sticker_run(const Tensor& clean, VerificationResult& r) {
        const int64_t dim = rec_.dim();
        const int64_t target_image = index_a_[0];
        r.target = person_of_[static_cast<size_t>(target_image)];
        std::vector<int64_t> chosen;
        std::map<std::string, bool> seen{{r.target, true}};
        for (int64_t i = 0; i < images() && static_cast<int64_t>(chosen.size()) < opt_.identities; ++i)
            if (!seen[person_of_[static_cast<size_t>(i)]]) {
                seen[person_of_[static_cast<size_t>(i)]] = true;
                chosen.push_back(i);
            }
        const int64_t n = static_cast<int64_t>(chosen.size());
        r.identities = n;
        Tensor target_bare;
        if (opt_.protocol == Protocol::Offline) {
            Tensor t = Tensor::empty({1, 1, 112, 112}, Layout::NHWC);
            copy_face(target_image, t, 0);
            target_bare = rec_.embed(t);
        }
        const float* target = opt_.protocol == Protocol::Offline ? target_bare.data() : clean.data() + target_image * dim;
        // Offline stickers see only the bare recognizer: shared by every defense through the cache.
        const std::string key = attack_key() + "|identities " + std::to_string(n) + " target " + r.target;
        Tensor stickered;
        if (opt_.protocol == Protocol::Offline) {
            std::map<std::string, Tensor> hit = cache_load("offline-sticker", key);
            if (hit.count("stickered") && hit["stickered"].dim(0) == n) stickered = hit["stickered"].reshape({n, 1, 112, 112}, Layout::NHWC);
        }
        if (!stickered.defined()) {
            stickered = Tensor::empty({n, 1, 112, 112}, Layout::NHWC);
            auto set_up = [&](int64_t j, int64_t i, AttackBatch& ab) {
                std::copy(target, target + dim, ab.target.data() + i * dim);
                ab.sign[static_cast<size_t>(i)] = 1.0;  // impersonation of the target
                return chosen[static_cast<size_t>(j)];
            };
            auto attack = [&](const Tensor& x0, AttackBatch& ab, int64_t, ProgressBar*) {
                return sticker_attack(x0, opt_.attack, [&](const Tensor& x, Tensor& grad) { return evaluate(x, &grad, ab); });
            };
            attack_in_batches(n, "stickers", stickered, set_up, attack);
            if (opt_.protocol == Protocol::Offline) cache_store("offline-sticker", key, {{"stickered", stickered}});
        }
        const Tensor e = embed_defended(stickered, 1, nullptr);
        const float* t = clean.data() + target_image * dim;
        int64_t fooled = 0, fooled_clean = 0;
        for (int64_t i = 0; i < n; ++i) {
            const double s = cosine_similarity(e.data() + i * dim, t, dim);
            r.scores.push_back(s);
            fooled += s > r.threshold;
            fooled_clean += cosine_similarity(clean.data() + chosen[static_cast<size_t>(i)] * dim, t, dim) > r.threshold;
        }
        r.sticker_error_rate = n ? static_cast<double>(fooled) / static_cast<double>(n) : 0.0;
        r.sticker_clean_error_rate = n ? static_cast<double>(fooled_clean) / static_cast<double>(n) : 0.0;
        attacked_ = stickered;
        attacked_source_ = chosen;
    }

public:
    // The attacked first images of the pairs (after run() with an attack), for pictures.
    const Tensor& attacked_faces() const { return attacked_; }
    // The clean versions of the scored faces [0, count) (after run()): the first images of the scored
    // pairs, or the sticker attack's faces.
    Tensor clean_first_faces(int64_t count) const {
        std::vector<int64_t> source = attacked_source_;
        if (source.empty())
            for (int64_t k : selected_) source.push_back(index_a_[static_cast<size_t>(k)]);
        count = std::min<int64_t>(count, static_cast<int64_t>(source.size()));
        Tensor out = Tensor::empty({count, 1, 112, 112}, Layout::NHWC);
        for (int64_t k = 0; k < count; ++k) copy_face(source[static_cast<size_t>(k)], out, k);
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
    std::vector<std::string> person_of_;  // per image
    std::vector<int64_t> index_a_, index_b_;
    std::vector<int64_t> selected_;       // the pairs scored (indices into pairs_)
    std::vector<int64_t> attacked_source_;  // sticker: the image each stickered face came from
    Tensor faces_, attacked_;
};

}  // namespace pin::eval
