// row_pass.cpp - one pass of a fully connected layer y = x W^T + b of the pin headers it is
// compiled against, behind the entry points of conv_pass.cpp (ab_compare.sh --rows builds this one
// instead). The passes run through row_products.hpp: forward = row_dot_products (also the
// reconstruction from eigenface coefficients), input gradient = rows_times_matrix (also the
// coefficients: c = (x - m) B is the input gradient of a layer whose weight is B, D x N), weight
// gradient = rows_times_matrix over dy^T.
#include <memory>
#include <random>

#include "pin/cpu/linear.hpp"

#define AB_CAT2(a, b) a##b
#define AB_CAT(a, b) AB_CAT2(a, b)

namespace {
std::unique_ptr<pin::Tensor> g_x, g_y, g_w, g_b;
int g_pass = 0;
}  // namespace

// (batch, in, _, out): x (batch, in), W (out, in), y (batch, out); the other arguments of
// conv_pass.cpp's setup are ignored. Every copy fills them with the same seeded values.
extern "C" void AB_CAT(AB_PREFIX, _setup)(int batch, int in, int, int out, int, int, int pass, int threads, int) {
    using namespace pin;
    set_num_threads(threads);
    g_pass = pass;
    g_x = std::make_unique<Tensor>(Tensor::empty({batch, in}));
    g_y = std::make_unique<Tensor>(Tensor::empty({batch, out}));
    g_w = std::make_unique<Tensor>(Tensor::empty({out, in}));
    g_b = std::make_unique<Tensor>(Tensor::empty({out}));
    std::mt19937 rng(1);
    std::normal_distribution<float> nd;
    for (Tensor* t : {g_x.get(), g_y.get(), g_w.get(), g_b.get()})
        for (int64_t i = 0; i < t->numel(); ++i) t->data()[i] = nd(rng);
}

// Runs the pass once; returns the output it wrote (the weight gradient: dW) and its length.
extern "C" const float* AB_CAT(AB_PREFIX, _run)(long* count) {
    using namespace pin;
    Tensor* result = g_pass == 0 ? g_y.get() : g_pass == 1 ? g_x.get() : g_w.get();
    if (g_pass == 0) cpu::linear_forward(*g_x, *g_w, *g_b, *g_y);
    else if (g_pass == 1) cpu::linear_backward_input(*g_y, *g_w, *g_x);
    else cpu::linear_backward_params(*g_x, *g_y, *g_w, *g_b);
    *count = static_cast<long>(result->numel());
    return result->data();
}
