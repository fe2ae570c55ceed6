// tests/helpers.hpp - seeded random tensors, layout conversion and tolerance checks for the tests.
#pragma once
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "pin/core/rng.hpp"
#include "pin/core/tensor.hpp"

namespace pin::test {

using DVec = std::vector<double>;

// Normal(0, scale) values from a Philox stream: the same tensor on every run and machine.
inline Tensor random_tensor(const Shape& shape, uint64_t seed, float scale = 1.0f, Layout layout = Layout::NCHW) {
    Tensor t = Tensor::empty(shape, layout);
    const PhiloxStream rng(seed, 7);
    for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = scale * rng.normal(static_cast<uint64_t>(i));
    return t;
}

// Contents in NCHW order as doubles, whatever the tensor's layout.
inline DVec to_nchw_doubles(const Tensor& t) {
    const Tensor c = t.to_layout(Layout::NCHW);
    return DVec(c.data(), c.data() + c.numel());
}

inline DVec abs_of(const DVec& v) {
    DVec a(v.size());
    for (size_t i = 0; i < v.size(); ++i) a[i] = std::fabs(v[i]);
    return a;
}

// Each element within rel * scale[i] + abs_floor of the float64 reference, where scale is the
// same computation on absolute values (the natural size of float32 rounding error).
inline void require_close(const Tensor& got, const DVec& ref, const DVec& scale, double rel, const std::string& what,
                          double abs_floor = 1e-6) {
    const DVec g = to_nchw_doubles(got);
    REQUIRE(g.size() == ref.size());
    double worst = 0.0;
    size_t worst_i = 0;
    for (size_t i = 0; i < g.size(); ++i) {
        const double err = std::fabs(g[i] - ref[i]) / (rel * scale[i] + abs_floor);
        if (!(err <= worst)) {
            worst = err;
            worst_i = i;
        }
    }
    INFO(what << ": worst element " << worst_i << " got " << g[worst_i] << " want " << ref[worst_i] << " (scale "
              << scale[worst_i] << ")");
    REQUIRE(worst <= 1.0);
}

inline bool bitwise_equal(const Tensor& a, const Tensor& b) {
    if (a.numel() != b.numel()) return false;
    for (int64_t i = 0; i < a.numel(); ++i)
        if (std::memcmp(a.data() + i, b.data() + i, sizeof(float)) != 0) return false;
    return true;
}

}  // namespace pin::test

namespace pin::test {

inline double dot_double(const Tensor& a, const Tensor& b) {
    REQUIRE(a.numel() == b.numel());
    double s = 0.0;
    for (int64_t i = 0; i < a.numel(); ++i) s += static_cast<double>(a.data()[i]) * b.data()[i];
    return s;
}

// Finite-difference check of a float32 backward pass along one random direction v:
// <grad, v> must match (L(theta + h v) - L(theta - h v)) / 2h, L evaluated by `loss` (which runs
// the float32 forward and reduces in double). One direction tests every element of grad at once.
template <typename Loss>
void require_directional_derivative(Tensor& theta, const Tensor& grad, Loss loss, uint64_t seed, double rel_tol,
                                    const std::string& what, float step = 1e-3f) {
    REQUIRE(theta.numel() == grad.numel());
    const Tensor v = random_tensor(theta.shape(), seed, 1.0f, theta.layout());
    const Tensor saved = theta.clone();
    for (int64_t i = 0; i < theta.numel(); ++i) theta.data()[i] = saved.data()[i] + step * v.data()[i];
    const double lp = loss();
    for (int64_t i = 0; i < theta.numel(); ++i) theta.data()[i] = saved.data()[i] - step * v.data()[i];
    const double lm = loss();
    theta.copy_from(saved);
    const double fd = (lp - lm) / (2.0 * static_cast<double>(step));
    const double an = dot_double(grad, v);
    double gnorm = 0.0;
    for (int64_t i = 0; i < grad.numel(); ++i) gnorm += static_cast<double>(grad.data()[i]) * grad.data()[i];
    INFO(what << ": analytic " << an << " finite difference " << fd);
    REQUIRE(std::fabs(fd - an) <= rel_tol * (std::fabs(an) + std::sqrt(gnorm)));
}

}  // namespace pin::test
