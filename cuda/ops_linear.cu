// cuda/ops_linear.cu - the linear layers of cuda/ops.cuh and the projection onto the eigenfaces and back:
// GEMMs through ops_internal.cuh's dispatch.
#include "ops_internal.cuh"

namespace pin::cuda {

// ---- linear --------------------------------------------------------------------------------------------
DeviceBuffer pack_linear_forward_weight(const float* w, int64_t in, int64_t out) {
    DeviceBuffer wt(static_cast<size_t>(in * out));
    transpose(w, wt.data(), out, in);
    return wt;
}
void linear_forward(const float* x, const float* w, const float* b, float* y, int64_t batch, int64_t in, int64_t out,
                    const float* packed) {
    const DeviceBuffer wt = packed ? DeviceBuffer() : pack_linear_forward_weight(w, in, out);
    launch_gemm<false>(batch, out, in, 1, RowMajor{x, in}, RowMajor{packed ? packed : wt.data(), out}, ConvStore<>{y, out, b, nullptr, false},
                       "linear_forward", dims(batch, in, out));
}
void linear_backward_input(const float* dy, const float* w, float* dx, int64_t batch, int64_t in, int64_t out) {
    launch_gemm<false>(batch, in, out, 1, RowMajor{dy, out}, RowMajor{w, in}, ConvStore<>{dx, in, nullptr, nullptr, false},
                       "linear_backward_input", dims(batch, in, out));
}
void linear_backward_params(const float* x, const float* dy, float* dw, float* db, int64_t batch, int64_t in, int64_t out) {
    gemm_split_reduce(out, in, batch, ColMajor{dy, out}, RowMajor{x, in}, IdentityMap{in}, dw, "linear_backward_params",
                      dims(batch, in, out));
    channel_sum_floats(dy, batch, out, db, "linear_backward_params (bias)", dims(batch, in, out));
}

// ---- eigenface projection ------------------------------------------------------------------------
void project_coefficients(const float* basis, const float* mean, const float* x, float* c, int64_t batch, int64_t D, int64_t N) {
    launch_gemm<false>(batch, N, D, 1, Centered{x, mean, D}, RowMajor{basis, N}, ConvStore<>{c, N, nullptr, nullptr, false},
                       "project_coefficients", dims(batch, D, N));
}
void reconstruct(const float* basis_t, const float* mean, const float* c, const float* q, float* y, int64_t batch, int64_t D,
                 int64_t N) {
    // y = (q .* c) B^T + mean: the mean enters as a per-column "bias".
    launch_gemm<false>(batch, D, N, 1, MaskedCoefficients{c, q, N}, RowMajor{basis_t, D}, ConvStore<>{y, D, mean, nullptr, false},
                       "reconstruct", dims(batch, D, N));
}

}  // namespace pin::cuda
