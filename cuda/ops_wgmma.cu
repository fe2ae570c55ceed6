// cuda/ops_wgmma.cu - the host side of the sm_90a kernels (wgmma_gemm.cuh): the dense GEMM it is
// probed with, the forward convolutions and input gradients (internal::conv_wgmma, which
// ops_conv_forward.cu and ops_conv_backward.cu reach through ops_internal.cuh launch_async_gemm) and
// the weight gradients (internal::conv_weight_grad_wgmma). A translation unit of its own because it
// is the only one compiled for sm_90a (cuda/CMakeLists.txt, pin_cuda_sm90a): the wgmma instructions
// exist only there, and an sm_90a cubin runs only on compute capability 9.0.
#include <algorithm>

#include "ops_internal.cuh"
#include "wgmma_gemm.cuh"

namespace pin::cuda {

namespace {
// Whether the current device runs sm_90a code.
bool device_runs_sm90a(std::string* reason) {
#if defined(PIN_CUDA_EMULATION)
    (void)reason;
    return true;  // the CPU emulation runs wgmma as the PTX ISA describes it
#else
    int major = 0, minor = 0;
    if (!current_device_attribute<cudaDevAttrComputeCapabilityMajor>(major) ||
        !current_device_attribute<cudaDevAttrComputeCapabilityMinor>(minor)) {
        if (reason) *reason = "no usable CUDA device";
        return false;
    }
    if (major == 9 && minor == 0) return true;
    if (reason)
        *reason = "compute capability " + std::to_string(major) + "." + std::to_string(minor) + " (the wgmma kernels are built for sm_90a only)";
    return false;
#endif
}

// The number of SMs of the current device; under the emulation 3, so that the persistent kernel's
// blocks each take several tiles in the tests.
int64_t multiprocessors() {
#if defined(PIN_CUDA_EMULATION)
    return 3;
#else
    int n = 0;
    return current_device_attribute<cudaDevAttrMultiProcessorCount>(n) && n > 0 ? n : 1;
#endif
}

// What both launches do just before theirs: kKernel allowed `bytes` of dynamic shared memory (over
// the 48 KB a kernel gets without asking), and the count.
template <auto kKernel>
void prepare_wgmma_launch(int64_t M, int64_t N, int64_t K, int bytes, const char* name, const std::string& shape) {
    set_kernel_attribute<kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize>(bytes, name, shape);
    count_gemm(GemmKernel::Wgmma, M, N, K);
}

// An SM's shared memory and L1 are one 256 KB store; the driver splits it per kernel. Asks for the
// smallest split that holds one block of `bytes` (and the 1 KB reserved per block), in percent of
// the most shared memory an SM can have, the next larger split being used where a percentage falls
// between two (CUDA C++ Programming Guide, "Shared Memory" of compute capabilities 7.x and later):
// the rest is L1, for the gathered copies.
template <auto kKernel>
void ask_carveout_for(int bytes, const char* name, const std::string& shape) {
#if defined(PIN_CUDA_EMULATION)
    const int per_sm = 228 * 1024;
#else
    int per_sm = 0;
    if (!current_device_attribute<cudaDevAttrMaxSharedMemoryPerMultiprocessor>(per_sm) || per_sm <= 0) return;
#endif
    const int percent = std::min(100, static_cast<int>((static_cast<int64_t>(bytes + 1024) * 100 + per_sm - 1) / per_sm));
    set_kernel_attribute<kKernel, cudaFuncAttributePreferredSharedMemoryCarveout>(percent, name, shape);
}

template <class T>
constexpr Tile tile_of_wgmma() { return {T::rows, T::cols, T::depth}; }
// K in `splits` chunks (only WgmmaWeightGradOperands takes more than one).
template <class Operands, class Store>
void launch_wgmma(int64_t M, int64_t N, int64_t K, int64_t splits, const Operands& ops, const Store& st, const char* name,
                  const std::string& shape) {
    using T = typename Operands::Tile;
    check_gemm_size(M, N, K, name, shape);
    const GemmGrid g = gemm_grid(M, N, K, splits, tile_of_wgmma<T>());
    if (g.y > 65535 || g.z > 65535) ::pin::detail::throw_error("CUDA ", name, " ", shape, ": too many column tiles or K chunks");
    prepare_wgmma_launch<&gemm_wgmma_kernel<Operands, Store>>(M, N, K, T::smem_bytes, name, shape);
    PIN_LAUNCH_SHARED(dim3(g.x, g.y, g.z), T::threads, T::smem_bytes, cur(), gemm_wgmma_kernel)(M, N, K, g.chunk, ops, st);
    check(cudaGetLastError(), name, shape);
}
// The warp-specialized kernel (gemm_wgmma_ws_kernel): one K chunk, 384 threads a block, persistent
// (a block per SM, each taking every gridDim.x-th tile).
template <class Operands, class Store>
void launch_wgmma_ws(int64_t M, int64_t N, int64_t K, const Operands& ops, const Store& st, const char* name, const std::string& shape) {
    using T = typename Operands::Tile;
    check_gemm_size(M, N, K, name, shape);
    const int64_t tiles = row_tile_count(ops, M) * ((N + T::cols - 1) / T::cols);
    const int64_t blocks = std::min(tiles, multiprocessors() * T::min_blocks);
    // The epilogue, the ring within set_wgmma_ws_smem_kib's limit, and the carveout that leaves the
    // rest to L1.
    const bool direct = T::direct_only || wgmma_stores() == WgmmaStores::Direct;
    const int stages = T::stages_within(static_cast<int64_t>(wgmma_ws_smem_kib()) * 1024, direct);
    const int bytes = T::smem_bytes_for(stages, direct);
    prepare_wgmma_launch<&gemm_wgmma_ws_kernel<Operands, Store>>(M, N, K, T::smem_bytes, name, shape);
    ask_carveout_for<&gemm_wgmma_ws_kernel<Operands, Store>>(bytes, name, shape);
    if (UsesTensorCopies<Operands>::value) count_gemm(GemmKernel::WgmmaTensorCopies, M, N, K);
    if (T::wide) count_gemm(GemmKernel::WgmmaWide, M, N, K);
    if (T::split_cols) count_gemm(GemmKernel::WgmmaSplit, M, N, K);
    PIN_LAUNCH_SHARED(dim3(static_cast<unsigned>(blocks), 1, 1), T::block_threads, bytes, cur(), gemm_wgmma_ws_kernel)(M, N, K, stages, direct,
                                                                                                                     ops, st);
    check(cudaGetLastError(), name, shape);
}

// run(tile) with the kCols-column tile (WgmmaTile, or WgmmaMnMajorTile) of the pipeline
// wgmma_pipeline() names (WarpSpecialized: the weight gradients, which have no warp-specialized
// kernel, wait for each slice).
template <int kCols, template <int, int> class TileOf = WgmmaTile, class Run>
void with_pipelined_tile(const Run& run) {
    if (wgmma_pipeline() == WgmmaPipeline::OneSliceInFlight)
        run(TileOf<kCols, 1>{});
    else
        run(TileOf<kCols, 0>{});
}
// run(tile, warp_specialized) for K-major operands with N columns: where wgmma_pipeline() names a
// warp-specialized kernel, its tile with 128 columns where N is a multiple of 128 (WarpSpecialized
// 128 x 128, PingPong 64 x 128), else its swapped one (256 x 64 where kWsSwappedOk, 128 x 64);
// otherwise as with_pipelined_tile, 128 columns where N is a multiple of 128 (a 64-channel layer
// would leave half of them empty), else 64.
template <bool kWsSwappedOk, class Run>
void with_kmajor_tile(int64_t N, const Run& run) {
    const WgmmaPipeline pipeline = wgmma_pipeline();
    if (pipeline == WgmmaPipeline::PingPong) {
        if (N % 128 == 0)
            run(WgmmaPingPongTile{}, std::true_type{});
        else
            run(WgmmaPingPongSwappedTile{}, std::true_type{});
        return;
    }
    if (pipeline == WgmmaPipeline::WarpSpecialized) {
        if (N % 128 == 0) {
            run(WgmmaWsTile128{}, std::true_type{});
            return;
        }
        if constexpr (kWsSwappedOk) {
            run(WgmmaWsSwappedTile{}, std::true_type{});
            return;
        }
    }
    if (N % 128 == 0)
        with_pipelined_tile<128>([&](auto tile) { run(tile, std::false_type{}); });
    else
        with_pipelined_tile<64>([&](auto tile) { run(tile, std::false_type{}); });
}
// run(tile) with the warp-specialized kernel's swizzled tile (tensor copies) that wgmma_pipeline()
// names for N columns: 128 columns where N is a multiple of 128, else the swapped 64-column one;
// with WgmmaMmaN::N256, the wide tiles where they exist (ws: 128 x 256 where N is a multiple of
// 256; pingpong: the swapped 224 x 64).
template <class Run>
void with_tensor_tile(int64_t N, const Run& run) {
    const bool pingpong = wgmma_pipeline() == WgmmaPipeline::PingPong, wide = wgmma_mma_n() == WgmmaMmaN::N256;
    if (pingpong) {
        if (N % 128 == 0)
            run(WgmmaPingPongTensorTile{});
        else
            wide ? run(WgmmaPingPongWideSwappedTile{}) : run(WgmmaPingPongTensorSwappedTile{});
        return;
    }
    if (wide && N % 256 == 0)
        run(WgmmaWsWideTile{});
    else if (N % 128 == 0)
        run(WgmmaWsTensorTile128{});
    else
        run(WgmmaWsTensorSwappedTile{});
}
// A convolution's GEMM fed by tensor copies (WgmmaTensorConvOperands): a direct gather (the
// forward convolutions), a transposed one at stride 1 (the input gradients, the transposed
// convolutions) or a strided one's sub-pixel class, where WgmmaLoads::TensorCopies and a
// warp-specialized pipeline are set and the layer fits the tile (its output rows, or the class's,
// within the tile's rows); false where it does not run here.
template <class LoadA, class Store>
bool conv_on_tensor_copies(const LoadA& la, int64_t M, int64_t N, int64_t K, const Bf16* wk, int64_t ldk, const Store& st, const char* name,
                           const std::string& shape) {
    constexpr bool transposed = LoadA::kIsTransposed;
    if (wgmma_loads() != WgmmaLoads::TensorCopies || !warp_specialized(wgmma_pipeline())) return false;
    bool ran = false;
    const auto launch = [&](auto tile) {
        using Ops = WgmmaTensorConvOperands<decltype(tile), transposed>;
        if (!Ops::fits(la, M, N, ldk, wk)) return;
        Ops ops;
        std::string refused;
        if (!Ops::make(ops, la, M, N, wk, ldk, &refused)) ::pin::detail::throw_error("CUDA ", name, " ", shape, ": tensor copies: ", refused);
        launch_wgmma_ws(M, N, K, ops, st, name, shape);
        ran = true;
    };
    // ws: 128k output channels on a split-column tile where an image's output rows (a class's)
    // fill more of it than of 128 rows: the wide 200-pixel one (28 x 28, 14 x 14, 7 x 7: 98 %
    // against 7/8 and 77 %), or the 112-pixel one (100 %, 7/8, 7/8); else as with_tensor_tile says.
    const bool ws = wgmma_pipeline() == WgmmaPipeline::WarpSpecialized, wide = wgmma_mma_n() == WgmmaMmaN::N256;
    const auto grid = WgmmaTensorConvOperands<WgmmaWsTensorTile128, transposed>::grid_of(la);
    const double rows128 = WgmmaTensorConvOperands<WgmmaWsTensorTile128, transposed>::row_share(grid.Ho, grid.Wo);
    if (ws && wide && N % 128 == 0 && WgmmaTensorConvOperands<WgmmaWsWideSwappedTile, transposed>::row_share(grid.Ho, grid.Wo) > rows128)
        launch(WgmmaWsWideSwappedTile{});
    else if (ws && !wide && N % 128 == 0 && WgmmaTensorConvOperands<WgmmaWsSplitTile, transposed>::row_share(grid.Ho, grid.Wo) > rows128)
        launch(WgmmaWsSplitTile{});
    else
        with_tensor_tile(N, launch);
    return ran;
}
// A convolution's GEMM on the tile with_kmajor_tile picks (or fed by tensor copies, where set and
// the layer allows).
template <class LoadA, class Store>
bool conv_on_wgmma(const LoadA& la, int64_t M, int64_t N, int64_t K, const Bf16* wk, int64_t ldk, const Store& st, const char* name,
                   const std::string& shape) {
    if (!WgmmaConvOperands<LoadA, WgmmaTile<64>>{la, wk, ldk}.fits(M, N, K) || !device_runs_sm90a(nullptr)) return false;
    if (conv_on_tensor_copies(la, M, N, K, wk, ldk, st, name, shape)) return true;
    // The cooperative swapped tile's sub-pixel form spills (wgmma_gemm.cuh WgmmaWsSwappedTile).
    constexpr bool subpixel = std::is_same<LoadA, SubpixelGather<Bf16>>::value;
    with_kmajor_tile<!subpixel>(N, [&](auto tile, auto warp_specialized) {
        const WgmmaConvOperands<LoadA, decltype(tile)> ops{la, wk, ldk, gather_l1()};
        if constexpr (decltype(warp_specialized)::value)
            launch_wgmma_ws(M, N, K, ops, st, name, shape);
        else
            launch_wgmma(M, N, K, 1, ops, st, name, shape);
    });
    return true;
}
// The epilogue for y's storage type; wrap(store) maps a sub-pixel class's rows (or not).
template <class LoadA, class Wrap>
bool conv_wgmma_to(const LoadA& la, int64_t M, int64_t N, int64_t K, const Bf16* wk, int64_t ldk, const internal::ConvOutput& out,
                   const char* name, const std::string& shape, Wrap wrap) {
    if (out.bf16)
        return conv_on_wgmma(la, M, N, K, wk, ldk, wrap(ConvStore<Bf16>{static_cast<Bf16*>(out.y), out.N, out.bias, out.slope, out.accumulate}),
                             name, shape);
    return conv_on_wgmma(la, M, N, K, wk, ldk, wrap(ConvStore<float>{static_cast<float*>(out.y), out.N, out.bias, out.slope, out.accumulate}),
                         name, shape);
}
constexpr auto kUnmapped = [](const auto& store) { return store; };
}  // namespace

namespace internal {
bool conv_wgmma(const Gather<false, Bf16>& la, int64_t M, int64_t N, int64_t K, const Bf16* wk, int64_t ldk, const ConvOutput& out,
                const char* name, const std::string& shape) {
    return conv_wgmma_to(la, M, N, K, wk, ldk, out, name, shape, kUnmapped);
}
bool conv_wgmma(const Gather<true, Bf16>& la, int64_t M, int64_t N, int64_t K, const Bf16* wk, int64_t ldk, const ConvOutput& out,
                const char* name, const std::string& shape) {
    return conv_wgmma_to(la, M, N, K, wk, ldk, out, name, shape, kUnmapped);
}
bool conv_wgmma(const SubpixelGather<Bf16>& la, int64_t M, int64_t N, int64_t K, const Bf16* wk, int64_t ldk, const ConvOutput& out,
                const char* name, const std::string& shape) {
    return conv_wgmma_to(la, M, N, K, wk, ldk, out, name, shape, [&](const auto& store) {
        return RowMappedStore<std::decay_t<decltype(store)>, SubpixelGather<Bf16>>{store, la};
    });
}
bool conv_weight_grad_wgmma(const Gather<false, Bf16>& la, const Bf16* dy, int64_t N, int64_t pixels, float* dw, const char* name,
                            const std::string& shape) {
    const int64_t M = la.K * la.K * la.C;
    if (!WgmmaWeightGradOperands<WgmmaMnMajorTile<64>>{la, dy}.fits(M, N, pixels) || !device_runs_sm90a(nullptr)) return false;
    const auto run = [&](auto tile) {
        using T = decltype(tile);
        const int64_t splits = split_for(M, N, pixels, tile_of_wgmma<T>()), z = gemm_grid(M, N, pixels, splits, tile_of_wgmma<T>()).z;
        DeviceBuffer partial = partial_buffer(z, M, N);
        launch_wgmma(M, N, pixels, splits, WgmmaWeightGradOperands<T>{la, dy, gather_l1()}, PartialStore{partial.data(), M, N}, name, shape);
        reduce_partials(partial, z, M, N, TransposedWeightMap{la.C, la.K}, dw, shape);
    };
    if (N % 128 == 0)
        with_pipelined_tile<128, WgmmaMnMajorTile>(run);
    else
        with_pipelined_tile<64, WgmmaMnMajorTile>(run);
    return true;
}
}  // namespace internal

bool wgmma_supported(std::string* reason) { return device_runs_sm90a(reason); }

void gemm_bf16_wgmma(const Bf16* a, const Bf16* b, float* c, int64_t M, int64_t N, int64_t K) {
    const std::string shape = "(M " + std::to_string(M) + ", N " + std::to_string(N) + ", K " + std::to_string(K) + ")";
    if (M <= 0 || N <= 0 || K <= 0 || K % 8 != 0 || !aligned16(a) || !aligned16(b))
        ::pin::detail::throw_error("CUDA gemm_bf16_wgmma ", shape, ": needs M, N > 0, K a positive multiple of 8 and 16-byte aligned operands");
    std::string why;
    if (!wgmma_supported(&why)) ::pin::detail::throw_error("CUDA gemm_bf16_wgmma ", shape, ": this device cannot run it: ", why);
    const PartialStore st{c, M, N};
    if (warp_specialized(wgmma_pipeline()) && wgmma_loads() == WgmmaLoads::TensorCopies) {
        // The warp-specialized tiles swizzled, the operands brought by tensor copies.
        with_tensor_tile(N, [&](auto tile) {
            WgmmaTensorDenseOperands<decltype(tile)> ops;
            std::string refused;
            if (!WgmmaTensorDenseOperands<decltype(tile)>::make(ops, a, b, M, N, K, &refused))
                ::pin::detail::throw_error("CUDA gemm_bf16_wgmma ", shape, ": tensor copies: ", refused);
            launch_wgmma_ws(M, N, K, ops, st, "gemm_bf16_wgmma", shape);
        });
        return;
    }
    if (warp_specialized(wgmma_pipeline())) {
        with_kmajor_tile<true>(N, [&](auto tile, auto warp_specialized) {
            if constexpr (decltype(warp_specialized)::value)
                launch_wgmma_ws(M, N, K, WgmmaDenseOperands<decltype(tile)>{a, b, K}, st, "gemm_bf16_wgmma", shape);
        });
        return;
    }
    // The probe keeps the 128 x 128 tile whatever N is (as it was measured).
    with_pipelined_tile<128>([&](auto tile) {
        launch_wgmma(M, N, K, 1, WgmmaDenseOperands<decltype(tile)>{a, b, K}, st, "gemm_bf16_wgmma", shape);
    });
}

}  // namespace pin::cuda
