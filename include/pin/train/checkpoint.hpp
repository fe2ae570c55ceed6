// pin/train/checkpoint.hpp - everything a training run needs to continue exactly where it stopped:
// all model parameters (frozen ones included, so the file is self-contained), the optimizer's
// momentum buffers, the SGD step count, and where in the data the run is (epoch, batch, step),
// plus the run's configuration so a resume with different settings is refused, not silently mixed.
//
// One safetensors file: parameters under their own names, momentum under "optimizer.velocity.<name>",
// the rest in __metadata__. Written atomically (temp file + rename): a run killed at any moment
// leaves the previous complete checkpoint.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "pin/core/error.hpp"
#include "pin/io/safetensors.hpp"
#include "pin/io/state_dict.hpp"
#include "pin/nn/sgd.hpp"

namespace pin::train {

struct TrainingPosition {
    int64_t epoch = 0;   // the epoch in progress
    int64_t batch = 0;   // the next batch of that epoch
    int64_t step = 0;    // steps done in the whole run
};

struct Checkpoint {
    std::string kind;                         // "agent" or "dae"
    TrainingPosition position;
    int64_t optimizer_steps = 0;
    std::map<std::string, std::string> config;  // settings that must match on resume
};

namespace detail {
inline int64_t metadata_int(const std::map<std::string, std::string>& m, const std::string& key, const std::string& path) {
    auto it = m.find(key);
    PIN_CHECK(it != m.end(), path, ": not a pin training checkpoint (metadata '", key, "' missing)");
    try {
        size_t used = 0;
        const long long v = std::stoll(it->second, &used);
        PIN_CHECK(used == it->second.size() && v >= 0, "bad");
        return v;
    } catch (...) {
        throw Error(path + ": checkpoint metadata '" + key + "' is not a non-negative integer: '" + it->second + "'");
    }
}
}  // namespace detail

// `model`: every parameter of the model; `trained`/`optimizer`: the optimizer's parameters in order.
inline void save_checkpoint(const std::string& path, const Checkpoint& ck, const std::vector<nn::NamedParameter>& model,
                            const std::vector<nn::NamedParameter>& trained, nn::SGD& optimizer) {
    std::vector<io::SafetensorsEntry> entries = io::parameter_entries(model);
    PIN_CHECK(trained.size() == optimizer.velocity().size(), "save_checkpoint: ", trained.size(), " trained parameters but ",
              optimizer.velocity().size(), " momentum buffers");
    for (size_t i = 0; i < trained.size(); ++i)
        entries.push_back({"optimizer.velocity." + trained[i].name, optimizer.velocity()[i], io::StoredType::F32});
    std::map<std::string, std::string> meta = {{"pin.checkpoint", ck.kind},
                                               {"epoch", std::to_string(ck.position.epoch)},
                                               {"batch", std::to_string(ck.position.batch)},
                                               {"step", std::to_string(ck.position.step)},
                                               {"optimizer_steps", std::to_string(optimizer.steps())}};
    for (const auto& kv : ck.config) meta["config." + kv.first] = kv.second;
    io::write_safetensors(path, entries, meta);
}

// Restores parameters and optimizer state; checks that the checkpoint is of `kind` and that its
// configuration equals `config` (every mismatch is listed). `added_later`: settings newer than some
// checkpoints, with the value a checkpoint that lacks one was made with.
inline Checkpoint load_checkpoint(const std::string& path, const std::string& kind, const std::map<std::string, std::string>& config,
                                  const std::vector<nn::NamedParameter>& model, const std::vector<nn::NamedParameter>& trained,
                                  nn::SGD& optimizer, const std::map<std::string, std::string>& added_later = {}) {
    const io::SafetensorsContents contents = io::read_safetensors(path);
    auto it = contents.metadata.find("pin.checkpoint");
    PIN_CHECK(it != contents.metadata.end(), path, ": not a pin training checkpoint (no 'pin.checkpoint' metadata)");
    PIN_CHECK(it->second == kind, path, ": a '", it->second, "' checkpoint, this command resumes '", kind, "' training");
    Checkpoint ck;
    ck.kind = kind;
    ck.position.epoch = detail::metadata_int(contents.metadata, "epoch", path);
    ck.position.batch = detail::metadata_int(contents.metadata, "batch", path);
    ck.position.step = detail::metadata_int(contents.metadata, "step", path);
    ck.optimizer_steps = detail::metadata_int(contents.metadata, "optimizer_steps", path);
    std::string mismatches;
    for (const auto& kv : config) {
        auto m = contents.metadata.find("config." + kv.first);
        const auto old = added_later.find(kv.first);
        const std::string stored = m != contents.metadata.end() ? m->second : old != added_later.end() ? old->second : "(absent)";
        if (stored != kv.second) mismatches += " " + kv.first + "=" + stored + " (now " + kv.second + ")";
        ck.config[kv.first] = stored;
    }
    PIN_CHECK(mismatches.empty(), path, ": the checkpoint was made with different settings:", mismatches,
              "; resume with the same settings or start a new run");
    // Model tensors: exactly the model's names (optimizer.* are checked below).
    io::SafetensorsContents weights, velocity;
    for (const auto& kv : contents.tensors) {
        if (kv.first.rfind("optimizer.velocity.", 0) == 0)
            velocity.tensors[kv.first.substr(19)] = kv.second;
        else
            weights.tensors[kv.first] = kv.second;
    }
    io::load_parameters(model, weights, path);
    PIN_CHECK(trained.size() == optimizer.velocity().size(), "load_checkpoint: optimizer and parameter lists differ");
    PIN_CHECK(velocity.tensors.size() == trained.size(), path, ": ", velocity.tensors.size(),
              " optimizer momentum tensors, expected ", trained.size());
    for (size_t i = 0; i < trained.size(); ++i) {
        const Tensor& v = velocity.at(trained[i].name, path + " (optimizer.velocity)");
        Tensor& dst = optimizer.velocity()[i];
        PIN_CHECK(v.shape() == dst.shape(), path, ": optimizer.velocity.", trained[i].name, " has shape ", shape_to_string(v.shape()),
                  ", expected ", shape_to_string(dst.shape()));
        const Tensor src = v.to_layout(dst.layout());
        std::copy(src.data(), src.data() + src.numel(), dst.data());
    }
    optimizer.set_steps(ck.optimizer_steps);
    return ck;
}

}  // namespace pin::train
