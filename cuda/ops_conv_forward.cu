// cuda/ops_conv_forward.cu - the forward convolutions of cuda/ops.cuh (direct and transposed, from fp32
// or bfloat16 activations) and their weight packing: implicit GEMMs through ops_internal.cuh's
// dispatch, the asynchronous-copy kernel (or the warpgroup-MMA kernel, ops_wgmma.cu) where both
// operands are bfloat16.
#include "ops_internal.cuh"

namespace pin::cuda {

int64_t conv2d_out(const ConvShape& s, int64_t in) { return (in + 2 * s.padding - s.kernel) / s.stride + 1; }
int64_t conv_transpose2d_out(const ConvShape& s, int64_t in) {
    return (in - 1) * s.stride - 2 * s.padding + s.kernel + s.output_padding;
}
DeviceBuffer pack_bf16(const float* x, int64_t n) {
    DeviceBuffer out(static_cast<size_t>((n + 1) / 2));
    Bf16* const o = reinterpret_cast<Bf16*>(out.data());
    launch_map(n, [=] __device__(int64_t i) { o[i] = to_bf16(x[i]); }, "pack_bf16");
    return out;
}
DeviceBuffer pack_bf16_kmajor(const float* packed, int64_t K, int64_t N) {
    DeviceBuffer out(static_cast<size_t>((K * N + 1) / 2));
    Bf16* const o = reinterpret_cast<Bf16*>(out.data());
    // One thread per output element: consecutive threads write consecutive K values of a row.
    launch_map(K * N, [=] __device__(int64_t i) { o[i] = to_bf16(packed[(i % K) * N + i / K]); }, "pack_bf16_kmajor");
    return out;
}
DeviceBuffer pack_conv2d_forward_weight(const float* w, const ConvShape& s) {
    return pack_weight(w, s.out_c, s.in_c, s.kernel, true, "pack conv2d weight");
}
DeviceBuffer pack_conv_transpose2d_forward_weight(const float* w, const ConvShape& s) {
    return pack_weight(w, s.out_c, s.in_c, s.kernel, false, "pack conv_transpose2d weight");
}
void conv2d_forward(ConstActivations x, const float* w, Activations y, const ConvShape& s, const float* bias, const float* prelu_slope,
                    bool accumulate, PackedWeight packed) {
    const int64_t Ho = conv2d_out(s, s.in_h), Wo = conv2d_out(s, s.in_w), K = s.kernel;
    with_storage(x, y, [&](auto xs, auto ys) {
        using Src = std::remove_const_t<std::remove_pointer_t<decltype(xs)>>;
        using Y = std::remove_pointer_t<decltype(ys)>;
        const int64_t M = s.batch * Ho * Wo, Kg = K * K * s.in_c;
        const Gather<false, Src> g{xs, Ho, Wo, s.in_h, s.in_w, s.in_c, K, s.stride, s.padding};
        const ConvStore<Y> st{ys, s.out_c, bias, prelu_slope, accumulate};
        if constexpr (std::is_same<Src, Bf16>::value) {
            if (packed.bf16 && launch_async_gemm(M, s.out_c, Kg, g, packed.bf16, st, "conv2d_forward", shape_of(s), packed.bf16_kmajor, Kg))
                return;
        }
        const DeviceBuffer wp = packed.fp32 ? DeviceBuffer() : pack_conv2d_forward_weight(w, s);
        launch_gemm<false>(M, s.out_c, Kg, 1, g, RowMajor{packed.fp32 ? packed.fp32 : wp.data(), s.out_c}, st, "conv2d_forward",
                           shape_of(s));
    });
}
void conv_transpose2d_forward(ConstActivations x, const float* w, Activations y, const ConvShape& s, const float* prelu_slope,
                              PackedWeight packed) {
    const int64_t Ho = conv_transpose2d_out(s, s.in_h), Wo = conv_transpose2d_out(s, s.in_w), K = s.kernel;
    // y[(b, oh, ow), co] = sum over (kh, kw, ci) of x[b, (oh + p - kh) / s, ...][ci] w[ci, co, kh, kw]
    const DeviceBuffer wp = packed.fp32 ? DeviceBuffer() : pack_conv_transpose2d_forward_weight(w, s);
    with_storage(x, y, [&](auto xs, auto ys) {
        using Src = std::remove_const_t<std::remove_pointer_t<decltype(xs)>>;
        using Y = std::remove_pointer_t<decltype(ys)>;
        launch_transposed_gemm(Gather<true, Src>{xs, Ho, Wo, s.in_h, s.in_w, s.in_c, K, s.stride, s.padding}, s.batch,
                               packed.fp32 ? packed.fp32 : wp.data(), s.out_c, ConvStore<Y>{ys, s.out_c, nullptr, prelu_slope, false},
                               "conv_transpose2d_forward", shape_of(s), packed.bf16, packed.bf16_kmajor);
    });
}

}  // namespace pin::cuda
