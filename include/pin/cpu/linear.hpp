// pin/cpu/linear.hpp - fully connected layer y = x W^T + b, forward and backward, on the CPU.
//
// x: (batch, in), W: (out, in) as in PyTorch, b: (out), y: (batch, out), all row-major.
// The selection head's first layer has a 25088 x 512 weight (51 MB): at small batch the layer is
// bound by reading W, so every loop here streams W exactly once per call and keeps the batch rows
// (at most a few MB) in cache. Outputs are split into fixed blocks, each reduced in one task.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "pin/core/parallel.hpp"
#include "pin/core/simd.hpp"
#include "pin/core/tensor.hpp"
#include "pin/cpu/row_products.hpp"

namespace pin::cpu {

namespace detail {
inline void check_linear(const Tensor& x, const Tensor& w, const char* op) {
    PIN_CHECK(x.rank() == 2 && w.rank() == 2, op, ": x and W must be rank 2, got ", shape_to_string(x.shape()), " and ",
              shape_to_string(w.shape()));
    PIN_CHECK(x.dim(1) == w.dim(1), op, ": x has ", x.dim(1), " features, W expects ", w.dim(1));
}
}  // namespace detail

inline void linear_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y) {
    detail::check_linear(x, w, "linear_forward");
    const int64_t B = x.dim(0), in = x.dim(1), out = w.dim(0);
    if (b.defined()) check_shape(b, {out}, "linear_forward bias");
    check_shape(y, {B, out}, "linear_forward output");
    const float* xd = x.data();
    const float* wd = w.data();
    const float* bd = b.defined() ? b.data() : nullptr;
    row_dot_products(wd, out, xd, B, in, bd, y.data(), out);
}

// dx = dy W (overwritten): W read once, in row chunks (row_products.hpp).
inline void linear_backward_input(const Tensor& dy, const Tensor& w, Tensor& dx) {
    detail::check_linear(dx, w, "linear_backward_input");
    const int64_t B = dx.dim(0), in = dx.dim(1), out = w.dim(0);
    check_shape(dy, {B, out}, "linear_backward_input output gradient");
    rows_times_matrix(dy.data(), B, out, w.data(), in, dx.data());
}

// dW = dy^T x and db = sum over the batch of dy (both overwritten; db may be undefined).
inline void linear_backward_params(const Tensor& x, const Tensor& dy, Tensor& dw, Tensor& db) {
    detail::check_linear(x, dw, "linear_backward_params");
    const int64_t B = x.dim(0), in = x.dim(1), out = dw.dim(0);
    check_shape(dy, {B, out}, "linear_backward_params output gradient");
    const float* g = dy.data();
    // dW's rows are dy's columns times x: dy^T (out x B) first, a few KB.
    std::vector<float> gt(static_cast<size_t>(out * B));
    for (int64_t n = 0; n < B; ++n)
        for (int64_t o = 0; o < out; ++o) gt[static_cast<size_t>(o * B + n)] = g[n * out + o];
    rows_times_matrix(gt.data(), out, B, x.data(), in, dw.data());
    if (db.defined()) {
        check_shape(db, {out}, "linear_backward_params bias gradient");
        float* gb = db.data();
        for (int64_t o = 0; o < out; ++o) {
            float s = 0.0f;
            for (int64_t n = 0; n < B; ++n) s += g[n * out + o];
            gb[o] = s;
        }
    }
}

}  // namespace pin::cpu
