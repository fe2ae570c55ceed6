// cuda/op_profiler.hpp - wall time per kind of GPU work, for pin-bench-gpu's breakdowns of the
// defense forward (GpuDefense) and the training step (GpuTrainingBackend). When enabled, each timed
// piece of work synchronizes the device before and after it, so a total is that work's own time
// (the device idle between pieces is left out); slower, off by default. Not for use from several
// threads at once.
#pragma once
#include <chrono>
#include <map>
#include <string>
#include <type_traits>
#include <utility>

#include "ops.cuh"

namespace pin::cuda {

class OpProfiler {
public:
    void set_enabled(bool on) { enabled_ = on; }
    bool enabled() const { return enabled_; }
    const std::map<std::string, double>& totals_ms() const { return totals_ms_; }
    void clear() { totals_ms_.clear(); }
    // Runs f(); when enabled, adds its time to the total of `name`: a string, or a callable that
    // returns one (built only when enabled: a name made of a layer's shape costs nothing otherwise).
    template <class Name, class F>
    void time(const Name& name, F&& f) {
        if (!enabled_) {
            std::forward<F>(f)();
            return;
        }
        std::string op;
        if constexpr (std::is_invocable_v<const Name&>)
            op = name();
        else
            op = name;
        synchronize(op.c_str());
        const auto t0 = std::chrono::steady_clock::now();
        std::forward<F>(f)();
        synchronize(op.c_str());
        totals_ms_[op] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    }

private:
    bool enabled_ = false;
    std::map<std::string, double> totals_ms_;
};

}  // namespace pin::cuda
