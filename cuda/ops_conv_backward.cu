// cuda/ops_conv_backward.cu - the input and weight gradients of the convolutions of cuda/ops.cuh:
// implicit GEMMs through ops_internal.cuh's dispatch; weight gradients split along the pixels and
// summed in chunk order (gemm_split_reduce).
#include "ops_internal.cuh"

namespace pin::cuda {

void conv2d_backward_input(ConstActivations dy, const float* w, float* dx, const ConvShape& s, bool accumulate) {
    const int64_t Ho = conv2d_out(s, s.in_h), Wo = conv2d_out(s, s.in_w), K = s.kernel;
    // dx[(b, ih, iw), ci] = sum over (kh, kw, co) of dy[b, (ih + p - kh) / s, ...][co] w[co, ci, kh, kw]
    const DeviceBuffer wp = pack_weight(w, s.in_c, s.out_c, K, false, "pack conv2d weight (input gradient)");
    const ConvStore<> st{dx, s.in_c, nullptr, nullptr, accumulate};
    with_storage(dy, dx, [&](auto dys, auto) {  // dx is always fp32
        using Src = std::remove_const_t<std::remove_pointer_t<decltype(dys)>>;
        // From bfloat16, the weight as bfloat16 too, and K-major where the warpgroup-MMA kernel is
        // asked for and can run (ops.cuh AsyncTileShape::Wgmma): launch_transposed_gemm decides
        // whether the asynchronous-copy or the warpgroup-MMA kernel runs.
        constexpr bool kBf16 = std::is_same<Src, Bf16>::value;
        const int64_t rows = K * K * s.out_c;
        const bool kmajor = kBf16 && async_tile() == AsyncTileShape::Wgmma && wgmma_supported();
        const DeviceBuffer wb = kBf16 ? pack_bf16(wp.data(), rows * s.in_c) : DeviceBuffer(),
                           wk = kmajor ? pack_bf16_kmajor(wp.data(), rows, s.in_c) : DeviceBuffer();
        launch_transposed_gemm(Gather<true, Src>{dys, s.in_h, s.in_w, Ho, Wo, s.out_c, K, s.stride, s.padding}, s.batch, wp.data(), s.in_c,
                               st, "conv2d_backward_input", shape_of(s), bf16_data(wb), kmajor ? bf16_data(wk) : nullptr);
    });
}

namespace {
// n bfloat16 values as floats, in a new buffer (the weight gradient's operands outside the
// asynchronous-copy kernel are fp32).
struct Widen {
    const Bf16* x;
    float* out;
    __device__ void operator()(int64_t i) const { out[i] = to_float(x[i]); }
};
DeviceBuffer widened(const Bf16* x, int64_t n) {
    DeviceBuffer out(static_cast<size_t>(n));
    launch_map(n, Widen{x, out.data()}, "conv2d_backward_weight (bfloat16 to fp32)");
    return out;
}
}  // namespace

void conv2d_backward_weight(ConstActivations x, ConstActivations dy, float* dw, const ConvShape& s) {
    const int64_t Ho = conv2d_out(s, s.in_h), Wo = conv2d_out(s, s.in_w), K = s.kernel, P = s.batch * Ho * Wo;
    if (x.bf16 && dy.bf16) {
        // dw^T[(kh, kw, ci), co] = sum over output pixels of x_gather(pix, (kh, kw, ci)) dy[pix, co],
        // with K split along the pixels, then summed in chunk order: on the warpgroup-MMA kernel where
        // AsyncTileShape::Wgmma asks for it and it applies, else on the asynchronous-copy kernel.
        const Gather<false, Bf16> gx{static_cast<const Bf16*>(x.data), Ho, Wo, s.in_h, s.in_w, s.in_c, K, s.stride, s.padding};
        const Bf16* const dyb = static_cast<const Bf16*>(dy.data);
        if (wgmma_requested() && internal::conv_weight_grad_wgmma(gx, dyb, s.out_c, P, dw, "conv2d_backward_weight", shape_of(s)))
            return;
        const AsyncWeightGradOperands<> ops{gx, dyb, gather_l1()};
        const int64_t M = K * K * s.in_c, N = s.out_c;
        if (async_mode() && ops.fits(M, N, P, 1)) {
            auto run = [&](auto form) {
                constexpr Tile t = tile_of_async<typename decltype(form)::Tile>();
                const int64_t splits = split_for(M, N, P, t), z = gemm_grid(M, N, P, splits, t).z;
                DeviceBuffer partial = partial_buffer(z, M, N);
                launch_async(M, N, P, splits, form, PartialStore{partial.data(), M, N}, "conv2d_backward_weight", shape_of(s));
                reduce_partials(partial, z, M, N, TransposedWeightMap{s.in_c, K}, dw, shape_of(s));
            };
            if (async_cols128<AsyncWeightGradTileCols128>(N))
                run(AsyncWeightGradOperands<AsyncWeightGradTileCols128>{ops.la, ops.dy, ops.cache_l1});
            else
                run(ops);
            return;
        }
    }
    // Elsewhere in fp32 (bfloat16 operands widened first):
    // dw[co, (kh, kw, ci)] = sum over output pixels of dy[pix, co] x_gather(pix, (kh, kw, ci))
    const DeviceBuffer xw = x.bf16 ? widened(static_cast<const Bf16*>(x.data), s.batch * s.in_h * s.in_w * s.in_c) : DeviceBuffer();
    const DeviceBuffer dyw = dy.bf16 ? widened(static_cast<const Bf16*>(dy.data), P * s.out_c) : DeviceBuffer();
    const float* xs = x.bf16 ? xw.data() : static_cast<const float*>(x.data);
    const float* dys = dy.bf16 ? dyw.data() : static_cast<const float*>(dy.data);
    gemm_split_reduce(s.out_c, K * K * s.in_c, P, ColMajor{dys, s.out_c}, Gather<false>{xs, Ho, Wo, s.in_h, s.in_w, s.in_c, K, s.stride, s.padding},
                      WeightMap{s.in_c, K}, dw, "conv2d_backward_weight", shape_of(s));
}
void conv_transpose2d_backward_input(const float* dy, const float* w, float* dx, const ConvShape& s) {
    const int64_t Ho = conv_transpose2d_out(s, s.in_h), Wo = conv_transpose2d_out(s, s.in_w), K = s.kernel;
    // dx[(b, ih, iw), ci] = sum over (kh, kw, co) of dy[b, ih s - p + kh, ...][co] w[ci, co, kh, kw]
    const DeviceBuffer wp = pack_weight(w, s.in_c, s.out_c, K, true, "pack conv_transpose2d weight (input gradient)");
    launch_gemm<false>(s.batch * s.in_h * s.in_w, s.in_c, K * K * s.out_c, 1,
                       Gather<false>{dy, s.in_h, s.in_w, Ho, Wo, s.out_c, K, s.stride, s.padding}, RowMajor{wp.data(), s.in_c},
                       ConvStore<>{dx, s.in_c, nullptr, nullptr, false}, "conv_transpose2d_backward_input", shape_of(s));
}
void conv_transpose2d_backward_weight(const float* x, const float* dy, float* dw, const ConvShape& s) {
    const int64_t Ho = conv_transpose2d_out(s, s.in_h), Wo = conv_transpose2d_out(s, s.in_w), K = s.kernel;
    // dw[ci, (kh, kw, co)] = sum over input pixels of x[pix, ci] dy_gather(pix, (kh, kw, co))
    gemm_split_reduce(s.in_c, K * K * s.out_c, s.batch * s.in_h * s.in_w, ColMajor{x, s.in_c},
                      Gather<false>{dy, s.in_h, s.in_w, Ho, Wo, s.out_c, K, s.stride, s.padding}, WeightMap{s.out_c, K}, dw,
                      "conv_transpose2d_backward_weight", shape_of(s));
}

}  // namespace pin::cuda
