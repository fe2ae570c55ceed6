// pin-bench-gpu - times the CUDA kernels on the layer shapes of PIN, the whole defense forward and
// the whole policy-gradient training step (cuda/gpu_trainer.hpp: DAE, ESN + head forward and
// backward, 30 masks per image, the estimator, clipping, SGD).
//   pin-bench-gpu [--batches 64,256,1024] [--iters 5] [--config all|generic-fp32|generic-tf32|generic-bf16|rows-fp32|rows-tf32|vector-bf16|gemm-bf16]
//                 [--no-wgmma] [--no-ws] [--no-tma] [--no-wide] [--no-warm-up]
// --config runs one gather x arithmetic configuration, or (gemm-bf16) the bfloat16 GEMMs of the wgmma
// probe alone (bench/gpu_check.sh runs each in its own process, so a kernel fault in one cannot hide
// the others' timings).
// Prints one JSON line per measurement, then a short table. Random weights and inputs (speed only;
// correctness is tests/test_cuda.cpp).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gpu_defense.hpp"
#include "gpu_trainer.hpp"
#include "ops.cuh"
#include "pin/core/rng.hpp"
#include "rng.cuh"

namespace {
using Clock = std::chrono::steady_clock;

bool g_warm_up = true;  // --no-warm-up clears it
double time_ms(int iters, const std::function<void()>& f) {
    if (g_warm_up) {
        f();  // warm-up (and weight packing caches)
        pin::cuda::synchronize("warm-up");
    }
    const auto t0 = Clock::now();
    for (int i = 0; i < iters; ++i) f();
    pin::cuda::synchronize("timed loop");
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / iters;
}
pin::cuda::DeviceBuffer random_buffer(size_t n, uint64_t seed, float scale = 1.0f) {
    std::vector<float> h(n);
    const pin::PhiloxStream rng(seed, 1);
    for (size_t i = 0; i < n; ++i) h[i] = scale * rng.normal(i);
    pin::cuda::DeviceBuffer d(n);
    d.upload(h.data(), n);
    return d;
}
}  // namespace

int main(int argc, char** argv) {
    // Line-buffered even into a file: gpu_check.sh ends a configuration that overruns its time with
    // `timeout`, and the lines measured until then must not die in the buffer with it.
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    std::vector<int64_t> batches = {64, 256, 1024};
    int iters = 5;
    std::string only = "all";
    // --no-wgmma: leave the warpgroup-MMA kernels out (gpu_check.sh passes it when their GPU tests
    // failed: a kernel that faults would end the process, and the timings after it with it).
    bool no_wgmma = false;
    // --no-ws: leave out the warp-specialized pipelines' timings (ops.cuh WgmmaPipeline::
    // WarpSpecialized and PingPong; gpu_check.sh passes it when the [cuda][ws] tests failed), and
    // with them the tensor copies' and the wide tiles', which only those pipelines run. The
    // pipelines measured on 2026-12-04 (WaitEachSlice, OneSliceInFlight) stay.
    bool no_ws = false;
    // --no-tma: leave out only the timings with tensor copies (ops.cuh WgmmaLoads::TensorCopies;
    // gpu_check.sh passes it when the [cuda][tma] tests failed). They come last in every list, so
    // a fault or a hang there costs no other timing of its process.
    bool no_tma = false;
    // --no-wide: leave out only the timings on the wide m64n256k16 tiles (ops.cuh WgmmaMmaN::N256;
    // gpu_check.sh passes it when the [cuda][wide] tests failed). They come after the tensor
    // copies' in every list, for the same reason.
    bool no_wide = false;
    // --parts: which of a network configuration's measurements to make (layers, defense, training;
    // all by default). gpu_check.sh runs the fast configuration's parts as processes of their own,
    // each with its own time limit, so that a slow or faulting part cannot cost the others theirs.
    std::string parts = "layers,defense,training";
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--iters" && i + 1 < argc) {
            iters = std::atoi(argv[++i]);
        } else if (a == "--no-wgmma") {
            no_wgmma = true;
        } else if (a == "--no-ws") {
            no_ws = no_tma = no_wide = true;
        } else if (a == "--no-tma") {
            no_tma = true;
        } else if (a == "--no-wide") {
            no_wide = true;
        } else if (a == "--no-warm-up") {
            // Time the first runs too (no untimed run before each timing): for the CPU emulation
            // (tests/cli/bench_gpu_check.sh), where times mean nothing and every run is slow.
            g_warm_up = false;
        } else if (a == "--config" && i + 1 < argc) {
            only = argv[++i];
        } else if (a == "--parts" && i + 1 < argc) {
            parts = argv[++i];
        } else if (a == "--batches" && i + 1 < argc) {
            batches.clear();
            for (char* s = argv[++i]; *s;) {
                batches.push_back(std::strtoll(s, &s, 10));
                if (*s == ',') ++s;
            }
        } else {
            std::printf("usage: pin-bench-gpu [--batches 64,256,1024] [--iters 5] [--config all|generic-fp32|generic-tf32|"
                        "generic-bf16|rows-fp32|rows-tf32|vector-bf16|gemm-bf16] [--parts layers,defense,training] [--no-wgmma] "
                        "[--no-ws] [--no-tma] [--no-wide] [--no-warm-up]\n");
            return a == "-h" || a == "--help" ? 0 : 2;
        }
    }
    if (iters < 1) {
        std::fprintf(stderr, "pin-bench-gpu: --iters must be a positive count of timed runs\n");
        return 2;
    }
    const auto want = [&](const std::string& part) { return ("," + parts + ",").find("," + part + ",") != std::string::npos; };
    for (size_t at = 0; at <= parts.size();) {
        const size_t end = std::min(parts.find(',', at), parts.size());
        const std::string part = parts.substr(at, end - at);
        if (part != "layers" && part != "defense" && part != "training") {
            std::fprintf(stderr, "pin-bench-gpu: unknown part '%s' in --parts (layers, defense, training)\n", part.c_str());
            return 2;
        }
        at = end + 1;
    }
    std::string reason;
    if (!pin::cuda::device_available(&reason)) {
        std::fprintf(stderr, "pin-bench-gpu: no CUDA device (%s)\n", reason.c_str());
        return 77;
    }
    try {
        std::printf("{\"device\": \"%s\"}\n", pin::cuda::device_name().c_str());
        struct Layer {
            const char* name;
            int64_t h, cin, cout, k, s;
        };
        const Layer layers[] = {{"esn.in 1->64 @112", 112, 1, 64, 3, 1},       {"conv 64->64 @112", 112, 64, 64, 3, 1},
                                {"conv 64->64 s2 @112", 112, 64, 64, 3, 2},    {"conv 128->128 @56", 56, 128, 128, 3, 1},
                                {"conv 256->256 @28", 28, 256, 256, 3, 1},     {"conv 512->512 @14", 14, 512, 512, 3, 1},
                                {"conv 512->512 s2 @14", 14, 512, 512, 3, 2}};
        std::vector<std::string> table;
        const int64_t B0 = batches.size() > 1 ? batches[1] : batches[0];
        // The whole defense forward (random agent, random eigenbasis with 2500 vectors).
        auto agent = std::make_shared<pin::model::Agent>(2500);
        agent->reset_parameters(1);
        pin::Tensor basis = pin::Tensor::empty({12544, 2500}), mean = pin::Tensor::zeros({12544});
        const pin::PhiloxStream rng(4, 4);
        for (int64_t i = 0; i < basis.numel(); ++i) basis.data()[i] = 0.01f * rng.normal(static_cast<uint64_t>(i));
        const auto eig_ptr = std::make_shared<const pin::model::EigenBasis>(pin::model::EigenBasis::from_tensors(basis, mean));
        const pin::model::EigenBasis& eig = *eig_ptr;
        pin::cuda::GpuDefense defense(*agent, eig);
        using pin::cuda::GatherMode;
        using pin::cuda::MathMode;
        // The two mask samplers (ops.cuh MaskSampler: the same bits from pin's Philox or cuRAND's), at
        // the largest batch: memory-bound, 8 bytes per mask bit (p in, q out).
        if (only == "all" || only == "generic-fp32") {
            const int64_t B = batches.back(), n = 2500;
            auto p = random_buffer(static_cast<size_t>(B * n), 9, 0.5f);
            pin::cuda::DeviceBuffer q(static_cast<size_t>(B * n));
            for (const auto sampler : {pin::cuda::MaskSampler::Pin, pin::cuda::MaskSampler::CuRand}) {
                const char* name = sampler == pin::cuda::MaskSampler::CuRand ? "curand" : "pin";
                pin::cuda::set_mask_sampler(sampler);
                const double ms = time_ms(4 * iters, [&] { pin::cuda::sample_masks(p.data(), q.data(), B, n, 7, 0); });
                const double gbs = 8.0 * B * n / ms / 1e6;
                std::printf("{\"stage\": \"sample_masks\", \"sampler\": \"%s\", \"batch\": %lld, \"ms\": %.4f, \"gb_per_s\": %.0f}\n", name,
                            static_cast<long long>(B), ms, gbs);
                char row[160];
                std::snprintf(row, sizeof row, "masks (%-6s sampler) b%-5lld %9.3f ms (%.0f GB/s)", name, static_cast<long long>(B), ms, gbs);
                table.push_back(row);
            }
            pin::cuda::set_mask_sampler(pin::cuda::MaskSampler::Pin);
        }
        // The warpgroup-MMA probe (cuda/wgmma_gemm.cuh) against our asynchronous-copy WMMA kernel on the
        // same bfloat16 GEMM, as a 1 x 1 convolution (x: M pixels of K channels = the probe's A; the
        // weight (N, K) = its B), with both tiles: a square the size cuBLAS is usually quoted at
        // (gpu_check.sh times PyTorch's on the same machine) and the 128 -> 128 @ 56 layer's GEMM
        // shape at batch 32 (its operands are drawn on the host). Each line says how far the
        // kernel's C is from the probe's (max |diff| / max |C|), which checks the probe on hardware
        // at full size too. At batch 1 (the emulation's run) a 128 cube only. A configuration of its
        // own (gemm-bf16), run in its own process by gpu_check.sh: should the probe fault on
        // hardware, the CUDA context it spoils is not the one that times the network.
        if (only == "all" || only == "gemm-bf16") {
            pin::cuda::set_math_mode(MathMode::BF16);
            pin::cuda::set_gather_mode(GatherMode::Vector);
            struct Gemm {
                int64_t batch, h, w, k, n;  // M = batch h w
            };
            std::vector<Gemm> shapes = {B0 >= 64 ? Gemm{1, 64, 128, 8192, 8192} : Gemm{1, 1, 128, 128, 128}};
            if (B0 >= 64) shapes.push_back(Gemm{32, 56, 56, 9 * 128, 128});  // batch 32: 100,352 rows, 784 row tiles
            for (const Gemm& g : shapes) {
                const int64_t M = g.batch * g.h * g.w, N = g.n, K = g.k;
                const double gflop = 2.0 * M * N * K / 1e9;
                const int reps = gflop < 100 ? 10 * iters : iters;  // the smaller GEMM takes well under a millisecond
                auto line = [&](const char* kernel, double ms, const std::string& extra) {
                    std::printf("{\"stage\": \"gemm_bf16\", \"kernel\": \"%s\", \"m\": %lld, \"n\": %lld, \"k\": %lld, \"ms\": %.4f, "
                                "\"tflops\": %.1f%s}\n",
                                kernel, static_cast<long long>(M), static_cast<long long>(N), static_cast<long long>(K), ms, gflop / ms,
                                extra.c_str());
                    char row[160];
                    std::snprintf(row, sizeof row, "GEMM %lldx%lldx%lld bf16, %-9s %9.3f ms (%.1f TFLOP/s)", static_cast<long long>(M),
                                  static_cast<long long>(N), static_cast<long long>(K), kernel, ms, gflop / ms);
                    table.push_back(row);
                };
                try {
                    const pin::cuda::DeviceBuffer x = pin::cuda::pack_bf16(random_buffer(static_cast<size_t>(M * K), 21).data(), M * K);
                    const pin::cuda::DeviceBuffer w = random_buffer(static_cast<size_t>(N * K), 22, 0.05f), wb = pin::cuda::pack_bf16(w.data(), N * K);
                    const pin::cuda::ConvShape cs{g.batch, g.h, g.w, K, N, 1, 1, 0};
                    const pin::cuda::DeviceBuffer packed = pin::cuda::pack_conv2d_forward_weight(w.data(), cs),
                                                  packed_bf16 = pin::cuda::pack_bf16(packed.data(), K * N),
                                                  packed_kmajor = pin::cuda::pack_bf16_kmajor(packed.data(), K, N);
                    pin::cuda::DeviceBuffer c(static_cast<size_t>(M * N)), y(static_cast<size_t>(M * N));
                    std::vector<float> hc(static_cast<size_t>(M * N)), hy(hc.size());
                    // max |v - the probe's C| / max |v| as JSON: null where the probe did not run or either holds a NaN.
                    double ms = 0;
                    auto rel_to_probe = [&](const std::vector<float>& v) {
                        double diff = 0, scale = 0;
                        bool nan = false;
                        for (size_t i = 0; i < v.size(); ++i) {
                            scale = std::max(scale, std::fabs(static_cast<double>(v[i])));
                            diff = std::max(diff, std::fabs(static_cast<double>(v[i]) - hc[i]));
                            nan = nan || v[i] != v[i] || hc[i] != hc[i];
                        }
                        char rel[32] = "null";
                        if (ms > 0 && !nan) std::snprintf(rel, sizeof rel, "%.3g", scale > 0 ? diff / scale : diff);
                        return std::string(rel);
                    };
                    // The probe with each of the kernel's pipelines (ops.cuh WgmmaPipeline): wgmma waits
                    // for each slice's MMAs, wgmma_inflight leaves one slice's running, wgmma_ws is the
                    // warp-specialized kernel (persistent, mbarrier-ordered stages), wgmma_pingpong the
                    // same with its MMA warpgroups on tiles of their own in turn; the _tma forms (last,
                    // after the convolutions below) have their operands brought by tensor copies into
                    // swizzled stages (ops.cuh WgmmaLoads).
                    struct ProbeRun {
                        pin::cuda::WgmmaPipeline pipeline;
                        pin::cuda::WgmmaLoads loads;
                        const char* kernel;
                        pin::cuda::WgmmaMmaN mma_n = pin::cuda::WgmmaMmaN::N128;
                    };
                    constexpr auto kWide = pin::cuda::WgmmaMmaN::N256;
                    constexpr auto kCpAsync = pin::cuda::WgmmaLoads::CpAsync, kTensor = pin::cuda::WgmmaLoads::TensorCopies;
                    auto probe = [&](const ProbeRun& run) {
                        const char* const kernel = run.kernel;
                        const bool compared = run.pipeline != pin::cuda::WgmmaPipeline::WaitEachSlice;  // with the first's result
                        if (compared && ms <= 0) return;  // the probe failed: nothing to compare with
                        try {
                            const pin::cuda::KernelSettingsScope settings_scope;
                            pin::cuda::set_wgmma_pipeline(run.pipeline);
                            pin::cuda::set_wgmma_loads(run.loads);
                            pin::cuda::set_wgmma_mma_n(run.mma_n);
                            pin::cuda::DeviceBuffer& out = compared ? y : c;
                            const double t = time_ms(reps, [&] {
                                pin::cuda::gemm_bf16_wgmma(pin::cuda::bf16_data(x), pin::cuda::bf16_data(wb), out.data(), M, N, K);
                            });
                            if (compared) {
                                y.download(hy.data(), hy.size());
                                line(kernel, t, ", \"max_rel_diff_vs_wgmma\": " + rel_to_probe(hy));
                            } else {
                                ms = t;
                                c.download(hc.data(), hc.size());
                                line(kernel, t, "");
                            }
                        } catch (const std::exception& e) {
                            std::printf("{\"stage\": \"gemm_bf16\", \"kernel\": \"%s\", \"m\": %lld, \"error\": \"%s\"}\n", kernel,
                                        static_cast<long long>(M), e.what());
                        }
                    };
                    for (const ProbeRun& run : {ProbeRun{pin::cuda::WgmmaPipeline::WaitEachSlice, kCpAsync, "wgmma"},
                                                ProbeRun{pin::cuda::WgmmaPipeline::OneSliceInFlight, kCpAsync, "wgmma_inflight"},
                                                ProbeRun{pin::cuda::WgmmaPipeline::WarpSpecialized, kCpAsync, "wgmma_ws"},
                                                ProbeRun{pin::cuda::WgmmaPipeline::PingPong, kCpAsync, "wgmma_pingpong"}})
                        if (!no_ws || !pin::cuda::warp_specialized(run.pipeline)) probe(run);
                    // The convolution on the asynchronous-copy kernel's two tiles and on the warpgroup-MMA
                    // kernel (AsyncTileShape::Wgmma, with the K-major weights: the probe's pipeline with
                    // the convolution's operand form), there with each pipeline.
                    struct ConvRun {
                        pin::cuda::AsyncTileShape tile;
                        pin::cuda::WgmmaPipeline pipeline;
                        const char* kernel;
                        pin::cuda::WgmmaLoads loads = pin::cuda::WgmmaLoads::CpAsync;
                        pin::cuda::WgmmaMmaN mma_n = pin::cuda::WgmmaMmaN::N128;
                    };
                    // The _tma forms: the convolution fed by tensor copies where its output rows fit
                    // the tile ("by_tensor_copies" says whether they did); _wide on ws's 128 x 256
                    // tile where N is a multiple of 256 ("on_wide_tile").
                    for (const ConvRun run : {ConvRun{pin::cuda::AsyncTileShape::Cols64, pin::cuda::WgmmaPipeline::WaitEachSlice, "async64"},
                                              ConvRun{pin::cuda::AsyncTileShape::Cols128, pin::cuda::WgmmaPipeline::WaitEachSlice, "async128"},
                                              ConvRun{pin::cuda::AsyncTileShape::Wgmma, pin::cuda::WgmmaPipeline::WaitEachSlice, "wgmma_conv"},
                                              ConvRun{pin::cuda::AsyncTileShape::Wgmma, pin::cuda::WgmmaPipeline::OneSliceInFlight,
                                                      "wgmma_conv_inflight"},
                                              ConvRun{pin::cuda::AsyncTileShape::Wgmma, pin::cuda::WgmmaPipeline::WarpSpecialized, "wgmma_conv_ws"},
                                              ConvRun{pin::cuda::AsyncTileShape::Wgmma, pin::cuda::WgmmaPipeline::PingPong, "wgmma_conv_pingpong"},
                                              ConvRun{pin::cuda::AsyncTileShape::Wgmma, pin::cuda::WgmmaPipeline::WarpSpecialized, "wgmma_conv_ws_tma",
                                                      kTensor},
                                              ConvRun{pin::cuda::AsyncTileShape::Wgmma, pin::cuda::WgmmaPipeline::PingPong, "wgmma_conv_pingpong_tma",
                                                      kTensor},
                                              ConvRun{pin::cuda::AsyncTileShape::Wgmma, pin::cuda::WgmmaPipeline::WarpSpecialized, "wgmma_conv_ws_wide",
                                                      kTensor, kWide}}) {
                        const bool on_wgmma = run.tile == pin::cuda::AsyncTileShape::Wgmma;
                        if (on_wgmma && (no_wgmma || !pin::cuda::wgmma_supported())) continue;
                        if ((no_ws && pin::cuda::warp_specialized(run.pipeline)) || (run.loads == kTensor && no_tma) ||
                            (run.mma_n == kWide && no_wide))
                            continue;
                        const pin::cuda::KernelSettingsScope settings_scope;
                        pin::cuda::set_async_tile(run.tile);
                        pin::cuda::set_wgmma_pipeline(run.pipeline);
                        pin::cuda::set_wgmma_loads(run.loads);
                        pin::cuda::set_wgmma_mma_n(run.mma_n);
                        const pin::cuda::KernelLaunches before = pin::cuda::kernel_launches();
                        const double t = time_ms(reps, [&] {
                            pin::cuda::conv2d_forward(pin::cuda::bf16_data(x), w.data(), y.data(), cs, nullptr, nullptr, false,
                                                      pin::cuda::PackedWeight(packed.data(), pin::cuda::bf16_data(packed_bf16),
                                                                              pin::cuda::bf16_data(packed_kmajor)));
                        });
                        const bool on_kernel = on_wgmma ? pin::cuda::kernel_launches().wgmma > before.wgmma
                                                        : pin::cuda::kernel_launches().async > before.async;
                        y.download(hy.data(), hy.size());
                        const bool tma = pin::cuda::kernel_launches().wgmma_tma > before.wgmma_tma;
                        const bool wide = pin::cuda::kernel_launches().wgmma_wide > before.wgmma_wide;
                        char extra[200];
                        std::snprintf(extra, sizeof extra,
                                      ", \"on_%s_kernel\": %s, \"by_tensor_copies\": %s, \"on_wide_tile\": %s, \"max_rel_diff_vs_wgmma\": %s",
                                      on_wgmma ? "wgmma" : "async", on_kernel ? "true" : "false", tma ? "true" : "false", wide ? "true" : "false",
                                      rel_to_probe(hy).c_str());
                        line(run.kernel, t, extra);
                    }
                    // Then the wide tiles: ws's 128 x 256 (N a multiple of 256), ping-pong's 224 x 64 (N
                    // not one of 128; the probe's N is, so it keeps its 64 x 128: a check, not a new timing).
                    if (!no_tma && !no_wgmma)
                        for (const ProbeRun& run : {ProbeRun{pin::cuda::WgmmaPipeline::WarpSpecialized, kTensor, "wgmma_ws_tma"},
                                                    ProbeRun{pin::cuda::WgmmaPipeline::PingPong, kTensor, "wgmma_pingpong_tma"},
                                                    ProbeRun{pin::cuda::WgmmaPipeline::WarpSpecialized, kTensor, "wgmma_ws_wide", kWide}})
                            if (run.mma_n != kWide || !no_wide) probe(run);
                } catch (const std::exception& e) {
                    std::printf("{\"stage\": \"gemm_bf16\", \"m\": %lld, \"n\": %lld, \"k\": %lld, \"error\": \"%s\"}\n",
                                static_cast<long long>(M), static_cast<long long>(N), static_cast<long long>(K), e.what());
                }
            }
        }
        // Six configurations: each arithmetic with the generic gather, fp32 and tf32 with the row
        // gather, bf16 with the vector gather (the wide kernel). BF16 x rows is left out to keep
        // gpu_check.sh inside its 8 minutes.
        const std::pair<GatherMode, MathMode> configs[] = {{GatherMode::Generic, MathMode::FP32}, {GatherMode::Generic, MathMode::TF32},
                                                           {GatherMode::Generic, MathMode::BF16}, {GatherMode::Rows, MathMode::FP32},
                                                           {GatherMode::Rows, MathMode::TF32},    {GatherMode::Vector, MathMode::BF16}};
        bool known = only == "all" || only == "gemm-bf16";
        for (const auto& [gmode, mode] : configs) {
            const char* math = mode == MathMode::BF16 ? "bf16" : mode == MathMode::TF32 ? "tf32" : "fp32";
            const char* gather = gmode == GatherMode::Vector ? "vector" : gmode == GatherMode::Rows ? "rows" : "generic";
            if (only != "all" && only != std::string(gather) + "-" + math) continue;
            known = true;
            pin::cuda::set_math_mode(mode);
            pin::cuda::set_gather_mode(gmode);
            // One JSON line and one table row per whole-network measurement (or its error).
            auto report = [&](const char* stage, const char* label, int64_t B, double ms) {
                std::printf("{\"math\": \"%s\", \"gather\": \"%s\", \"stage\": \"%s\", \"batch\": %lld, \"ms\": %.2f, "
                            "\"images_per_second\": %.0f}\n",
                            math, gather, stage, static_cast<long long>(B), ms, B * 1000.0 / ms);
                char line[160];
                std::snprintf(line, sizeof line, "%-22s b%-5lld %9.0f images/s (%.1f ms)", label, static_cast<long long>(B), B * 1000.0 / ms, ms);
                table.push_back(line);
            };
            auto report_error = [&](const char* stage, int64_t B, const std::exception& e) {
                std::printf("{\"math\": \"%s\", \"gather\": \"%s\", \"stage\": \"%s\", \"batch\": %lld, \"error\": \"%s\"}\n",
                            math, gather, stage, static_cast<long long>(B), e.what());
            };
            // A profiled run's per-op (or per-layer-kind) wall times: one JSON line, and table rows
            // with each op's share of `total_ms`, the rest last (the host's part: for the training
            // step its noise and bookkeeping; for the forward its allocations and copies).
            // rest: what the time outside the profiled ops is ("host (noise, bookkeeping)" in a training step).
            auto print_profile = [&](const std::string& stage, int64_t B, double total_ms, const std::map<std::string, double>& ops_ms,
                                     const char* rest) {
                std::string parts;
                double ops = 0;
                char row[160];
                std::snprintf(row, sizeof row, "%s, batch %lld, %.1f ms:", stage.c_str(), static_cast<long long>(B), total_ms);
                table.push_back(row);
                for (const auto& [op, t] : ops_ms) {
                    parts += (parts.empty() ? "" : ", ") + ("\"" + op + "\": " + std::to_string(t));
                    ops += t;
                    std::snprintf(row, sizeof row, "  %-32s %8.2f ms (%4.1f%%)", op.c_str(), t, 100.0 * t / total_ms);
                    table.push_back(row);
                }
                std::snprintf(row, sizeof row, "  %-32s %8.2f ms (%4.1f%%)", rest, total_ms - ops,
                              100.0 * (total_ms - ops) / total_ms);
                table.push_back(row);
                std::printf("{\"math\": \"%s\", \"gather\": \"%s\", \"stage\": \"%s\", \"batch\": %lld, \"total_ms\": %.2f, "
                            "\"ops_ms\": {%s}}\n",
                            math, gather, stage.c_str(), static_cast<long long>(B), total_ms, parts.c_str());
            };
            // One JSON line and one table row per layer: the three passes' times as TFLOP/s of `gflop`.
            // AsyncTimes (ms; 0 where not timed): the forward pass from bfloat16 activations and
            // bfloat16 packed weights (the asynchronous-copy kernel) and the weight gradient from
            // bfloat16 x and dy (its weight-gradient form, as the training step runs it), with the
            // 256 x 64 tile and, where the output channels are a multiple of 128, the 256 x 128 one
            // (ops.cuh AsyncTileShape).
            // And the forward pass on the warpgroup-MMA kernel (AsyncTileShape::Wgmma), where the device
            // runs it and the input channels are a multiple of 64, with each of its pipelines (ops.cuh
            // WgmmaPipeline).
            // And the input gradient from a bfloat16 dy (the training step's), on the asynchronous-copy
            // kernel and on the warpgroup-MMA kernel.
            // And with the gathered copies cached in L1 too (ops.cuh GatherCaching::L1): the forward
            // pass and the weight gradient on the asynchronous-copy kernel, the forward on wgmma.
            // And the weight gradient on the warpgroup-MMA kernel (M/N-major operands) with each pipeline.
            struct AsyncTimes {
                double fwd = 0, wgrad = 0, fwd128 = 0, wgrad128 = 0, fwd_wgmma = 0, fwd_wgmma_inflight = 0, din = 0, din_wgmma = 0;
                double fwd_l1 = 0, wgrad_l1 = 0, fwd_wgmma_l1 = 0, wgrad_wgmma = 0, wgrad_wgmma_inflight = 0, fwd_wgmma_ws_l1 = 0,
                       din_wgmma_ws = 0, fwd_wgmma_pingpong_l1 = 0, din_wgmma_pingpong = 0;
                // The warp-specialized forms with L1 caching and their shared memory limited to 196 and
                // 164 KiB a block (ops.cuh set_wgmma_ws_smem_kib: fewer stages, ~60 and ~92 KB of L1).
                double fwd_wgmma_ws_l1_smem196 = 0, fwd_wgmma_ws_l1_smem164 = 0, fwd_wgmma_pingpong_l1_smem196 = 0,
                       fwd_wgmma_pingpong_l1_smem164 = 0;
                // And storing C from the registers (ops.cuh WgmmaStores::Direct: no C regions, all
                // stages within 164 KiB, ~92 KB of L1).
                double fwd_wgmma_ws_l1_direct = 0, fwd_wgmma_pingpong_l1_direct = 0;
                double fwd_wgmma_ws_tma = 0, fwd_wgmma_pingpong_tma = 0;  // tensor copies (ops.cuh WgmmaLoads)
                double fwd_wgmma_ws_wide = 0, fwd_wgmma_pingpong_wide = 0;  // and the wide tiles (ops.cuh WgmmaMmaN)
            };
            auto report_layer = [&](const char* name, double gflop, double f, double bi, double bw, const AsyncTimes& a) {
                std::printf("{\"math\": \"%s\", \"gather\": \"%s\", \"layer\": \"%s\", \"batch\": %lld, \"forward_ms\": %.3f, \"forward_tflops\": %.2f, "
                            "\"backward_input_tflops\": %.2f, \"backward_weight_tflops\": %.2f",
                            math, gather, name, static_cast<long long>(B0), f, gflop / f, gflop / bi, gflop / bw);
                const std::pair<const char*, double> timed[] = {{"forward_bf16_async", a.fwd}, {"backward_weight_bf16_async", a.wgrad},
                                                                {"forward_bf16_async128", a.fwd128}, {"backward_weight_bf16_async128", a.wgrad128},
                                                                {"forward_bf16_wgmma", a.fwd_wgmma}, {"forward_bf16_wgmma_inflight", a.fwd_wgmma_inflight},
                                                                {"backward_input_bf16_async", a.din}, {"backward_input_bf16_wgmma", a.din_wgmma},
                                                                {"forward_bf16_async_l1", a.fwd_l1}, {"backward_weight_bf16_async_l1", a.wgrad_l1},
                                                                {"forward_bf16_wgmma_l1", a.fwd_wgmma_l1}, {"backward_weight_bf16_wgmma", a.wgrad_wgmma},
                                                                {"backward_weight_bf16_wgmma_inflight", a.wgrad_wgmma_inflight},
                                                                {"forward_bf16_wgmma_ws_l1", a.fwd_wgmma_ws_l1},
                                                                {"backward_input_bf16_wgmma_ws", a.din_wgmma_ws},
                                                                {"forward_bf16_wgmma_pingpong_l1", a.fwd_wgmma_pingpong_l1},
                                                                {"backward_input_bf16_wgmma_pingpong", a.din_wgmma_pingpong},
                                                                {"forward_bf16_wgmma_ws_l1_smem196", a.fwd_wgmma_ws_l1_smem196},
                                                                {"forward_bf16_wgmma_ws_l1_smem164", a.fwd_wgmma_ws_l1_smem164},
                                                                {"forward_bf16_wgmma_pingpong_l1_smem196", a.fwd_wgmma_pingpong_l1_smem196},
                                                                {"forward_bf16_wgmma_pingpong_l1_smem164", a.fwd_wgmma_pingpong_l1_smem164},
                                                                {"forward_bf16_wgmma_ws_l1_direct", a.fwd_wgmma_ws_l1_direct},
                                                                {"forward_bf16_wgmma_pingpong_l1_direct", a.fwd_wgmma_pingpong_l1_direct},
                                                                {"forward_bf16_wgmma_ws_tma", a.fwd_wgmma_ws_tma},
                                                                {"forward_bf16_wgmma_pingpong_tma", a.fwd_wgmma_pingpong_tma},
                                                                {"forward_bf16_wgmma_ws_wide", a.fwd_wgmma_ws_wide},
                                                                {"forward_bf16_wgmma_pingpong_wide", a.fwd_wgmma_pingpong_wide}};
                for (const auto& [key, ms] : timed)
                    if (ms > 0) std::printf(", \"%s_ms\": %.3f, \"%s_tflops\": %.2f", key, ms, key, gflop / ms);
                std::printf("}\n");
                char row[1024];
                int used = std::snprintf(row, sizeof row, "%-22s b%-5lld fwd %6.2f  bwd-in %6.2f  bwd-w %6.2f TFLOP/s", name,
                                         static_cast<long long>(B0), gflop / f, gflop / bi, gflop / bw);
                const std::pair<const char*, double> columns[] = {{"fwd bf16-async", a.fwd}, {"bwd-w bf16-async", a.wgrad},
                                                                  {"x128: fwd", a.fwd128}, {"bwd-w", a.wgrad128}, {"wgmma fwd", a.fwd_wgmma},
                                                                  {"inflight", a.fwd_wgmma_inflight}, {"bwd-in bf16-async", a.din},
                                                                  {"wgmma bwd-in", a.din_wgmma}, {"L1: fwd", a.fwd_l1},
                                                                  {"bwd-w", a.wgrad_l1}, {"wgmma-fwd", a.fwd_wgmma_l1},
                                                                  {"wgmma bwd-w", a.wgrad_wgmma}, {"inflight", a.wgrad_wgmma_inflight},
                                                                  {"ws-L1 fwd", a.fwd_wgmma_ws_l1}, {"ws bwd-in", a.din_wgmma_ws},
                                                                  {"pp-L1 fwd", a.fwd_wgmma_pingpong_l1}, {"pp bwd-in", a.din_wgmma_pingpong},
                                                                  {"ws-L1 fwd 196K", a.fwd_wgmma_ws_l1_smem196}, {"164K", a.fwd_wgmma_ws_l1_smem164},
                                                                  {"pp-L1 fwd 196K", a.fwd_wgmma_pingpong_l1_smem196}, {"164K", a.fwd_wgmma_pingpong_l1_smem164},
                                                                  {"direct C: ws-L1 fwd", a.fwd_wgmma_ws_l1_direct},
                                                                  {"pp-L1 fwd", a.fwd_wgmma_pingpong_l1_direct},
                                                                  {"TMA: ws fwd", a.fwd_wgmma_ws_tma}, {"pp fwd", a.fwd_wgmma_pingpong_tma},
                                                                  {"wide: ws fwd", a.fwd_wgmma_ws_wide}, {"pp fwd", a.fwd_wgmma_pingpong_wide}};
                for (const auto& [label, ms] : columns)
                    if (ms > 0 && used > 0 && used < static_cast<int>(sizeof row))
                        used += std::snprintf(row + used, sizeof row - used, "  %s %6.2f", label, gflop / ms);
                table.push_back(row);
            };
            // The GEMM settings a timing runs with (ops.cuh): the tile, the wgmma pipeline, gather
            // caching, and the warp-specialized kernels' shared-memory limit (KiB, 0: none), stores and
            // loads (tma(): tensor copies, for the dense probe and the convolutions).
            using TileShape = pin::cuda::AsyncTileShape;
            constexpr auto kWait = pin::cuda::WgmmaPipeline::WaitEachSlice, kInFlight = pin::cuda::WgmmaPipeline::OneSliceInFlight;
            constexpr auto kWs = pin::cuda::WgmmaPipeline::WarpSpecialized, kPingPong = pin::cuda::WgmmaPipeline::PingPong;
            constexpr auto kL1 = pin::cuda::GatherCaching::L1;
            struct GemmSettings {
                TileShape tile;
                pin::cuda::WgmmaPipeline pipeline = pin::cuda::WgmmaPipeline::WaitEachSlice;
                pin::cuda::GatherCaching caching = pin::cuda::GatherCaching::L2;
                int ws_smem_kib = 0;
                pin::cuda::WgmmaStores stores = pin::cuda::WgmmaStores::ThroughShared;
                pin::cuda::WgmmaLoads loads = pin::cuda::WgmmaLoads::CpAsync;
                pin::cuda::WgmmaMmaN mma_n = pin::cuda::WgmmaMmaN::N128;
                GemmSettings smem_kib(int kib) const {
                    GemmSettings g = *this;
                    g.ws_smem_kib = kib;
                    return g;
                }
                GemmSettings direct() const {
                    GemmSettings g = *this;
                    g.stores = pin::cuda::WgmmaStores::Direct;
                    return g;
                }
                GemmSettings tma() const {
                    GemmSettings g = *this;
                    g.loads = pin::cuda::WgmmaLoads::TensorCopies;
                    return g;
                }
                GemmSettings wide() const {
                    GemmSettings g = tma();
                    g.mma_n = pin::cuda::WgmmaMmaN::N256;
                    return g;
                }
                bool skipped(bool no_ws_timings, bool no_tma_timings, bool no_wide_timings) const {
                    return (tile == TileShape::Wgmma && pin::cuda::warp_specialized(pipeline) && no_ws_timings) ||
                           (loads == pin::cuda::WgmmaLoads::TensorCopies && no_tma_timings) ||
                           (mma_n == pin::cuda::WgmmaMmaN::N256 && no_wide_timings);
                }
                void apply() const {
                    pin::cuda::set_async_tile(tile);
                    pin::cuda::set_wgmma_pipeline(pipeline);
                    pin::cuda::set_gather_caching(caching);
                    pin::cuda::set_wgmma_ws_smem_kib(ws_smem_kib);
                    pin::cuda::set_wgmma_stores(stores);
                    pin::cuda::set_wgmma_loads(loads);
                    pin::cuda::set_wgmma_mma_n(mma_n);
                }
            };
            const GemmSettings cols64{TileShape::Cols64}, cols64_l1{TileShape::Cols64, kWait, kL1}, cols128{TileShape::Cols128},
                wgmma_wait{TileShape::Wgmma}, wgmma_inflight{TileShape::Wgmma, kInFlight}, wgmma_l1{TileShape::Wgmma, kWait, kL1},
                ws{TileShape::Wgmma, kWs}, pingpong{TileShape::Wgmma, kPingPong}, ws_l1{TileShape::Wgmma, kWs, kL1},
                pingpong_l1{TileShape::Wgmma, kPingPong, kL1};
            // Tensor copies where they apply (forward convolutions, stride-1 input gradients), the other gathered
            // copies through L1 as above.
            const GemmSettings ws_tma = ws_l1.tma(), pingpong_tma = pingpong_l1.tma();
            // And on the wide tiles where a layer takes them (ws: 256k output channels; ping-pong: 64).
            const GemmSettings ws_wide = ws_l1.wide(), pingpong_wide = pingpong_l1.wide();
            // f() with the settings g; the settings before come back afterwards, also when f throws.
            auto with_settings = [&](const GemmSettings& g, auto f) {
                const pin::cuda::KernelSettingsScope settings_scope;
                g.apply();
                return f();
            };
            // A pass on the warpgroup-MMA kernel with each pipeline.
            auto time_wgmma_pipelines = [&](auto f, double& wait, double& inflight) {
                wait = with_settings(wgmma_wait, f);
                inflight = with_settings(wgmma_inflight, f);
            };
            // The forward pass on the warpgroup-MMA kernel with each pipeline, and with L1 caching.
            auto time_wgmma = [&](AsyncTimes& a, auto f) {
                time_wgmma_pipelines(f, a.fwd_wgmma, a.fwd_wgmma_inflight);
                a.fwd_wgmma_l1 = with_settings(wgmma_l1, f);
                if (no_ws) return;  // the warp-specialized pipelines after the others: a fault there costs none of them
                a.fwd_wgmma_ws_l1 = with_settings(ws_l1, f);
                a.fwd_wgmma_pingpong_l1 = with_settings(pingpong_l1, f);
                a.fwd_wgmma_ws_l1_smem196 = with_settings(ws_l1.smem_kib(196), f);
                a.fwd_wgmma_ws_l1_smem164 = with_settings(ws_l1.smem_kib(164), f);
                a.fwd_wgmma_pingpong_l1_smem196 = with_settings(pingpong_l1.smem_kib(196), f);
                a.fwd_wgmma_pingpong_l1_smem164 = with_settings(pingpong_l1.smem_kib(164), f);
                a.fwd_wgmma_ws_l1_direct = with_settings(ws_l1.direct(), f);
                a.fwd_wgmma_pingpong_l1_direct = with_settings(pingpong_l1.direct(), f);
                if (no_tma) return;  // last: a fault here costs no other timing
                a.fwd_wgmma_ws_tma = with_settings(ws_tma, f);
                a.fwd_wgmma_pingpong_tma = with_settings(pingpong_tma, f);
                if (no_wide) return;
                a.fwd_wgmma_ws_wide = with_settings(ws_wide, f);
                a.fwd_wgmma_pingpong_wide = with_settings(pingpong_wide, f);
            };
            const bool wgmma = !no_wgmma && pin::cuda::wgmma_supported();
            // The forward pass with x and y stored as bfloat16 and the weights packed as bfloat16, as
            // GpuDefense runs it with ActivationStorage::BF16: where the vector gather and BF16
            // arithmetic apply, the asynchronous-copy kernel.
            const bool time_async = gmode == GatherMode::Vector && mode == MathMode::BF16;
            auto time_bf16_forward = [&](const pin::cuda::DeviceBuffer& x, int64_t nx, const pin::cuda::DeviceBuffer& packed, int64_t nw,
                                         int64_t n_out, int64_t ny, auto forward) {
                const pin::cuda::DeviceBuffer xb = pin::cuda::pack_bf16(x.data(), nx), wb = pin::cuda::pack_bf16(packed.data(), nw),
                                              wk = pin::cuda::pack_bf16_kmajor(packed.data(), nw / n_out, n_out);
                pin::cuda::DeviceBuffer yb(static_cast<size_t>((ny + 1) / 2));
                const pin::cuda::PackedWeight pw(packed.data(), pin::cuda::bf16_data(wb), pin::cuda::bf16_data(wk));
                return time_ms(iters, [&] { forward(pin::cuda::bf16_data(xb), reinterpret_cast<pin::cuda::Bf16*>(yb.data()), pw); });
            };
            table.push_back(std::string(math) + (mode != MathMode::FP32 ? " (tensor cores)" : " (CUDA cores)") + ", gather " + gather + ":");
            if (want("layers"))
            for (const Layer& l : layers) {
                const pin::cuda::ConvShape s{B0, l.h, l.h, l.cin, l.cout, l.k, l.s, 1};
                const int64_t Ho = pin::cuda::conv2d_out(s, l.h);
                auto x = random_buffer(static_cast<size_t>(B0 * l.h * l.h * l.cin), 1), w = random_buffer(static_cast<size_t>(l.cout * l.cin * 9), 2, 0.05f);
                auto dy = random_buffer(static_cast<size_t>(B0 * Ho * Ho * l.cout), 3);
                pin::cuda::DeviceBuffer y(static_cast<size_t>(B0 * Ho * Ho * l.cout)), dx(static_cast<size_t>(B0 * l.h * l.h * l.cin)),
                    dw(static_cast<size_t>(l.cout * l.cin * 9));
                const double gflop = 2.0 * B0 * Ho * Ho * l.cout * l.cin * l.k * l.k / 1e9;
                const double f = time_ms(iters, [&] { pin::cuda::conv2d_forward(x.data(), w.data(), y.data(), s); });
                const double bi = time_ms(iters, [&] { pin::cuda::conv2d_backward_input(dy.data(), w.data(), dx.data(), s); });
                const double bw = time_ms(iters, [&] { pin::cuda::conv2d_backward_weight(x.data(), dy.data(), dw.data(), s); });
                AsyncTimes a;
                if (time_async && l.cin % 32 == 0) {
                    const pin::cuda::DeviceBuffer packed = pin::cuda::pack_conv2d_forward_weight(w.data(), s);
                    auto forward = [&] {
                        return time_bf16_forward(x, B0 * l.h * l.h * l.cin, packed, l.cout * l.cin * 9, l.cout, B0 * Ho * Ho * l.cout,
                                                 [&](const pin::cuda::Bf16* xb, pin::cuda::Bf16* yb, const pin::cuda::PackedWeight& pw) {
                                                     pin::cuda::conv2d_forward(xb, w.data(), yb, s, nullptr, nullptr, false, pw);
                                                 });
                    };
                    const pin::cuda::DeviceBuffer xb = pin::cuda::pack_bf16(x.data(), B0 * l.h * l.h * l.cin),
                                                  dyb = pin::cuda::pack_bf16(dy.data(), B0 * Ho * Ho * l.cout);
                    auto weight_gradient = [&] {
                        return time_ms(iters, [&] { pin::cuda::conv2d_backward_weight(pin::cuda::bf16_data(xb), pin::cuda::bf16_data(dyb), dw.data(), s); });
                    };
                    auto input_gradient = [&] {
                        return time_ms(iters, [&] { pin::cuda::conv2d_backward_input(pin::cuda::bf16_data(dyb), w.data(), dx.data(), s); });
                    };
                    a.fwd = forward();
                    a.wgrad = weight_gradient();
                    a.din = input_gradient();
                    a.fwd_l1 = with_settings(cols64_l1, forward);
                    a.wgrad_l1 = with_settings(cols64_l1, weight_gradient);
                    if (wgmma && l.cout % 64 == 0) {
                        a.din_wgmma = with_settings(wgmma_wait, input_gradient);
                        if (!no_ws) {
                            a.din_wgmma_ws = with_settings(ws, input_gradient);
                            a.din_wgmma_pingpong = with_settings(pingpong, input_gradient);
                        }
                    }
                    if (wgmma && l.cin % 8 == 0 && l.cout % 8 == 0) time_wgmma_pipelines(weight_gradient, a.wgrad_wgmma, a.wgrad_wgmma_inflight);
                    if (l.cout % 128 == 0) {
                        a.fwd128 = with_settings(cols128, forward);
                        a.wgrad128 = with_settings(cols128, weight_gradient);
                    }
                    if (wgmma && l.cin % 64 == 0) time_wgmma(a, forward);
                }
                report_layer(l.name, gflop, f, bi, bw, a);
            }
            // The DAE decoder's transposed convolutions (3x3, stride 2, output padding 1), at their real
            // FLOPs (each input pixel times 9 taps): the sub-pixel classes of the Rows and Vector gathers
            // skip the products with zeros that the generic gather computes (3/4 of them).
            if (want("layers"))
            for (const Layer& l : {Layer{"convT 256->256 s2 @14", 14, 256, 256, 3, 2}, Layer{"convT 64->64 s2 @56", 56, 64, 64, 3, 2}}) {
                const pin::cuda::ConvShape s{B0, l.h, l.h, l.cin, l.cout, 3, 2, 1, 1};
                const int64_t Ho = pin::cuda::conv_transpose2d_out(s, l.h);
                auto x = random_buffer(static_cast<size_t>(B0 * l.h * l.h * l.cin), 1), w = random_buffer(static_cast<size_t>(l.cout * l.cin * 9), 2, 0.05f);
                auto dy = random_buffer(static_cast<size_t>(B0 * Ho * Ho * l.cout), 3);
                pin::cuda::DeviceBuffer y(static_cast<size_t>(B0 * Ho * Ho * l.cout)), dx(static_cast<size_t>(B0 * l.h * l.h * l.cin)),
                    dw(static_cast<size_t>(l.cout * l.cin * 9));
                const double gflop = 2.0 * B0 * l.h * l.h * l.cout * l.cin * 9 / 1e9;
                const double f = time_ms(iters, [&] { pin::cuda::conv_transpose2d_forward(x.data(), w.data(), y.data(), s); });
                const double bi = time_ms(iters, [&] { pin::cuda::conv_transpose2d_backward_input(dy.data(), w.data(), dx.data(), s); });
                const double bw = time_ms(iters, [&] { pin::cuda::conv_transpose2d_backward_weight(x.data(), dy.data(), dw.data(), s); });
                AsyncTimes a;
                if (time_async) {
                    const pin::cuda::DeviceBuffer packed = pin::cuda::pack_conv_transpose2d_forward_weight(w.data(), s);
                    auto forward = [&] {
                        return time_bf16_forward(x, B0 * l.h * l.h * l.cin, packed, l.cout * l.cin * 9, l.cout, B0 * Ho * Ho * l.cout,
                                                 [&](const pin::cuda::Bf16* xb, pin::cuda::Bf16* yb, const pin::cuda::PackedWeight& pw) {
                                                     pin::cuda::conv_transpose2d_forward(xb, w.data(), yb, s, nullptr, pw);
                                                 });
                    };
                    a.fwd = forward();
                    if (l.cout % 128 == 0) a.fwd128 = with_settings(cols128, forward);
                    if (wgmma && l.cin % 64 == 0) time_wgmma(a, forward);
                }
                report_layer(l.name, gflop, f, bi, bw, a);
            }
            // With BF16 arithmetic, also with the activations stored as bfloat16 (ops.cuh
            // ActivationStorage), and there, with the vector gather (the asynchronous-copy kernel), also
            // with its gathered copies cached in L1 (GatherCaching), its 256 x 128 tile, and, where the
            // device runs it, the warpgroup-MMA kernel with each of its pipelines and with L1 caching.
            struct DefenseVariant {
                const char* stage;
                const char* label;
                pin::cuda::ActivationStorage storage;
                GemmSettings gemm;
            };
            using Storage = pin::cuda::ActivationStorage;
            const DefenseVariant variants[] = {
                {"defense_forward", "defense forward", Storage::FP32, cols64},
                {"defense_forward_bf16_storage", "defense fwd, bf16 act", Storage::BF16, cols64},
                {"defense_forward_bf16_storage_l1", "defense fwd, bf16 L1", Storage::BF16, cols64_l1},
                {"defense_forward_bf16_storage_cols128", "defense fwd, bf16 x128", Storage::BF16, cols128},
                {"defense_forward_bf16_storage_wgmma", "defense fwd, bf16 wgmma", Storage::BF16, wgmma_wait},
                {"defense_forward_bf16_storage_wgmma_inflight", "defense wgmma inflight", Storage::BF16, wgmma_inflight},
                {"defense_forward_bf16_storage_wgmma_l1", "defense wgmma L1", Storage::BF16, wgmma_l1},
                {"defense_forward_bf16_storage_wgmma_ws_l1", "defense wgmma ws L1", Storage::BF16, ws_l1},
                {"defense_forward_bf16_storage_wgmma_pingpong_l1", "defense wgmma pp L1", Storage::BF16, pingpong_l1},
                {"defense_forward_bf16_storage_wgmma_ws_l1_smem196", "defense ws L1 196K", Storage::BF16, ws_l1.smem_kib(196)},
                {"defense_forward_bf16_storage_wgmma_pingpong_l1_smem196", "defense pp L1 196K", Storage::BF16, pingpong_l1.smem_kib(196)},
                {"defense_forward_bf16_storage_wgmma_pingpong_l1_smem164", "defense pp L1 164K", Storage::BF16, pingpong_l1.smem_kib(164)},
                {"defense_forward_bf16_storage_wgmma_ws_l1_direct", "defense ws L1 direct C", Storage::BF16, ws_l1.direct()},
                {"defense_forward_bf16_storage_wgmma_pingpong_l1_direct", "defense pp L1 direct C", Storage::BF16, pingpong_l1.direct()},
                {"defense_forward_bf16_storage_wgmma_ws_tma", "defense wgmma ws TMA", Storage::BF16, ws_tma},
                {"defense_forward_bf16_storage_wgmma_pingpong_tma", "defense wgmma pp TMA", Storage::BF16, pingpong_tma},
                {"defense_forward_bf16_storage_wgmma_ws_wide", "defense wgmma ws wide", Storage::BF16, ws_wide},
                {"defense_forward_bf16_storage_wgmma_pingpong_wide", "defense wgmma pp wide", Storage::BF16, pingpong_wide},
            };
            if (want("defense"))
            for (const DefenseVariant& v : variants) {
                const bool bf16_storage = v.storage == Storage::BF16, fast = v.gemm.tile != TileShape::Cols64 || v.gemm.caching == kL1;
                if ((bf16_storage && mode != MathMode::BF16) || (fast && !time_async) || (v.gemm.tile == TileShape::Wgmma && !wgmma)) continue;
                if (v.gemm.skipped(no_ws, no_tma, no_wide)) continue;
                const pin::cuda::KernelSettingsScope settings_scope;
                pin::cuda::set_activation_storage(v.storage);
                v.gemm.apply();
                for (const int64_t B : batches) try {
                    auto x = random_buffer(static_cast<size_t>(B * 12544), 5, 0.5f);
                    pin::cuda::DeviceBuffer p(static_cast<size_t>(B * 2500)), q(static_cast<size_t>(B * 2500)), y(static_cast<size_t>(B * 12544));
                    const double ms = time_ms(iters, [&] { defense.forward(x.data(), B, 0, 0, p.data(), q.data(), y.data()); });
                    report(v.stage, v.label, B, ms);
                    // Where the time goes, at the middle batch, for the plain forward and the
                    // fastest measured one (wgmma, L1): one more forward, every layer synchronized.
                    if (B == B0 && (v.storage == Storage::FP32 || (v.gemm.tile == TileShape::Wgmma && v.gemm.caching == kL1))) {
                        defense.clear_profile();
                        defense.set_profiling(true);
                        const auto t0 = Clock::now();
                        defense.forward(x.data(), B, 0, 0, p.data(), q.data(), y.data());
                        pin::cuda::synchronize("defense profile");
                        const double total = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
                        defense.set_profiling(false);
                        print_profile(std::string(v.stage) + "_profile", B, total, defense.profile_ms(), "the rest (host)");
                    }
                } catch (const std::exception& e) {  // one failing batch size must not hide the others
                    report_error(v.stage, B, e);
                }
            }
            // f(backend, trainer, x) with a fresh trainer (pin train's defaults: local estimator, 30
            // masks, L2 cost, clip 1) and a batch of B random faces kept in host memory as pin train
            // has them (the upload is part of the step).
            auto with_trainer = [&](int64_t B, auto f) {
                pin::train::TrainerOptions to;
                to.estimator = pin::train::Estimator::LocalExpectation;
                to.clip_norm = 1;
                pin::train::PolicyGradientTrainer holder(agent, eig_ptr, to);
                pin::cuda::GpuTrainingBackend backend(*agent, eig, to);
                pin::cuda::GpuTrainer trainer(backend, *agent, holder.optimizer(), to);
                pin::Tensor x = pin::Tensor::empty({B, 1, 112, 112}, pin::Layout::NHWC);
                for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = 0.5f * rng.normal(static_cast<uint64_t>(i) + 7);
                f(backend, trainer, x);
            };
            // The training step with the generic and the vector gathers only (time).
            if (gmode != GatherMode::Rows && want("training"))
            for (const int64_t B : batches) try {
                with_trainer(B, [&](pin::cuda::GpuTrainingBackend& backend, pin::cuda::GpuTrainer& trainer, const pin::Tensor& x) {
                    uint64_t first = 0;
                    // One timed step after the warm-up: the step is seconds long at batch 1024 in fp32, and the
                    // whole of gpu_check.sh has 8 minutes.
                    const double ms = time_ms(std::max(1, iters / 4), [&] { trainer.step(x, first += static_cast<uint64_t>(B)); });
                    report("training_step", "training step", B, ms);
                    if (B == B0) {  // where the step's time goes: one more step, every op synchronized and timed
                        backend.set_profiling(true);
                        const auto t0 = Clock::now();
                        trainer.step(x, first += static_cast<uint64_t>(B));
                        const double total = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
                        backend.set_profiling(false);
                        print_profile("training_step_profile", B, total, backend.profile_ms(), "host (noise, bookkeeping)");
                    }
                });
            } catch (const std::exception& e) {
                report_error("training_step", B, e);
            }
            // With the vector gather and BF16, one more step at the middle batch with the
            // asynchronous-copy kernel's 256 x 128 tile (stage training_step_cols128) and, where the
            // device runs it, with the convolutions' three passes on the warpgroup MMA
            // (training_step_wgmma), there with its other pipeline (training_step_wgmma_inflight) and
            // with the gathered copies cached in L1 (training_step_wgmma_l1).
            // The last two store the frozen DAE's activations as bfloat16 (pin train --gpu-storage bf16;
            // the others keep them fp32), the last of all profiled as the plain step is above.
            struct TrainingVariant {
                const char* stage;
                const char* label;
                GemmSettings gemm;
                pin::cuda::ActivationStorage storage;
            };
            constexpr auto kFp32 = pin::cuda::ActivationStorage::FP32, kBf16 = pin::cuda::ActivationStorage::BF16;
            if (want("training"))
            for (const TrainingVariant& v :
                 {TrainingVariant{"training_step_cols128", "training step, x128", cols128, kFp32},
                  TrainingVariant{"training_step_wgmma", "training step, wgmma", wgmma_wait, kFp32},
                  TrainingVariant{"training_step_wgmma_inflight", "training wgmma inflight", wgmma_inflight, kFp32},
                  TrainingVariant{"training_step_wgmma_l1", "training step, wgmma L1", wgmma_l1, kFp32},
                  TrainingVariant{"training_step_bf16_storage", "training, bf16 DAE act", cols64, kBf16},
                  TrainingVariant{"training_step_bf16_storage_wgmma_l1", "training, bf16 act wgmma L1", wgmma_l1, kBf16},
                  TrainingVariant{"training_step_bf16_storage_wgmma_ws_l1", "training, bf16 wgmma ws L1", ws_l1, kBf16},
                  TrainingVariant{"training_step_bf16_storage_wgmma_pingpong_l1", "training, bf16 wgmma pp L1", pingpong_l1, kBf16},
                  TrainingVariant{"training_step_bf16_storage_wgmma_ws_tma", "training, bf16 wgmma ws TMA", ws_tma, kBf16},
                  TrainingVariant{"training_step_bf16_storage_wgmma_pingpong_tma", "training, bf16 wgmma pp TMA", pingpong_tma, kBf16},
                  TrainingVariant{"training_step_bf16_storage_wgmma_pingpong_wide", "training, bf16 wgmma pp wide", pingpong_wide, kBf16}}) {
                const char* stage = v.stage;
                if (!time_async || (v.gemm.tile == TileShape::Wgmma && !wgmma)) continue;
                if (v.gemm.skipped(no_ws, no_tma, no_wide)) continue;
                try {
                    with_trainer(B0, [&](pin::cuda::GpuTrainingBackend& backend, pin::cuda::GpuTrainer& trainer, const pin::Tensor& x) {
                        const pin::cuda::KernelSettingsScope storage_scope;
                        pin::cuda::set_activation_storage(v.storage);
                        uint64_t first = 0;
                        const double ms = with_settings(
                            v.gemm, [&] { return time_ms(std::max(1, iters / 4), [&] { trainer.step(x, first += static_cast<uint64_t>(B0)); }); });
                        report(stage, v.label, B0, ms);
                        if (v.storage == kBf16 && v.gemm.tile == TileShape::Wgmma) {
                            with_settings(
                                v.gemm,
                                [&] {
                                    backend.clear_profile();
                                    backend.set_profiling(true);
                                    const auto t0 = Clock::now();
                                    trainer.step(x, first += static_cast<uint64_t>(B0));
                                    const double total = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
                                    backend.set_profiling(false);
                                    print_profile(std::string(stage) + "_profile", B0, total, backend.profile_ms(), "host (noise, bookkeeping)");
                                    return 0;
                                });
                        }
                    });
                } catch (const std::exception& e) {
                    report_error(stage, B0, e);
                }
            }
            // Which kernels this configuration's GEMMs ran on (counts since the process started:
            // gpu_check.sh runs one configuration per process).
            std::string launches;
            for (const auto& [kernel, count] : pin::cuda::named_counts(pin::cuda::kernel_launches()))
                launches += std::string(launches.empty() ? "" : ", ") + "\"" + kernel + "\": " + std::to_string(count);
            // and their arithmetic (2 M N K per launch), in GFLOP: the share each kernel carries.
            std::string gflop;
            for (const auto& [kernel, flops] : pin::cuda::named_counts(pin::cuda::kernel_gemm_flops())) {
                char number[32];
                std::snprintf(number, sizeof number, "%.6g", static_cast<double>(flops) * 1e-9);
                gflop += std::string(gflop.empty() ? "" : ", ") + "\"" + kernel + "\": " + number;
            }
            // gemm_gflop_total: all of it (KernelCounts::total; async_cols128 is inside async, wgmma_tma, wgmma_wide and
            // wgmma_split inside wgmma).
            std::printf("{\"math\": \"%s\", \"gather\": \"%s\", \"parts\": \"%s\", \"gemm_launches\": {%s}, \"gemm_gflop\": {%s}, "
                        "\"gemm_gflop_total\": %.6g}\n",
                        math, gather, parts.c_str(), launches.c_str(), gflop.c_str(),
                        static_cast<double>(pin::cuda::kernel_gemm_flops().total()) * 1e-9);
        }
        if (!known) {
            std::fprintf(stderr, "pin-bench-gpu: unknown --config '%s'\n", only.c_str());
            return 2;
        }
        std::printf("\n%s:\n", pin::cuda::device_name().c_str());
        for (const auto& r : table) std::printf("  %s\n", r.c_str());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "pin-bench-gpu: %s\n", e.what());
        return 1;
    }
    return 0;
}
