// conv_pass.cpp - one convolution pass of the pin headers it is compiled against, behind C entry
// points named by AB_PREFIX. ab_compare.sh compiles it twice, against two revisions of include/
// (the old one with -Dpin=pin_old so the two copies of the inline kernels cannot be merged by the
// linker), and ab_main.cpp times both in one process.
#include <memory>
#include <random>

#include "pin/cpu/conv2d.hpp"
#include "pin/cpu/conv_transpose2d.hpp"

#define AB_CAT2(a, b) a##b
#define AB_CAT(a, b) AB_CAT2(a, b)

namespace {
std::unique_ptr<pin::Tensor> g_x, g_y, g_w;
int g_pass = 0, g_transposed = 0;
pin::cpu::Conv2dParams g_conv;
pin::cpu::ConvTranspose2dParams g_tconv;
}  // namespace

// pass: 0 forward, 1 input gradient, 2 weight gradient; kernel: k x k (transposed: always 3). x is
// the pass's input side (conv input or transposed-conv input), y its output side; both filled with
// the same seeded values in every copy.
extern "C" void AB_CAT(AB_PREFIX, _setup)(int batch, int cin, int size, int cout, int stride, int transposed, int pass,
                                          int threads, int kernel) {
    using namespace pin;
    set_num_threads(threads);
    g_pass = pass;
    g_transposed = transposed;
    int out;
    if (transposed) {
        g_tconv = {3, 2, 1, 1};
        out = static_cast<int>(cpu::conv_transpose2d_output_size(size, g_tconv));
        g_w = std::make_unique<Tensor>(Tensor::empty({cin, cout, 3, 3}));
    } else {
        g_conv = {kernel, stride, kernel / 2};  // PIN's padding: 1 for 3x3, 0 for the 1x1 shortcuts
        out = static_cast<int>(cpu::conv2d_output_size(size, g_conv));
        g_w = std::make_unique<Tensor>(Tensor::empty({cout, cin, kernel, kernel}));
    }
    g_x = std::make_unique<Tensor>(Tensor::empty({batch, cin, size, size}, Layout::NHWC));
    g_y = std::make_unique<Tensor>(Tensor::empty({batch, cout, out, out}, Layout::NHWC));
    std::mt19937 rng(1);
    std::normal_distribution<float> nd;
    for (Tensor* t : {g_x.get(), g_y.get(), g_w.get()})
        for (int64_t i = 0; i < t->numel(); ++i) t->data()[i] = nd(rng);
}

// Runs the pass once; returns the output it wrote and its length.
extern "C" const float* AB_CAT(AB_PREFIX, _run)(long* count) {
    using namespace pin;
    Tensor* result = g_pass == 0 ? g_y.get() : g_pass == 1 ? g_x.get() : g_w.get();
    if (g_transposed) {
        if (g_pass == 0) cpu::conv_transpose2d_forward(*g_x, *g_w, *g_y, g_tconv);
        else if (g_pass == 1) cpu::conv_transpose2d_backward_input(*g_y, *g_w, *g_x, g_tconv);
        else cpu::conv_transpose2d_backward_weight(*g_x, *g_y, *g_w, g_tconv);
    } else {
        if (g_pass == 0) cpu::conv2d_forward(*g_x, *g_w, *g_y, g_conv);
        else if (g_pass == 1) cpu::conv2d_backward_input(*g_y, *g_w, *g_x, g_conv);
        else cpu::conv2d_backward_weight(*g_x, *g_y, *g_w, g_conv);
    }
    *count = static_cast<long>(result->numel());
    return result->data();
}
