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
        // From bfloat16, the weight as bfloat16 too: launch_transposed_gemm decides whether the
        // asynchronous-copy kernel runs.
        const DeviceBuffer wb = std::is_same<Src, Bf16>::value ? pack_bf16(wp.data(), K * K * s.in_c * s.out_c) : DeviceBuffer();
        launch_transposed_gemm(Gather<true, Src>{dys, s.in_h, s.in_w, Ho, Wo, s.out_c, K, s.stride, s.padding}, s.batch, wp.data(), s.in_c,
                               st, "conv2d_backward_input", shape_of(s), bf16_data(wb));
    });
}

void conv2d_backward_weight(const float* x, const float* dy, float* dw, const ConvShape& s) {
    const int64_t Ho = conv2d_out(s, s.in_h), Wo = conv2d_out(s, s.in_w), K = s.kernel;
    // dw[co, (kh, kw, ci)] = sum over output pixels of dy[pix, co] x_gather(pix, (kh, kw, ci))
    gemm_split_reduce(s.out_c, K * K * s.in_c, s.batch * Ho * Wo, ColMajor{dy, s.out_c},
                      Gather<false>{x, Ho, Wo, s.in_h, s.in_w, s.in_c, K, s.stride, s.padding}, WeightMap{s.in_c, K}, dw,
                      "conv2d_backward_weight", shape_of(s));
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
