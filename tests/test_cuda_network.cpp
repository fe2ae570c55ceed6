// The GPU defense, estimators and training step against the CPU (the whole 112 x 112 network in the
// [network] cases), and streams. The ops one by one: test_cuda.cpp. Without CUDA this file is empty;
// without a GPU every case prints why it skips.
// [network]: the cases that run the whole 112 x 112 network (in every mode, or from four threads):
// minutes under the CPU emulation of CUDA (pin_tests_cuda_emulated), so the sanitizer run leaves
// them to the Release build's.
#include <memory>
#include <string>
#include <thread>
#include <vector>

#if defined(PIN_HAVE_CUDA)
#include "cuda_test_support.hpp"
#include "gpu_tuning.hpp"

namespace {
// The GPU defense forward (3 faces, 60 eigenfaces) against the CPU's under the kernel settings in
// force: p within the math mode's tolerance, at most a few mask bits flipped by rounding, and where
// none is, the defended faces. `tag` names the settings in the messages.
void require_defense_matches_cpu(const std::string& tag) {
    namespace pc = pin::cuda;
    auto agent = std::make_shared<model::Agent>(60);
    agent->reset_parameters(3);
    const Tensor bm = rnd({12544, 60}, 19, Layout::NCHW);
    // An orthonormal-enough basis is not needed for matching: both sides compute the same formula.
    auto basis = std::make_shared<model::EigenBasis>(model::EigenBasis::from_tensors(bm, rnd({12544}, 20, Layout::NCHW)));
    const model::Defense cpu_defense = model::Defense::from_parts(basis, agent, model::SamplingMode::Bernoulli, 7);
    Tensor x = Tensor::empty({3, 1, 112, 112}, Layout::NHWC);
    for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = std::sin(0.001f * i) * 0.8f;
    const model::DefenseOutput ref = cpu_defense.inactivate(x, 40);
    pc::GpuDefense gpu(*agent, *basis);
    auto gx = to_gpu(x);
    const pc::MathMode mode = pc::math_mode();
    const bool fast = pc::activation_storage() == pc::ActivationStorage::BF16 && pc::gather_mode() == pc::GatherMode::Vector;
    const bool tile128 = fast && pc::async_tile() == pc::AsyncTileShape::Cols128;
    const bool wgmma = fast && pc::async_tile() == pc::AsyncTileShape::Wgmma && pc::wgmma_supported();
    pc::DeviceBuffer gp(3 * 60), gq(3 * 60), gy(3 * 12544);
    const pc::KernelLaunches before = pc::kernel_launches();
    gpu.forward(gx.data(), 3, 7, 40, gp.data(), gq.data(), gy.data());
    // bfloat16 storage with the vector gather: the convolutions between bfloat16 activations copy
    // their operands as they are (the asynchronous-copy kernel), and nothing else does.
    // Where the warpgroup-MMA kernel runs, it takes all of them instead (every such layer has 64
    // input channels or more, and 64 output channels or more).
    REQUIRE((pc::kernel_launches().async > before.async) == (fast && !wgmma));
    REQUIRE((pc::kernel_launches().async_cols128 > before.async_cols128) == tile128);
    REQUIRE((pc::kernel_launches().wgmma > before.wgmma) == wgmma);
    // p passes through the whole network (DAE twice, ten convolution layers, two FC layers): the
    // tensor-core modes' rounding accumulates (BF16's bounds are first guesses, to be measured).
    const int m = mode == pc::MathMode::BF16 ? 2 : mode == pc::MathMode::TF32 ? 1 : 0;
    const double p_tol[3] = {1e-3, 2e-2, 8e-2}, face_tol[3] = {1e-4, 5e-3, 2e-2};
    const int64_t max_differ[3] = {1, 9, 36};
    require_matches(from_gpu(gp, 180), ref.p.data(), 180, tag + "defense p", p_tol[m]);
    const std::vector<float> q = from_gpu(gq, 180);
    int64_t differ = 0;
    for (int64_t i = 0; i < 180; ++i) differ += q[i] != ref.q.data()[i];
    std::printf("defense masks %s: %lld of 180 bits differ from the CPU's\n", tag.c_str(), static_cast<long long>(differ));
    REQUIRE(differ <= max_differ[m]);  // a p within rounding of a uniform draw may flip a bit
    if (differ == 0) require_matches(from_gpu(gy, 3 * 12544), ref.defended.data(), 3 * 12544, tag + "defended faces", face_tol[m]);
}
}  // namespace

TEST_CASE("the GPU defense forward matches the CPU defense", "[cuda][defense][network]") {
    if (!gpu_or_skip()) return;
    const pin::cuda::KernelSettingsScope settings_scope;
    PIN_EACH_MATH_MODE();
    PIN_EACH_GATHER_MODE();
    // With BF16 arithmetic, also with the activations stored as bfloat16 (ops.cuh ActivationStorage).
    const bool bf16_storage = mode == pin::cuda::MathMode::BF16 && GENERATE(false, true);
    pin::cuda::set_activation_storage(bf16_storage ? pin::cuda::ActivationStorage::BF16 : pin::cuda::ActivationStorage::FP32);
    // And there, with the vector gather, both tiles of the asynchronous-copy kernel and the
    // warpgroup-MMA kernel (ops.cuh AsyncTileShape; where the device runs it).
    const bool fast = bf16_storage && gather == pin::cuda::GatherMode::Vector;
    const pin::cuda::AsyncTileShape tile =
        fast ? GENERATE(pin::cuda::AsyncTileShape::Cols64, pin::cuda::AsyncTileShape::Cols128, pin::cuda::AsyncTileShape::Wgmma)
             : pin::cuda::AsyncTileShape::Cols64;
    pin::cuda::set_async_tile(tile);
    const std::string tag = std::string(math_tag()) + (bf16_storage ? "[bf16 storage] " : "") +
                            (tile == pin::cuda::AsyncTileShape::Cols128 ? "[256 x 128 tile] " : "") +
                            (tile == pin::cuda::AsyncTileShape::Wgmma ? "[wgmma] " : "");
    require_defense_matches_cpu(tag);
}

// The same on the warp-specialized warpgroup-MMA kernel (a tag of its own: cuda_test_support.hpp
// WgmmaPipelines): ping-pong, storing C from the registers (ops.cuh WgmmaStores::Direct), every
// layer's epilogue (bias, PReLU, the residual sums, the sub-pixel rows) without the C regions.
TEST_CASE("the GPU defense forward on the ping-pong pipeline matches the CPU defense", "[cuda][ws][network]") {
    if (!gpu_or_skip()) return;
    const pin::cuda::KernelSettingsScope settings_scope;
    pin::cuda::set_math_mode(pin::cuda::MathMode::BF16);
    pin::cuda::set_gather_mode(pin::cuda::GatherMode::Vector);
    pin::cuda::set_activation_storage(pin::cuda::ActivationStorage::BF16);
    pin::cuda::set_async_tile(pin::cuda::AsyncTileShape::Wgmma);
    pin::cuda::set_wgmma_pipeline(pin::cuda::WgmmaPipeline::PingPong);
    pin::cuda::set_wgmma_stores(pin::cuda::WgmmaStores::Direct);
    require_defense_matches_cpu(std::string(math_tag()) + "[bf16 storage] [wgmma] [ping-pong, direct C] ");
}

TEST_CASE("a Defense with the GPU accelerator matches the CPU defense", "[cuda][defense]") {
    if (!gpu_or_skip()) return;
    pin::cuda::set_math_mode(pin::cuda::MathMode::FP32);
    pin::cuda::set_gather_mode(pin::cuda::GatherMode::Generic);
    auto agent = std::make_shared<model::Agent>(60);
    agent->reset_parameters(4);
    auto basis = std::make_shared<model::EigenBasis>(
        model::EigenBasis::from_tensors(rnd({12544, 60}, 23, Layout::NCHW), rnd({12544}, 24, Layout::NCHW)));
    const model::Defense cpu = model::Defense::from_parts(basis, agent, model::SamplingMode::Bernoulli, 3);
    model::Defense gpu = model::Defense::from_parts(basis, agent, model::SamplingMode::Bernoulli, 3);
    gpu.set_accelerator(pin::cuda::make_accelerator(gpu));
    REQUIRE(gpu.accelerated());
    Tensor x = Tensor::empty({2, 1, 112, 112}, Layout::NHWC);
    for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = std::cos(0.0007f * i) * 0.7f;
    const model::DefenseOutput a = cpu.inactivate(x, 11), b = gpu.inactivate(x, 11);
    require_matches(std::vector<float>(b.p.data(), b.p.data() + 120), a.p.data(), 120, "accelerated defense p", 1e-3);
    int64_t differ = 0;
    for (int64_t i = 0; i < 120; ++i) differ += a.q.data()[i] != b.q.data()[i];
    REQUIRE(differ <= 1);
    if (differ == 0)
        require_matches(std::vector<float>(b.defended.data(), b.defended.data() + 2 * 12544), a.defended.data(), 2 * 12544,
                        "accelerated defended faces", 1e-4);
}

TEST_CASE("the fused GPU local-expectation gradient matches the CPU estimator", "[cuda][pin][estimator]") {
    if (!gpu_or_skip()) return;
    const int64_t B = 3, N = 301, k = 7, D = 12544;
    std::vector<float> p(static_cast<size_t>(B * N)), gterm(static_cast<size_t>(B * N));
    std::vector<double> y2(static_cast<size_t>(B));
    std::vector<train::MaskCostTerms> terms;
    const Tensor cc = rnd({B, N}, 21, Layout::NCHW), dd = rnd({B, N}, 22, Layout::NCHW);
    for (size_t i = 0; i < p.size(); ++i) p[i] = 0.02f + 0.96f * static_cast<float>((i * 53) % 97) / 96.0f;
    for (int64_t b = 0; b < B; ++b) {
        terms.push_back(train::mask_cost_terms(cc.data() + b * N, dd.data() + b * N, N, 30.0 + b, D));
        // The GPU takes g in float: give the CPU the same rounded terms.
        for (int64_t j = 0; j < N; ++j) gterm[b * N + j] = static_cast<float>(terms.back().g[j]), terms.back().g[j] = gterm[b * N + j];
        y2[b] = 30.0 + b;
    }
    auto gp = to_gpu(p), gg = to_gpu(gterm);
    pin::cuda::DeviceBuffer gy2(2 * B), gdz(2 * B * N), gcost(2 * B * k), gkept(2 * B * k);
    gy2.upload(reinterpret_cast<const float*>(y2.data()), 2 * B);
    for (const bool l2 : {true, false}) {
        const train::BatchGradient cpu = train::estimate_gradient(p, terms, k, train::Estimator::LocalExpectation,
                                                                  l2 ? train::CostType::L2 : train::CostType::MSE, 0.015, 9, 40);
        pin::cuda::local_gradient(gp.data(), gg.data(), reinterpret_cast<const double*>(gy2.data()), reinterpret_cast<double*>(gdz.data()),
                                  reinterpret_cast<double*>(gcost.data()), reinterpret_cast<double*>(gkept.data()), B, N, k, l2, 0.015, D, 9,
                                  40);
        std::vector<double> dz(static_cast<size_t>(B * N)), cost(static_cast<size_t>(B * k)), kept(static_cast<size_t>(B * k));
        gdz.download(reinterpret_cast<float*>(dz.data()), 2 * B * N);
        gcost.download(reinterpret_cast<float*>(cost.data()), 2 * B * k);
        gkept.download(reinterpret_cast<float*>(kept.data()), 2 * B * k);
        pin::test::require_estimator_matches(dz, cost, kept, cpu, l2 ? "local gradient (L2 cost)" : "local gradient (MSE cost)");
    }
}

TEST_CASE("GPU training-step kernels match the CPU", "[cuda][train]") {
    if (!gpu_or_skip()) return;
    // Flatten backwards: NCHW -> NHWC, odd sizes.
    const Tensor nchw = rnd({3, 5, 7, 9}, 41, Layout::NCHW);
    const Tensor nhwc = nchw.to_layout(Layout::NHWC);
    auto gx = to_gpu(nchw);
    pin::cuda::DeviceBuffer gy(static_cast<size_t>(nchw.numel()));
    pin::cuda::nchw_to_nhwc(gx.data(), gy.data(), 3, 5, 7, 9);
    REQUIRE(from_gpu(gy, nchw.numel()) == std::vector<float>(nhwc.data(), nhwc.data() + nhwc.numel()));
    // Sum of squares in double, fixed order: equal to a double sum to rounding, and run to run.
    const Tensor v = rnd({1000003}, 42, Layout::NCHW);
    double ref = 0;
    for (int64_t i = 0; i < v.numel(); ++i) ref += static_cast<double>(v.data()[i]) * v.data()[i];
    auto gv = to_gpu(v);
    const double s1 = pin::cuda::sum_squares(gv.data(), v.numel()), s2 = pin::cuda::sum_squares(gv.data(), v.numel());
    REQUIRE(s1 == Approx(ref).epsilon(1e-12));
    REQUIRE(s1 == s2);
    // SGD with momentum and scale against nn::SGD's rule.
    const int64_t n = 5003;
    const Tensor w0 = rnd({n}, 43, Layout::NCHW), g = rnd({n}, 44, Layout::NCHW), v0 = rnd({n}, 45, Layout::NCHW);
    for (const bool first : {true, false}) {
        auto gw = to_gpu(w0), gg = to_gpu(g), gvel = to_gpu(v0);
        pin::cuda::scale(gg.data(), n, 0.5f);
        pin::cuda::sgd_step(gw.data(), gg.data(), gvel.data(), n, 0.03f, 0.9f, first);
        std::vector<float> w(w0.data(), w0.data() + n), vel(v0.data(), v0.data() + n);
        for (int64_t i = 0; i < n; ++i) {
            const float gi = g.data()[i] * 0.5f;
            vel[i] = first ? gi : 0.9f * vel[i] + gi;
            w[i] -= 0.03f * vel[i];
        }
        require_matches(from_gpu(gw, n), w.data(), n, first ? "sgd_step (first)" : "sgd_step", 1e-6);
        require_matches(from_gpu(gvel, n), vel.data(), n, first ? "sgd velocity (first)" : "sgd velocity", 1e-6);
    }
    // The training noise, drawn on the GPU: train::add_relative_noise's normals and per-image scale
    // (the device's logf / cosf may differ from the host's in the last bit). Images of 1,001 values
    // (not a multiple of the block), image numbers past 2^32.
    const Tensor faces = rnd({3, 1, 7, 143}, 46);
    const Tensor noisy = train::add_relative_noise(faces, 0.3, 99, (uint64_t{1} << 32) + 5);
    auto gfaces = to_gpu(faces);
    pin::cuda::DeviceBuffer gnoisy(static_cast<size_t>(faces.numel()));
    pin::cuda::relative_noise(gfaces.data(), gnoisy.data(), 3, 1001, 0.3, 99, (uint64_t{1} << 32) + 5);
    const std::vector<float> got = from_gpu(gnoisy, faces.numel());
    std::vector<float> eta_gpu(got.size()), eta_cpu(got.size());
    for (size_t i = 0; i < got.size(); ++i) eta_gpu[i] = got[i] - faces.data()[i], eta_cpu[i] = noisy.data()[i] - faces.data()[i];
    require_matches(eta_gpu, eta_cpu.data(), faces.numel(), "relative noise", 1e-5);
}

TEST_CASE("the GPU estimators match the CPU's batch gradient", "[cuda][train][estimator]") {
    if (!gpu_or_skip()) return;
    pin::cuda::set_math_mode(pin::cuda::MathMode::FP32);
    const int64_t B = 3, N = 50;
    auto agent = std::make_shared<model::Agent>(N);
    agent->reset_parameters(6);
    auto basis = std::make_shared<model::EigenBasis>(model::EigenBasis::compute(rnd({60, 12544}, 46, Layout::NCHW), N));
    const Tensor x = pin::test::random_tensor({B, 1, 112, 112}, 47, 0.5f, Layout::NHWC);
    const Tensor xn = train::add_relative_noise(x, 0.04, 3, 10);
    std::vector<float> p(static_cast<size_t>(B * N));
    for (size_t i = 0; i < p.size(); ++i) p[i] = 0.03f + 0.94f * static_cast<float>((i * 37) % 101) / 100.0f;
    auto gp = to_gpu(p), gx = to_gpu(x), gxn = to_gpu(xn);
    for (const auto estimator : {train::Estimator::Reinforce, train::Estimator::Rloo, train::Estimator::LocalExpectation})
        for (const auto cost : {train::CostType::L2, train::CostType::MSE}) {
            train::TrainerOptions opt;
            opt.estimator = estimator;
            opt.cost = cost;
            opt.masks = 6;
            opt.seed = 3;
            const std::string what = std::string(train::estimator_name(estimator)) + (cost == train::CostType::L2 ? " l2" : " mse");
            INFO(what);
            const train::BatchGradient cpu = train::batch_gradient(*basis, x, xn, p, opt, 10);
            pin::cuda::GpuTrainingBackend backend(*agent, *basis, opt);
            pin::cuda::DeviceBuffer gdz(static_cast<size_t>(B * N));
            const train::EstimatorResult r = backend.estimate(gp.data(), gx.data(), gxn.data(), gdz.data(), B, 10);
            std::vector<float> dz_cpu(cpu.dz.begin(), cpu.dz.end());
            require_matches(from_gpu(gdz, B * N), dz_cpu.data(), B * N, "estimator dz (" + what + ")", 1e-3);  // c, d from GEMMs in another order
            REQUIRE(r.mean_cost == Approx(cpu.mean_cost).epsilon(1e-5));
            REQUIRE(r.mean_kept == cpu.mean_kept);  // the same masks
        }
}

TEST_CASE("the GPU training step matches PolicyGradientTrainer", "[cuda][train][network]") {
    if (!gpu_or_skip()) return;
    const int64_t N = 40;
    auto basis = std::make_shared<model::EigenBasis>(model::EigenBasis::compute(rnd({50, 12544}, 48, Layout::NCHW), N));
    const Tensor x0 = pin::test::random_tensor({2, 1, 112, 112}, 49, 0.5f, Layout::NHWC);
    const Tensor x1 = pin::test::random_tensor({3, 1, 112, 112}, 50, 0.5f, Layout::NHWC);
    auto make_agent = [&] {
        auto a = std::make_shared<model::Agent>(N);
        a->reset_parameters(7);
        a->head().scale_output_layer(0.5f);
        return a;
    };
    // fp32 with both estimators; and the fast configuration (bfloat16 tensor cores, the vector gather,
    // the 3 x 3 convolutions' operands converted to bfloat16 for the asynchronous-copy kernel, with
    // either of its tiles) with the local-expectation estimator, whose gradient has no cancelling
    // advantages to amplify bfloat16's rounding.
    struct Config {
        pin::cuda::MathMode math;
        pin::cuda::GatherMode gather;
        train::Estimator estimator;
        double norm_tol, cost_tol, param_tol;
        bool tile128 = false;
        bool wgmma = false;  // the forward convolutions on the warpgroup-MMA kernel (AsyncTileShape::Wgmma)
    };
    // fp32 tolerances: both sides sum in fp32 in different orders, and REINFORCE's advantages cancel.
    // Measured under the emulation (tests/cuda_emulation.hpp): parameter changes and momentum within
    // 5.0e-3 of each tensor's largest for REINFORCE on an AVX-512 CPU (removing the weight gradients'
    // K split alone moved the first layer's from 1.8e-3 to 3.5e-3) and 1.25e-2 on an AVX2 one (the
    // CPU reference's sums run 8 lanes wide there, not 16: another order; one element of
    // esn.block5.conv1's momentum), hence 3e-2; under 4e-4 for local expectation; a wrong mask or a
    // misplaced gradient is off by O(1).
    // bfloat16: every operand of every GEMM rounded to 8 bits through 17 convolutions backwards, so
    // single elements of a gradient may be off by much of its largest; checked as a whole instead,
    // ||gpu - cpu|| / ||cpu|| per tensor: measured under the emulation at most 0.156 (the first
    // block's conv1 and PReLU; the same with and without the conversion to bfloat16 before the GEMMs,
    // which gives them the same operands), gradient norms within 4.6e-3, mean costs within 2.6e-5;
    // an unrelated gradient is off by about 1.4.
    const Config configs[] = {
        {pin::cuda::MathMode::FP32, pin::cuda::GatherMode::Generic, train::Estimator::Reinforce, 1e-3, 1e-4, 3e-2},
        {pin::cuda::MathMode::FP32, pin::cuda::GatherMode::Generic, train::Estimator::LocalExpectation, 1e-3, 1e-4, 1e-2},
        {pin::cuda::MathMode::BF16, pin::cuda::GatherMode::Vector, train::Estimator::LocalExpectation, 1e-2, 1e-4, 0.3},
        {pin::cuda::MathMode::BF16, pin::cuda::GatherMode::Vector, train::Estimator::LocalExpectation, 1e-2, 1e-4, 0.3, true},
        {pin::cuda::MathMode::BF16, pin::cuda::GatherMode::Vector, train::Estimator::LocalExpectation, 1e-2, 1e-4, 0.3, false, true},
    };
    const pin::cuda::KernelSettingsScope settings_scope;
    for (const Config& cfg : configs) {
        pin::cuda::set_math_mode(cfg.math);
        pin::cuda::set_gather_mode(cfg.gather);
        pin::cuda::set_async_tile(cfg.wgmma     ? pin::cuda::AsyncTileShape::Wgmma
                                  : cfg.tile128 ? pin::cuda::AsyncTileShape::Cols128
                                                : pin::cuda::AsyncTileShape::Cols64);
        const std::string tag =
            std::string(math_tag()) + train::estimator_name(cfg.estimator) + (cfg.tile128 ? " 256x128" : "") + (cfg.wgmma ? " wgmma" : "");
        INFO("configuration " << tag);
        train::TrainerOptions opt;
        opt.estimator = cfg.estimator;
        opt.masks = 5;
        opt.lr = 0.02f;
        opt.clip_norm = 1;
        opt.features_lr_scale = 0.5f;
        opt.seed = 4;
        auto ref_agent = make_agent();
        train::PolicyGradientTrainer ref(ref_agent, basis, opt);
        const train::StepStats c0 = ref.step(x0, 0), c1 = ref.step(x1, 2);
        auto agent = make_agent();
        train::PolicyGradientTrainer holder(agent, basis, opt);
        pin::cuda::GpuTrainingBackend backend(*agent, *basis, opt);
        pin::cuda::GpuTrainer gpu(backend, *agent, holder.optimizer(), opt);
        const pin::cuda::KernelLaunches before = pin::cuda::kernel_launches();
        const train::StepStats b0 = gpu.step(x0, 0), b1 = gpu.step(x1, 2);
        // BF16: the 3 x 3 convolutions' passes between bfloat16 operands on the asynchronous-copy
        // kernel, or with the wgmma tile (where the device runs it) all of them on the warpgroup MMA.
        const bool on_wgmma = cfg.wgmma && pin::cuda::wgmma_supported();
        if (cfg.math == pin::cuda::MathMode::BF16) REQUIRE((pin::cuda::kernel_launches().async > before.async) == !on_wgmma);
        REQUIRE((pin::cuda::kernel_launches().async_cols128 > before.async_cols128) == cfg.tile128);
        REQUIRE((pin::cuda::kernel_launches().wgmma > before.wgmma) == on_wgmma);
        std::printf("gpu training step (%s): grad norms %.6g %.6g, cpu %.6g %.6g; mean costs %.6g %.6g, cpu %.6g %.6g\n", tag.c_str(),
                    b0.grad_norm, b1.grad_norm, c0.grad_norm, c1.grad_norm, b0.mean_cost, b1.mean_cost, c0.mean_cost, c1.mean_cost);
        REQUIRE(b0.grad_norm == Approx(c0.grad_norm).epsilon(cfg.norm_tol));
        REQUIRE(b1.grad_norm == Approx(c1.grad_norm).epsilon(cfg.norm_tol));
        REQUIRE(b0.mean_cost == Approx(c0.mean_cost).epsilon(cfg.cost_tol));
        REQUIRE(b1.mean_cost == Approx(c1.mean_cost).epsilon(cfg.cost_tol));
        gpu.download(*agent, holder.optimizer());
        // The change of every parameter over the two steps, and the momentum (the gradients' sum), to
        // param_tol of each tensor's largest.
        auto init = make_agent();
        train::PolicyGradientTrainer init_holder(init, basis, opt);
        const auto got = holder.trained_parameters(), want = ref.trained_parameters(), start = init_holder.trained_parameters();
        for (size_t k = 0; k < got.size(); ++k) {
            const Tensor& a = got[k].param->value;
            const Tensor& b = want[k].param->value;
            const Tensor& a0 = start[k].param->value;
            std::vector<float> da(static_cast<size_t>(a.numel())), db(static_cast<size_t>(a.numel()));
            for (int64_t i = 0; i < a.numel(); ++i) da[i] = a.data()[i] - a0.data()[i], db[i] = b.data()[i] - a0.data()[i];
            const Tensor& va = holder.optimizer().velocity()[k];
            const Tensor& vb = ref.optimizer().velocity()[k];
            const std::vector<float> vgot(va.data(), va.data() + va.numel());
            if (cfg.math == pin::cuda::MathMode::FP32) {
                require_matches(da, db.data(), b.numel(), "step " + tag + " " + got[k].name, cfg.param_tol);
                require_matches(vgot, vb.data(), vb.numel(), "momentum " + tag + " " + got[k].name, cfg.param_tol);
            } else {
                require_relative_l2(da, db.data(), b.numel(), "step " + tag + " " + got[k].name, cfg.param_tol);
                require_relative_l2(vgot, vb.data(), vb.numel(), "momentum " + tag + " " + got[k].name, cfg.param_tol);
            }
        }
    }
}

TEST_CASE("GPU work on separate streams gives the default stream's results, also from several threads", "[cuda][defense][stream][network]") {
    if (!gpu_or_skip()) return;
    pin::cuda::set_math_mode(pin::cuda::MathMode::FP32);
    pin::cuda::set_gather_mode(pin::cuda::GatherMode::Generic);
    // One convolution on a stream of its own: the same bits as on the default stream.
    const pin::cuda::ConvShape s{3, 17, 19, 32, 48, 3, 1, 1};
    const Tensor x = rnd({3, 32, 17, 19}, 61), w = rnd({48, 32, 3, 3}, 62, Layout::NCHW);
    auto gx = to_gpu(x), gw = to_gpu(w);
    const int64_t ny = 3 * 17 * 19 * 48;
    pin::cuda::DeviceBuffer y0(static_cast<size_t>(ny));
    pin::cuda::conv2d_forward(gx.data(), gw.data(), y0.data(), s);
    std::vector<float> on_stream;
    {
        pin::cuda::Stream stream;
        const pin::cuda::StreamScope scope(stream);
        pin::cuda::DeviceBuffer y1(static_cast<size_t>(ny));
        pin::cuda::conv2d_forward(gx.data(), gw.data(), y1.data(), s);
        on_stream = from_gpu(y1, ny);  // the download waits for the stream
    }
    REQUIRE(on_stream == from_gpu(y0, ny));
    // A Defense with the GPU accelerator called from four threads at once (each on its own stream):
    // every thread's result equals the one computed alone.
    auto agent = std::make_shared<model::Agent>(60);
    agent->reset_parameters(8);
    auto basis = std::make_shared<model::EigenBasis>(
        model::EigenBasis::from_tensors(rnd({12544, 60}, 63, Layout::NCHW), rnd({12544}, 64, Layout::NCHW)));
    model::Defense gpu = model::Defense::from_parts(basis, agent, model::SamplingMode::Bernoulli, 5);
    gpu.set_accelerator(pin::cuda::make_accelerator(gpu));
    std::vector<Tensor> inputs, alone(4), together(4);
    for (int t = 0; t < 4; ++t) inputs.push_back(pin::test::random_tensor({2, 1, 112, 112}, 70 + t, 0.6f, Layout::NHWC));
    for (int t = 0; t < 4; ++t) alone[t] = gpu.inactivate(inputs[t], 10 * t).defended;
    std::vector<std::thread> threads;
    std::vector<std::string> errors(4);
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&, t] {
            try {
                together[t] = gpu.inactivate(inputs[t], 10 * t).defended;
            } catch (const std::exception& e) {
                errors[t] = e.what();
            }
        });
    for (auto& th : threads) th.join();
    for (int t = 0; t < 4; ++t) {
        INFO("thread " << t << ": " << errors[t]);
        REQUIRE(errors[t].empty());
        REQUIRE(pin::test::bitwise_equal(together[t], alone[t]));
    }
}

// What both tuning cases check of a report: each configuration reached the kernels its settings
// name (the launch counters after each, `after`, against those before it, from `last`), the chosen
// one is the fastest, and the settings in force before tuning (`before`) are in force again.
static void require_tuning_reached_and_restored(const pin::cuda::TuningReport& report, const std::vector<pin::cuda::KernelLaunches>& after,
                                                pin::cuda::KernelLaunches last, const pin::cuda::KernelSettings& before) {
    namespace pc = pin::cuda;
    REQUIRE(after.size() == report.results.size());
    REQUIRE(report.best() != nullptr);
    for (size_t i = 0; i < after.size(); ++i) {
        const pc::KernelSettings& k = report.results[i].candidate.settings;
        INFO(report.results[i].candidate.name);
        REQUIRE((after[i].async > last.async) == (k.tile != pc::AsyncTileShape::Wgmma));
        REQUIRE((after[i].async_cols128 > last.async_cols128) == (k.tile == pc::AsyncTileShape::Cols128));
        REQUIRE((after[i].wgmma > last.wgmma) == (k.tile == pc::AsyncTileShape::Wgmma));
        REQUIRE((after[i].wgmma_tma > last.wgmma_tma) == (k.loads == pc::WgmmaLoads::TensorCopies));
        last = after[i];
        if (report.results[i].ms < report.best()->ms) FAIL("a faster configuration than the chosen one");
    }
    const pc::KernelSettings now = pc::KernelSettings::current();
    REQUIRE((now.math == before.math && now.gather == before.gather && now.storage == before.storage && now.tile == before.tile &&
             now.pipeline == before.pipeline && now.caching == before.caching && now.loads == before.loads && now.mma_n == before.mma_n));
}

// GPU tuning (gpu_tuning.hpp) on the whole network: each configuration tried reaches the kernels
// it names, passes the check against the fp32 forward (on the emulation every kernel computes as
// the hardware should), is timed, the fastest is chosen, and the settings in force before come back.
// Three of the configurations (the others differ only in settings the [defense] and [ws] cases
// check), at batch 1: every forward is seconds on the emulation.
TEST_CASE("GPU tuning chooses the fastest configuration that matches the fp32 forward", "[cuda][tune][network]") {
    if (!gpu_or_skip()) return;
    namespace pc = pin::cuda;
    const pc::KernelSettingsScope settings_scope;
    auto agent = std::make_shared<model::Agent>(60);
    agent->reset_parameters(5);
    auto basis = std::make_shared<model::EigenBasis>(
        model::EigenBasis::from_tensors(rnd({12544, 60}, 25, Layout::NCHW), rnd({12544}, 26, Layout::NCHW)));
    const model::Defense defense = model::Defense::from_parts(basis, agent, model::SamplingMode::Bernoulli, 0);
    const std::vector<pc::TuningCandidate> all = pc::bf16_candidates();
    const bool wgmma = pc::wgmma_supported();
    REQUIRE(all.size() == (wgmma ? 11u : 3u));
    std::vector<pc::TuningCandidate> some = {all[0]};
    if (wgmma) some.push_back(all[3]), some.push_back(all.back());  // wgmma wait + L1; ping-pong, tensor copies, N 256
    pc::TuningOptions options;
    options.batch = 1;
    options.repeats = 1;
    options.hang_seconds = 60;  // or 20 fp32 forwards' time each: the emulation's are seconds
    // Which kernels each configuration reached, from the launch counters around it.
    std::vector<pc::KernelLaunches> after;
    pc::KernelLaunches last = pc::kernel_launches();
    options.on_result = [&](const pc::TuningResult&) { after.push_back(pc::kernel_launches()); };
    const pc::KernelSettings before = pc::KernelSettings::current();
    // On weights already on the device, as `pin` tunes (the run then uses them: below).
    auto gpu = std::make_shared<pc::GpuDefense>(*agent, *basis);
    const pc::TuningReport report = pc::tune_defense(*gpu, defense, some, options);
    REQUIRE(report.results.size() == some.size());
    REQUIRE(after.size() == some.size());
    REQUIRE(report.fp32_ms > 0);
    for (size_t i = 0; i < some.size(); ++i) {
        const pc::TuningResult& r = report.results[i];
        INFO(r.candidate.name << ": " << r.why);
        std::printf("tuning %-40s %s, p error %.3g, faces error %.3g over %lld images, %.1f ms\n", r.candidate.name.c_str(),
                    r.accepted ? "passed" : "failed", r.p_error, r.face_error, static_cast<long long>(r.faces_checked), r.ms);
        REQUIRE(r.candidate.name == some[i].name);
        REQUIRE(r.target == pc::TuningTarget::DefenseForward);
        REQUIRE(r.accepted);
        REQUIRE(r.ms > 0);
        REQUIRE(r.p_error <= options.p_tolerance);
    }
    require_tuning_reached_and_restored(report, after, last, before);
    // The tuned device weights (every configuration's packed forms among them) run the choice as a
    // fresh copy of the defense does, bit for bit.
    report.best()->candidate.settings.apply();
    const Tensor x = pin::test::random_tensor({1, 1, 112, 112}, 27, 0.6f, Layout::NHWC);
    const model::DefenseOutput tuned = pc::make_accelerator(gpu)(x, 9, 0), fresh = pc::make_accelerator(defense)(x, 9, 0);
    REQUIRE(pin::test::bitwise_equal(tuned.p, fresh.p));
    REQUIRE(pin::test::bitwise_equal(tuned.q, fresh.q));
    REQUIRE(pin::test::bitwise_equal(tuned.defended, fresh.defended));
}

// The same for the training step (tune_training_step): each configuration's first step from the
// agent's weights is checked against the fp32 step's gradients and passes, reaches the kernels it
// names, is timed; the fastest is chosen, the settings come back, and the agent and its momentum
// are as they were (the run trains from them next). Two configurations at batch 1.
TEST_CASE("GPU tuning of the training step chooses a configuration whose gradients match fp32's", "[cuda][tune][train][network]") {
    if (!gpu_or_skip()) return;
    namespace pc = pin::cuda;
    const pc::KernelSettingsScope settings_scope;
    const int64_t N = 40;
    auto basis = std::make_shared<model::EigenBasis>(model::EigenBasis::compute(rnd({50, 12544}, 51, Layout::NCHW), N));
    auto agent = std::make_shared<model::Agent>(N);
    agent->reset_parameters(8);
    agent->head().scale_output_layer(0.5f);
    train::TrainerOptions opt;
    opt.estimator = train::Estimator::LocalExpectation;
    opt.masks = 5;
    opt.clip_norm = 1;
    opt.seed = 6;
    train::PolicyGradientTrainer holder(agent, basis, opt);
    holder.step(pin::test::random_tensor({1, 1, 112, 112}, 52, 0.5f, Layout::NHWC), 0);  // some momentum to keep
    std::vector<std::vector<float>> weights_before, momentum_before;
    for (const auto& p : holder.trained_parameters())
        weights_before.emplace_back(p.param->value.data(), p.param->value.data() + p.param->value.numel());
    for (const Tensor& v : holder.optimizer().velocity()) momentum_before.emplace_back(v.data(), v.data() + v.numel());
    pc::GpuTrainingBackend backend(*agent, *basis, opt);
    const std::vector<pc::TuningCandidate> all = pc::bf16_candidates();
    const bool wgmma = pc::wgmma_supported();
    const std::vector<pc::TuningCandidate> some = {all[2], wgmma ? all[3] : all[0]};  // 256 x 128; wgmma wait + L1 (or 256 x 64)
    pc::TuningOptions options;
    options.batch = 1;
    options.repeats = 1;
    options.hang_seconds = 60;
    std::vector<pc::KernelLaunches> after;
    pc::KernelLaunches last = pc::kernel_launches();
    options.on_result = [&](const pc::TuningResult&) { after.push_back(pc::kernel_launches()); };
    const pc::KernelSettings before = pc::KernelSettings::current();
    const pc::TuningReport report = pc::tune_training_step(backend, *agent, holder.optimizer(), opt, some, options);
    REQUIRE(report.results.size() == some.size());
    REQUIRE(report.fp32_ms > 0);
    for (size_t i = 0; i < some.size(); ++i) {
        const pc::TuningResult& r = report.results[i];
        INFO(r.candidate.name << ": " << r.why);
        std::printf("training tuning %-30s %s, gradients within %.3g (furthest %s), %.1f ms\n", r.candidate.name.c_str(),
                    r.accepted ? "passed" : "failed", r.gradient_error, r.furthest_tensor.c_str(), r.ms);
        REQUIRE(r.target == pc::TuningTarget::TrainingStep);
        REQUIRE(r.accepted);
        REQUIRE(r.ms > 0);
        REQUIRE(r.gradient_error > 0);  // bfloat16 rounds: a zero would mean fp32 ran again
        REQUIRE(r.gradient_error <= options.gradient_tolerance);
    }
    require_tuning_reached_and_restored(report, after, last, before);
    const auto params = holder.trained_parameters();
    for (size_t k = 0; k < params.size(); ++k) {
        INFO(params[k].name);
        REQUIRE(std::equal(weights_before[k].begin(), weights_before[k].end(), params[k].param->value.data()));
        REQUIRE(std::equal(momentum_before[k].begin(), momentum_before[k].end(), holder.optimizer().velocity()[k].data()));
    }
}
#endif
