// ab_main.cpp - times one convolution pass of two builds of the kernels (ab_compare.sh) in one
// process, calls interleaved old/new, best of --reps each. On a shared VM whose speed swings by 2x
// for minutes, two binaries timed one after the other compare the machine's moods; interleaved
// calls in one process see the same moments.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern "C" void ab_old_setup(int, int, int, int, int, int, int, int, int);
extern "C" const float* ab_old_run(long*);
extern "C" void ab_new_setup(int, int, int, int, int, int, int, int, int);
extern "C" const float* ab_new_run(long*);

int main(int argc, char** argv) {
    if (argc < 9) {
        std::fprintf(stderr, "usage: ab_main BATCH CIN SIZE COUT STRIDE TRANSPOSED(0|1) PASS(fwd|bwd-in|bwd-w) REPS [THREADS] [KERNEL]\n");
        return 2;
    }
    const int batch = std::atoi(argv[1]), cin = std::atoi(argv[2]), size = std::atoi(argv[3]), cout = std::atoi(argv[4]);
    const int stride = std::atoi(argv[5]), transposed = std::atoi(argv[6]);
    const std::string pass_name = argv[7];
    const int pass = pass_name == "fwd" ? 0 : pass_name == "bwd-in" ? 1 : pass_name == "bwd-w" ? 2 : -1;
    const int reps = std::atoi(argv[8]), threads = argc > 9 ? std::atoi(argv[9]) : 2;
    const int kernel = transposed || argc <= 10 ? 3 : std::atoi(argv[10]);
    if (pass < 0 || reps < 1 || kernel < 1) {
        std::fprintf(stderr, "ab_main: PASS must be fwd, bwd-in or bwd-w, REPS and KERNEL >= 1\n");
        return 2;
    }
    ab_old_setup(batch, cin, size, cout, stride, transposed, pass, threads, kernel);
    ab_new_setup(batch, cin, size, cout, stride, transposed, pass, threads, kernel);
    using Clock = std::chrono::steady_clock;
    double best_old = 1e30, best_new = 1e30;
    long n_old = 0, n_new = 0;
    const float *o = ab_old_run(&n_old), *n = ab_new_run(&n_new);  // warm-up
    // Besides the best times, the median over the reps of new/old of adjacent calls: a slow phase
    // of the machine slows both calls of a pair, so the ratio of a pair is steadier than either.
    // The order inside a pair alternates, so neither side always runs second.
    std::vector<double> ratios;
    for (int r = 0; r < reps; ++r) {
        double t_old = 0, t_new = 0;
        for (int side = 0; side < 2; ++side) {
            const bool run_old = (side == 0) == (r % 2 == 0);
            const auto t0 = Clock::now();
            if (run_old) o = ab_old_run(&n_old);
            else n = ab_new_run(&n_new);
            (run_old ? t_old : t_new) = std::chrono::duration<double>(Clock::now() - t0).count();
        }
        best_old = std::min(best_old, t_old);
        best_new = std::min(best_new, t_new);
        ratios.push_back(t_new / t_old);
    }
    std::sort(ratios.begin(), ratios.end());
    const double median_ratio = ratios[ratios.size() / 2];
    // Each copy owns its tensors, so both results are still there to compare.
    double diff = 0, scale = 0;
    for (long i = 0; i < std::min(n_old, n_new); ++i) {
        diff = std::max(diff, static_cast<double>(std::fabs(o[i] - n[i])));
        scale = std::max(scale, static_cast<double>(std::fabs(o[i])));
    }
    const int out = transposed ? 2 * size : (size + 2 * (kernel / 2) - kernel) / stride + 1;
    const double flops = 2.0 * batch * (transposed ? size * size : out * out) * cin * cout * kernel * kernel;
    std::printf("%s%d->%d %dx%d%s @%d %-6s  old %8.2f ms %6.1f GF/s | new %8.2f ms %6.1f GF/s | new/old time %.3f, paired median %.3f | max |diff| %.1e of %.1e\n",
                transposed ? "T " : "", cin, cout, kernel, kernel, stride == 2 && !transposed ? "/2" : "", size, pass_name.c_str(),
                best_old * 1e3, flops / best_old * 1e-9, best_new * 1e3, flops / best_new * 1e-9, best_new / best_old, median_ratio, diff, scale);
    return 0;
}
