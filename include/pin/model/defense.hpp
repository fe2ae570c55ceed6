// pin/model/defense.hpp - the user-facing defense: faces in, defended faces out.
//
//   pin::Defense defense("weights/pin-default");
//   auto out = defense.inactivate(batch);   // out.defended, out.p (probabilities), out.q (mask)
//
// Kinds: PIN (agent -> p -> mask q -> projection onto the masked eigenfaces), PCA-k (projection
// onto the first k eigenfaces), DAE-only (the denoising autoencoder's output), JPEG-Q (compression at
// quality Q), bits-K (bit-depth reduction to K bits) and none (identity). A model folder holds eigenbasis.safetensors
// (eig_vec, avg_face, eig_val) and, for PIN, agent.safetensors (dae.*, esn.*, head.* keys).
// Image i of a run (first_image + b) always gets the same mask for the same seed, whatever the
// batch size or thread count.
#pragma once
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "pin/io/state_dict.hpp"
#include "pin/model/agent.hpp"
#include "pin/model/eigenbasis.hpp"
#include "pin/model/input_transforms.hpp"
#include "pin/model/sampling.hpp"

namespace pin::model {

struct DefenseOutput {
    Tensor defended;  // (batch, 1, 112, 112) NHWC, same value range as the input
    Tensor p;         // (batch, N) selection probabilities (PIN only)
    Tensor q;         // (batch, N) the mask used (PIN only)
};

enum class DefenseKind { None, PCA, DAE, PIN, Jpeg, BitDepth };

class Defense {
public:
    // A trained PIN from its model folder, Bernoulli masks with seed 0 (see load_pin).
    explicit Defense(const std::string& model_dir) : Defense(load_pin(model_dir)) {}

    static Defense none() { return Defense(DefenseKind::None); }

    static Defense pca(const EigenBasis& basis, int64_t k) {
        Defense d(DefenseKind::PCA);
        d.basis_ = std::make_shared<EigenBasis>(basis.truncated(k));
        return d;
    }

    static Defense jpeg(int quality) {
        PIN_CHECK(quality >= 1 && quality <= 100, "Defense::jpeg: quality must be 1-100, got ", quality);
        Defense d(DefenseKind::Jpeg);
        d.level_ = quality;
        return d;
    }
    static Defense bit_depth(int bits) {
        PIN_CHECK(bits >= 1 && bits <= 8, "Defense::bit_depth: bits must be 1-8, got ", bits);
        Defense d(DefenseKind::BitDepth);
        d.level_ = bits;
        return d;
    }

    // A PIN defense from parts already in memory (benchmarks, tests, embedding applications).
    static Defense from_parts(std::shared_ptr<EigenBasis> basis, std::shared_ptr<Agent> agent,
                              SamplingMode mode = SamplingMode::Bernoulli, uint64_t seed = 0) {
        PIN_CHECK(basis && agent, "Defense::from_parts: basis and agent are required");
        Defense d(DefenseKind::PIN);
        d.basis_ = std::move(basis);
        d.agent_ = std::move(agent);
        d.mode_ = mode;
        d.seed_ = seed;
        return d;
    }

    // `path` is a model folder (eigenbasis.safetensors + agent.safetensors) or one safetensors file
    // holding both: eig_vec, avg_face (, eig_val) and the dae.* / esn.* / head.* tensors.
    static Defense load_pin(const std::string& path, SamplingMode mode = SamplingMode::Bernoulli,
                            uint64_t seed = 0) {
        namespace fs = std::filesystem;
        Defense d(DefenseKind::PIN);
        std::error_code ec;
        if (fs::is_regular_file(path, ec)) {
            const io::SafetensorsContents c = io::read_safetensors(path);
            const Tensor empty;
            d.basis_ = std::make_shared<EigenBasis>(EigenBasis::from_tensors(
                c.at("eig_vec", path), c.at("avg_face", path), c.tensors.count("eig_val") ? c.at("eig_val", path) : empty));
            d.agent_ = std::make_shared<Agent>(d.basis_->count());
            // Strict per part: every tensor of each part present, nothing unexpected under its prefix.
            io::load_parameters(d.agent_->dae().parameters(), c, path, "dae.");
            io::load_parameters(d.agent_->esn().parameters(), c, path, "esn.");
            io::load_parameters(d.agent_->head().parameters(), c, path, "head.");
        } else {
            const fs::path eig = fs::path(path) / "eigenbasis.safetensors";
            const fs::path agent = fs::path(path) / "agent.safetensors";
            PIN_CHECK(fs::exists(eig) && fs::exists(agent), path,
                      ": not a PIN model (a folder with eigenbasis.safetensors and agent.safetensors, or one "
                      "safetensors file with both; trained weights come from `pin train`, see weights/README.md)");
            d.basis_ = std::make_shared<EigenBasis>(EigenBasis::load(eig.string()));
            d.agent_ = std::make_shared<Agent>(d.basis_->count());
            io::load_parameters(d.agent_->parameters(), io::read_safetensors(agent.string()), agent.string());
        }
        PIN_CHECK(d.basis_->pixels() == 112 * 112, path, ": the eigenbasis has ", d.basis_->pixels(),
                  " pixels; PIN works on 112 x 112 faces (12544)");
        d.mode_ = mode;
        d.seed_ = seed;
        return d;
    }

    // The DAE-only baseline: the model folder's dae.* tensors (agent.safetensors).
    static Defense load_dae(const std::string& model_dir) {
        namespace fs = std::filesystem;
        const fs::path agent = fs::path(model_dir) / "agent.safetensors";
        PIN_CHECK(fs::exists(agent), model_dir, ": no agent.safetensors (the DAE weights come from `pin pretrain-dae`)");
        Defense d(DefenseKind::DAE);
        d.agent_ = std::make_shared<Agent>(1);
        // Every dae.* tensor must be there and be used; esn.* and head.* may be present or not.
        io::load_parameters(d.agent_->dae().parameters(), io::read_safetensors(agent.string()), agent.string(), "dae.");
        return d;
    }

    DefenseKind kind() const { return kind_; }
    const EigenBasis* basis() const { return basis_.get(); }
    Agent* agent() const { return agent_.get(); }  // PIN and DAE defenses; null otherwise
    int level() const { return level_; }  // JPEG quality or bits
    SamplingMode sampling() const { return mode_; }
    uint64_t seed() const { return seed_; }
    void set_sampling(SamplingMode mode, uint64_t seed) {
        mode_ = mode;
        seed_ = seed;
    }

    // Another backend for the PIN forward (agent -> Bernoulli mask -> projection): given the
    // checked batch, the mask seed and first_image, it returns what the CPU path would (defended,
    // p, q), with the same masks for the same seed and image numbers. cuda/gpu_defense.hpp makes one that runs on
    // the GPU. Used only by PIN defenses with SamplingMode::Bernoulli; other kinds and modes, and an
    // empty function (the default), run on the CPU. Copies of this Defense share it.
    using Accelerator = std::function<DefenseOutput(const Tensor& batch, uint64_t seed, uint64_t first_image)>;
    void set_accelerator(Accelerator accelerator) {
        PIN_CHECK(!accelerator || kind_ == DefenseKind::PIN, "Defense::set_accelerator: only the PIN defense has one");
        accelerator_ = std::make_shared<const Accelerator>(std::move(accelerator));
    }
    bool accelerated() const { return accelerator_ && *accelerator_ && mode_ == SamplingMode::Bernoulli; }

    // batch: (B, 1, 112, 112), NHWC or NCHW (one channel: the same memory), values in [-1, 1].
    DefenseOutput inactivate(const Tensor& batch, uint64_t first_image = 0) const {
        PIN_CHECK(batch.rank() == 4 && batch.c() == 1, "Defense::inactivate: expects (batch, 1, H, W) gray faces, got ",
                  shape_to_string(batch.shape()));
        const int64_t B = batch.n(), D = batch.h() * batch.w();
        for (int64_t i = 0; i < batch.numel(); ++i)
            PIN_CHECK(std::isfinite(batch.data()[i]), "Defense::inactivate: input holds a non-finite value at element ", i);
        DefenseOutput out;
        out.defended = Tensor::empty(batch.shape(), Layout::NHWC);
        if (kind_ == DefenseKind::None) {
            std::copy(batch.data(), batch.data() + batch.numel(), out.defended.data());
            return out;
        }
        if (kind_ == DefenseKind::Jpeg) {
            jpeg_round_trip(batch.data(), B, batch.h(), level_, out.defended.data());
            return out;
        }
        if (kind_ == DefenseKind::BitDepth) {
            reduce_bit_depth(batch.data(), batch.numel(), level_, out.defended.data());
            return out;
        }
        PIN_CHECK(kind_ == DefenseKind::DAE || D == basis_->pixels(), "Defense::inactivate: faces have ", D,
                  " pixels, the eigenbasis ", basis_->pixels());
        if (kind_ == DefenseKind::PCA) {
            basis_->project(batch.data(), nullptr, B, out.defended.data());
            return out;
        }
        const Tensor x = batch.reshape(batch.shape(), Layout::NHWC);
        if (kind_ == DefenseKind::PIN && accelerated()) {
            out = (*accelerator_)(x, seed_, first_image);
            PIN_CHECK(out.defended.numel() == batch.numel() && out.q.numel() == B * basis_->count() &&
                          out.p.numel() == B * basis_->count(),
                      "Defense::inactivate: the accelerator returned wrong shapes (defended ", shape_to_string(out.defended.shape()),
                      ", p ", shape_to_string(out.p.shape()), ", q ", shape_to_string(out.q.shape()), ")");
            return out;
        }
        if (kind_ == DefenseKind::DAE) {
            out.defended = agent_->dae().forward(x);
            return out;
        }
        out.p = agent_->forward(x);
        out.q = Tensor::empty(out.p.shape());
        sample_mask(out.p, mode_, seed_, first_image, out.q);
        basis_->project(batch.data(), out.q.data(), B, out.defended.data());
        return out;
    }

private:
    explicit Defense(DefenseKind k) : kind_(k) {}
    DefenseKind kind_;
    std::shared_ptr<EigenBasis> basis_;
    std::shared_ptr<Agent> agent_;
    SamplingMode mode_ = SamplingMode::Bernoulli;
    uint64_t seed_ = 0;
    int level_ = 0;
    std::shared_ptr<const Accelerator> accelerator_;
};

}  // namespace pin::model

namespace pin {
using model::Defense;  // pin::Defense defense(model_dir); auto out = defense.inactivate(batch);
}
