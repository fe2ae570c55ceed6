// cuda/ops_linear.cu - the linear layers of cuda/ops.cuh and the projection onto the eigenfaces and back:
// GEMMs through ops_internal.cuh's dispatch.
#include "ops_internal.cuh"

namespace pin::cuda {

namespace {
// y[m, n] = sum over the K chunks of partial[z, m, n] + bias[n] (bias may be null), in chunk order.
__global__ void reduce_partials_bias_kernel(const float* partial, int64_t z, int64_t M, int64_t N, const float* bias, float* y) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= M * N) return;
    float s = 0.0f;
    for (int64_t c = 0; c < z; ++c) s += partial[c * M * N + i];
    y[i] = bias ? s + bias[i % N] : s;
}
// y = A B + bias for the forward GEMMs with a row-major A (linear layers, the projection onto the
// eigenfaces). Those with few output tiles and a long K split K into chunks of at least 2,048,
// summed in chunk order afterwards (then the bias): at batch 256 the head's first layer (512 outputs
// from 25,088 inputs) is 16 tiles of 128 x 64 and the projection 80, for the H200's 132 SMs, each
// block walking the whole K alone. The same products, summed in another order.
template <class LoadA, class LoadB>
inline void launch_gemm_bias(int64_t M, int64_t N, int64_t K, const LoadA& la, const LoadB& lb, float* y, const float* bias,
                             const char* name, const std::string& shape) {
    const Tile t = tile_of(choose_kernel<false>(M, N, K, 1, la, lb));
    const int64_t tiles = ((M + t.m - 1) / t.m) * ((N + t.n - 1) / t.n);
    const int64_t splits = std::max<int64_t>(1, std::min<int64_t>((264 + tiles - 1) / tiles, K / 2048));
    if (splits == 1 || M <= 0 || N <= 0) {
        launch_gemm<false>(M, N, K, 1, la, lb, ConvStore<>{y, N, bias, nullptr, false}, name, shape);
        return;
    }
    const GemmPlan plan = plan_gemm<false>(M, N, K, splits, la, lb);
    const int64_t z = plan.grid.z;
    DeviceBuffer partial = partial_buffer(z, M, N);
    launch_gemm<false>(plan, M, N, K, la, lb, PartialStore{partial.data(), M, N}, name, shape);
    PIN_LAUNCH(static_cast<unsigned>((M * N + 255) / 256), 256, cur(), reduce_partials_bias_kernel)(partial.data(), z, M, N, bias, y);
    check(cudaGetLastError(), "reduce_partials (bias)", shape);
}
}  // namespace

// ---- linear --------------------------------------------------------------------------------------------
DeviceBuffer pack_linear_forward_weight(const float* w, int64_t in, int64_t out) {
    DeviceBuffer wt(static_cast<size_t>(in * out));
    transpose(w, wt.data(), out, in);
    return wt;
}
void linear_forward(const float* x, const float* w, const float* b, float* y, int64_t batch, int64_t in, int64_t out,
                    const float* packed) {
    const DeviceBuffer wt = packed ? DeviceBuffer() : pack_linear_forward_weight(w, in, out);
    launch_gemm_bias(batch, out, in, RowMajor{x, in}, RowMajor{packed ? packed : wt.data(), out}, y, b, "linear_forward", dims(batch, in, out));
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
    launch_gemm_bias(batch, N, D, Centered{x, mean, D}, RowMajor{basis, N}, c, nullptr, "project_coefficients", dims(batch, D, N));
}
void reconstruct(const float* basis_t, const float* mean, const float* c, const float* q, float* y, int64_t batch, int64_t D,
                 int64_t N) {
    // y = (q .* c) B^T + mean: the mean enters as a per-column "bias".
    launch_gemm<false>(batch, D, N, 1, MaskedCoefficients{c, q, N}, RowMajor{basis_t, D}, ConvStore<>{y, D, mean, nullptr, false},
                       "reconstruct", dims(batch, D, N));
}

}  // namespace pin::cuda
