// The GPU's GEMM kernels (cuda/gemm_kernels.cuh) run on the CPU under tests/cuda_emulation.hpp,
// against a float64 product of the same operands rounded as each kernel rounds them (none for fp32,
// TF32 or bfloat16 for the tensor cores), so the only differences left are fp32 sums in another
// order: checked at 2e-5 of the sum of the products' magnitudes. A wrong tile offset, a stage read
// before it is written, a fragment at the wrong place or a misaligned WMMA pointer fails it; every
// output must be stored exactly once. Geometries: odd sizes, partial tiles in M and N, K not a
// multiple of the slice, direct and transposed gathers, strides 1 and 2, 1 x 1, K split in chunks.
#include "cuda_emulation.hpp"  // first: gemm_kernels.cuh checks for it on the host

#include <atomic>
#include <cmath>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "gemm_kernels.cuh"
#include "helpers.hpp"
#include "wgmma_gemm.cuh"

using namespace pin;
namespace gemm = pin::cuda::gemm;

namespace {
enum class Rounding { None, Tf32, Bf16 };
float rounded(float x, Rounding r) {
    if (r == Rounding::Tf32) return nvcuda::wmma::__float_to_tf32(x);
    if (r == Rounding::Bf16) return __bfloat162float(__float2bfloat16_rn(x));
    return x;
}

// out[(z M + m) N + n] = v, counting the writes of each element.
struct HostStore {
    float* out;
    std::atomic<int>* writes;
    int64_t M, N;
    void operator()(int64_t z, int64_t m, int64_t n, float v) const {
        const size_t i = static_cast<size_t>((z * M + m) * N + n);
        out[i] = v;
        writes[i].fetch_add(1, std::memory_order_relaxed);
    }
};

struct Result {
    std::vector<float> out;  // z chunks of M x N
    std::unique_ptr<std::atomic<int>[]> writes;
    int64_t z, M, N;
    Result(int64_t z_, int64_t M_, int64_t N_)
        : out(static_cast<size_t>(z_ * M_ * N_), 0.0f), writes(new std::atomic<int>[static_cast<size_t>(z_ * M_ * N_)]()), z(z_), M(M_), N(N_) {}
    HostStore store() { return HostStore{out.data(), writes.get(), M, N}; }
};

// Every output stored once, and the chunks' sum within 2e-5 of the magnitudes' sum of float64 A B.
template <class LoadA, class LoadB>
void require_product(Result& r, int64_t K, const LoadA& a, const LoadB& b, Rounding rounding, const std::string& what) {
    INFO(what << ": M " << r.M << " N " << r.N << " K " << K << " chunks " << r.z);
    int64_t missing = 0, worst_at = -1;
    double worst = 0, largest = 0;
    for (int64_t m = 0; m < r.M; ++m)
        for (int64_t n = 0; n < r.N; ++n) {
            double ref = 0, mag = 0, got = 0;
            for (int64_t k = 0; k < K; ++k) {
                const double p = static_cast<double>(rounded(a(m, k), rounding)) * rounded(b(k, n), rounding);
                ref += p;
                mag += std::fabs(p);
            }
            for (int64_t z = 0; z < r.z; ++z) {
                const size_t i = static_cast<size_t>((z * r.M + m) * r.N + n);
                missing += r.writes[i].load() != 1;
                got += r.out[i];
            }
            const double err = std::fabs(got - ref) / std::max(mag, 1e-30);
            if (!(err <= worst)) worst = std::isnan(err) ? HUGE_VAL : err, worst_at = m * r.N + n;  // NaN (a read of undefined shared memory) fails
            largest = std::max(largest, std::fabs(ref));
        }
    INFO("worst relative error " << worst << " at output " << worst_at);
    REQUIRE(largest > 0);  // the operands are not all zeros
    REQUIRE(missing == 0);
    REQUIRE(worst < 2e-5);
}

struct ConvGeometry {
    int64_t B, H, W, C, N, k, stride, pad;
    int64_t Ho() const { return (H + 2 * pad - k) / stride + 1; }
    int64_t Wo() const { return (W + 2 * pad - k) / stride + 1; }
};
std::vector<float> random_vector(int64_t n, uint64_t seed) {
    const Tensor t = test::random_tensor({n}, seed, 1.0f);
    return std::vector<float>(t.data(), t.data() + n);
}

std::vector<cuda::Bf16> bf16_vector(int64_t n, uint64_t seed) {
    const std::vector<float> f = random_vector(n, seed);
    std::vector<cuda::Bf16> v(f.size());
    for (size_t i = 0; i < f.size(); ++i) v[i] = cuda::to_bf16(f[i]);
    return v;
}

// A forward (direct) or input-gradient (transposed) convolution as the GEMM launch_gemm makes of
// it: rows over the output (or input) grid, K = k^2 C gathered, weights row-major (K, N).
template <bool kTransposed>
struct ConvProblem {
    std::vector<float> src, w;
    cuda::Gather<kTransposed> la;
    gemm::RowMajor lb;
    int64_t M, N, K;
    explicit ConvProblem(const ConvGeometry& g, uint64_t seed) {
        // Direct: the source is the input (H x W), rows the output grid. Transposed: the source is
        // the output gradient (Ho x Wo), rows the input grid.
        const int64_t sh = kTransposed ? g.Ho() : g.H, sw = kTransposed ? g.Wo() : g.W;
        const int64_t rh = kTransposed ? g.H : g.Ho(), rw = kTransposed ? g.W : g.Wo();
        src = random_vector(g.B * sh * sw * g.C, seed);
        K = g.k * g.k * g.C;
        N = g.N;
        M = g.B * rh * rw;
        w = random_vector(K * N, seed + 1);
        la = cuda::Gather<kTransposed>{src.data(), rh, rw, sh, sw, g.C, g.k, g.stride, g.pad};
        lb = gemm::RowMajor{w.data(), N};
    }
};

// Row-major bfloat16 weights read as floats: the reference for the asynchronous-copy kernel's B.
struct Bf16Rows {
    const cuda::Bf16* a;
    int64_t ld;
    float operator()(int64_t k, int64_t n) const { return cuda::to_float(a[k * ld + n]); }
};

template <class Launch>
void emulate(const gemm::GemmGrid& g, Launch launch) {
    pin_emulation::launch(dim3(g.x, g.y, g.z), gemm::THREADS, launch);
}
// The tensor-core kernel as launch_tensor_core (ops_internal.cuh) picks it for a gathered A: the
// row-gather instantiation where la.rows.
template <class Mma, class LoadA, class LoadB, class Store>
void emulate_tensor_core(const gemm::GemmGrid& g, int64_t M, int64_t N, int64_t K, const LoadA& la, const LoadB& lb, const Store& st) {
    if (la.rows)
        emulate(g, [&] { gemm::gemm_tensor_core_kernel<Mma, false, true>(M, N, K, g.chunk, la, lb, st); });
    else
        emulate(g, [&] { gemm::gemm_tensor_core_kernel<Mma, false, false>(M, N, K, g.chunk, la, lb, st); });
}
// The asynchronous-copy kernel with tile T, with its dynamic shared memory.
template <class T, class Launch>
void emulate_async(const gemm::GemmGrid& g, Launch launch) {
    pin_emulation::launch(dim3(g.x, g.y, g.z), gemm::THREADS, launch, T::smem_bytes);
}
// f(tile) for both tiles of the asynchronous-copy kernel (ops.cuh AsyncTileShape): 256 x 64 and
// 256 x 128 (whose warps compute 64 x 64 each).
template <class Tile64, class Tile128, class F>
void for_each_async_tile(F f) {
    {
        INFO("tile 256 x 64");
        f(Tile64{});
    }
    {
        INFO("tile 256 x 128");
        f(Tile128{});
    }
}
}  // namespace

TEST_CASE("emulated: the wide BF16 kernel (GatherMode::Vector) computes the convolution GEMMs", "[gather][emulated]") {
    struct Case {
        bool transposed;
        ConvGeometry g;
    };
    for (const Case& c : {Case{false, {2, 9, 11, 64, 48, 3, 1, 1}}, Case{false, {1, 13, 10, 32, 100, 3, 2, 1}},
                          Case{true, {2, 12, 9, 64, 36, 3, 2, 1}}, Case{false, {1, 7, 9, 96, 68, 1, 1, 0}}}) {
        auto run = [&](auto&& problem, const char* name) {
            Result r(1, problem.M, problem.N);
            const HostStore st = r.store();
            const gemm::GemmGrid grid = gemm::gemm_grid(problem.M, problem.N, problem.K, 1, gemm::kWideTile);
            using P = std::decay_t<decltype(problem)>;
            const gemm::WideConvOperands<decltype(P::la), gemm::RowMajor> ops{problem.la, problem.lb};
            emulate(grid, [&] { gemm::gemm_wide_kernel(problem.M, problem.N, problem.K, grid.chunk, ops, st); });
            require_product(r, problem.K, problem.la, problem.lb, Rounding::Bf16, name);
        };
        if (c.transposed)
            run(ConvProblem<true>(c.g, 21), "wide, transposed gather");
        else
            run(ConvProblem<false>(c.g, 22), "wide, direct gather");
    }
}

TEST_CASE("emulated: the asynchronous-copy kernel computes the convolution GEMMs from bfloat16 operands", "[gather][emulated]") {
    // Both operands bfloat16 in memory, copied to shared memory as they are (cp.async, which the
    // emulation lands only at the wait that covers it): the product of those values, fp32 sums.
    struct Case {
        ConvGeometry g;
        bool transposed;  // an input-gradient (transposed) gather: at stride 2 one GEMM per sub-pixel class
    };
    // Partial tiles in M and N, two row tiles (286 rows); 1, 2 and 9 taps; K of 1, 2 and 18 slices
    // (one slice: fewer than the pipeline's stages); two column tiles (three of 64 columns).
    for (const Case& c : {Case{{2, 13, 11, 64, 48, 3, 1, 1}, false}, Case{{1, 13, 10, 32, 104, 3, 2, 1}, false},
                          Case{{1, 7, 9, 32, 72, 1, 1, 0}, false}, Case{{1, 7, 9, 32, 136, 1, 1, 0}, false},
                          Case{{2, 5, 6, 64, 40, 1, 2, 0}, false}, Case{{2, 7, 6, 64, 40, 3, 2, 1}, true},
                          Case{{1, 9, 10, 32, 24, 3, 1, 1}, true}}) {
        const ConvGeometry& g = c.g;
        INFO("C " << g.C << " N " << g.N << " k " << g.k << " stride " << g.stride << (c.transposed ? " transposed" : ""));
        for_each_async_tile<gemm::AsyncTileUsed, gemm::AsyncTileCols128>([&](auto tile) {
            using T = decltype(tile);
            constexpr gemm::Tile t = gemm::tile_of_async<T>();
            const int64_t K = g.k * g.k * g.C;
            const std::vector<cuda::Bf16> w = bf16_vector(K * g.N, 62);
            if (!c.transposed) {
                const std::vector<cuda::Bf16> src = bf16_vector(g.B * g.H * g.W * g.C, 61);
                const cuda::Gather<false, cuda::Bf16> la{src.data(), g.Ho(), g.Wo(), g.H, g.W, g.C, g.k, g.stride, g.pad};
                const Bf16Rows lb{w.data(), g.N};
                const int64_t M = g.B * g.Ho() * g.Wo();
                Result r(1, M, g.N);
                const HostStore st = r.store();
                const gemm::AsyncConvOperands<decltype(la), T> ops{la, w.data(), g.N};
                REQUIRE(ops.fits(M, g.N, K, 1));
                const gemm::GemmGrid grid = gemm::gemm_grid(M, g.N, K, 1, t);
                emulate_async<T>(grid, [&] { gemm::gemm_async_kernel(M, g.N, K, grid.chunk, ops, st); });
                require_product(r, K, la, lb, Rounding::None, "asynchronous copies, direct gather");
                return;
            }
            // The input gradient's geometry of a stride-2 convolution: the source is Ho x Wo.
            const std::vector<cuda::Bf16> src = bf16_vector(g.B * g.Ho() * g.Wo() * g.C, 63);
            const cuda::Gather<true, cuda::Bf16> whole{src.data(), g.H, g.W, g.Ho(), g.Wo(), g.C, g.k, g.stride, g.pad};
            const int64_t M = g.B * g.H * g.W;
            Result r(1, M, g.N);
            if (g.stride == 1) {  // one GEMM over the whole gather
                const gemm::AsyncConvOperands<cuda::Gather<true, cuda::Bf16>, T> ops{whole, w.data(), g.N};
                REQUIRE(ops.fits(M, g.N, K, 1));
                const HostStore st = r.store();
                const gemm::GemmGrid grid = gemm::gemm_grid(M, g.N, K, 1, t);
                emulate_async<T>(grid, [&] { gemm::gemm_async_kernel(M, g.N, K, grid.chunk, ops, st); });
                require_product(r, K, whole, Bf16Rows{w.data(), g.N}, Rounding::None, "asynchronous copies, transposed gather");
                return;
            }
            // A whole transposed gather at stride 2 would read between source pixels: refused.
            REQUIRE_FALSE(gemm::AsyncConvOperands<cuda::Gather<true, cuda::Bf16>, T>{whole, w.data(), g.N}.fits(M, g.N, K, 1));
            for (int ry = 0; ry < 2; ++ry)
                for (int rx = 0; rx < 2; ++rx) {
                    const cuda::SubpixelGather<cuda::Bf16> sg = cuda::subpixel_gather(whole, ry, rx);
                    const int64_t Mc = g.B * sg.rows_per_image(), Kc = sg.depth();
                    const gemm::AsyncConvOperands<cuda::SubpixelGather<cuda::Bf16>, T> ops{sg, w.data(), g.N};
                    REQUIRE(ops.fits(Mc, g.N, Kc, 1));
                    const gemm::RowMappedStore<HostStore, cuda::SubpixelGather<cuda::Bf16>> st{r.store(), sg};
                    const gemm::GemmGrid grid = gemm::gemm_grid(Mc, g.N, Kc, 1, t);
                    emulate_async<T>(grid, [&] { gemm::gemm_async_kernel(Mc, g.N, Kc, grid.chunk, ops, st); });
                }
            require_product(r, K, whole, Bf16Rows{w.data(), g.N}, Rounding::None, "asynchronous copies, sub-pixel classes");
        });
    }
}

TEST_CASE("emulated: the asynchronous-copy kernel computes the weight gradients from bfloat16 operands", "[gather][emulated]") {
    // dw^T = X^T dY: rows (tap, input channel), columns output channels, K the output pixels split in
    // chunks (blockIdx.z), each thread's pixel walked by 32 per slice with carries into rows and
    // images. Cases: a partial row tile (M = 9 * 8 = 72, one image smaller than a slice: 3 x 4
    // output pixels, so a slice spans several images), stride 2 with a pixel count off the slice and
    // two column tiles (N = 72), three row tiles with a partial last (M = 9 * 64 = 576) in 1, 3 and 7
    // chunks, a 1 x 1 stride-2 layer, N = 136 (two column tiles of the 256 x 128 tile). Both tiles.
    struct Case {
        ConvGeometry g;  // C input channels, N output channels
        int64_t splits;
    };
    for (const Case& c : {Case{{5, 3, 4, 8, 16, 3, 1, 1}, 1}, Case{{2, 13, 11, 16, 72, 3, 2, 1}, 2}, Case{{2, 9, 7, 64, 24, 3, 1, 1}, 1},
                          Case{{2, 9, 7, 64, 24, 3, 1, 1}, 3}, Case{{3, 10, 9, 64, 8, 3, 1, 1}, 7}, Case{{2, 9, 11, 24, 40, 1, 2, 0}, 2},
                          Case{{1, 6, 7, 16, 136, 3, 1, 1}, 2}}) {
        const ConvGeometry& g = c.g;
        INFO("C " << g.C << " N " << g.N << " k " << g.k << " stride " << g.stride << " splits " << c.splits);
        for_each_async_tile<gemm::AsyncWeightGradTile, gemm::AsyncWeightGradTileCols128>([&](auto tile) {
            using T = decltype(tile);
            const std::vector<cuda::Bf16> x = bf16_vector(g.B * g.H * g.W * g.C, 71), dy = bf16_vector(g.B * g.Ho() * g.Wo() * g.N, 72);
            const cuda::Gather<false, cuda::Bf16> gathered{x.data(), g.Ho(), g.Wo(), g.H, g.W, g.C, g.k, g.stride, g.pad};
            const int64_t M = g.k * g.k * g.C, P = g.B * g.Ho() * g.Wo();
            const gemm::AsyncWeightGradOperands<T> ops{gathered, dy.data()};
            REQUIRE(ops.fits(M, g.N, P, c.splits));
            const gemm::GemmGrid grid = gemm::gemm_grid(M, g.N, P, c.splits, gemm::tile_of_async<T>());
            REQUIRE((grid.z > 1) == (c.splits > 1));
            Result r(grid.z, M, g.N);
            const HostStore st = r.store();
            emulate_async<T>(grid, [&] { gemm::gemm_async_kernel(M, g.N, P, grid.chunk, ops, st); });
            // A(m, k) = the gathered input at pixel k, column m; B(k, n) = dy[k N + n].
            const auto a = [&](int64_t m, int64_t k) { return gathered(k, m); };
            require_product(r, P, a, Bf16Rows{dy.data(), g.N}, Rounding::None, "asynchronous copies, weight gradient");
        });
    }
    // A channel count off the 16-byte copies, or M other than k^2 C, is refused.
    const std::vector<cuda::Bf16> x(2 * 5 * 5 * 12), dy(2 * 5 * 5 * 8);
    REQUIRE_FALSE(gemm::AsyncWeightGradOperands<>{{x.data(), 5, 5, 5, 5, 12, 3, 1, 1}, dy.data()}.fits(108, 8, 50, 1));
    REQUIRE_FALSE(gemm::AsyncWeightGradOperands<>{{x.data(), 5, 5, 5, 5, 8, 3, 1, 1}, dy.data()}.fits(64, 8, 50, 1));
    REQUIRE_FALSE(gemm::AsyncWeightGradOperands<>{{x.data(), 5, 5, 5, 5, 8, 3, 1, 1}, dy.data()}.fits(72, 12, 50, 1));
}

TEST_CASE("emulated: the fp32 and tensor-core GEMM kernels compute the convolution GEMMs", "[gather][emulated]") {
    // C = 48: the row gather applies (a multiple of 16) but not the wide kernel; C = 5: generic only.
    const ConvGeometry direct{2, 7, 9, 48, 70, 3, 1, 1}, strided{1, 11, 8, 5, 7, 3, 2, 1}, transposed{1, 10, 9, 32, 20, 3, 2, 1};
    for (const bool rows : {false, true}) {
        INFO("row gather " << rows);
        {
            ConvProblem<false> p(direct, 31);
            p.la.rows = rows;
            for (const int mode : {0, 1, 2}) {
                const gemm::GemmGrid grid = gemm::gemm_grid(p.M, p.N, p.K, 1, mode != 0 ? gemm::kTensorCoreTile : gemm::kFp32Tile);
                Result r(grid.z, p.M, p.N);
                const HostStore st = r.store();
                if (mode == 0)
                    emulate(grid, [&] { gemm::gemm_kernel<false>(p.M, p.N, p.K, grid.chunk, p.la, p.lb, st); });
                else if (mode == 1)
                    emulate_tensor_core<gemm::Tf32Mma>(grid, p.M, p.N, p.K, p.la, p.lb, st);
                else
                    emulate_tensor_core<gemm::Bf16Mma>(grid, p.M, p.N, p.K, p.la, p.lb, st);
                const Rounding rounding[3] = {Rounding::None, Rounding::Tf32, Rounding::Bf16};
                require_product(r, p.K, p.la, p.lb, rounding[mode], "direct 3x3, 48 -> 70, math mode " + std::to_string(mode));
            }
        }
        {
            ConvProblem<true> p(transposed, 32);
            p.la.rows = rows;
            const gemm::GemmGrid grid = gemm::gemm_grid(p.M, p.N, p.K, 1, gemm::kTensorCoreTile);
            Result r(grid.z, p.M, p.N);
            const HostStore st = r.store();
            emulate_tensor_core<gemm::Bf16Mma>(grid, p.M, p.N, p.K, p.la, p.lb, st);
            require_product(r, p.K, p.la, p.lb, Rounding::Bf16, "transposed gather, stride 2, 32 -> 20, bf16");
        }
    }
    ConvProblem<false> p(strided, 33);  // 5 channels: generic decode, K = 45 ends inside a slice
    const gemm::GemmGrid grid = gemm::gemm_grid(p.M, p.N, p.K, 1, gemm::kFp32Tile);
    Result r(grid.z, p.M, p.N);
    const HostStore st = r.store();
    emulate(grid, [&] { gemm::gemm_kernel<false>(p.M, p.N, p.K, grid.chunk, p.la, p.lb, st); });
    require_product(r, p.K, p.la, p.lb, Rounding::None, "direct stride 2, 5 -> 7, fp32");
}

TEST_CASE("emulated: the weight-gradient and linear GEMMs (A read m-fastest, K in chunks)", "[gather][emulated]") {
    // Weight gradient of a 3x3 stride-2 convolution 16 -> 24: A = dy^T (24 x pixels, ColMajor),
    // B = the gathered input (pixels x 9 * 16), K = pixels split in 3 chunks summed afterwards.
    const ConvGeometry g{2, 11, 9, 16, 24, 3, 2, 1};
    const std::vector<float> x = random_vector(g.B * g.H * g.W * g.C, 41), dy = random_vector(g.B * g.Ho() * g.Wo() * g.N, 42);
    const cuda::Gather<false> gathered{x.data(), g.Ho(), g.Wo(), g.H, g.W, g.C, g.k, g.stride, g.pad};
    const gemm::ColMajor dyT{dy.data(), g.N};
    const int64_t M = g.N, N = g.k * g.k * g.C, K = g.B * g.Ho() * g.Wo();
    for (const int mode : {0, 1, 2}) {
        const gemm::GemmGrid grid = gemm::gemm_grid(M, N, K, 3, mode != 0 ? gemm::kTensorCoreTile : gemm::kFp32Tile);
        REQUIRE(grid.z > 1);
        Result r(grid.z, M, N);
        const HostStore st = r.store();
        if (mode == 0)
            emulate(grid, [&] { gemm::gemm_kernel<true>(M, N, K, grid.chunk, dyT, gathered, st); });
        else if (mode == 1)
            emulate(grid, [&] { gemm::gemm_tensor_core_kernel<gemm::Tf32Mma, true, false>(M, N, K, grid.chunk, dyT, gathered, st); });
        else
            emulate(grid, [&] { gemm::gemm_tensor_core_kernel<gemm::Bf16Mma, true, false>(M, N, K, grid.chunk, dyT, gathered, st); });
        const Rounding rounding[3] = {Rounding::None, Rounding::Tf32, Rounding::Bf16};
        require_product(r, K, dyT, gathered, rounding[mode], "weight gradient, math mode " + std::to_string(mode));
    }
    // The wide kernel's weight-gradient form (GatherMode::Vector, BF16): the same gradient, and
    // 100 output channels x 20 input channels (a partial 128-row tile, N = 180: a partial 64-column
    // tile), K in chunks of 32 pixels ending inside a slice.
    for (const ConvGeometry& w : {g, ConvGeometry{1, 13, 10, 20, 100, 3, 1, 1}}) {
        const std::vector<float> xw = random_vector(w.B * w.H * w.W * w.C, 45), dyw = random_vector(w.B * w.Ho() * w.Wo() * w.N, 46);
        const cuda::Gather<false> gw{xw.data(), w.Ho(), w.Wo(), w.H, w.W, w.C, w.k, w.stride, w.pad};
        const gemm::ColMajor aw{dyw.data(), w.N};
        const int64_t Mw = w.N, Nw = w.k * w.k * w.C, Kw = w.B * w.Ho() * w.Wo();
        const gemm::GemmGrid grid = gemm::gemm_grid(Mw, Nw, Kw, 3, gemm::kWideTile);
        REQUIRE(grid.z > 1);
        REQUIRE(Kw % 32 != 0);
        Result r(grid.z, Mw, Nw);
        const HostStore st = r.store();
        const gemm::WideWeightGradOperands<cuda::Gather<false>> ops{aw, gw};
        emulate(grid, [&] { gemm::gemm_wide_kernel(Mw, Nw, Kw, grid.chunk, ops, st); });
        require_product(r, Kw, aw, gw, Rounding::Bf16, "wide weight gradient, " + std::to_string(w.C) + " -> " + std::to_string(w.N));
    }
    {  // ... and a linear layer's weight gradient: dW (24 x 36) = dy^T (24 x 50) x (50 x 36), B row-major.
        const std::vector<float> dyl = random_vector(50 * 24, 47), xl = random_vector(50 * 36, 48);
        const gemm::ColMajor al{dyl.data(), 24};
        const gemm::RowMajor bl{xl.data(), 36};
        const gemm::GemmGrid grid = gemm::gemm_grid(24, 36, 50, 1, gemm::kWideTile);
        Result r(grid.z, 24, 36);
        const HostStore st = r.store();
        const gemm::WideWeightGradOperands<gemm::RowMajor> ops{al, bl};
        emulate(grid, [&] { gemm::gemm_wide_kernel(int64_t{24}, int64_t{36}, int64_t{50}, grid.chunk, ops, st); });
        require_product(r, 50, al, bl, Rounding::Bf16, "wide linear weight gradient");
    }
    // A linear layer: row-major x (37 x 70) times w^T (70 x 45), K = 70 not a multiple of 16.
    const std::vector<float> xs = random_vector(37 * 70, 43), wt = random_vector(70 * 45, 44);
    const gemm::RowMajor a{xs.data(), 70}, b{wt.data(), 45};
    const gemm::GemmGrid grid = gemm::gemm_grid(37, 45, 70, 1, gemm::kTensorCoreTile);
    Result r(grid.z, 37, 45);
    const HostStore st = r.store();
    emulate(grid, [&] { gemm::gemm_tensor_core_kernel<gemm::Tf32Mma, false, false>(37, 45, 70, grid.chunk, a, b, st); });
    require_product(r, 70, a, b, Rounding::Tf32, "linear, tf32");
}

TEST_CASE("emulated: transposed gathers by sub-pixel class give the whole transposed GEMM", "[gather][emulated]") {
    // As ops.cu launch_transposed_gemm: one GEMM per class over its pixels and taps (SubpixelGather,
    // SubpixelWeights), stored through RowMappedStore into the whole output; every output stored
    // once, the sums those of the whole gather's GEMM (its zeros included) in float64.
    struct Case {
        int64_t B, Ho, Wo, H, W, C, N;
        int kernel;  // 0: wide bf16, 1: fp32 with the row gather, 2: tf32 tensor cores
    };
    for (const Case& c : {Case{2, 14, 12, 7, 6, 64, 36, 0}, Case{1, 13, 9, 7, 5, 32, 20, 0}, Case{1, 14, 10, 7, 5, 16, 24, 1},
                          Case{1, 9, 11, 5, 6, 48, 20, 2}}) {
        const std::vector<float> src = random_vector(c.B * c.H * c.W * c.C, 51), w = random_vector(9 * c.C * c.N, 52);
        const cuda::Gather<true> whole{src.data(), c.Ho, c.Wo, c.H, c.W, c.C, 3, 2, 1};
        const int64_t M = c.B * c.Ho * c.Wo, K = 9 * c.C;
        Result r(1, M, c.N);
        for (int ry = 0; ry < 2; ++ry)
            for (int rx = 0; rx < 2; ++rx) {
                cuda::SubpixelGather<> sg = cuda::subpixel_gather(whole, ry, rx);
                sg.rows = c.kernel == 1;
                const int64_t Mc = c.B * sg.rows_per_image(), Kc = sg.depth();
                const gemm::SubpixelWeights<> lb{w.data(), c.N, sg};
                const gemm::RowMappedStore<HostStore> st{r.store(), sg};
                if (c.kernel == 0) {
                    const gemm::GemmGrid grid = gemm::gemm_grid(Mc, c.N, Kc, 1, gemm::kWideTile);
                    const gemm::WideConvOperands<cuda::SubpixelGather<>, gemm::SubpixelWeights<>> ops{sg, lb};
                    emulate(grid, [&] { gemm::gemm_wide_kernel(Mc, c.N, Kc, grid.chunk, ops, st); });
                } else {
                    const gemm::GemmGrid grid = gemm::gemm_grid(Mc, c.N, Kc, 1, c.kernel == 2 ? gemm::kTensorCoreTile : gemm::kFp32Tile);
                    if (c.kernel == 1)
                        emulate(grid, [&] { gemm::gemm_kernel<false>(Mc, c.N, Kc, grid.chunk, sg, lb, st); });
                    else
                        emulate_tensor_core<gemm::Tf32Mma>(grid, Mc, c.N, Kc, sg, lb, st);
                }
            }
        const Rounding rounding[3] = {Rounding::Bf16, Rounding::None, Rounding::Tf32};
        require_product(r, K, whole, gemm::RowMajor{w.data(), c.N}, rounding[c.kernel],
                        "sub-pixel classes, kernel " + std::to_string(c.kernel) + ", C " + std::to_string(c.C));
    }
}

TEST_CASE("emulated: the wide kernel's row-major form (linear layers, the eigenface projection)", "[gather][emulated]") {
    // Projection: c (B x N) = (x - mean) (B x D) times the basis (D x N); D = 100 ends inside a slice.
    const int64_t B = 5, D = 100, N = 68;
    const std::vector<float> x = random_vector(B * D, 71), mean = random_vector(D, 72), basis = random_vector(D * N, 73);
    const gemm::Centered centered{x.data(), mean.data(), D};
    const gemm::RowMajor bm{basis.data(), N};
    auto run = [&](const auto& la, const gemm::RowMajor& lb, int64_t M, int64_t n, int64_t K, const char* what) {
        const gemm::GemmGrid grid = gemm::gemm_grid(M, n, K, 1, gemm::kWideTile);
        Result r(grid.z, M, n);
        const HostStore st = r.store();
        const gemm::WideRowOperands<std::decay_t<decltype(la)>, gemm::RowMajor> ops{la, lb};
        emulate(grid, [&] { gemm::gemm_wide_kernel(M, n, K, grid.chunk, ops, st); });
        require_product(r, K, la, lb, Rounding::Bf16, what);
    };
    run(centered, bm, B, N, D, "projection (x - mean) B");
    // Reconstruction: (q .* c) (B x N) times B^T (N x D), with and without masks; K = 68.
    const std::vector<float> c = random_vector(B * N, 74), bt = random_vector(N * D, 75);
    std::vector<float> q(static_cast<size_t>(B * N));
    for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<float>((i * 7) % 3 != 0);
    run(gemm::MaskedCoefficients{c.data(), q.data(), N}, gemm::RowMajor{bt.data(), D}, B, D, N, "masked reconstruction");
    run(gemm::MaskedCoefficients{c.data(), nullptr, N}, gemm::RowMajor{bt.data(), D}, B, D, N, "reconstruction without masks");
    // A linear layer with 2 row tiles: x (131 x 36) times w^T (36 x 20).
    const std::vector<float> xl = random_vector(131 * 36, 76), wl = random_vector(36 * 20, 77);
    run(gemm::RowMajor{xl.data(), 36}, gemm::RowMajor{wl.data(), 20}, 131, 20, 36, "linear");
}

// ops.cuh set_wgmma_ws_smem_kib: a warp-specialized tile keeps the most stages (from min_stages to its
// own count) whose block fits the limit with the 1 KB reserved per block, and its shared memory
// stays laid out for the tensor cores (stages 128-byte aligned, mbarriers 8-byte) whatever the ring,
// with C regions or without (WgmmaStores::Direct). The counts ops.cuh states for 196 and 164 KiB
// (what leaves ~60 and ~92 KB of an SM to L1) too: without C regions, all stages within 164.
namespace {
template <class T>
void check_ring(int at196, int at164) {
    INFO(T::rows << " x " << T::cols << (T::pingpong ? " ping-pong" : "") << (T::swapped ? " swapped" : ""));
    REQUIRE(T::smem_bytes == T::smem_bytes_for(T::stages));
    for (const bool direct : {false, true}) {
        INFO((direct ? "C from the registers" : "C through shared memory"));
        REQUIRE(T::stages_within(0, direct) == T::stages);
        REQUIRE(T::smem_bytes_for(T::stages, direct) == T::smem_bytes_for(T::stages) - (direct ? T::c_regions * T::c_bytes : 0));
        for (const int kib : {1, 100, 140, 164, 180, 196, 227}) {
            const int64_t limit = int64_t{kib} * 1024;
            const int n = T::stages_within(limit, direct);
            INFO(kib << " KiB: " << n << " stages");
            REQUIRE((n >= T::min_stages && n <= T::stages));
            REQUIRE((n == T::min_stages || T::smem_bytes_for(n, direct) + 1024 <= limit));  // fits, unless at the fewest
            REQUIRE((n == T::stages || T::smem_bytes_for(n + 1, direct) + 1024 > limit));   // and one more would not
            REQUIRE((T::c_offset(n) % 128 == 0 && T::barrier_offset(n, direct) % 8 == 0 && T::smem_bytes_for(n, direct) <= T::smem_bytes));
        }
    }
    REQUIRE(T::stages_within(196 * 1024) == at196);
    REQUIRE(T::stages_within(164 * 1024) == at164);
    REQUIRE(T::stages_within(164 * 1024, true) == T::stages);
}
}  // namespace

TEST_CASE("emulated: the warp-specialized tiles keep the most stages that fit a shared-memory limit", "[wgmma][emulated]") {
    check_ring<gemm::WgmmaPingPongTile>(4, 3);
    check_ring<gemm::WgmmaPingPongSwappedTile>(4, 3);
    check_ring<gemm::WgmmaWsTile128>(3, 2);
    check_ring<gemm::WgmmaWsSwappedTile>(2, 2);
    check_ring<gemm::WgmmaPingPongTensorSwappedTile>(6, 4);
    check_ring<gemm::WgmmaWsTensorSwappedTile>(3, 2);
    check_ring<gemm::WgmmaWsSplitTile>(4, 3);
}

// wgmma_gemm.cuh WgmmaTensorConvOperands: a tensor-copy tile is whole output rows of one image (or
// whole images), so its row spans must cover every pixel of the batch once, in order, none beyond
// its tile's rows; and the 64-channel layers' swapped tiles (224 and 112 pixels) hold whole rows of
// those layers' outputs, 112 x 112 and 56 x 56, with no row left empty (the 256- and 128-pixel
// tiles before left 1/8 of their MMAs on rows never stored). The 128-row tiles' share is 7/8; ws's
// wide split-column tile (200 pixels) holds 98 % of the 28 x 28, 14 x 14 and 7 x 7 layers' rows.
namespace {
template <class T>
double tensor_conv_row_share(int64_t images, int64_t Ho, int64_t Wo) {
    INFO(T::rows << "-pixel tile" << (T::pingpong ? ", ping-pong" : "") << ", " << images << " x " << Ho << " x " << Wo);
    gemm::WgmmaTensorConvOperands<T> ops{};
    ops.images = static_cast<int32_t>(images), ops.Ho = static_cast<int32_t>(Ho), ops.Wo = static_cast<int32_t>(Wo);
    gemm::WgmmaTensorConvOperands<T>::box_of(Ho, Wo, ops.bh, ops.ni);
    ops.tiles_per_image = static_cast<int32_t>((Ho + ops.bh - 1) / ops.bh);
    const int64_t tiles = ops.row_tiles();
    int64_t next = 0;
    for (int64_t i = 0; i < tiles; ++i) {
        const gemm::RowSpan span = ops.row_span(i);
        REQUIRE(span.m0 == next);
        REQUIRE((span.m_end > span.m0 && span.m_end - span.m0 <= T::rows));
        REQUIRE((span.m_end - span.m0) % Wo == 0);  // whole output rows
        next = span.m_end;
    }
    REQUIRE(next == images * Ho * Wo);
    return static_cast<double>(next) / static_cast<double>(tiles * T::rows);
}
}  // namespace

TEST_CASE("emulated: the tensor-copy tiles hold whole output rows, the 64-channel layers' with none empty", "[wgmma][emulated]") {
    using gemm::WgmmaPingPongTensorSwappedTile, gemm::WgmmaPingPongWideSwappedTile, gemm::WgmmaWsTensorSwappedTile;
    for (const int64_t w : {112, 56}) {  // PIN's 64-channel layers (DAE, ESN) at batch 3
        CHECK(tensor_conv_row_share<WgmmaWsTensorSwappedTile>(3, w, w) == 1.0);
        CHECK(tensor_conv_row_share<WgmmaPingPongTensorSwappedTile>(3, w, w) == 1.0);
        CHECK(tensor_conv_row_share<WgmmaPingPongWideSwappedTile>(3, w, w) == 1.0);
        CHECK(tensor_conv_row_share<gemm::WgmmaWsTensorTile128>(3, w, w) == 7.0 / 8.0);
    }
    CHECK(tensor_conv_row_share<WgmmaPingPongTensorSwappedTile>(3, 28, 28) == 1.0);
    // ws's wide split-column tile, 200 pixels: 7 rows of 28, one 14 x 14 image, four 7 x 7 ones
    // (the 128-, 256- and 512-channel layers), 98 % where 128 rows held 7/8 and 77 %; ops_wgmma.cu
    // takes it where row_share says it is fuller than 128 rows.
    using gemm::WgmmaWsWideSwappedTile;
    static_assert(WgmmaWsWideSwappedTile::split_cols && WgmmaWsWideSwappedTile::mma_n == 200 && WgmmaWsWideSwappedTile::wide);
    CHECK(tensor_conv_row_share<WgmmaWsWideSwappedTile>(4, 28, 28) == 196.0 / 200.0);
    CHECK(tensor_conv_row_share<WgmmaWsWideSwappedTile>(3, 14, 14) == 196.0 / 200.0);
    CHECK(tensor_conv_row_share<WgmmaWsWideSwappedTile>(8, 7, 7) == 196.0 / 200.0);
    CHECK(tensor_conv_row_share<gemm::WgmmaWsTensorTile128>(3, 28, 28) == 7.0 / 8.0);
    CHECK(tensor_conv_row_share<gemm::WgmmaWsTensorTile128>(3, 14, 14) == 196.0 / 256.0);
    for (const int64_t w : {28, 14, 7}) {
        using Split = gemm::WgmmaTensorConvOperands<WgmmaWsWideSwappedTile>;
        using Rows128 = gemm::WgmmaTensorConvOperands<gemm::WgmmaWsTensorTile128>;
        CHECK(Split::row_share(w, w) == 196.0 / 200.0);
        CHECK(Split::row_share(w, w) > Rows128::row_share(w, w));
    }
    // Its narrow form, 112 pixels: 4 rows of 28, 8 rows of 14 (8 + 6), two 7 x 7 images.
    using gemm::WgmmaWsSplitTile;
    static_assert(WgmmaWsSplitTile::split_cols && WgmmaWsSplitTile::mma_n == 112 && !WgmmaWsSplitTile::wide);
    CHECK(tensor_conv_row_share<WgmmaWsSplitTile>(3, 28, 28) == 1.0);
    CHECK(tensor_conv_row_share<WgmmaWsSplitTile>(3, 14, 14) == 7.0 / 8.0);
    CHECK(tensor_conv_row_share<WgmmaWsSplitTile>(4, 7, 7) == 7.0 / 8.0);
    for (const int64_t w : {28, 14, 7})
        CHECK(gemm::WgmmaTensorConvOperands<WgmmaWsSplitTile>::row_share(w, w) >
              gemm::WgmmaTensorConvOperands<gemm::WgmmaWsTensorTile128>::row_share(w, w));
    // ... and not where 128 rows are fuller: 56 and 112 wide (3 rows of 56 in 200, 2 in 128).
    CHECK(gemm::WgmmaTensorConvOperands<WgmmaWsWideSwappedTile>::row_share(56, 56) <
          gemm::WgmmaTensorConvOperands<gemm::WgmmaWsTensorTile128>::row_share(56, 56));
    // Odd shapes, the spans' partition only: partial last tiles of an image (11 rows of 30: 7 + 4
    // in 224, 3 + 3 + 3 + 2 in 112, 2 x 5 + 1 in 64), whole images (9 x 11: two in 224, one in
    // 112), a width of one, 13 rows of 112 (one row a 112-pixel tile).
    for (const auto& [ho, wo] : {std::pair<int64_t, int64_t>{11, 30}, {9, 11}, {5, 1}, {13, 112}}) {
        tensor_conv_row_share<WgmmaWsTensorSwappedTile>(5, ho, wo);
        tensor_conv_row_share<WgmmaPingPongTensorSwappedTile>(5, ho, wo);
        tensor_conv_row_share<WgmmaPingPongWideSwappedTile>(5, ho, wo);
        tensor_conv_row_share<WgmmaWsWideSwappedTile>(5, ho, wo);
        tensor_conv_row_share<WgmmaWsSplitTile>(5, ho, wo);
        if (wo <= gemm::WgmmaPingPongTensorTile::rows) tensor_conv_row_share<gemm::WgmmaPingPongTensorTile>(5, ho, wo);
    }
}
