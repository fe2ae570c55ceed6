// pin/eval/metrics.hpp - verification metrics from pair scores (higher score = more likely the same
// person): ROC, equal error rate, AUC, TAR at fixed FAR, accuracy at a threshold, and a 95 % interval
// over folds.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "pin/core/error.hpp"

namespace pin::eval {

struct RocPoint {
    double threshold, far, tar;  // accept when score >= threshold
};

// The ROC at every distinct score, from (far 0, tar 0) to (1, 1).
inline std::vector<RocPoint> roc_curve(const std::vector<double>& scores, const std::vector<int>& same) {
    PIN_CHECK(scores.size() == same.size() && !scores.empty(), "roc_curve: ", scores.size(), " scores for ", same.size(), " labels");
    std::vector<size_t> order(scores.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] > scores[b]; });
    double P = 0, N = 0;
    for (int s : same) (s ? P : N) += 1;
    PIN_CHECK(P > 0 && N > 0, "roc_curve: needs same-person and different-person pairs");
    std::vector<RocPoint> roc{{std::numeric_limits<double>::infinity(), 0, 0}};
    double tp = 0, fp = 0;
    for (size_t k = 0; k < order.size(); ++k) {
        (same[order[k]] ? tp : fp) += 1;
        if (k + 1 < order.size() && scores[order[k + 1]] == scores[order[k]]) continue;  // ties move together
        roc.push_back({scores[order[k]], fp / N, tp / P});
    }
    return roc;
}

// Equal error rate: where FAR = FRR (1 - TAR), interpolated linearly between ROC points.
inline double equal_error_rate(const std::vector<RocPoint>& roc) {
    for (size_t i = 1; i < roc.size(); ++i) {
        const double d0 = roc[i - 1].far - (1 - roc[i - 1].tar), d1 = roc[i].far - (1 - roc[i].tar);
        if (d0 <= 0 && d1 >= 0) {
            const double t = d1 == d0 ? 0 : -d0 / (d1 - d0);
            return roc[i - 1].far + t * (roc[i].far - roc[i - 1].far);
        }
    }
    return 0.5;
}

inline double area_under_curve(const std::vector<RocPoint>& roc) {
    double auc = 0;
    for (size_t i = 1; i < roc.size(); ++i) auc += (roc[i].far - roc[i - 1].far) * (roc[i].tar + roc[i - 1].tar) / 2;
    return auc;
}

// The highest TAR with FAR <= far.
inline double tar_at_far(const std::vector<RocPoint>& roc, double far) {
    double best = 0;
    for (const RocPoint& p : roc)
        if (p.far <= far + 1e-12) best = std::max(best, p.tar);
    return best;
}

// The threshold at the EER point (used to score attacks at a fixed operating point).
inline double eer_threshold(const std::vector<RocPoint>& roc) {
    double best = roc.back().threshold, gap = 2;
    for (const RocPoint& p : roc) {
        if (!std::isfinite(p.threshold)) continue;
        const double g = std::fabs(p.far - (1 - p.tar));
        if (g < gap) {
            gap = g;
            best = p.threshold;
        }
    }
    return best;
}

inline double accuracy_at(const std::vector<double>& scores, const std::vector<int>& same, double threshold) {
    double ok = 0;
    for (size_t i = 0; i < scores.size(); ++i) ok += ((scores[i] >= threshold) == (same[i] != 0));
    return ok / static_cast<double>(scores.size());
}

struct Interval {
    double mean = 0, half_width = 0;  // mean +- half_width: 95 % (Student t over the folds)
};
inline Interval fold_interval(const std::vector<double>& per_fold) {
    Interval out;
    const size_t k = per_fold.size();
    if (k == 0) return out;
    for (double v : per_fold) out.mean += v / static_cast<double>(k);
    if (k < 2) return out;
    double var = 0;
    for (double v : per_fold) var += (v - out.mean) * (v - out.mean) / static_cast<double>(k - 1);
    static const double t975[] = {0, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262};
    const double t = k - 1 < 10 ? t975[k - 1] : 1.96;
    out.half_width = t * std::sqrt(var / static_cast<double>(k));
    return out;
}

inline double cosine_similarity(const float* a, const float* b, int64_t n) {
    double s = 0, na = 0, nb = 0;
    for (int64_t i = 0; i < n; ++i) {
        s += static_cast<double>(a[i]) * b[i];
        na += static_cast<double>(a[i]) * a[i];
        nb += static_cast<double>(b[i]) * b[i];
    }
    return na > 0 && nb > 0 ? s / std::sqrt(na * nb) : 0.0;
}

}  // namespace pin::eval
