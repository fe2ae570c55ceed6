// pin/core/progress.hpp - a progress bar on stderr for long work: done/total, rate, ETA.
#pragma once
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>

namespace pin {

class ProgressBar {
public:
    ProgressBar(std::string label, int64_t total, std::string unit = "")
        : label_(std::move(label)), unit_(std::move(unit)), total_(total), start_(Clock::now()),
          tty_(isatty(fileno(stderr)) != 0) {}
    ~ProgressBar() { finish(); }

    // Safe to call from several threads (the bar only moves forward).
    void update(int64_t done) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (done < done_) return;
        done_ = done;
        const auto now = Clock::now();
        const double since = std::chrono::duration<double>(now - last_).count();
        // A terminal gets a live bar (10 updates/s); a log file a line per 10 %.
        const int64_t decile = total_ > 0 ? done * 10 / total_ : 0;
        if (tty_ ? since < 0.1 && done < total_ : decile == last_decile_) return;
        last_ = now;
        last_decile_ = decile;
        draw(false);
    }
    // Work already done before this bar started (a resumed run): shown, but not counted in the rate.
    void set_start(int64_t done) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_ = start_done_ = done;
    }
    // Extra text shown after the rate (running means of a training epoch, for example).
    void set_status(std::string status) {
        std::lock_guard<std::mutex> lock(mutex_);
        status_ = std::move(status);
    }
    void finish() {
        std::lock_guard<std::mutex> lock(mutex_);
        if (finished_) return;
        finished_ = true;
        if (!tty_ && printed_done_ == done_ && done_ == total_) return;  // the 100 % line is out already
        draw(true);
    }

private:
    using Clock = std::chrono::steady_clock;
    void draw(bool final) {
        const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
        const double frac = total_ > 0 ? static_cast<double>(done_) / static_cast<double>(total_) : 1.0;
        const double rate = elapsed > 0 ? static_cast<double>(done_ - start_done_) / elapsed : 0.0;
        const double eta = rate > 0 ? static_cast<double>(total_ - done_) / rate : 0.0;
        char bar[21];
        const int filled = static_cast<int>(frac * 20);
        for (int i = 0; i < 20; ++i) bar[i] = i < filled ? '#' : '.';
        bar[20] = '\0';
        std::fprintf(stderr, "%s%s [%s] %3.0f%% %lld/%lld %s %.1f/s %s %.0fs%s%s%s", tty_ ? "\r" : "", label_.c_str(), bar,
                     100 * frac, static_cast<long long>(done_), static_cast<long long>(total_), unit_.c_str(), rate,
                     final ? "in" : "ETA", final ? elapsed : eta,
                     status_.empty() ? "" : "  ", status_.c_str(), (final || !tty_) ? "\n" : "");
        std::fflush(stderr);
        printed_done_ = done_;
    }
    std::string label_, unit_, status_;
    int64_t total_, done_ = 0, start_done_ = 0;
    Clock::time_point start_, last_{};
    int64_t last_decile_ = -1, printed_done_ = -1;
    std::mutex mutex_;
    bool tty_, finished_ = false;
};

}  // namespace pin
