// pin-bench: speed of pin's CPU kernels and of the whole PIN agent.
//
//   pin-bench peak     [--threads T]                        measured FMA peak (GFLOP/s)
//   pin-bench layers   [--batch B] [--threads T] [--backward] per-layer GFLOP/s, fraction of peak
//   pin-bench forward  [--batch B] [--threads T] [--iters K] whole agent forward, images/s
// Every command takes --json (one JSON object on stdout; the table goes to stderr).
// FLOPs are counted as 2 x the multiply-adds of the direct algorithm, the yardstick of issue 2.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "pin/model/defense.hpp"
#include "pin/train/trainer.hpp"
#include "pin/pin.hpp"

using namespace pin;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
    std::string command;
    int batch = 16;
    int threads = 2;
    int iters = 3;
    int faces = 1000;
    int masks = 30;
    int rounds = 1;
    bool json = false;
    bool backward = false;
    std::string filter;
    std::string algorithm = "auto";
};

void usage(std::FILE* f) {
    std::fprintf(f,
                 "usage: pin-bench <peak|layers|forward|defend|train> [options]\n"
                 "  peak                 measure the FMA peak of this machine (GFLOP/s, fp32)\n"
                 "  layers               GFLOP/s of every PIN layer shape, forward (and --backward)\n"
                 "  forward              whole agent forward: DAE twice + ESN + head + sampling + projection\n"
                 "  defend               the pin::Defense pipeline (what `pin defend` runs) on --faces faces\n"
                 "  train                full policy-gradient training steps (DAE forward, agent forward and\n"
                 "                       backward, --masks masks per image with O(N) costs, SGD update)\n"
                 "options:\n"
                 "  --batch B            images per batch (default 16)\n"
                 "  --threads T          CPU threads (default 2)\n"
                 "  --iters K            timed repetitions after one warm-up (default 3)\n"
                 "  --faces F            defend: faces to defend (default 1000)\n"
                 "  --masks K            train: masks per image (default 30)\n"
                 "  --backward           layers: also time both backward passes of each convolution\n"
                 "  --rounds R           layers: sweep all layers R times, keep each cell's best time and\n"
                 "                       the highest peak of the run (a shared machine's slow moments)\n"
                 "  --filter TEXT        layers: only the layers whose name contains TEXT\n"
                 "  --algorithm A        layers: 3x3 kernels through auto (default), direct or winograd\n"
                 "  --json               print one JSON object with the results on stdout\n"
                 "  -h, --help           this text\n");
}

Args parse(int argc, char** argv) {
    Args a;
    if (argc < 2) {
        usage(stderr);
        std::exit(2);
    }
    for (int i = 1; i < argc; ++i) {
        const std::string s = argv[i];
        auto value = [&](const char* flag) {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "pin-bench: %s needs a value\n", flag);
                std::exit(2);
            }
            const std::string v = argv[++i];
            char* end = nullptr;
            const long x = std::strtol(v.c_str(), &end, 10);
            if (*end != '\0' || x < 1 || x > 1 << 20) {
                std::fprintf(stderr, "pin-bench: %s expects a positive integer, got '%s'\n", flag, v.c_str());
                std::exit(2);
            }
            return static_cast<int>(x);
        };
        if (s == "-h" || s == "--help") {
            usage(stdout);
            std::exit(0);
        } else if (s == "--batch") a.batch = value("--batch");
        else if (s == "--threads") a.threads = value("--threads");
        else if (s == "--iters") a.iters = value("--iters");
        else if (s == "--faces") a.faces = value("--faces");
        else if (s == "--masks") a.masks = value("--masks");
        else if (s == "--rounds") a.rounds = value("--rounds");
        else if (s == "--json") a.json = true;
        else if (s == "--backward") a.backward = true;
        else if (s == "--filter") {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "pin-bench: --filter needs a value\n");
                std::exit(2);
            }
            a.filter = argv[++i];
        } else if (s == "--algorithm") {
            if (i + 1 >= argc || (std::string(argv[i + 1]) != "auto" && std::string(argv[i + 1]) != "direct" &&
                                  std::string(argv[i + 1]) != "winograd")) {
                std::fprintf(stderr, "pin-bench: --algorithm needs one of auto, direct, winograd\n");
                std::exit(2);
            }
            a.algorithm = argv[++i];
        }
        else if (a.command.empty() && s[0] != '-') a.command = s;
        else {
            std::fprintf(stderr, "pin-bench: unknown argument '%s' (see --help)\n", s.c_str());
            std::exit(2);
        }
    }
    return a;
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Best of `reps` runs of f (after one warm-up): the least disturbed measurement.
double best_time(int reps, const std::function<void()>& f) {
    f();
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = Clock::now();
        f();
        best = std::min(best, seconds_since(t0));
    }
    return best;
}

double peak_rss_mib() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_maxrss) / 1024.0;
}

// ---- FMA peak: independent accumulator chains, one set per thread ------------------------------
double measure_peak(int threads, int64_t iters = 20'000'000) {
    using simd::VecF;
    constexpr int kChains = 12;
    std::vector<float> sink(static_cast<size_t>(threads) * VecF::kLanes);
    auto run = [&] {
        parallel_for(threads, [&](int64_t t) {
            VecF acc[kChains];
            for (int k = 0; k < kChains; ++k) acc[k] = VecF::broadcast(0.001f * static_cast<float>(k + t));
            const VecF m = VecF::broadcast(0.999999f), c = VecF::broadcast(1e-7f);
            for (int64_t i = 0; i < iters; ++i)
                for (int k = 0; k < kChains; ++k) acc[k] = fma(acc[k], m, c);
            VecF s = VecF::zero();
            for (int k = 0; k < kChains; ++k) s = s + acc[k];
            s.store(sink.data() + t * VecF::kLanes);
        });
    };
    const double t = best_time(2, run);
    return 2.0 * VecF::kLanes * kChains * static_cast<double>(iters) * threads / t / 1e9;
}

// ---- the PIN layer shapes ----------------------------------------------------------------------
struct LayerShape {
    std::string name;
    bool transposed;
    int64_t cin, cout, size, kernel, stride;  // input size (square)
    int count;                                // times it runs in one agent forward
    int64_t out_size() const {
        if (transposed) return size * 2;
        const int64_t pad = kernel / 2;
        return (size + 2 * pad - kernel) / stride + 1;
    }
    double macs_per_image() const {
        const int64_t o = out_size();
        return transposed ? static_cast<double>(cin) * cout * kernel * kernel * size * size
                          : static_cast<double>(cin) * cout * kernel * kernel * o * o;
    }
};

std::vector<LayerShape> pin_layers() {
    return {
        // DAE encoder (runs twice), no shortcuts
        {"dae.enc1.conv1 1->64 3x3 @112", false, 1, 64, 112, 3, 1, 2},
        {"dae.enc1.conv2 64->64 3x3/2 @112", false, 64, 64, 112, 3, 2, 2},
        {"dae.enc2.conv1 64->128 3x3 @56", false, 64, 128, 56, 3, 1, 2},
        {"dae.enc2.conv2 128->128 3x3/2 @56", false, 128, 128, 56, 3, 2, 2},
        {"dae.enc3.conv1 128->256 3x3 @28", false, 128, 256, 28, 3, 1, 2},
        {"dae.enc3.conv2 256->256 3x3/2 @28", false, 256, 256, 28, 3, 2, 2},
        // DAE decoder (runs twice)
        {"dae.dec1.up 256->256 T3x3/2 @14", true, 256, 256, 14, 3, 2, 2},
        {"dae.dec1.conv 256->128 3x3 @28", false, 256, 128, 28, 3, 1, 2},
        {"dae.dec2.up 128->128 T3x3/2 @28", true, 128, 128, 28, 3, 2, 2},
        {"dae.dec2.conv 128->64 3x3 @56", false, 128, 64, 56, 3, 1, 2},
        {"dae.dec3.up 64->64 T3x3/2 @56", true, 64, 64, 56, 3, 2, 2},
        {"dae.dec3.conv 64->1 3x3 @112", false, 64, 1, 112, 3, 1, 2},
        // ESN
        {"esn.in 1->64 3x3 @112", false, 1, 64, 112, 3, 1, 1},
        {"esn.b1.conv1 64->64 3x3 @112", false, 64, 64, 112, 3, 1, 1},
        {"esn.b1.conv2 64->64 3x3/2 @112", false, 64, 64, 112, 3, 2, 1},
        {"esn.b1.short 64->64 1x1/2 @112", false, 64, 64, 112, 1, 2, 1},
        {"esn.b2.conv 64->64 3x3 @56", false, 64, 64, 56, 3, 1, 2},
        {"esn.b2.short 64->64 1x1 @56", false, 64, 64, 56, 1, 1, 1},
        {"esn.b3.conv1 64->128 3x3 @56", false, 64, 128, 56, 3, 1, 1},
        {"esn.b3.conv2 128->128 3x3/2 @56", false, 128, 128, 56, 3, 2, 1},
        {"esn.b3.short 64->128 1x1/2 @56", false, 64, 128, 56, 1, 2, 1},
        {"esn.b4.conv 128->128 3x3 @28", false, 128, 128, 28, 3, 1, 2},
        {"esn.b4.short 128->128 1x1 @28", false, 128, 128, 28, 1, 1, 1},
        {"esn.b5.conv1 128->256 3x3 @28", false, 128, 256, 28, 3, 1, 1},
        {"esn.b5.conv2 256->256 3x3/2 @28", false, 256, 256, 28, 3, 2, 1},
        {"esn.b5.short 128->256 1x1/2 @28", false, 128, 256, 28, 1, 2, 1},
        {"esn.b6.conv 256->256 3x3 @14", false, 256, 256, 14, 3, 1, 2},
        {"esn.b6.short 256->256 1x1 @14", false, 256, 256, 14, 1, 1, 1},
        {"esn.b7.conv1 256->512 3x3 @14", false, 256, 512, 14, 3, 1, 1},
        {"esn.b7.conv2 512->512 3x3/2 @14", false, 512, 512, 14, 3, 2, 1},
        {"esn.b7.short 256->512 1x1/2 @14", false, 256, 512, 14, 1, 2, 1},
        {"esn.b8.conv 512->512 3x3 @7", false, 512, 512, 7, 3, 1, 2},
        {"esn.b8.short 512->512 1x1 @7", false, 512, 512, 7, 1, 1, 1},
    };
}

constexpr int64_t kHeadMacs = 25088LL * 512 + 512LL * 2500;
constexpr int64_t kPixels = 112 * 112;
constexpr int64_t kEigen = 2500;

double agent_macs_per_image() {
    double m = 0;
    for (const auto& l : pin_layers()) m += l.macs_per_image() * l.count;
    return m + kHeadMacs + 2.0 * kPixels * kEigen;
}

Tensor random_tensor(const Shape& s, uint64_t seed, float scale, Layout layout = Layout::NCHW) {
    Tensor t = Tensor::empty(s, layout);
    const PhiloxStream rng(seed, 1);
    for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = scale * (2.0f * rng.uniform(static_cast<uint64_t>(i)) - 1.0f);
    return t;
}

int cmd_peak(const Args& a) {
    set_num_threads(a.threads);
    const double peak = measure_peak(a.threads);
    std::fprintf(stderr, "FMA peak (%s, %d threads): %.1f GFLOP/s\n", simd::VecF::kName, a.threads, peak);
    if (a.json) std::cout << nlohmann::json{{"threads", a.threads}, {"simd", simd::VecF::kName}, {"peak_gflops", peak}} << "\n";
    return 0;
}

// One (layer, pass) cell timed as pairs: a short FMA-peak measurement right before each call. On
// a shared VM whose speed swings by a factor of two for minutes at a time, the ratio of a call's
// GFLOP/s to the peak measured a few milliseconds earlier is far steadier than either alone; the
// cell reports the median of those ratios, and its best time for the GFLOP/s.
struct PairedCell {
    double best = 1e30;
    std::vector<double> ratios;
    void time(int reps, double flops, int threads, const std::function<void()>& f) {
        f();  // warm-up: packing buffers, pooled allocations
        for (int r = 0; r < reps; ++r) {
            const double pk = measure_peak(threads, 1'000'000);
            const auto t0 = Clock::now();
            f();
            const double t = seconds_since(t0);
            best = std::min(best, t);
            ratios.push_back(flops / t / 1e9 / pk);
        }
    }
    double median_fraction() const {
        std::vector<double> r = ratios;
        std::sort(r.begin(), r.end());
        const size_t n = r.size();
        return n == 0 ? 0.0 : (n % 2 ? r[n / 2] : 0.5 * (r[n / 2 - 1] + r[n / 2]));
    }
};

int cmd_layers(const Args& a) {
    set_num_threads(a.threads);
    double peak = measure_peak(a.threads);
    std::fprintf(stderr, "FMA peak: %.1f GFLOP/s (%s, %d threads); batch %d; %d round%s of %d; 3x3 kernels: %s\n", peak,
                 simd::VecF::kName, a.threads, a.batch, a.rounds, a.rounds > 1 ? "s" : "", a.iters, a.algorithm.c_str());
    std::fprintf(stderr, "GFLOP/s count the direct convolution's multiply-adds whatever the algorithm\n");
    // Rounds sweep all layers again minutes later, so one slow phase does not decide a cell.
    struct Cell {
        PairedCell f, i, w;
    };
    std::vector<LayerShape> layers;
    for (const auto& l : pin_layers())
        if (a.filter.empty() || l.name.find(a.filter) != std::string::npos) layers.push_back(l);
    if (layers.empty()) {
        std::fprintf(stderr, "pin-bench layers: no layer name contains '%s' (names: pin-bench layers --iters 1)\n", a.filter.c_str());
        return 2;
    }
    std::vector<Cell> cells(layers.size());
    for (int round = 0; round < a.rounds; ++round) {
        if (a.rounds > 1) std::fprintf(stderr, "round %d/%d\n", round + 1, a.rounds);
        uint64_t seed = 1;
        for (size_t li = 0; li < layers.size(); ++li) {
            const LayerShape& l = layers[li];
            Cell& c = cells[li];
            const int64_t B = a.batch, o = l.out_size();
            const double flops = 2.0 * l.macs_per_image() * B;
            const Tensor x = random_tensor({B, l.cin, l.size, l.size}, seed++, 1.0f, Layout::NHWC);
            Tensor y = Tensor::empty({B, l.cout, o, o}, Layout::NHWC);
            const Tensor dy = random_tensor(y.shape(), seed++, 1.0f, Layout::NHWC);
            Tensor dx = Tensor::empty(x.shape(), Layout::NHWC);
            peak = std::max(peak, measure_peak(a.threads, 3'000'000));
            const Tensor w = random_tensor(l.transposed ? Shape{l.cin, l.cout, l.kernel, l.kernel} : Shape{l.cout, l.cin, l.kernel, l.kernel},
                                           seed++, 0.05f);
            Tensor dw = Tensor::empty(w.shape());
            // A forced algorithm applies to the 3x3 kernels (the 1x1 shortcuts have one form).
            const cpu::ConvAlgorithm algo = l.kernel != 3 || a.algorithm == "auto" ? cpu::ConvAlgorithm::automatic
                                            : a.algorithm == "direct"              ? cpu::ConvAlgorithm::direct
                                                                                   : cpu::ConvAlgorithm::winograd;
            const cpu::ConvTranspose2dParams tp{l.kernel, 2, 1, 1, algo};
            const cpu::Conv2dParams cp{l.kernel, l.stride, l.kernel / 2, algo};
            c.f.time(a.iters, flops, a.threads, [&] {
                l.transposed ? cpu::conv_transpose2d_forward(x, w, y, tp) : cpu::conv2d_forward(x, w, y, cp);
            });
            if (!a.backward) continue;
            c.i.time(a.iters, flops, a.threads, [&] {
                l.transposed ? cpu::conv_transpose2d_backward_input(dy, w, dx, tp) : cpu::conv2d_backward_input(dy, w, dx, cp);
            });
            c.w.time(a.iters, flops, a.threads, [&] {
                l.transposed ? cpu::conv_transpose2d_backward_weight(x, dy, dw, tp) : cpu::conv2d_backward_weight(x, dy, dw, cp);
            });
        }
    }
    std::fprintf(stderr, "highest FMA peak measured in the run: %.1f GFLOP/s\n", peak);
    std::fprintf(stderr, "GF/s: best time; %%: median over the calls of GFLOP/s / the peak measured just before\n");
    std::fprintf(stderr, "%-36s %9s %7s", "layer", "fwd GF/s", "peak");
    if (a.backward) std::fprintf(stderr, " %9s %7s %9s %7s", "bwd-in", "peak", "bwd-w", "peak");
    std::fprintf(stderr, "\n");
    nlohmann::json rows = nlohmann::json::array();
    for (size_t li = 0; li < layers.size(); ++li) {
        const LayerShape& l = layers[li];
        const Cell& c = cells[li];
        const double flops = 2.0 * l.macs_per_image() * a.batch;
        const double gf = flops / c.f.best / 1e9;
        std::fprintf(stderr, "%-36s %9.1f %6.1f%%", l.name.c_str(), gf, 100 * c.f.median_fraction());
        nlohmann::json row{{"layer", l.name},
                           {"forward_gflops", gf},
                           {"forward_peak_fraction", c.f.median_fraction()},
                           {"forward_ms", c.f.best * 1e3},
                           {"forward_best_over_highest_peak", gf / peak}};
        if (a.backward) {
            const double gi = flops / c.i.best / 1e9, gw = flops / c.w.best / 1e9;
            std::fprintf(stderr, " %9.1f %6.1f%% %9.1f %6.1f%%", gi, 100 * c.i.median_fraction(), gw,
                         100 * c.w.median_fraction());
            row["backward_input_gflops"] = gi;
            row["backward_input_peak_fraction"] = c.i.median_fraction();
            row["backward_input_best_over_highest_peak"] = gi / peak;
            row["backward_weight_gflops"] = gw;
            row["backward_weight_peak_fraction"] = c.w.median_fraction();
            row["backward_weight_best_over_highest_peak"] = gw / peak;
        }
        std::fprintf(stderr, "\n");
        rows.push_back(row);
    }
    // Issue 2's bar: 3x3 convolutions with 64+ input and output channels at 60 % of the peak, each
    // pass, by both statistics (the paired median is the stricter one on a restless machine).
    nlohmann::json below_paired = nlohmann::json::array(), below_best = nlohmann::json::array();
    int bar_cells = 0;
    for (size_t li = 0; li < layers.size(); ++li) {
        const LayerShape& l = layers[li];
        if (l.kernel != 3 || l.cin < 64 || l.cout < 64) continue;
        const Cell& c = cells[li];
        const double flops = 2.0 * l.macs_per_image() * a.batch;
        const std::pair<const char*, const PairedCell*> passes[] = {{"fwd", &c.f}, {"bwd-in", &c.i}, {"bwd-w", &c.w}};
        for (const auto& [pass, cell] : passes) {
            if (!a.backward && cell != &c.f) continue;
            ++bar_cells;
            const std::string name = l.name.substr(0, l.name.find(' ')) + " " + pass;
            if (cell->median_fraction() < 0.6) below_paired.push_back(name);
            if (flops / cell->best / 1e9 / peak < 0.6) below_best.push_back(name);
        }
    }
    if (bar_cells > 0)
        std::fprintf(stderr, "3x3 convolutions with 64+ channels: %d cells; below 60 %% of the peak: %zu by the paired median, %zu by best GF/s / highest peak\n",
                     bar_cells, below_paired.size(), below_best.size());
    if (a.json)
        std::cout << nlohmann::json{{"threads", a.threads}, {"batch", a.batch}, {"simd", simd::VecF::kName},
                                    {"rounds", a.rounds}, {"iters", a.iters}, {"peak_gflops", peak},
                                    {"algorithm", a.algorithm},
                                    {"peak_fraction_method", "median over calls of GFLOP/s / FMA peak measured just before the call"},
                                    {"layers", rows},
                                    {"bar_60_percent", {{"cells", bar_cells}, {"below_by_paired_median", below_paired},
                                                        {"below_by_best_over_highest_peak", below_best}}}}
                  << "\n";
    return 0;
}

int cmd_forward(const Args& a) {
    set_num_threads(a.threads);
    const int64_t B = a.batch;
    model::Agent agent(kEigen);
    agent.reset_parameters(1234);
    // Timing only: a random (not orthonormal) basis and mean of the right size.
    const Tensor basis = random_tensor({kPixels, kEigen}, 77, 0.01f);
    const Tensor mean = random_tensor({kPixels}, 78, 0.1f);
    const Tensor x = random_tensor({B, 1, 112, 112}, 79, 1.0f, Layout::NHWC);
    Tensor defended = Tensor::empty({B, 1, 112, 112}, Layout::NHWC);
    std::map<std::string, double> stage;
    uint64_t batch_index = 0;
    auto run = [&] {
        auto t0 = Clock::now();
        const Tensor d = agent.dae().forward(x);
        stage["dae"] += seconds_since(t0);
        t0 = Clock::now();
        const Tensor f = agent.esn().forward(d);
        stage["esn"] += seconds_since(t0);
        t0 = Clock::now();
        const Tensor p = agent.head().forward(f);
        stage["head"] += seconds_since(t0);
        t0 = Clock::now();
        Tensor q = Tensor::empty(p.shape());
        const PhiloxStream rng(42, batch_index++);
        for (int64_t i = 0; i < q.numel(); ++i) q.data()[i] = rng.bernoulli(static_cast<uint64_t>(i), p.data()[i]);
        cpu::project_masked(basis.data(), mean.data(), kPixels, kEigen, x.data(), q.data(), B, defended.data());
        stage["sample_project"] += seconds_since(t0);
    };
    run();  // warm-up
    stage.clear();
    const auto t0 = Clock::now();
    for (int i = 0; i < a.iters; ++i) run();
    const double t = seconds_since(t0);
    const double ips = static_cast<double>(B) * a.iters / t;
    const double gflops = 2.0 * agent_macs_per_image() * ips / 1e9;
    std::fprintf(stderr, "agent forward, batch %lld, %d threads (%s): %.2f images/s, %.1f GFLOP/s, peak RSS %.0f MiB\n",
                 static_cast<long long>(B), a.threads, simd::VecF::kName, ips, gflops, peak_rss_mib());
    for (const auto& [name, s] : stage) std::fprintf(stderr, "  %-16s %8.1f ms/batch\n", name.c_str(), 1e3 * s / a.iters);
    if (a.json) {
        nlohmann::json stages;
        for (const auto& [name, s] : stage) stages[name + "_ms"] = 1e3 * s / a.iters;
        std::cout << nlohmann::json{{"batch", B}, {"threads", a.threads}, {"simd", simd::VecF::kName},
                                    {"images_per_second", ips}, {"gflops", gflops},
                                    {"gflop_per_image", 2.0 * agent_macs_per_image() / 1e9},
                                    {"peak_rss_mib", peak_rss_mib()}, {"stages", stages}}
                  << "\n";
    }
    return 0;
}


int cmd_defend(const Args& a) {
    set_num_threads(a.threads);
    const int64_t B = a.batch, F = a.faces;
    auto agent = std::make_shared<model::Agent>(kEigen);
    agent->reset_parameters(1234);
    // Timing only: a random basis of the right size (the projection's cost does not depend on it).
    auto basis = std::make_shared<model::EigenBasis>(
        model::EigenBasis::from_tensors(random_tensor({kPixels, kEigen}, 77, 0.01f), random_tensor({kPixels}, 78, 0.1f)));
    const model::Defense defense = model::Defense::from_parts(basis, agent, model::SamplingMode::Bernoulli, 42);
    const Tensor faces = random_tensor({F, 1, 112, 112}, 79, 1.0f, Layout::NHWC);
    (void)defense.inactivate(faces.slice(0, std::min<int64_t>(B, F)), 0);  // warm-up
    const auto t0 = Clock::now();
    double kept = 0;
    for (int64_t b0 = 0; b0 < F; b0 += B) {
        const model::DefenseOutput out = defense.inactivate(faces.slice(b0, std::min(F, b0 + B)), static_cast<uint64_t>(b0));
        kept += cpu::reduce_sum(out.q);
    }
    const double t = seconds_since(t0);
    const double ips = static_cast<double>(F) / t;
    std::fprintf(stderr, "pin::Defense on %lld faces, batch %lld, %d threads (%s): %.2f images/s, peak RSS %.0f MiB\n",
                 static_cast<long long>(F), static_cast<long long>(B), a.threads, simd::VecF::kName, ips, peak_rss_mib());
    if (a.json)
        std::cout << nlohmann::json{{"faces", F}, {"batch", B}, {"threads", a.threads}, {"images_per_second", ips},
                                    {"seconds", t}, {"mean_kept", kept / static_cast<double>(F)}, {"peak_rss_mib", peak_rss_mib()}}
                  << "\n";
    return 0;
}

int cmd_train(const Args& a) {
    set_num_threads(a.threads);
    const int64_t B = a.batch;
    auto agent = std::make_shared<model::Agent>(kEigen);
    agent->reset_parameters(1234);
    // Timing only: a random basis of the right size.
    auto basis = std::make_shared<const model::EigenBasis>(
        model::EigenBasis::from_tensors(random_tensor({kPixels, kEigen}, 77, 0.01f), random_tensor({kPixels}, 78, 0.1f)));
    train::TrainerOptions opt;
    opt.masks = a.masks;
    train::PolicyGradientTrainer trainer(agent, basis, opt);
    const Tensor x = random_tensor({B, 1, 112, 112}, 79, 1.0f, Layout::NHWC);
    trainer.step(x, 0);  // warm-up
    const auto t0 = Clock::now();
    train::StepStats stats;
    for (int i = 0; i < a.iters; ++i) stats = trainer.step(x, static_cast<uint64_t>((i + 1) * B));
    const double t = seconds_since(t0);
    const double ips = static_cast<double>(B) * a.iters / t;
    std::fprintf(stderr, "training steps, batch %lld, %d masks, %d threads (%s): %.2f images/s, peak RSS %.0f MiB\n",
                 static_cast<long long>(B), a.masks, a.threads, simd::VecF::kName, ips, peak_rss_mib());
    if (a.json)
        std::cout << nlohmann::json{{"batch", B}, {"masks", a.masks}, {"threads", a.threads}, {"images_per_second", ips},
                                    {"mean_cost", stats.mean_cost}, {"mean_kept", stats.mean_kept},
                                    {"peak_rss_mib", peak_rss_mib()}}
                  << "\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    const Args a = parse(argc, argv);
    try {
        if (a.command == "peak") return cmd_peak(a);
        if (a.command == "layers") return cmd_layers(a);
        if (a.command == "forward") return cmd_forward(a);
        if (a.command == "defend") return cmd_defend(a);
        if (a.command == "train") return cmd_train(a);
        std::fprintf(stderr, "pin-bench: unknown command '%s' (see --help)\n", a.command.c_str());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "pin-bench: %s\n", e.what());
        return 1;
    }
}
