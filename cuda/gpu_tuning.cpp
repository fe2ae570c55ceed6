// cuda/gpu_tuning.cpp - tune_defense and its watchdog (gpu_tuning.hpp).
#include "gpu_tuning.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "gpu_defense.hpp"
#include "pin/core/error.hpp"

namespace pin::cuda {

std::vector<TuningCandidate> bf16_defense_candidates(const KernelSettings& base) {
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
    const GatherCaching l2 = GatherCaching::L2, l1 = GatherCaching::L1;
    std::vector<TuningCandidate> c = {{"256 x 64 tile", with(A::Cols64, P::WaitEachSlice, l2)},
                                      {"256 x 64 tile, L1", with(A::Cols64, P::WaitEachSlice, l1)},
                                      {"256 x 128 tile", with(A::Cols128, P::WaitEachSlice, l2)}};
    if (!wgmma_supported()) return c;
    const std::vector<TuningCandidate> wgmma = {
        {"wgmma wait, L1", with(A::Wgmma, P::WaitEachSlice, l1)},
        {"wgmma in flight, L1", with(A::Wgmma, P::OneSliceInFlight, l1)},
        {"wgmma ws, L1", with(A::Wgmma, P::WarpSpecialized, l1)},
        {"wgmma ping-pong, L1", with(A::Wgmma, P::PingPong, l1)},
        {"wgmma ws, tensor copies", with(A::Wgmma, P::WarpSpecialized, l1, WgmmaLoads::TensorCopies)},
        {"wgmma ping-pong, tensor copies", with(A::Wgmma, P::PingPong, l1, WgmmaLoads::TensorCopies)},
        {"wgmma ws, tensor copies, N 256", with(A::Wgmma, P::WarpSpecialized, l1, WgmmaLoads::TensorCopies, WgmmaMmaN::N256)},
        {"wgmma ping-pong, tensor copies, N 256", with(A::Wgmma, P::PingPong, l1, WgmmaLoads::TensorCopies, WgmmaMmaN::N256)}};
    c.insert(c.end(), wgmma.begin(), wgmma.end());
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

TuningReport tune_defense(const model::Defense& defense, const std::vector<TuningCandidate>& candidates, const TuningOptions& options) {
    PIN_CHECK(defense.kind() == model::DefenseKind::PIN && defense.agent() && defense.basis(), "tune_defense: the GPU runs the PIN defense only");
    PIN_CHECK(options.batch >= 1 && options.repeats >= 1, "tune_defense: batch and repeats must be at least 1");
    const KernelSettingsScope restore;
    TuningReport report;
    report.device = device_name();
    report.batch = options.batch;
    GpuDefense gpu(*defense.agent(), *defense.basis());
    const int64_t B = options.batch, N = gpu.eigenvectors(), D = defense.basis()->mean().numel();
    // The mean face plus a fixed pattern per image, in [-1, 1]: what a face looks like to the
    // network matters little to the kernels' speed, and the comparison needs only the same input.
    std::vector<float> x(static_cast<size_t>(B * D));
    const float* mean = defense.basis()->mean().data();
    for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < D; ++i)
            x[static_cast<size_t>(b * D + i)] = std::clamp(mean[i] + 0.25f * std::sin(0.0013f * static_cast<float>(i + 977 * b)), -1.0f, 1.0f);
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
    auto seconds_of = [](auto f) {
        const auto t0 = std::chrono::steady_clock::now();
        f();
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    Watchdog watchdog(options.on_hang ? options.on_hang : [](const std::string& what) {
        std::fprintf(stderr, "\npin: GPU tuning: %s did not finish; its kernels may never end on this GPU (run without "
                             "tuning, or choose another configuration)\n", what.c_str());
        std::fflush(stderr);
        std::_Exit(3);
    });
    // The reference: fp32 arithmetic and activations with the generic gather (the CPU's results to ~1e-6).
    KernelSettings fp32 = KernelSettings::current();
    fp32.math = MathMode::FP32, fp32.gather = GatherMode::Generic, fp32.storage = ActivationStorage::FP32;
    fp32.apply();
    watchdog.arm("the fp32 forward", options.hang_seconds);
    forward();  // packs its weights
    report.fp32_ms = 1e3 * seconds_of(forward);
    watchdog.disarm();
    const Outputs ref = outputs();
    // A configuration's forwards may take 20 times the fp32 forward's each before they count as hung
    // (every bfloat16 one ran faster than fp32 on the H200; the emulation is slow throughout).
    const double deadline = std::max(options.hang_seconds, 20.0 * (1 + options.repeats) * report.fp32_ms * 1e-3);
    for (const TuningCandidate& c : candidates) {
        TuningResult r;
        try {
            c.settings.apply();
            watchdog.arm("'" + c.name + "'", deadline);
            forward();  // the first forward packs the weights this configuration reads: checked, not timed
            const Outputs o = outputs();
            r = compare_with_fp32(o.p, o.q, o.y, ref.p, ref.q, ref.y, B, options);
            if (r.accepted) {
                double best = INFINITY;
                for (int i = 0; i < options.repeats; ++i) best = std::min(best, seconds_of(forward));
                r.ms = 1e3 * best;
            }
            watchdog.disarm();
        } catch (const std::exception& e) {
            watchdog.disarm();
            r = TuningResult{};
            r.why = e.what();
        }
        r.candidate = c;
        report.results.push_back(r);
        if (r.accepted && (report.chosen < 0 || r.ms < report.results[static_cast<size_t>(report.chosen)].ms))
            report.chosen = static_cast<int64_t>(report.results.size()) - 1;
        if (options.on_result) options.on_result(report.results.back());
    }
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
