// The GPU convolutions' gathered operand (cuda/gather.cuh) checked on the CPU, where it compiles as
// plain host code: the generic per-element decode against an im2col written out here, and
// GatherMode::Rows (each thread's rows decoded once, each slice's tap once) against the generic
// decode for every element of every A tile the fp32 (64-row) and tensor-core (128-row) kernels load,
// on direct and transposed geometries, strides 1 and 2, odd sizes, K chunks ending mid-slice; and
// the wide kernel's 4-float vector loads (GatherMode::Vector) against the same generic decode.
#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "gather.cuh"
#include "helpers.hpp"
#include "pin/core/rng.hpp"

using namespace pin;

namespace {
struct Geometry {
    bool transposed;
    int64_t B, Ho, Wo, H, W, C, K, stride, pad;
};

// A(m, k) written out: m = (b, oh, ow) over Ho x Wo, k = (kh, kw, c).
float im2col(const Geometry& g, const std::vector<float>& src, int64_t m, int64_t k) {
    const int64_t c = k % g.C, tap = k / g.C, kh = tap / g.K, kw = tap % g.K;
    const int64_t ow = m % g.Wo, oh = (m / g.Wo) % g.Ho, b = m / (g.Wo * g.Ho);
    int64_t ih, iw;
    if (!g.transposed) {
        ih = oh * g.stride - g.pad + kh;
        iw = ow * g.stride - g.pad + kw;
    } else {
        const int64_t y = oh + g.pad - kh, x = ow + g.pad - kw;
        if (y < 0 || x < 0 || y % g.stride || x % g.stride) return 0.0f;
        ih = y / g.stride;
        iw = x / g.stride;
    }
    if (ih < 0 || iw < 0 || ih >= g.H || iw >= g.W) return 0.0f;
    return src[static_cast<size_t>(((b * g.H + ih) * g.W + iw) * g.C + c)];
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// Every A tile of `rows_per_tile` rows, for K chunks of `chunk`: the row gather's values equal the
// generic ones at the same (m, k), for each thread of the block. Returns the number of mismatches.
template <int N, class G>
int64_t compare_tiles(const G& la, int64_t M, int64_t Kdim, int64_t chunk) {
    constexpr int rows_per_tile = N * cuda::kGatherThreads / cuda::kGatherDepth;
    int64_t bad = 0;
    for (int64_t m0 = 0; m0 < M; m0 += rows_per_tile)
        for (int64_t kbeg = 0; kbeg < Kdim; kbeg += chunk) {
            const int64_t kend = std::min(Kdim, kbeg + chunk);
            for (int tid = 0; tid < cuda::kGatherThreads; ++tid) {
                cuda::GatherRow rows[N];
                cuda::decode_rows(la, m0, M, tid, rows);
                for (int64_t k0 = kbeg; k0 < kend; k0 += cuda::kGatherDepth) {
                    float v[N];
                    cuda::gather_rows(la, rows, k0, kend, tid, v);
                    for (int i = 0; i < N; ++i) {
                        const int idx = tid + i * cuda::kGatherThreads;
                        const int64_t m = m0 + idx / cuda::kGatherDepth, k = k0 + idx % cuda::kGatherDepth;
                        const float want = (m < M && k < kend) ? la(m, k) : 0.0f;
                        bad += !same_bits(v[i], want);
                    }
                }
            }
        }
    return bad;
}

// The wide kernel's loads (GatherMode::Vector): for every 128-row tile and 32-deep slice, the 256
// threads' vectors cover each element of the A tile exactly once with the generic decode's value
// (zero past the last row). Returns the number of wrong or missing elements.
template <class G>
int64_t compare_wide_tiles(const G& la, int64_t M, int64_t Kdim) {
    int64_t bad = 0;
    for (int64_t m0 = 0; m0 < M; m0 += cuda::kWideRows)
        for (int64_t k0 = 0; k0 < Kdim; k0 += cuda::kWideDepth) {
            std::vector<float> tile(cuda::kWideRows * cuda::kWideDepth, 0.0f);
            std::vector<int> writes(tile.size(), 0);
            for (int tid = 0; tid < cuda::kGatherThreads; ++tid) {
                cuda::GatherRow rows[cuda::kWideARows];
                cuda::decode_wide_rows(la, m0, M, tid, rows);
                float v[cuda::kWideARows][4];
                cuda::gather_wide(la, rows, k0, tid, v);
                for (int i = 0; i < cuda::kWideARows; ++i)
                    for (int j = 0; j < 4; ++j) {
                        const size_t at = static_cast<size_t>(cuda::wide_a_row(tid, i) * cuda::kWideDepth + cuda::wide_a_col(tid) + j);
                        tile[at] = v[i][j];
                        ++writes[at];
                    }
            }
            for (int r = 0; r < cuda::kWideRows; ++r)
                for (int c = 0; c < cuda::kWideDepth; ++c) {
                    const size_t at = static_cast<size_t>(r * cuda::kWideDepth + c);
                    const float want = m0 + r < M ? la(m0 + r, k0 + c) : 0.0f;
                    bad += writes[at] != 1 || !same_bits(tile[at], want);
                }
        }
    return bad;
}

template <bool kTransposed>
void check_geometry(const Geometry& g) {
    INFO((g.transposed ? "transposed" : "direct") << " B " << g.B << " grid " << g.Ho << "x" << g.Wo << " source " << g.H << "x"
                                                  << g.W << " C " << g.C << " k" << g.K << " s" << g.stride << " p" << g.pad);
    const Tensor t = test::random_tensor({g.B * g.H * g.W * g.C}, 7 + static_cast<uint64_t>(g.C + g.H), 1.0f);
    const std::vector<float> src(t.data(), t.data() + t.numel());
    const cuda::Gather<kTransposed> la{src.data(), g.Ho, g.Wo, g.H, g.W, g.C, g.K, g.stride, g.pad};
    const int64_t M = g.B * g.Ho * g.Wo, Kdim = g.K * g.K * g.C;
    // The generic decode is the im2col matrix.
    int64_t bad = 0, nonzero = 0;
    for (int64_t m = 0; m < M; ++m)
        for (int64_t k = 0; k < Kdim; ++k) {
            const float want = im2col(g, src, m, k);
            bad += !same_bits(la(m, k), want);
            nonzero += want != 0.0f;
        }
    REQUIRE(bad == 0);
    REQUIRE(nonzero > 0);
    // The row gather reads the same, in the 64-row (fp32) and 128-row (tensor-core) tiles, with the
    // whole K as one chunk and with chunks of 48 (a slice boundary inside a tap's channels).
    for (const int64_t chunk : {Kdim, int64_t{48}}) {
        INFO("chunk " << chunk);
        REQUIRE(compare_tiles<4>(la, M, Kdim, chunk) == 0);
        REQUIRE(compare_tiles<8>(la, M, Kdim, chunk) == 0);
    }
    if (g.C % cuda::kWideDepth == 0) REQUIRE(compare_wide_tiles(la, M, Kdim) == 0);
}
}  // namespace

TEST_CASE("the wide kernel's B loads cover its 32 x 64 slice once each", "[gather]") {
    std::vector<int> writes(cuda::kWideDepth * cuda::kWideCols, 0);
    for (int tid = 0; tid < cuda::kGatherThreads; ++tid)
        for (int j = 0; j < cuda::kWideBRows; ++j) {
            REQUIRE(cuda::wide_b_col(tid) % 4 == 0);  // whole 16-byte vectors of a row-major (k, n) matrix
            for (int e = 0; e < 4; ++e) ++writes[static_cast<size_t>(cuda::wide_b_row(tid, j) * cuda::kWideCols + cuda::wide_b_col(tid) + e)];
        }
    for (int w : writes) REQUIRE(w == 1);
}

// The one-output-channel convolution's per-pixel dot product (gather_dot): against a float64 dot
// of the im2col row with the weights, with and without 4-channel vectors.
template <bool kTransposed>
void check_gather_dot(const Geometry& g) {
    INFO((g.transposed ? "transposed" : "direct") << " C " << g.C << " k" << g.K << " s" << g.stride << " p" << g.pad);
    const Tensor t = test::random_tensor({g.B * g.H * g.W * g.C}, 11 + static_cast<uint64_t>(g.C), 1.0f);
    const Tensor wt = test::random_tensor({g.K * g.K * g.C}, 12, 1.0f);
    const std::vector<float> src(t.data(), t.data() + t.numel());
    const cuda::Gather<kTransposed> la{src.data(), g.Ho, g.Wo, g.H, g.W, g.C, g.K, g.stride, g.pad};
    const int64_t M = g.B * g.Ho * g.Wo, Kdim = g.K * g.K * g.C;
    double worst = 0, scale = 0;
    for (int64_t m = 0; m < M; ++m) {
        double want = 0, mag = 0;
        for (int64_t k = 0; k < Kdim; ++k) {
            want += static_cast<double>(im2col(g, src, m, k)) * wt.data()[k];
            mag += std::fabs(static_cast<double>(im2col(g, src, m, k)) * wt.data()[k]);
        }
        for (const bool vec : {false, true}) {
            if (vec && g.C % 4 != 0) continue;
            worst = std::max(worst, std::fabs(cuda::gather_dot(la, wt.data(), m, M, vec) - want) / std::max(mag, 1e-30));
            // As the per-pixel kernel sums it: 8 parts (and 3, which leaves some parts without
            // channels where C is small), each every 8th (3rd) group of channels, added.
            for (const int parts : {8, 3}) {
                float sum = 0;
                for (int part = 0; part < parts; ++part) sum += cuda::gather_dot(la, wt.data(), m, M, vec, part, parts);
                worst = std::max(worst, std::fabs(sum - want) / std::max(mag, 1e-30));
            }
        }
        scale = std::max(scale, std::fabs(want));
    }
    REQUIRE(scale > 0);
    REQUIRE(worst < 1e-5);  // fp32 sums of up to 576 products, relative to the sum of their magnitudes
    REQUIRE(cuda::gather_dot(la, wt.data(), M, M, true) == 0.0f);  // past the last row
}

// The one-input-channel convolution (gather_one_input): 4 output channels of a row against float64
// sums of im2col times the packed weights (taps x N).
void check_gather_one_input(const Geometry& g, int64_t N) {
    INFO("C 1 -> " << N << " k" << g.K << " s" << g.stride << " p" << g.pad);
    REQUIRE(g.C == 1);
    const Tensor t = test::random_tensor({g.B * g.H * g.W}, 14, 1.0f), wt = test::random_tensor({g.K * g.K * N}, 15, 1.0f);
    const std::vector<float> src(t.data(), t.data() + t.numel());
    const cuda::Gather<false> la{src.data(), g.Ho, g.Wo, g.H, g.W, 1, g.K, g.stride, g.pad};
    const int64_t M = g.B * g.Ho * g.Wo;
    double worst = 0, largest = 0;
    for (int64_t m = 0; m <= M; ++m)  // m == M: past the last row, zeros
        for (int64_t n = 0; n < N; n += 4) {
            float v[4];
            cuda::gather_one_input(la, wt.data(), N, m, M, n, v);
            for (int j = 0; j < 4; ++j) {
                double want = 0, mag = 0;
                for (int64_t k = 0; m < M && k < g.K * g.K; ++k) {
                    const double p = static_cast<double>(im2col(g, src, m, k)) * wt.data()[k * N + n + j];
                    want += p;
                    mag += std::fabs(p);
                }
                worst = std::max(worst, std::fabs(v[j] - want) / std::max(mag, 1e-30));
                largest = std::max(largest, std::fabs(want));
                if (m == M) REQUIRE(v[j] == 0.0f);
            }
        }
    REQUIRE(largest > 0);
    REQUIRE(worst < 1e-6);
    // Four interleaved groups per call, as the stems' kernel takes them (N a multiple of 16): the
    // group of thread g is channels 4 g + 4 j N / 16 + 0..3, the same sums as one group at a time.
    if (N % 16 == 0) {
        const int64_t groups = N / 16;
        for (int64_t m = 0; m <= M; ++m)
            for (int64_t g4 = 0; g4 < groups; ++g4) {
                float v[4][4];
                cuda::gather_one_input_quads<4>(la, wt.data(), N, m, M, 4 * g4, 4 * groups, v);
                for (int j = 0; j < 4; ++j) {
                    float one[4];
                    cuda::gather_one_input(la, wt.data(), N, m, M, 4 * (g4 + j * groups), one);
                    for (int i = 0; i < 4; ++i) REQUIRE(v[j][i] == one[i]);  // the same products in the same order
                }
            }
    }
}

TEST_CASE("the one-input-channel convolution matches im2col in float64", "[gather]") {
    check_gather_one_input({false, 2, 13, 11, 13, 11, 1, 3, 1, 1}, 64);  // the stems: 3x3, 1 -> 64
    check_gather_one_input({false, 1, 7, 6, 13, 11, 1, 1, 2, 0}, 20);    // the first block's 1x1 stride-2 shortcut
    check_gather_one_input({false, 1, 7, 6, 13, 11, 1, 3, 2, 1}, 8);     // 3x3 stride 2
}

TEST_CASE("the one-output-channel convolution's dot product matches im2col in float64", "[gather]") {
    check_gather_dot<false>({false, 2, 11, 9, 11, 9, 64, 3, 1, 1});    // the DAE's last layer, smaller
    check_gather_dot<false>({false, 1, 5, 4, 10, 8, 6, 3, 2, 1});      // stride 2, C not a multiple of 4
    check_gather_dot<true>({true, 2, 9, 7, 5, 4, 8, 3, 2, 1});         // transposed (an input gradient)
}

// The sub-pixel classes of a transposed gather (SubpixelGather): they partition the output pixels;
// each class element is the whole gather's element at (out_row(m), weight_row(k)); the taps outside
// a pixel's class read zeros there; and the row and wide loads of a class read its generic values.
void check_subpixel(const Geometry& g) {
    INFO("transposed B " << g.B << " grid " << g.Ho << "x" << g.Wo << " source " << g.H << "x" << g.W << " C " << g.C << " k" << g.K
                         << " s" << g.stride << " p" << g.pad);
    const Tensor t = test::random_tensor({g.B * g.H * g.W * g.C}, 13 + static_cast<uint64_t>(g.C), 1.0f);
    const std::vector<float> src(t.data(), t.data() + t.numel());
    const cuda::Gather<true> whole{src.data(), g.Ho, g.Wo, g.H, g.W, g.C, g.K, g.stride, g.pad};
    const int64_t rows = g.B * g.Ho * g.Wo, Kdim = g.K * g.K * g.C;
    std::vector<int> covered(static_cast<size_t>(rows), 0);
    int64_t bad = 0, lost = 0, taps = 0;
    for (int ry = 0; ry < g.stride; ++ry)
        for (int rx = 0; rx < g.stride; ++rx) {
            const cuda::SubpixelGather<> sg = cuda::subpixel_gather(whole, ry, rx);
            const int64_t M = g.B * sg.rows_per_image(), depth = sg.depth();
            taps += sg.cls.taps_h * sg.cls.taps_w;
            for (int64_t m = 0; m < M; ++m) {
                const int64_t out = sg.out_row(m);
                REQUIRE(out >= 0);
                REQUIRE(out < rows);
                ++covered[static_cast<size_t>(out)];
                std::vector<char> used(static_cast<size_t>(Kdim), 0);
                for (int64_t k = 0; k < depth; ++k) {
                    const int64_t wk = sg.weight_row(k);
                    used[static_cast<size_t>(wk)] = 1;
                    bad += !same_bits(sg(m, k), whole(out, wk));
                }
                for (int64_t k = 0; k < Kdim; ++k) lost += !used[static_cast<size_t>(k)] && whole(out, k) != 0.0f;
            }
            if (M > 0 && depth > 0 && g.C % cuda::kGatherDepth == 0) {
                REQUIRE(compare_tiles<4>(sg, M, depth, depth) == 0);
                REQUIRE(compare_tiles<8>(sg, M, depth, depth) == 0);
            }
            if (M > 0 && depth > 0 && g.C % cuda::kWideDepth == 0) REQUIRE(compare_wide_tiles(sg, M, depth) == 0);
        }
    REQUIRE(taps == g.K * g.K);  // every tap in exactly one class
    REQUIRE(bad == 0);
    REQUIRE(lost == 0);
    for (int c : covered) REQUIRE(c == 1);
}

TEST_CASE("the sub-pixel classes of a transposed gather cover it exactly", "[gather]") {
    // The DAE decoder's transposed convolutions (3x3, stride 2, pad 1, output padding 1): rows over
    // the output (2 H), source the input.
    check_subpixel({true, 2, 14, 12, 7, 6, 64, 3, 2, 1});
    check_subpixel({true, 1, 9, 11, 5, 6, 16, 3, 2, 1});    // no output padding: odd output sizes
    // An input gradient of a 3x3 stride-2 convolution: rows over the input grid (13 x 9), source
    // the output gradient (7 x 5).
    check_subpixel({true, 2, 13, 9, 7, 5, 32, 3, 2, 1});
    check_subpixel({true, 1, 10, 8, 4, 3, 5, 4, 3, 2});     // 4x4 kernel, stride 3: classes of 1 or 2 taps a side
    // The input gradient of a 1x1 stride-2 convolution (the residual shortcuts'): one class with the
    // tap, three without, whose pixels only zeros reach (launch_transposed_gemm stores them empty).
    check_subpixel({true, 2, 13, 9, 7, 5, 64, 1, 2, 0});
}

namespace {
std::vector<float> random_floats(int64_t n, uint64_t seed) {
    const Tensor t = test::random_tensor({n}, seed, 1.0f);
    return std::vector<float>(t.data(), t.data() + n);
}
// The asynchronous-copy kernel's walk (gather.cuh tap_origin, tap_step): for every row, tap and
// channel, the pixel it reads (zero outside the source) is the generic decode's value, and its
// weight row is the GEMM's (k itself, or the sub-pixel class's weight_row). Returns the mismatches.
template <class G>
int64_t check_tap_walk(const G& la, int64_t M, int64_t Kdim, const std::vector<float>& src) {
    int64_t bad = 0;
    for (int64_t m = 0; m < M; ++m) {
        const cuda::GatherRow r = la.row(m, M);
        int y, x;
        cuda::tap_origin(la, r, y, x);
        for (int t = 0; t < Kdim / la.C; ++t) {
            const cuda::TapStep step = cuda::tap_step(la, t);
            const int iy = y + step.dy, ix = x + step.dx;
            const bool inside = iy >= 0 && ix >= 0 && iy < la.H && ix < la.W;
            for (int64_t c = 0; c < la.C; ++c) {
                const int64_t k = t * la.C + c;
                const float v = inside ? src[static_cast<size_t>(((r.b * la.H + iy) * la.W + ix) * la.C + c)] : 0.0f;
                int64_t row = k;
                if constexpr (std::is_same<G, cuda::SubpixelGather<>>::value) row = la.weight_row(k);
                bad += !same_bits(v, la(m, k)) || row != step.w_tap * la.C + c;
            }
        }
    }
    return bad;
}
}  // namespace

TEST_CASE("the asynchronous-copy kernel's tap walk reads what the generic gather reads", "[gather]") {
    // Direct gathers, strides 1 and 2, 1 x 1 and 3 x 3, padding; a transposed gather at stride 1.
    for (const auto& [H, W, C, K, s, p] : std::vector<std::array<int64_t, 6>>{{9, 11, 3, 3, 1, 1}, {13, 7, 2, 3, 2, 1}, {10, 9, 4, 1, 2, 0}}) {
        const int64_t Ho = (H + 2 * p - K) / s + 1, Wo = (W + 2 * p - K) / s + 1, B = 2;
        const std::vector<float> src = random_floats(B * H * W * C, 71);
        const cuda::Gather<false> la{src.data(), Ho, Wo, H, W, C, K, s, p};
        INFO("direct " << H << "x" << W << " k " << K << " stride " << s);
        REQUIRE(check_tap_walk(la, B * Ho * Wo, K * K * C, src) == 0);
    }
    {
        const std::vector<float> src = random_floats(2 * 8 * 9 * 3, 72);
        const cuda::Gather<true> la{src.data(), 8, 9, 8, 9, 3, 3, 1, 1};
        REQUIRE(check_tap_walk(la, 2 * 8 * 9, 27, src) == 0);
    }
    // Sub-pixel classes: the DAE decoder's geometry (3x3, stride 2, output padding) and a 4x4 stride-3 one.
    for (const Geometry& g : {Geometry{true, 2, 14, 12, 7, 6, 3, 3, 2, 1}, Geometry{true, 1, 10, 8, 4, 3, 2, 4, 3, 2}}) {
        const std::vector<float> src = random_floats(g.B * g.H * g.W * g.C, 73);
        const cuda::Gather<true> whole{src.data(), g.Ho, g.Wo, g.H, g.W, g.C, g.K, g.stride, g.pad};
        for (int ry = 0; ry < g.stride; ++ry)
            for (int rx = 0; rx < g.stride; ++rx) {
                const cuda::SubpixelGather<> sg = cuda::subpixel_gather(whole, ry, rx);
                INFO("class " << ry << ", " << rx << " of a " << g.K << "x" << g.K << " stride-" << g.stride << " gather");
                REQUIRE(check_tap_walk(sg, g.B * sg.rows_per_image(), sg.depth(), src) == 0);
            }
    }
}

TEST_CASE("the GPU gather matches im2col, and the row gather matches the generic one", "[gather]") {
    // Direct (forward convolutions, weight gradients): grid = conv output of the source.
    for (const auto& [H, W, C, K, s, p] : std::vector<std::array<int64_t, 6>>{
             {9, 11, 16, 3, 1, 1}, {13, 7, 32, 3, 2, 1}, {10, 10, 48, 1, 2, 0}, {7, 9, 16, 3, 1, 0}, {11, 9, 64, 3, 1, 1}}) {
        const int64_t Ho = (H + 2 * p - K) / s + 1, Wo = (W + 2 * p - K) / s + 1;
        check_geometry<false>({false, 3, Ho, Wo, H, W, C, K, s, p});
    }
    // Transposed (input gradients of a convolution in -> out): rows over the input grid, the source
    // is the output gradient.
    for (const auto& [H, W, C, K, s, p] : std::vector<std::array<int64_t, 6>>{
             {9, 11, 16, 3, 1, 1}, {13, 7, 32, 3, 2, 1}, {10, 10, 48, 1, 2, 0}, {12, 12, 16, 3, 2, 1}, {10, 13, 64, 3, 1, 1}}) {
        const int64_t Ho = (H + 2 * p - K) / s + 1, Wo = (W + 2 * p - K) / s + 1;
        check_geometry<true>({true, 2, H, W, Ho, Wo, C, K, s, p});
    }
}

TEST_CASE("bfloat16 conversions round to nearest even, as CUDA's __float2bfloat16_rn", "[gather][bf16]") {
    // Exact values, ties both ways, the largest finite, overflow to infinity, NaN, signed zero.
    const struct {
        float in;
        uint16_t bits;
    } cases[] = {{1.0f, 0x3f80}, {-2.5f, 0xc020}, {1.00390625f, 0x3f80}, {1.01171875f, 0x3f82}, {1.0078125f, 0x3f81},
                 {3.3895313892515355e38f, 0x7f7f}, {3.4028234e38f, 0x7f80}, {-0.0f, 0x8000}, {1e-40f, 0x0001}};
    for (const auto& c : cases) {
        INFO("value " << c.in);
        REQUIRE(pin::cuda::to_bf16(c.in).bits == c.bits);
    }
    REQUIRE(std::isnan(pin::cuda::to_float(pin::cuda::to_bf16(std::nanf("")))));
    const PhiloxStream rng(77, 0);
    for (uint64_t i = 0; i < 10000; ++i) {
        const float x = 2000.0f * rng.uniform(i) - 1000.0f, r = pin::cuda::to_float(pin::cuda::to_bf16(x));
        REQUIRE(std::fabs(r - x) <= std::ldexp(1.0f, std::ilogb(x) - 8));  // half a unit in the last of 8 significant bits
        REQUIRE(pin::cuda::to_float(pin::cuda::to_bf16(r)) == r);   // representable values are kept
    }
}

// ActivationStorage::BF16: a gather from a bfloat16 source reads, in every form (per element, the
// row and wide loads, the per-pixel dot products and sums, sub-pixel classes), exactly the values
// a float source holding the same (rounded) values gives.
template <bool kTransposed>
void check_bf16_source(const Geometry& g) {
    INFO((g.transposed ? "transposed" : "direct") << " C " << g.C << " k" << g.K << " s" << g.stride << " p" << g.pad);
    const Tensor t = test::random_tensor({g.B * g.H * g.W * g.C}, 21 + static_cast<uint64_t>(g.C), 1.0f);
    std::vector<cuda::Bf16> bits(static_cast<size_t>(t.numel()));
    std::vector<float> rounded(bits.size());
    int64_t changed = 0;
    for (size_t i = 0; i < bits.size(); ++i) {
        bits[i] = cuda::to_bf16(t.data()[i]);
        rounded[i] = cuda::to_float(bits[i]);
        changed += rounded[i] != t.data()[i];
    }
    REQUIRE(changed > 0);  // the rounding happened: a source read as float would differ
    const cuda::Gather<kTransposed, cuda::Bf16> lb{bits.data(), g.Ho, g.Wo, g.H, g.W, g.C, g.K, g.stride, g.pad};
    const cuda::Gather<kTransposed> lf{rounded.data(), g.Ho, g.Wo, g.H, g.W, g.C, g.K, g.stride, g.pad};
    const int64_t M = g.B * g.Ho * g.Wo, Kdim = g.K * g.K * g.C;
    int64_t bad = 0;
    for (int64_t m = 0; m < M; ++m)
        for (int64_t k = 0; k < Kdim; ++k) bad += !same_bits(lb(m, k), lf(m, k));
    REQUIRE(bad == 0);
    if (g.C % cuda::kGatherDepth == 0) REQUIRE(compare_tiles<8>(lb, M, Kdim, Kdim) == 0);
    if (g.C % cuda::kWideDepth == 0) REQUIRE(compare_wide_tiles(lb, M, Kdim) == 0);
    // The per-pixel sums: the same products in the same order, but the host compiler may contract
    // them into FMAs differently in the two instantiations (it does with -march=native on an Intel
    // Xeon, not on a Zen 4), so not the same bits: two float sums of the same Kdim products differ
    // by at most 2 Kdim 2^-24 times the sum of their magnitudes (each is within (Kdim - 1) u of the
    // exact one), a bound that does not depend on how large the sum itself happens to be.
    const Tensor wt = test::random_tensor({Kdim * 4}, 22, 1.0f);
    auto close = [](float a, float b) { return std::fabs(a - b) <= 1e-6f * (1.0f + std::fabs(b)); };
    for (int64_t m = 0; m <= M; ++m) {
        double magnitudes = 0;  // of the dot product's terms (row M is past the rows: no terms)
        for (int64_t k = 0; m < M && k < Kdim; ++k) magnitudes += std::fabs(static_cast<double>(lf(m, k)) * wt.data()[k]);
        const double bound = 2.0 * static_cast<double>(Kdim) * std::ldexp(1.0, -24) * magnitudes;
        for (const bool vec : {false, true})
            if (!vec || g.C % 4 == 0)
                bad += !(std::fabs(static_cast<double>(cuda::gather_dot(lb, wt.data(), m, M, vec)) - cuda::gather_dot(lf, wt.data(), m, M, vec)) <=
                         bound);
        if (g.C == 1) {
            float a[4], b[4];
            cuda::gather_one_input(lb, wt.data(), 4, m, M, 0, a);
            cuda::gather_one_input(lf, wt.data(), 4, m, M, 0, b);
            for (int j = 0; j < 4; ++j) bad += !close(a[j], b[j]);
        }
    }
    REQUIRE(bad == 0);
    if constexpr (kTransposed) {
        for (int ry = 0; ry < g.stride; ++ry)
            for (int rx = 0; rx < g.stride; ++rx) {
                const cuda::SubpixelGather<cuda::Bf16> sb = cuda::subpixel_gather(lb, ry, rx);
                const cuda::SubpixelGather<> sf = cuda::subpixel_gather(lf, ry, rx);
                const int64_t Ms = g.B * sb.rows_per_image(), depth = sb.depth();
                for (int64_t m = 0; m < Ms; ++m)
                    for (int64_t k = 0; k < depth; ++k) bad += !same_bits(sb(m, k), sf(m, k));
                if (Ms > 0 && g.C % cuda::kWideDepth == 0) REQUIRE(compare_wide_tiles(sb, Ms, depth) == 0);
            }
        REQUIRE(bad == 0);
    }
}

TEST_CASE("a bfloat16 source is gathered as the float source of the same values", "[gather][bf16]") {
    check_bf16_source<false>({false, 2, 7, 6, 13, 11, 32, 3, 2, 1});   // wide loads, stride 2
    check_bf16_source<false>({false, 2, 9, 8, 9, 8, 1, 3, 1, 1});      // a stem (one input channel)
    check_bf16_source<false>({false, 1, 6, 5, 6, 5, 20, 3, 1, 1});     // C % 4 == 0, not 16
    check_bf16_source<true>({true, 2, 12, 10, 6, 5, 64, 3, 2, 1});     // the decoder's transposed gathers
    check_bf16_source<true>({true, 1, 9, 7, 5, 4, 6, 3, 2, 1});
}
