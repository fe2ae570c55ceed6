// cuda/gpu_tuning.cpp - tune_defense and its watchdog (gpu_tuning.hpp).
#include "gpu_tuning.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <utility>

#include "gpu_defense.hpp"
#include "pin/core/error.hpp"

namespace pin::cuda {

std::vector<TuningCandidate> all_bf16_candidates(const KernelSettings& base) {
    KernelSettings b = base;
    b.math = MathMode::BF16;
    b.gather = GatherMode::Vector;
    b.storage = ActivationStorage::BF16;
    b.pipeline = WgmmaPipeline::WaitEachSlice;
    b.caching = GatherCaching::L2;
    b.ws_smem_kib = 0;
    b.stores = WgmmaStores::ThroughShared;
    b.loads = WgmmaLoads::CpAsync;
    b.mma_n = WgmmaMmaN::N128;
    auto with = [&](AsyncTileShape tile, WgmmaPipeline pipeline, GatherCaching caching, WgmmaLoads loads = WgmmaLoads::CpAsync,
                    WgmmaMmaN mma_n = WgmmaMmaN::N128) {
        KernelSettings s = b;
        s.tile = tile, s.pipeline = pipeline, s.caching = caching, s.loads = loads, s.mma_n = mma_n;
        return s;
    };
    using A = AsyncTileShape;
    using P = WgmmaPipeline;
    using L = WgmmaLoads;
    const GatherCaching l2 = GatherCaching::L2, l1 = GatherCaching::L1;
    return {{"tile64", "256 x 64 tile", with(A::Cols64, P::WaitEachSlice, l2)},
            {"tile64-l1", "256 x 64 tile, L1", with(A::Cols64, P::WaitEachSlice, l1)},
            {"tile128", "256 x 128 tile", with(A::Cols128, P::WaitEachSlice, l2)},
            {"wgmma-wait", "wgmma wait, L1", with(A::Wgmma, P::WaitEachSlice, l1)},
            {"wgmma-inflight", "wgmma in flight, L1", with(A::Wgmma, P::OneSliceInFlight, l1)},
            {"ws", "wgmma ws, L1", with(A::Wgmma, P::WarpSpecialized, l1)},
            {"pingpong", "wgmma ping-pong, L1", with(A::Wgmma, P::PingPong, l1)},
            {"ws-tma", "wgmma ws, tensor copies", with(A::Wgmma, P::WarpSpecialized, l1, L::TensorCopies)},
            {"pingpong-tma", "wgmma ping-pong, tensor copies", with(A::Wgmma, P::PingPong, l1, L::TensorCopies)},
            {"ws-tma-n256", "wgmma ws, tensor copies, N 256", with(A::Wgmma, P::WarpSpecialized, l1, L::TensorCopies, WgmmaMmaN::N256)},
            {"pingpong-tma-n256", "wgmma ping-pong, tensor copies, N 256", with(A::Wgmma, P::PingPong, l1, L::TensorCopies, WgmmaMmaN::N256)}};
}

std::vector<TuningCandidate> bf16_candidates(const KernelSettings& base) {
    std::vector<TuningCandidate> c = all_bf16_candidates(base);
    if (!wgmma_supported())
        c.erase(std::remove_if(c.begin(), c.end(), [](const TuningCandidate& t) { return t.settings.tile == AsyncTileShape::Wgmma; }), c.end());
    return c;
}

namespace {
// max |a - ref| / max |ref| over [begin, end); infinity where a value of a is not finite.
double relative_error(const std::vector<float>& a, const std::vector<float>& ref, size_t begin, size_t end) {
    double worst = 0, scale = 0;
    for (size_t i = begin; i < end; ++i) {
        if (!std::isfinite(a[i])) return INFINITY;
        worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - ref[i]));
        scale = std::max(scale, std::fabs(static_cast<double>(ref[i])));
    }
    return scale > 0 ? worst / scale : worst;
}
std::string number(double v) {
    char s[32];
    std::snprintf(s, sizeof s, "%.3g", v);
    return s;
}
}  // namespace

std::string hang_message(const std::string& what, const std::vector<TuningCandidate>& candidates, const TuningOptions& options) {
    std::string others;
    bool named = false;  // whether `what` is one of the candidates (not the fp32 reference)
    for (const TuningCandidate& c : candidates) {
        if (what == "'" + c.name + "'")
            named = true;
        else
            others += (others.empty() ? "" : ",") + c.id;
    }
    std::string line = options.caller + ": GPU tuning: " + what + " did not finish; its kernels may never end on this GPU. ";
    if (!named || others.empty()) return line + "Run without tuning.";
    return line + "Tune without it: " + (options.only_option.empty() ? "the configurations " : options.only_option + " ") + others;
}

TuningResult compare_with_fp32(const std::vector<float>& p, const std::vector<float>& q, const std::vector<float>& faces,
                               const std::vector<float>& p_ref, const std::vector<float>& q_ref, const std::vector<float>& faces_ref,
                               int64_t batch, const TuningOptions& options) {
    PIN_CHECK(batch > 0 && p.size() == p_ref.size() && q.size() == q_ref.size() && faces.size() == faces_ref.size() &&
                  p.size() == q.size() && p.size() % static_cast<size_t>(batch) == 0 && faces.size() % static_cast<size_t>(batch) == 0,
              "compare_with_fp32: sizes differ");
    TuningResult r;
    r.p_error = relative_error(p, p_ref, 0, p.size());
    const size_t n = p.size() / static_cast<size_t>(batch), d = faces.size() / static_cast<size_t>(batch);
    // A p within rounding of its uniform draw may flip a mask bit, and one flipped bit changes the
    // whole face: faces compare only where the masks agree.
    for (size_t b = 0; b < static_cast<size_t>(batch); ++b) {
        if (!std::equal(q.begin() + b * n, q.begin() + (b + 1) * n, q_ref.begin() + b * n)) continue;
        r.face_error = std::max(r.face_error, relative_error(faces, faces_ref, b * d, (b + 1) * d));
        ++r.faces_checked;
    }
    if (!(r.p_error <= options.p_tolerance))
        r.why = "p differs from the fp32 forward's by " + number(r.p_error) + " of its largest (tolerance " + number(options.p_tolerance) + ")";
    else if (!(r.face_error <= options.face_tolerance))
        r.why = "the defended faces differ from the fp32 forward's by " + number(r.face_error) + " of their largest (tolerance " +
                number(options.face_tolerance) + ")";
    r.accepted = r.why.empty();
    return r;
}

namespace {
double seconds_of(const std::function<void()>& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
std::function<void(const std::string&)> on_hang_of(const TuningOptions& options, const std::vector<TuningCandidate>& candidates) {
    if (options.on_hang) return options.on_hang;
    return [options, candidates](const std::string& what) {
        std::fprintf(stderr, "\n%s\n", hang_message(what, candidates, options).c_str());
        std::fflush(stderr);
        std::_Exit(3);
    };
}
// The reference's settings: fp32 arithmetic and activations with the generic gather (the CPU's
// results to ~1e-6).
KernelSettings fp32_settings() {
    KernelSettings fp32 = KernelSettings::current();
    fp32.math = MathMode::FP32, fp32.gather = GatherMode::Generic, fp32.storage = ActivationStorage::FP32;
    return fp32;
}
// B synthetic faces (B, 112 x 112 values in [-1, 1]): `mean` (or 0) plus a fixed pattern per image.
// What a face looks like to the network matters little to the kernels' speed, and the comparison
// needs only the same input.
std::vector<float> synthetic_faces(int64_t B, int64_t D, const float* mean) {
    std::vector<float> x(static_cast<size_t>(B * D));
    for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < D; ++i)
            x[static_cast<size_t>(b * D + i)] = std::clamp((mean ? mean[i] : 0.0f) + 0.25f * std::sin(0.0013f * static_cast<float>(i + 977 * b)),
                                                           -1.0f, 1.0f);
    return x;
}
// Each candidate in turn: applied; `check` runs it once (packing what it reads: not timed) and
// compares it with the fp32 reference; where that passes, `run` options.repeats times, the best
// time kept. An exception leaves the candidate out; the watchdog keeps `deadline` seconds over each.
// The fastest accepted becomes report.chosen.
void try_candidates(TuningReport& report, TuningTarget target, const std::vector<TuningCandidate>& candidates, const TuningOptions& options,
                    Watchdog& watchdog, double deadline, const std::function<TuningResult()>& check, const std::function<void()>& run) {
    for (const TuningCandidate& c : candidates) {
        TuningResult r;
        try {
            c.settings.apply();
            watchdog.arm("'" + c.name + "'", deadline);
            r = check();
            if (r.accepted) {
                double best = INFINITY;
                for (int i = 0; i < options.repeats; ++i) best = std::min(best, seconds_of(run));
                r.ms = 1e3 * best;
            }
            watchdog.disarm();
        } catch (const std::exception& e) {
            watchdog.disarm();
            r = TuningResult{};
            r.why = e.what();
        }
        r.candidate = c;
        r.target = target;
        report.results.push_back(r);
        if (r.accepted && (report.chosen < 0 || r.ms < report.results[static_cast<size_t>(report.chosen)].ms))
            report.chosen = static_cast<int64_t>(report.results.size()) - 1;
        if (options.on_result) options.on_result(report.results.back());
    }
}
// A configuration's runs may take 20 times the fp32 reference's each before they count as hung
// (every bfloat16 one ran faster than fp32 on the H200; the emulation is slow throughout).
double deadline_of(const TuningOptions& options, double fp32_ms) {
    return std::max(options.hang_seconds, 20.0 * (1 + options.repeats) * fp32_ms * 1e-3);
}
}  // namespace

TuningReport tune_defense(GpuDefense& gpu, const model::Defense& defense, const std::vector<TuningCandidate>& candidates,
                          const TuningOptions& options) {
    PIN_CHECK(defense.kind() == model::DefenseKind::PIN && defense.agent() && defense.basis(), "tune_defense: the GPU runs the PIN defense only");
    PIN_CHECK(options.batch >= 1 && options.repeats >= 1, "tune_defense: batch and repeats must be at least 1");
    PIN_CHECK(gpu.eigenvectors() == defense.basis()->count(), "tune_defense: the GPU defense is not this defense's");
    const KernelSettingsScope restore;
    TuningReport report;
    report.device = device_name();
    report.batch = options.batch;
    const int64_t B = options.batch, N = gpu.eigenvectors(), D = defense.basis()->mean().numel();
    const std::vector<float> x = synthetic_faces(B, D, defense.basis()->mean().data());
    DeviceBuffer gx(x.size()), gp(static_cast<size_t>(B * N)), gq(static_cast<size_t>(B * N)), gy(static_cast<size_t>(B * D));
    gx.upload(x.data(), x.size());
    struct Outputs {
        std::vector<float> p, q, y;
    };
    auto forward = [&] {
        gpu.forward(gx.data(), B, 1, 0, gp.data(), gq.data(), gy.data());
        synchronize_stream("tune_defense");
    };
    auto outputs = [&] {
        Outputs o{std::vector<float>(static_cast<size_t>(B * N)), std::vector<float>(static_cast<size_t>(B * N)),
                  std::vector<float>(static_cast<size_t>(B * D))};
        gp.download(o.p.data(), o.p.size());
        gq.download(o.q.data(), o.q.size());
        gy.download(o.y.data(), o.y.size());
        return o;
    };
    Watchdog watchdog(on_hang_of(options, candidates));
    fp32_settings().apply();
    watchdog.arm("the fp32 forward", options.hang_seconds);
    forward();  // packs its weights
    report.fp32_ms = 1e3 * seconds_of(forward);
    watchdog.disarm();
    const Outputs ref = outputs();
    try_candidates(report, TuningTarget::DefenseForward, candidates, options, watchdog, deadline_of(options, report.fp32_ms), [&] {
        forward();
        const Outputs o = outputs();
        return compare_with_fp32(o.p, o.q, o.y, ref.p, ref.q, ref.y, B, options);
    }, forward);
    return report;
}

TuningResult compare_training_with_fp32(const TrainingStepOutputs& got, const TrainingStepOutputs& ref, const TuningOptions& options) {
    PIN_CHECK(got.names == ref.names && got.gradients.size() == ref.gradients.size() && got.names.size() == got.gradients.size(),
              "compare_training_with_fp32: different tensors");
    TuningResult r;
    r.target = TuningTarget::TrainingStep;
    for (size_t k = 0; k < got.gradients.size(); ++k) {
        const std::vector<float>& g = got.gradients[k];
        const std::vector<float>& h = ref.gradients[k];
        PIN_CHECK(g.size() == h.size(), "compare_training_with_fp32: ", got.names[k], " differs in size");
        double diff = 0, norm = 0;
        for (size_t i = 0; i < g.size(); ++i) {
            const double d = static_cast<double>(g[i]) - h[i];
            diff += d * d, norm += static_cast<double>(h[i]) * h[i];
        }
        // A NaN anywhere makes diff NaN: it fails below, as infinity does.
        const double e = norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
        if (!std::isnan(r.gradient_error) && (std::isnan(e) || e > r.gradient_error || r.furthest_tensor.empty()))
            r.gradient_error = e, r.furthest_tensor = got.names[k];
    }
    auto relative = [](double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-30); };
    const double norm_error = relative(got.grad_norm, ref.grad_norm), cost_error = relative(got.mean_cost, ref.mean_cost);
    if (!(r.gradient_error <= options.gradient_tolerance))
        r.why = "the gradient of " + r.furthest_tensor + " differs from the fp32 step's by " + number(r.gradient_error) +
                " of its norm (tolerance " + number(options.gradient_tolerance) + ")";
    else if (!(norm_error <= options.norm_tolerance))
        r.why = "the gradient's norm differs from the fp32 step's by " + number(norm_error) + " of it (tolerance " +
                number(options.norm_tolerance) + ")";
    else if (!(cost_error <= options.cost_tolerance))
        r.why = "the mean cost differs from the fp32 step's by " + number(cost_error) + " of it (tolerance " +
                number(options.cost_tolerance) + ")";
    r.accepted = r.why.empty();
    return r;
}

TuningReport tune_training_step(GpuTrainingBackend& backend, model::Agent& agent, const nn::SGD& sgd,
                                const train::TrainerOptions& trainer_options, const std::vector<TuningCandidate>& candidates,
                                const TuningOptions& options) {
    PIN_CHECK(options.batch >= 1 && options.repeats >= 1, "tune_training_step: batch and repeats must be at least 1");
    const KernelSettingsScope restore;
    TuningReport report;
    report.device = device_name();
    report.batch = options.batch;
    const int64_t B = options.batch, D = 112 * 112;
    Tensor x = Tensor::empty({B, 1, 112, 112}, Layout::NHWC);
    const std::vector<float> faces = synthetic_faces(B, D, nullptr);
    std::copy(faces.begin(), faces.end(), x.data());
    std::vector<nn::NamedParameter> named;  // the trained tensors, in BackendTrainer's order
    agent.esn().collect_parameters("esn.", named);
    agent.head().collect_parameters("head.", named);
    std::unique_ptr<GpuTrainer> trainer;
    // One step of a fresh trainer from `agent`'s weights (the same for every configuration), and
    // what it computed.
    auto first_step = [&] {
        trainer = std::make_unique<GpuTrainer>(backend, agent, sgd, trainer_options);
        const train::StepStats s = trainer->step(x, 0);
        TrainingStepOutputs out;
        out.grad_norm = s.grad_norm, out.mean_cost = s.mean_cost;
        for (const nn::NamedParameter& p : named) out.names.push_back(p.name), out.gradients.push_back(trainer->gradient(p.name));
        return out;
    };
    auto step = [&] {
        trainer->step(x, 0);
        synchronize_stream("tune_training_step");
    };
    Watchdog watchdog(on_hang_of(options, candidates));
    fp32_settings().apply();
    watchdog.arm("the fp32 training step", options.hang_seconds);
    const TrainingStepOutputs ref = first_step();  // packs the DAE's weights
    report.fp32_ms = 1e3 * seconds_of(step);
    watchdog.disarm();
    try_candidates(report, TuningTarget::TrainingStep, candidates, options, watchdog, deadline_of(options, report.fp32_ms),
                   [&] { return compare_training_with_fp32(first_step(), ref, options); }, step);
    return report;
}

Watchdog::Watchdog(std::function<void(const std::string&)> on_hang) : on_hang_(std::move(on_hang)), thread_([this] { run(); }) {}
Watchdog::~Watchdog() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
    }
    changed_.notify_all();
    thread_.join();
}
void Watchdog::arm(const std::string& what, double seconds) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        what_ = what;
        armed_ = true;
        ++generation_;
        deadline_ = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(seconds));
    }
    changed_.notify_all();
}
void Watchdog::disarm() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        armed_ = false;
        ++generation_;
    }
    changed_.notify_all();
}
void Watchdog::run() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stopping_) {
        if (!armed_) {
            changed_.wait(lock, [&] { return stopping_ || armed_; });
            continue;
        }
        const uint64_t generation = generation_;
        if (changed_.wait_until(lock, deadline_, [&] { return stopping_ || generation_ != generation; })) continue;
        // The deadline passed with the same arm in force: report it once (the call may not return).
        armed_ = false;
        const std::string what = what_;
        lock.unlock();
        on_hang_(what);
        lock.lock();
    }
}

}  // namespace pin::cuda
