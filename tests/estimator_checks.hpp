// A GPU (or emulated GPU) estimator's outputs against train::estimate_gradient: dz within 1e-9 of
// its largest magnitude, the mean cost to 1e-12, the mean number of kept eigenfaces exactly (sums
// of whole numbers; averaged as estimate_gradient does, the sum then one division).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include <catch2/catch.hpp>

#include "pin/train/estimators.hpp"

namespace pin::test {
inline void require_estimator_matches(const std::vector<double>& dz, const std::vector<double>& cost, const std::vector<double>& kept,
                                      const train::BatchGradient& cpu, const char* what) {
    double worst = 0, scale = 0, mean_cost = 0, mean_kept = 0;
    for (size_t i = 0; i < dz.size(); ++i) {
        worst = std::max(worst, std::fabs(dz[i] - cpu.dz[i]));
        scale = std::max(scale, std::fabs(cpu.dz[i]));
    }
    for (size_t i = 0; i < cost.size(); ++i) mean_cost += cost[i], mean_kept += kept[i];
    mean_cost /= static_cast<double>(cost.size());
    mean_kept /= static_cast<double>(kept.size());
    std::printf("match %-40s worst |gpu - cpu| / max|cpu| = %.3g (tolerance 1e-9)\n", what, scale > 0 ? worst / scale : worst);
    INFO(what);
    REQUIRE(scale > 0);
    REQUIRE(worst <= 1e-9 * scale);
    REQUIRE(mean_cost == Approx(cpu.mean_cost).epsilon(1e-12));
    REQUIRE(mean_kept == cpu.mean_kept);
}
}  // namespace pin::test
