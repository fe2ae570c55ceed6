// pin/train/mask_cost.hpp - the cost of an eigenface mask in O(N), and its per-bit differences.
//
// With y = x - m (clean), c = B^T (x_n - m) (noisy input's coefficients), d = B^T y and B^T B = I,
// for a binary mask q:
//   ||B diag(q) c - y||^2 = sum_j q_j (c_j^2 - 2 c_j d_j) + ||y||^2 = S(q)
// so a mask costs O(N), never O(D N). Costs (spec, training section):
//   L2   (paper eq. 3, the default)  f(q) = sqrt(S(q)) + lambda ||q||_0
//   MSE  (released code)             f(q) = S(q) / D + lambda ||q||_0
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "pin/core/error.hpp"

namespace pin::train {

enum class CostType { L2, MSE };

inline CostType parse_cost_type(const std::string& s) {
    if (s == "l2") return CostType::L2;
    if (s == "mse") return CostType::MSE;
    PIN_CHECK(false, "unknown cost '", s, "' (expected l2 or mse)");
    return CostType::L2;
}

// Per-image terms: g_j = c_j^2 - 2 c_j d_j and ||y||^2.
struct MaskCostTerms {
    std::vector<double> g;
    double y2 = 0;
    int64_t pixels = 0;  // D, for the MSE cost
};

inline MaskCostTerms mask_cost_terms(const float* c, const float* d, int64_t n, double y_squared_norm, int64_t pixels) {
    MaskCostTerms t;
    t.g.resize(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) t.g[static_cast<size_t>(j)] = static_cast<double>(c[j]) * c[j] - 2.0 * c[j] * d[j];
    t.y2 = y_squared_norm;
    t.pixels = pixels;
    return t;
}

// S(q) = squared reconstruction error of the (binary) mask q.
inline double mask_squared_error(const MaskCostTerms& t, const float* q) {
    double s = t.y2;
    for (size_t j = 0; j < t.g.size(); ++j) s += q[j] * t.g[j];
    return std::max(s, 0.0);  // rounding can take an exact 0 slightly below
}

inline double cost_from_error(double squared_error, double kept, CostType type, double lambda, int64_t pixels) {
    return (type == CostType::L2 ? std::sqrt(squared_error) : squared_error / static_cast<double>(pixels)) + lambda * kept;
}

inline double mask_cost(const MaskCostTerms& t, const float* q, CostType type, double lambda) {
    double kept = 0;
    for (size_t j = 0; j < t.g.size(); ++j) kept += q[j];
    return cost_from_error(mask_squared_error(t, q), kept, type, lambda, t.pixels);
}

// Delta_j(q) = f(q with bit j on) - f(q with bit j off), for every j, in O(N).
inline void mask_cost_differences(const MaskCostTerms& t, const float* q, CostType type, double lambda, double* delta) {
    const double S = mask_squared_error(t, q);
    for (size_t j = 0; j < t.g.size(); ++j) {
        const double on = std::max(S + (1.0 - q[j]) * t.g[j], 0.0), off = std::max(S - q[j] * t.g[j], 0.0);
        delta[j] = (type == CostType::L2 ? std::sqrt(on) - std::sqrt(off) : (on - off) / static_cast<double>(t.pixels)) + lambda;
    }
}

}  // namespace pin::train
