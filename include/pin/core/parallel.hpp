// pin/core/parallel.hpp - a small persistent thread pool and parallel_for.
//
// Determinism rule for every kernel built on this: the work is cut into tasks whose boundaries do
// not depend on the thread count, and each output element is reduced inside one task in a fixed
// order. Which thread runs a task is then irrelevant, so 1 and N threads give identical bits.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "pin/core/error.hpp"

namespace pin {

class ThreadPool {
public:
    explicit ThreadPool(int threads) { resize(threads); }
    ~ThreadPool() { stop_workers(); }
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return static_cast<int>(workers_.size()) + 1; }

    void resize(int threads) {
        PIN_CHECK(threads >= 1, "thread count must be at least 1, got ", threads);
        if (threads == size() && !workers_.empty()) return;
        stop_workers();
        stopping_ = false;
        // A new worker starts at the current generation: starting at 0 made it run one spurious
        // pass whose "done" could land inside the next job and let run() return while the worker
        // still executed that job's task (a use-after-free of the task, seen under ASan).
        const uint64_t current = generation_;
        for (int i = 1; i < threads; ++i) workers_.emplace_back([this, current] { worker_loop(current); });
    }

    // Runs task(i) for i in [0, tasks). The calling thread takes part. Nested calls (a task that
    // calls parallel_for) run serially on the calling thread.
    void run(int64_t tasks, const std::function<void(int64_t)>& task) {
        if (tasks <= 0) return;
        if (workers_.empty() || tasks == 1 || in_pool_task()) {
            for (int64_t i = 0; i < tasks; ++i) task(i);
            return;
        }
        std::unique_lock<std::mutex> lock(mutex_);
        job_ = &task;
        job_tasks_ = tasks;
        next_.store(0);
        active_ = static_cast<int>(workers_.size());
        ++generation_;
        lock.unlock();
        wake_.notify_all();
        drain();
        lock.lock();
        done_.wait(lock, [this] { return active_ == 0; });
        job_ = nullptr;
        if (error_) {
            std::exception_ptr e = error_;
            error_ = nullptr;
            std::rethrow_exception(e);
        }
    }

private:
    static bool& in_pool_task() {
        static thread_local bool flag = false;
        return flag;
    }

    void drain() {
        bool& flag = in_pool_task();
        flag = true;
        for (;;) {
            const int64_t i = next_.fetch_add(1);
            if (i >= job_tasks_) break;
            try {
                (*job_)(i);
            } catch (...) {
                std::lock_guard<std::mutex> g(mutex_);
                if (!error_) error_ = std::current_exception();
                next_.store(job_tasks_);
            }
        }
        flag = false;
    }

    void worker_loop(uint64_t seen) {
        for (;;) {
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
                if (stopping_) return;
                seen = generation_;
            }
            drain();
            std::lock_guard<std::mutex> lock(mutex_);
            if (--active_ == 0) done_.notify_one();
        }
    }

    void stop_workers() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        for (auto& w : workers_) w.join();
        workers_.clear();
    }

    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_, done_;
    const std::function<void(int64_t)>* job_ = nullptr;
    int64_t job_tasks_ = 0;
    std::atomic<int64_t> next_{0};
    int active_ = 0;
    uint64_t generation_ = 0;
    bool stopping_ = false;
    std::exception_ptr error_;
};

namespace detail {
inline int default_thread_count() {
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
}
inline ThreadPool& global_pool() {
    static ThreadPool pool(default_thread_count());
    return pool;
}
}  // namespace detail

// The thread count every pin CPU kernel uses; the caller controls it (default: all hardware threads).
inline void set_num_threads(int threads) { detail::global_pool().resize(threads); }
inline int num_threads() { return detail::global_pool().size(); }

// parallel_for(tasks, f): f(i) for every i in [0, tasks), spread over the pool.
template <typename F>
inline void parallel_for(int64_t tasks, F&& f) {
    const std::function<void(int64_t)> task = std::forward<F>(f);
    detail::global_pool().run(tasks, task);
}

}  // namespace pin
