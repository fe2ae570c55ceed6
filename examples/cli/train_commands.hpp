// examples/cli/train_commands.hpp - `pin pretrain-dae` and `pin train`: the training loop of
// pin/train/training_loop.hpp around the DAE pretrainer and the policy-gradient trainer, with an
// output folder holding checkpoint.safetensors (resume), log.csv (one row per step) and the weights
// (dae.safetensors, or agent.safetensors + eigenbasis.safetensors: a model folder for `pin defend`).
#pragma once
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "cli/device.hpp"
#include "cli/options.hpp"
#include "pin/core/allocator.hpp"
#include "pin/io/face_dataset.hpp"
#include "pin/io/state_dict.hpp"
#include "pin/model/agent.hpp"
#include "pin/model/eigenbasis.hpp"
#include "pin/train/bf16_operands_backend.hpp"
#include "pin/train/dae_pretrainer.hpp"
#include "pin/train/trainer.hpp"
#include "pin/train/training_loop.hpp"
#if defined(PIN_HAVE_CUDA)
#include "gpu_trainer.hpp"
#include "rng.cuh"
#endif

namespace cli {

namespace detail {

inline std::vector<std::string> training_files(const Options& o, const char* command) {
    if (!o.has("data")) fail_usage(std::string(command) + " needs --data DIR");
    const pin::io::FaceListing listing = pin::io::list_face_images(o.get("data", ""), o.get("split", "train"));
    if (!listing.note.empty()) std::fprintf(stderr, "pin %s: %s\n", command, listing.note.c_str());
    std::fprintf(stderr, "pin %s: %zu images (%s split of %s)\n", command, listing.files.size(), listing.split_used.c_str(),
                 o.get("data", "").c_str());
    return listing.files;
}

inline std::string prepare_out_dir(const Options& o, const char* command) {
    namespace fs = std::filesystem;
    if (!o.has("out")) fail_usage(std::string(command) + " needs --out DIR (checkpoint, log and weights go there)");
    const std::string out = o.get("out", "");
    std::error_code ec;
    fs::create_directories(out, ec);
    PIN_CHECK(fs::is_directory(out), out, ": cannot create the output folder (", ec.message(), ")");
    const fs::path ck = fs::path(out) / "checkpoint.safetensors";
    if (!o.has("resume") && fs::exists(ck))
        throw pin::Error(ck.string() + " exists: add --resume to continue that run, or choose another --out");
    if (o.has("resume") && !fs::exists(ck)) throw pin::Error(ck.string() + ": no checkpoint to resume from");
    if (!o.has("resume")) fs::remove(fs::path(out) / "log.csv", ec);
    return out;
}

inline pin::train::LoopOptions loop_options(const Options& o, const std::string& out, const char* label, int64_t epochs) {
    pin::train::LoopOptions lo;
    lo.epochs = int_option(o, "epochs", epochs, 1, 100000);
    lo.lr = static_cast<float>(real_option(o, "lr", 0.01, 1e-9, 10));
    lo.lr_halve_every = int_option(o, "lr-halve-every", 20, 0, 100000);
    lo.max_steps = int_option(o, "steps", 0, 0, INT64_MAX);
    lo.label = label;
    lo.checkpoint_path = (std::filesystem::path(out) / "checkpoint.safetensors").string();
    lo.log_path = (std::filesystem::path(out) / "log.csv").string();
    lo.progress = !o.has("no-progress");
    return lo;
}

inline int report(pin::train::LoopOutcome outcome, const pin::train::TrainingPosition& at, const std::string& ck,
                  const char* command) {
    using pin::train::LoopOutcome;
    if (outcome == LoopOutcome::Stopped) {
        std::fprintf(stderr, "pin %s: stopped; checkpoint %s saved. Run the same command with --resume to continue.\n", command,
                     ck.c_str());
        return 130;
    }
    if (outcome == LoopOutcome::StepLimit)
        std::fprintf(stderr, "pin %s: --steps reached at step %lld; checkpoint %s saved (--resume continues)\n", command,
                     static_cast<long long>(at.step), ck.c_str());
    return 0;
}

// Copies the dae.* tensors of a safetensors file (dae.safetensors, agent.safetensors or a
// checkpoint) into the DAE, strictly.
inline void load_dae_weights(pin::model::DenoisingAutoencoder& dae, const std::string& path) {
    const pin::io::SafetensorsContents all = pin::io::read_safetensors(path);
    pin::io::SafetensorsContents only;
    for (const auto& kv : all.tensors)
        if (kv.first.rfind("dae.", 0) == 0) only.tensors.insert(kv);
    PIN_CHECK(!only.tensors.empty(), path, ": no dae.* tensors (expected the output of `pin pretrain-dae`)");
    std::vector<pin::nn::NamedParameter> params;
    dae.collect_parameters("dae.", params);
    pin::io::load_parameters(params, only, path);
}

// The settings both training commands refuse to change on --resume.
inline std::map<std::string, std::string> common_config(const Options& o, size_t images, const pin::train::FaceBatchOptions& bo,
                                                        const pin::train::LoopOptions& lo) {
    return {{"images", std::to_string(images)}, {"batch", std::to_string(bo.batch)}, {"flip", bo.flip ? "1" : "0"},
            {"seed", std::to_string(bo.seed)},   {"noise", o.get("noise", "0.04")}, {"lr", o.get("lr", "0.01")},
            {"momentum", o.get("momentum", "0.9")}, {"lr_halve_every", std::to_string(lo.lr_halve_every)}};
}

}  // namespace detail

inline int cmd_pretrain_dae(const Options& o) {
    namespace fs = std::filesystem;
    const std::vector<std::string> files = detail::training_files(o, "pretrain-dae");
    const std::string out = detail::prepare_out_dir(o, "pretrain-dae");
    pin::train::FaceBatchOptions bo;
    bo.batch = int_option(o, "batch", 16, 1, 4096);
    pin::check_batch_memory(bo.batch, 64e6, "pin pretrain-dae");  // ~64 MB of activations and caches per face
    bo.flip = o.has("flip");
    bo.seed = static_cast<uint64_t>(int_option(o, "seed", 0, 0, INT64_MAX));
    pin::train::FaceBatchLoader loader(files, bo);
    const pin::train::LoopOptions lo = detail::loop_options(o, out, "pretrain-dae", 10);
    pin::train::DaePretrainOptions po;
    po.noise = real_option(o, "noise", 0.04, 0, 10);
    po.lr = lo.lr;
    po.momentum = static_cast<float>(real_option(o, "momentum", 0.9, 0, 0.9999));
    po.seed = bo.seed;
    auto dae = std::make_shared<pin::model::DenoisingAutoencoder>();
    dae->reset_parameters(po.seed);
    pin::train::DaePretrainer trainer(dae, po);
    const std::map<std::string, std::string> config = detail::common_config(o, files.size(), bo, lo);
    pin::train::TrainingPosition start;
    if (o.has("resume")) {
        const pin::train::Checkpoint ck = pin::train::load_checkpoint(lo.checkpoint_path, "dae", config, trainer.trained_parameters(),
                                                                      trainer.trained_parameters(), trainer.optimizer());
        start = ck.position;
        std::fprintf(stderr, "pin pretrain-dae: resuming at epoch %lld, batch %lld (step %lld)\n",
                     static_cast<long long>(start.epoch + 1), static_cast<long long>(start.batch), static_cast<long long>(start.step));
    }
    const std::string weights = (fs::path(out) / "dae.safetensors").string();
    pin::train::LoopCallbacks cb;
    cb.kept_column = "input_mse";
    cb.step = [&](const pin::Tensor& x, uint64_t first) {
        const pin::train::DaeStepStats s = trainer.step(x, first);
        return pin::train::StepResult{s.mse, s.input_mse};
    };
    cb.set_lr = [&](float lr) { trainer.optimizer().set_lr(lr); };
    pin::train::TrainingPosition last = start;
    cb.save_checkpoint = [&](const pin::train::TrainingPosition& at) {
        last = at;
        pin::train::save_checkpoint(lo.checkpoint_path, {"dae", at, 0, config}, trainer.trained_parameters(),
                                    trainer.trained_parameters(), trainer.optimizer());
    };
    cb.end_of_epoch = [&](int64_t) { pin::io::write_safetensors(weights, pin::io::parameter_entries(trainer.trained_parameters())); };
    pin::train::install_stop_handlers();
    const pin::train::LoopOutcome outcome = pin::train::run_training(loader, lo, cb, start);
    if (outcome == pin::train::LoopOutcome::Finished) std::printf("DAE weights: %s (log: %s)\n", weights.c_str(), lo.log_path.c_str());
    return detail::report(outcome, last, lo.checkpoint_path, "pretrain-dae");
}

// `o` by value: --gpu-tune writes the configuration it chose into it (tune_gpu_settings).
inline int cmd_train(Options o) {
    namespace fs = std::filesystem;
    if (!o.has("dae")) fail_usage("train needs --dae FILE (the frozen denoising autoencoder, from `pin pretrain-dae`)");
    if (!o.has("basis")) fail_usage("train needs --basis FILE (eigenfaces, from `pin eigen`)");
    const std::string device = o.get("device", "cpu");
    if (device != "cpu" && device != "cuda") fail_usage("--device must be cpu or cuda, got '" + device + "'");
    apply_gpu_settings(o, device);
    const bool emulate_bf16 = o.has("emulate-gpu-bf16");
    if (emulate_bf16 && device != "cpu")
        fail_usage("--emulate-gpu-bf16 rounds the CPU step's operands as --gpu-math bf16 does; on the GPU use --gpu-math bf16");
    if (device == "cuda") {
#if defined(PIN_HAVE_CUDA)
        std::string reason;
        if (!pin::cuda::device_available(&reason)) {
            std::fprintf(stderr, "pin train: --device cuda: no usable CUDA device (%s)\n", reason.c_str());
            return 1;
        }
#else
        std::fprintf(stderr, "pin train: --device cuda: this build has no CUDA kernels (nvcc was not found, or PIN_CUDA=OFF)\n");
        return 1;
#endif
    }
    const std::vector<std::string> files = detail::training_files(o, "train");
    const std::string out = detail::prepare_out_dir(o, "train");
    pin::train::FaceBatchOptions bo;
    bo.batch = int_option(o, "batch", 20, 1, 4096);
    // ~160 MB of activations and caches per face, in host memory on the CPU (on the GPU: its own).
    if (device == "cpu") pin::check_batch_memory(bo.batch, 160e6, "pin train");
    bo.flip = o.has("flip");
    bo.seed = static_cast<uint64_t>(int_option(o, "seed", 0, 0, INT64_MAX));
    pin::train::FaceBatchLoader loader(files, bo);
    const pin::train::LoopOptions lo = detail::loop_options(o, out, "train", 200);

    auto basis = std::make_shared<pin::model::EigenBasis>(pin::model::EigenBasis::load(o.get("basis", "")));
    pin::train::TrainerOptions to;
    to.masks = int_option(o, "masks", 30, 1, 100000);
    to.estimator = pin::train::parse_estimator(o.get("estimator", "local"));
    to.cost = pin::train::parse_cost_type(o.get("cost", "l2"));
    to.lambda = real_option(o, "lambda", 0.015, 0, 1e6);
    to.noise = real_option(o, "noise", 0.04, 0, 10);
    to.lr = lo.lr;
    to.momentum = static_cast<float>(real_option(o, "momentum", 0.9, 0, 0.9999));
    to.clip_norm = real_option(o, "clip-norm", 1, 0, 1e12);  // defaults: the shipped model's (docs/training.md)
    to.features_lr_scale = static_cast<float>(real_option(o, "features-lr-scale", 1, 0, 1e6));
    to.seed = bo.seed;
    auto agent = std::make_shared<pin::model::Agent>(basis->count());
    agent->reset_parameters(to.seed);
    const double head_init_scale = real_option(o, "head-init-scale", 0.01, 0, 1e6);
    if (head_init_scale != 1) agent->head().scale_output_layer(static_cast<float>(head_init_scale));
    detail::load_dae_weights(agent->dae(), o.get("dae", ""));
    pin::train::PolicyGradientTrainer trainer(agent, basis, to);
    std::map<std::string, std::string> config = detail::common_config(o, files.size(), bo, lo);
    config.insert({
        {"masks", std::to_string(to.masks)},       {"estimator", pin::train::estimator_name(to.estimator)},
        {"cost", o.get("cost", "l2")},             {"lambda", o.get("lambda", "0.015")},
        {"clip_norm", o.get("clip-norm", "1")},   {"features_lr_scale", o.get("features-lr-scale", "1")},
        {"head_init_scale", o.get("head-init-scale", "0.01")},
        {"eigenvectors", std::to_string(basis->count())}});
    config["emulate_gpu_bf16"] = emulate_bf16 ? "1" : "0";  // a resume must keep it; older checkpoints: 0
    pin::train::TrainingPosition start;
    if (o.has("resume")) {
        const pin::train::Checkpoint ck = pin::train::load_checkpoint(lo.checkpoint_path, "agent", config, agent->parameters(),
                                                                      trainer.trained_parameters(), trainer.optimizer(),
                                                                      {{"emulate_gpu_bf16", "0"}});
        start = ck.position;
        std::fprintf(stderr, "pin train: resuming at epoch %lld, batch %lld (step %lld)\n", static_cast<long long>(start.epoch + 1),
                     static_cast<long long>(start.batch), static_cast<long long>(start.step));
    }
    // The output folder is a model folder: the eigenbasis beside the agent.
    const fs::path basis_copy = fs::path(out) / "eigenbasis.safetensors";
    std::error_code ec;
    if (!fs::exists(basis_copy) || !fs::equivalent(basis_copy, o.get("basis", ""), ec))
        basis->save(basis_copy.string());
    const std::string weights = (fs::path(out) / "agent.safetensors").string();
    // --device cuda: the step runs on the GPU from the (possibly resumed) weights and momentum; they
    // are copied back into `agent` and the CPU optimizer before every checkpoint.
    std::function<pin::train::StepStats(const pin::Tensor&, uint64_t)> step = [&](const pin::Tensor& x, uint64_t first) {
        return trainer.step(x, first);
    };
    std::function<void()> sync = [] {};
    std::function<void(float)> set_backend_lr = [](float) {};
    // --emulate-gpu-bf16: the step composed as on the GPU (BackendTrainer), on the CPU engine with
    // bfloat16 GEMM operands (train/bf16_operands_backend.hpp); weights and momentum copied back
    // before every checkpoint, as from the GPU.
    std::unique_ptr<pin::train::Bf16OperandsCpuBackend> bf16_backend;
    std::unique_ptr<pin::train::BackendTrainer<pin::train::Bf16OperandsCpuBackend>> bf16;
    if (emulate_bf16) {
        bf16_backend = std::make_unique<pin::train::Bf16OperandsCpuBackend>(agent->dae(), basis, to);
        bf16 = std::make_unique<pin::train::BackendTrainer<pin::train::Bf16OperandsCpuBackend>>(*bf16_backend, *agent,
                                                                                                trainer.optimizer(), to);
        bf16->set_lr(trainer.optimizer().lr());
        std::fprintf(stderr, "pin train: GEMM operands rounded to bfloat16 (--emulate-gpu-bf16)\n");
        step = [&](const pin::Tensor& x, uint64_t first) { return bf16->step(x, first); };
        sync = [&] { bf16->download(*agent, trainer.optimizer()); };
        set_backend_lr = [&](float lr) { bf16->set_lr(lr); };
    }
#if defined(PIN_HAVE_CUDA)
    std::unique_ptr<pin::cuda::GpuTrainingBackend> gpu_backend;
    std::unique_ptr<pin::cuda::GpuTrainer> gpu;
    if (device == "cuda") {
        gpu_backend = std::make_unique<pin::cuda::GpuTrainingBackend>(*agent, *basis, to);
        // --gpu-tune: each configuration's step from the run's (possibly resumed) weights, on its backend.
        if (o.has("gpu-tune") &&
            !tune_gpu_settings(o, bo.batch, "train", "training step", [&](const std::vector<pin::cuda::TuningCandidate>& candidates,
                                                                           const pin::cuda::TuningOptions& options) {
                return pin::cuda::tune_training_step(*gpu_backend, *agent, trainer.optimizer(), to, candidates, options);
            }))
            return 1;
        gpu = std::make_unique<pin::cuda::GpuTrainer>(*gpu_backend, *agent, trainer.optimizer(), to);
        gpu->set_lr(trainer.optimizer().lr());
        std::fprintf(stderr, "pin train: the training step runs on %s\n", pin::cuda::device_name().c_str());
        step = [&](const pin::Tensor& x, uint64_t first) { return gpu->step(x, first); };
        sync = [&] { gpu->download(*agent, trainer.optimizer()); };
        set_backend_lr = [&](float lr) { gpu->set_lr(lr); };
    }
#endif
    pin::train::LoopCallbacks cb;
    cb.step = [&](const pin::Tensor& x, uint64_t first) {
        const pin::train::StepStats s = step(x, first);
        return pin::train::StepResult{s.mean_cost, s.mean_kept, s.grad_norm};
    };
    cb.set_lr = [&](float lr) {
        trainer.optimizer().set_lr(lr);
        set_backend_lr(lr);
    };
    pin::train::TrainingPosition last = start;
    cb.save_checkpoint = [&](const pin::train::TrainingPosition& at) {
        sync();
        last = at;
        pin::train::save_checkpoint(lo.checkpoint_path, {"agent", at, 0, config}, agent->parameters(), trainer.trained_parameters(),
                                    trainer.optimizer());
        pin::io::write_safetensors(weights, pin::io::parameter_entries(agent->parameters()));
    };
    pin::train::install_stop_handlers();
    const pin::train::LoopOutcome outcome = pin::train::run_training(loader, lo, cb, start);
    if (device == "cuda") report_gpu_gemm_launches("train");
    if (outcome == pin::train::LoopOutcome::Finished)
        std::printf("model folder: %s (agent.safetensors, eigenbasis.safetensors; log: %s)\n", out.c_str(), lo.log_path.c_str());
    return detail::report(outcome, last, lo.checkpoint_path, "train");
}

}  // namespace cli
