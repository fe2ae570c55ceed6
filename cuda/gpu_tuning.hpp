// cuda/gpu_tuning.hpp - chooses the fastest bfloat16 configuration of the GPU defense forward on the
// device at hand, among those that agree with the fp32 forward there.
//
// The kernels have many configurations (ops.cuh: tiles, warpgroup-MMA pipelines, gather caching,
// tensor copies, wide MMA tiles) and which is fastest depends on the GPU: on the H200 on 2026-12-04
// the warpgroup-MMA tile waiting for each slice with L1 caching won, and the warp-specialized,
// ping-pong and tensor-copy forms written since have not been timed on any GPU. tune_defense runs
// each configuration this device can run on the same synthetic faces, checks its p and defended
// faces against the fp32 forward's (the configuration that matches the CPU to ~1e-6) within the
// bfloat16 tolerances the tests use, times those that pass and names the fastest: a kernel that
// computes wrong on some GPU is left out, not chosen. `pin defend --gpu-tune` and `pin eval
// --gpu-tune` run it; tune_training_step does the same for the training step (`pin train
// --gpu-tune`), whose backward passes are kernels of their own.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gpu_defense.hpp"
#include "gpu_trainer.hpp"
#include "ops.cuh"
#include "pin/model/defense.hpp"
#include "pin/nn/sgd.hpp"
#include "pin/train/trainer.hpp"

namespace pin::cuda {

// One configuration to try: a short id (`pin --gpu-tune-only` takes a list of them), what it is
// called in the report, and the settings that select it.
struct TuningCandidate {
    std::string id;
    std::string name;
    KernelSettings settings;
};

// The configurations of bfloat16 arithmetic with bfloat16 activations and the vector gather that
// this device runs, in the order tried (the ones measured on a GPU first): the asynchronous-copy
// tiles (256 x 64 through L2 or L1, 256 x 128), and where the warpgroup MMA runs (compute
// capability 9.0) its pipelines with L1 caching, then the warp-specialized ones with tensor copies
// and with the wide tiles. `base` supplies everything else (the mask sampler): the current settings.
// The training step tries the same ones (--gpu-storage is the frozen DAE's activations there).
std::vector<TuningCandidate> bf16_candidates(const KernelSettings& base = KernelSettings::current());
// All eleven, whatever the device runs (the last eight need the warpgroup MMA): tile64, tile64-l1,
// tile128, wgmma-wait, wgmma-inflight, ws, pingpong, ws-tma, pingpong-tma, ws-tma-n256,
// pingpong-tma-n256.
std::vector<TuningCandidate> all_bf16_candidates(const KernelSettings& base = KernelSettings::current());

struct TuningResult;

struct TuningOptions {
    int64_t batch = 16;          // faces per forward, the batch the caller will run
    int repeats = 3;             // timed forwards per configuration that passes (the best counts)
    // The check leaves out configurations that compute wrongly, not those that round: every bfloat16
    // configuration rounds the same operands and activations, and their p differ from the fp32
    // forward's by up to 0.07 of its largest (a random agent on the emulation; 0.058 against the CPU
    // on the H200), where a fault in a kernel is of order 1.
    double p_tolerance = 0.15;     // max |p - p_fp32| / max |p_fp32|
    double face_tolerance = 2e-2;  // the same for the defended faces of images whose masks agree
    // The training step's check (tune_training_step), after one step from the same weights: each
    // trained tensor's gradient within gradient_tolerance of fp32's, ||g - g_fp32|| / ||g_fp32||
    // (bfloat16 rounds every operand of 17 convolutions backwards: on the emulation up to 0.27 after
    // one step at batch 1, the furthest a PReLU slope's of 64 values; an unrelated gradient is off
    // by about 1.4, sqrt 2); the gradient's norm before clipping and the step's mean cost within
    // norm_tolerance and cost_tolerance of fp32's, relative (4.6e-3 and 2.6e-5 measured in
    // tests/test_cuda_network.cpp).
    double gradient_tolerance = 0.7;
    double norm_tolerance = 0.1;
    double cost_tolerance = 1e-2;
    // Seconds a configuration's forwards (tune_defense) or training steps (tune_training_step) may
    // take before on_hang is called with its name: this, or 20 times the fp32 reference's time for
    // each of them where that is longer (a kernel that never finishes - a fault in a pipeline's
    // barriers - cannot be stopped from the host: the default on_hang prints hang_message's line
    // and ends the process with status 3).
    double hang_seconds = 120;
    std::function<void(const std::string&)> on_hang;
    // The default on_hang's words: who is tuning ("pin defend") and the caller's option that takes
    // a list of TuningCandidate ids ("--gpu-tune-only"; empty: the ids alone are named).
    std::string caller = "pin";
    std::string only_option;
    // Called as each configuration's result is known (for progress output); may be empty.
    std::function<void(const TuningResult&)> on_result;
};

// What was tuned, so which of TuningResult's checks apply.
enum class TuningTarget { DefenseForward, TrainingStep };

struct TuningResult {
    TuningCandidate candidate;
    TuningTarget target = TuningTarget::DefenseForward;
    bool accepted = false;
    double ms = 0;            // the best of the timed forwards or steps (accepted only)
    std::string why;          // why not accepted
    // The defense forward's check (compare_with_fp32):
    double p_error = 0;       // as TuningOptions::p_tolerance measures it
    double face_error = 0;    // over faces_checked images
    int64_t faces_checked = 0;  // images whose masks equal the fp32 forward's, so whose faces compare
    // The training step's (compare_training_with_fp32):
    double gradient_error = 0;    // the furthest tensor's, as gradient_tolerance measures it
    std::string furthest_tensor;  // which
};

struct TuningReport {
    std::string device;
    int64_t batch = 0;
    double fp32_ms = 0;            // the fp32 forward (or training step), for scale
    std::vector<TuningResult> results;
    int64_t chosen = -1;           // index into results of the fastest accepted one; -1 if none
    const TuningResult* best() const { return chosen < 0 ? nullptr : &results[static_cast<size_t>(chosen)]; }
};

// Runs `candidates` on the PIN forward of `gpu` - `defense`'s agent and eigenbasis on the device
// (make_accelerator(gpu) then runs the choice on them, the packed weights of every configuration
// tried kept) - on options.batch synthetic faces (the mean face plus a fixed pattern) with seed 1,
// against the fp32 forward, as described above. Leaves the kernel settings as it found them: apply
// best()->candidate.settings to use the choice. Requires a usable device (device_available). The
// kernel settings are process-wide (ops.cuh): run it before other GPU work starts, not beside it.
TuningReport tune_defense(GpuDefense& gpu, const model::Defense& defense, const std::vector<TuningCandidate>& candidates,
                          const TuningOptions& options);

// What the default on_hang says when `what` - a configuration's name in quotes, as the watchdog is
// armed with it, or the fp32 reference - did not finish while tuning `candidates`: which, and how
// to go on without it (the other candidates' ids, or, where none is left or the reference hung,
// without tuning). One line, no newline.
std::string hang_message(const std::string& what, const std::vector<TuningCandidate>& candidates, const TuningOptions& options);

// The comparison behind `accepted`, on host copies: p and q (batch x n) and the faces (batch x d)
// of a configuration against the fp32 forward's. Non-finite values fail it.
TuningResult compare_with_fp32(const std::vector<float>& p, const std::vector<float>& q, const std::vector<float>& faces,
                               const std::vector<float>& p_ref, const std::vector<float>& q_ref, const std::vector<float>& faces_ref,
                               int64_t batch, const TuningOptions& options);

// One training step's results, the fp32 step's or a configuration's, as tune_training_step compares them.
struct TrainingStepOutputs {
    std::vector<std::string> names;             // the trained tensors ("esn.block1.conv1.weight", ...)
    std::vector<std::vector<float>> gradients;  // theirs, after clipping
    double grad_norm = 0;                       // before clipping
    double mean_cost = 0;
};
// The comparison behind `accepted` for the training step (TuningOptions::gradient_tolerance...).
// Non-finite values fail it.
TuningResult compare_training_with_fp32(const TrainingStepOutputs& got, const TrainingStepOutputs& ref, const TuningOptions& options);

// Runs `candidates` on the policy-gradient training step (a GpuTrainer over `backend`, from
// `agent`'s weights and `sgd`'s momentum, which it leaves as they are; the trainer's options
// `trainer_options`) on options.batch synthetic faces: one step of each configuration from the same
// weights, compared with the fp32 step's, then, where it passes, options.repeats more, timed (each
// from the weights the last left: the time does not depend on them). The kernel settings as
// tune_defense leaves them; `pin train --gpu-tune` runs it before training, on the run's backend.
TuningReport tune_training_step(GpuTrainingBackend& backend, model::Agent& agent, const nn::SGD& sgd,
                                const train::TrainerOptions& trainer_options, const std::vector<TuningCandidate>& candidates,
                                const TuningOptions& options);

// Calls on_hang(what) from a thread of its own if arm(what, seconds) is not followed by disarm()
// (or another arm) within `seconds`: the host cannot interrupt a kernel that never finishes, so a
// deadline is all it can keep.
class Watchdog {
public:
    explicit Watchdog(std::function<void(const std::string&)> on_hang);
    ~Watchdog();
    Watchdog(const Watchdog&) = delete;
    Watchdog& operator=(const Watchdog&) = delete;
    void arm(const std::string& what, double seconds);
    void disarm();

private:
    void run();
    std::function<void(const std::string&)> on_hang_;
    std::mutex mutex_;
    std::condition_variable changed_;
    std::string what_;
    bool armed_ = false, stopping_ = false;
    uint64_t generation_ = 0;
    std::chrono::steady_clock::time_point deadline_;
    std::thread thread_;
};

}  // namespace pin::cuda
