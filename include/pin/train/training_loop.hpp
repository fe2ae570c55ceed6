// pin/train/training_loop.hpp - epochs around a training step: data order, learning-rate schedule,
// progress bar, a CSV log per step, a checkpoint after every epoch and when a stop is requested
// (SIGINT/SIGTERM), and resume from such a checkpoint.
//
// Determinism: step s of the run sees batch (s / batches_per_epoch, s % batches_per_epoch) of the
// loader and numbers its images s * batch ... (noise and mask streams are keyed by that number), so
// stopping after any step and resuming gives the same weights, bit for bit, as never stopping.
#pragma once
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "pin/core/error.hpp"
#include "pin/core/progress.hpp"
#include "pin/io/file_util.hpp"
#include "pin/train/checkpoint.hpp"
#include "pin/train/face_batches.hpp"

namespace pin::train {

// Set by the signal handler (or by a caller); the loop checkpoints and returns after the current step.
inline std::atomic<int>& stop_flag() {
    static std::atomic<int> flag{0};
    return flag;
}
inline void request_stop() { stop_flag().store(1); }

namespace detail {
inline void on_stop_signal(int sig) {
    // First signal: finish the step, checkpoint, exit. A second one: the default action (exit now;
    // the last checkpoint on disk stays complete because it is replaced by rename).
    stop_flag().store(1);
    std::signal(sig, SIG_DFL);
}
}  // namespace detail

inline void install_stop_handlers() {
    std::signal(SIGINT, detail::on_stop_signal);
    std::signal(SIGTERM, detail::on_stop_signal);
}

struct LoopOptions {
    int64_t epochs = 1;
    float lr = 0.01f;
    int64_t lr_halve_every = 20;  // epochs; 0 = constant
    int64_t max_steps = 0;        // stop (with a checkpoint) after this many steps in this call; 0 = none
    std::string label = "train";
    std::string checkpoint_path;  // written after every epoch and on stop
    std::string log_path;         // CSV, one row per step (appended; trimmed to the resume point)
    bool progress = true;
};

struct StepResult {
    double loss = 0;   // the step's mean cost (agent) or MSE (DAE)
    double kept = 0;   // mean ||q||_0 (agent); the input's MSE for the DAE
    double grad_norm = 0;  // of the step's gradient, before any clipping (0 where not measured)
};

struct LoopCallbacks {
    std::function<StepResult(const Tensor& x, uint64_t first_image)> step;
    std::function<void(float lr)> set_lr;
    std::function<void(const TrainingPosition& where)> save_checkpoint;  // to LoopOptions::checkpoint_path
    std::function<void(int64_t finished_epoch)> end_of_epoch;           // e.g. export weights (optional)
    std::string kept_column = "mean_kept";
};

enum class LoopOutcome { Finished, Stopped, StepLimit };

inline float scheduled_lr(const LoopOptions& o, int64_t epoch) {
    if (o.lr_halve_every <= 0) return o.lr;
    float lr = o.lr;
    for (int64_t e = o.lr_halve_every; e <= epoch; e += o.lr_halve_every) lr *= 0.5f;
    return lr;
}

namespace detail {
// Keeps the header and the rows of steps before `step` (a run killed after its last checkpoint
// logged steps that the resumed run will do again).
inline void trim_log(const std::string& path, int64_t step) {
    std::ifstream in(path);
    if (!in) return;
    std::string line, kept;
    bool header = true;
    while (std::getline(in, line)) {
        if (header) {
            kept += line + "\n";
            header = false;
            continue;
        }
        const long long s = std::atoll(line.c_str());
        if (s < step) kept += line + "\n";
    }
    in.close();
    io::write_file_atomically(path, kept.data(), kept.size());
}
}  // namespace detail

inline LoopOutcome run_training(FaceBatchLoader& loader, const LoopOptions& o, const LoopCallbacks& cb, TrainingPosition start) {
    const int64_t per_epoch = loader.batches_per_epoch(), B = loader.batch_size();
    if (start.batch >= per_epoch) {  // a checkpoint taken at the very end of an epoch
        ++start.epoch;
        start.batch = 0;
    }
    PIN_CHECK(start.step == start.epoch * per_epoch + start.batch, "run_training: checkpoint position (epoch ", start.epoch,
              ", batch ", start.batch, ", step ", start.step, ") does not match ", per_epoch,
              " batches per epoch: was it made with another data set or batch size?");
    std::FILE* log = nullptr;
    if (!o.log_path.empty()) {
        const bool exists = std::filesystem::exists(o.log_path);
        if (exists) detail::trim_log(o.log_path, start.step);
        log = std::fopen(o.log_path.c_str(), "a");
        PIN_CHECK(log, o.log_path, ": cannot open the training log for writing");
        if (!exists) std::fprintf(log, "step,epoch,batch,lr,mean_cost,%s,images_per_second,seconds,grad_norm\n", cb.kept_column.c_str());
    }
    struct LogCloser {
        std::FILE* f;
        ~LogCloser() {
            if (f) std::fclose(f);
        }
    } closer{log};
    TrainingPosition at = start;
    int64_t steps_this_call = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (; at.epoch < o.epochs; ++at.epoch, at.batch = 0) {
        const float lr = scheduled_lr(o, at.epoch);
        cb.set_lr(lr);
        loader.start_epoch(at.epoch, at.batch);
        std::ostringstream label;
        label << o.label << " epoch " << at.epoch + 1 << "/" << o.epochs;
        std::unique_ptr<ProgressBar> bar;
        if (o.progress) {
            bar = std::make_unique<ProgressBar>(label.str(), per_epoch * B, "img");
            bar->set_start(at.batch * B);
        }
        double sum_loss = 0, sum_kept = 0;
        int64_t n_steps = 0;
        FaceBatch batch;
        while (loader.next(batch)) {
            const auto s0 = std::chrono::steady_clock::now();
            const StepResult r = cb.step(batch.images, static_cast<uint64_t>(at.step) * static_cast<uint64_t>(B));
            const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();
            PIN_CHECK(std::isfinite(r.loss), o.label, ": the loss became ", r.loss, " at step ", at.step,
                      " (learning rate too high?); the last checkpoint is ", o.checkpoint_path);
            sum_loss += r.loss;
            sum_kept += r.kept;
            ++n_steps;
            if (log)
                std::fprintf(log, "%lld,%lld,%lld,%.6g,%.8g,%.8g,%.4g,%.3f,%.6g\n", static_cast<long long>(at.step),
                             static_cast<long long>(at.epoch), static_cast<long long>(at.batch), lr, r.loss, r.kept, B / dt,
                             std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), r.grad_norm);
            if (log) std::fflush(log);  // the log is for watching a run too
            ++at.batch;
            ++at.step;
            ++steps_this_call;
            if (bar) {
                char status[96];
                std::snprintf(status, sizeof status, "cost %.4g  %s %.4g", sum_loss / n_steps, cb.kept_column.c_str(),
                              sum_kept / n_steps);
                bar->set_status(status);
                bar->update(at.batch * B);
            }
            const bool stop = stop_flag().load() != 0;
            const bool limit = o.max_steps > 0 && steps_this_call >= o.max_steps;
            if ((stop || limit) && at.batch < per_epoch) {
                if (log) std::fflush(log);
                if (cb.save_checkpoint) cb.save_checkpoint(at);
                if (bar) bar->finish();
                return stop ? LoopOutcome::Stopped : LoopOutcome::StepLimit;
            }
        }
        if (bar) bar->finish();
        if (log) std::fflush(log);
        const TrainingPosition next{at.epoch + 1, 0, at.step};
        if (cb.save_checkpoint) cb.save_checkpoint(next);
        if (cb.end_of_epoch) cb.end_of_epoch(at.epoch);
        if (next.epoch < o.epochs && stop_flag().load() != 0) return LoopOutcome::Stopped;
        if (next.epoch < o.epochs && o.max_steps > 0 && steps_this_call >= o.max_steps) return LoopOutcome::StepLimit;
    }
    return LoopOutcome::Finished;
}

}  // namespace pin::train
