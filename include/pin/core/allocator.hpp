// pin/core/allocator.hpp - a caching host allocator for tensor storage.
//
// Why: a forward pass of PIN allocates and frees the same activation sizes (up to 51 MB at batch
// 16) on every batch. Blocks that large come straight from mmap, so every batch would page-fault
// and zero hundreds of MB again (measured: ~18 % of the forward time). Freed blocks are kept in a
// free list keyed by their exact size and handed out again, and can be emptied (empty_cache).
// The cache holds at most the larger of a floor (set_cache_limit, default 1 GiB) and the most
// bytes ever live at once (live plus cached bytes stay within the peak plus that bound). A
// training step at batch 20 holds ~1.5 GiB of activations: a fixed 1 GiB bound freed a third of
// them at every step's end and the next step page-faulted them in again (23 K faults, 94 MB, per
// step; measured 1.3 % of the step). A bound at the peak alone (cached plus live) was tried and
// was worse: blocks a step frees early are needed again late, and evicting them on misses
// brought the faults back.
#pragma once
#include <string>
#include <unistd.h>
#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>

#include "pin/core/error.hpp"

namespace pin {

class HostAllocator {
public:
    static HostAllocator& instance() {
        static HostAllocator* a = new HostAllocator();  // never destroyed: tensors may outlive statics
        return *a;
    }

    // 64-byte aligned (a whole AVX-512 vector never straddles two cache lines at the start).
    void* allocate(size_t bytes) {
        const size_t size = round_size(bytes);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            auto it = free_.find(size);
            if (it != free_.end()) {
                void* p = it->second;
                free_.erase(it);
                cached_ -= size;
                note_live(size);
                return p;
            }
        }
        void* p = std::aligned_alloc(64, size);
        if (!p) {
            empty_cache();
            p = std::aligned_alloc(64, size);
        }
        if (!p) {
            std::ostringstream os;
            os << "out of memory allocating " << (bytes >> 20) << " MiB for a tensor";
            throw Error(os.str());
        }
        std::lock_guard<std::mutex> lock(mutex_);
        note_live(size);
        return p;
    }

    void release(void* p, size_t bytes) {
        const size_t size = round_size(bytes);
        std::lock_guard<std::mutex> lock(mutex_);
        live_ -= size;
        if (size >= kMinCached && cached_ + size <= std::max(limit_, peak_live_)) {
            free_.emplace(size, p);
            cached_ += size;
            return;
        }
        std::free(p);
    }

    void empty_cache() {
        std::lock_guard<std::mutex> lock(mutex_);
        free_all_cached();
    }
    // The floor of the bound on cached bytes (see the top of this file).
    void set_cache_limit(size_t bytes) {
        std::lock_guard<std::mutex> lock(mutex_);
        limit_ = bytes;
        if (cached_ > std::max(limit_, peak_live_)) free_all_cached();
    }
    // Forgets the high-water mark of live bytes (the bound falls back to the floor or to what is
    // live now), for a program whose large phase is over.
    void reset_peak() {
        std::lock_guard<std::mutex> lock(mutex_);
        peak_live_ = live_;
    }
    size_t cached_bytes() const { return cached_; }
    size_t live_bytes() const { return live_; }
    size_t peak_live_bytes() const { return peak_live_; }

private:
    void free_all_cached() {
        for (auto& kv : free_) std::free(kv.second);
        free_.clear();
        cached_ = 0;
    }
    void note_live(size_t size) {
        live_ += size;
        peak_live_ = std::max(peak_live_, live_);
    }
    static constexpr size_t kMinCached = 1 << 16;  // small blocks: malloc is fast enough
    static size_t round_size(size_t bytes) {
        const size_t b = bytes == 0 ? 64 : bytes;
        return b >= kMinCached ? (b + 4095) / 4096 * 4096 : (b + 63) / 64 * 64;
    }
    std::mutex mutex_;
    std::multimap<size_t, void*> free_;
    size_t cached_ = 0;
    size_t live_ = 0;       // handed out and not yet released
    size_t peak_live_ = 0;  // the most live_ has been
    size_t limit_ = size_t{1} << 30;
};

// Refuses a batch whose working memory (about `bytes_per_item` per item) would not fit in this
// machine's physical memory, before any of it is allocated: with Linux's overcommit a too-large
// allocation often "succeeds" and the process is killed later, with no message.
inline void check_batch_memory(int64_t batch, double bytes_per_item, const std::string& what) {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return;
    const double physical = static_cast<double>(pages) * static_cast<double>(page);
    const double need = static_cast<double>(batch) * bytes_per_item;
    if (need > 0.8 * physical) {
        std::ostringstream os;
        os.precision(3);
        os << what << ": a batch of " << batch << " needs about " << need / (1 << 30) << " GiB of memory, more than this machine's "
           << physical / (1 << 30) << " GiB allows; use a smaller --batch";
        throw Error(os.str());
    }
}

}  // namespace pin
