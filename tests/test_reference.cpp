// The float64 reference kernels' backward passes, checked element by element by central finite
// differences in double precision. Every fast kernel is then compared against these references.
#include <functional>

#include "helpers.hpp"
#include "pin/cpu/reference.hpp"

using namespace pin;
using namespace pin::test;
using pin::reference::Vec;

namespace {
Vec random_vec(size_t n, uint64_t seed) {
    const PhiloxStream rng(seed, 11);
    Vec v(n);
    for (size_t i = 0; i < n; ++i) v[i] = rng.normal(i);
    return v;
}
double dotv(const Vec& a, const Vec& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
}
// grad[j] == d/dtheta_j of loss(theta), every j, by central differences.
void require_fd(Vec& theta, const Vec& grad, const std::function<double()>& loss, const char* what) {
    const double h = 1e-5;
    for (size_t j = 0; j < theta.size(); ++j) {
        const double keep = theta[j];
        theta[j] = keep + h;
        const double lp = loss();
        theta[j] = keep - h;
        const double lm = loss();
        theta[j] = keep;
        INFO(what << " element " << j);
        REQUIRE((lp - lm) / (2 * h) == Approx(grad[j]).margin(1e-6).epsilon(1e-6));
    }
}
}  // namespace

TEST_CASE("reference conv2d backward passes agree with finite differences", "[reference]") {
    for (const reference::ConvShape& s : {reference::ConvShape{2, 3, 5, 6, 4, 3, 1, 1}, reference::ConvShape{1, 2, 7, 5, 3, 3, 2, 1},
                                         reference::ConvShape{1, 3, 4, 4, 2, 1, 2, 0}}) {
        Vec x = random_vec(static_cast<size_t>(s.n * s.cin * s.h * s.w), 1);
        Vec w = random_vec(static_cast<size_t>(s.cout * s.cin * s.k * s.k), 2);
        const Vec dy = random_vec(static_cast<size_t>(s.n * s.cout * s.oh() * s.ow()), 3);
        auto loss = [&] { return dotv(dy, reference::conv2d_forward(x, w, s)); };
        require_fd(x, reference::conv2d_backward_input(dy, w, s), loss, "conv2d dx");
        require_fd(w, reference::conv2d_backward_weight(x, dy, s), loss, "conv2d dw");
    }
}

TEST_CASE("reference conv_transpose2d backward passes agree with finite differences", "[reference]") {
    for (const reference::ConvTransposeShape& s :
         {reference::ConvTransposeShape{2, 3, 3, 4, 2, 3, 2, 1, 1}, reference::ConvTransposeShape{1, 2, 4, 3, 3, 3, 1, 1, 0}}) {
        Vec x = random_vec(static_cast<size_t>(s.n * s.cin * s.h * s.w), 4);
        Vec w = random_vec(static_cast<size_t>(s.cin * s.cout * s.k * s.k), 5);
        const Vec dy = random_vec(static_cast<size_t>(s.n * s.cout * s.oh() * s.ow()), 6);
        auto loss = [&] { return dotv(dy, reference::conv_transpose2d_forward(x, w, s)); };
        require_fd(x, reference::conv_transpose2d_backward_input(dy, w, s), loss, "conv_transpose2d dx");
        require_fd(w, reference::conv_transpose2d_backward_weight(x, dy, s), loss, "conv_transpose2d dw");
    }
}

TEST_CASE("reference PReLU backward agrees with finite differences", "[reference]") {
    const int64_t C = 3, inner = 5;
    Vec x = random_vec(2 * C * inner, 7);
    Vec a = {0.25, -0.1, 0.7};
    const Vec dy = random_vec(x.size(), 8);
    Vec dx, da;
    reference::prelu_backward(x, a, dy, C, inner, dx, da);
    auto loss = [&] { return dotv(dy, reference::prelu_forward(x, a, C, inner)); };
    require_fd(x, dx, loss, "prelu dx");
    require_fd(a, da, loss, "prelu da");
}

TEST_CASE("reference linear layer agrees with finite differences", "[reference]") {
    const int64_t B = 3, in = 7, out = 4;
    Vec x = random_vec(B * in, 9), w = random_vec(out * in, 10), b = random_vec(out, 11);
    const Vec dy = random_vec(B * out, 12);
    Vec dx, dw, db;
    reference::linear_backward(x, w, dy, B, in, out, dx, dw, db);
    auto loss = [&] { return dotv(dy, reference::linear_forward(x, w, b, B, in, out)); };
    require_fd(x, dx, loss, "linear dx");
    require_fd(w, dw, loss, "linear dw");
    require_fd(b, db, loss, "linear db");
}
