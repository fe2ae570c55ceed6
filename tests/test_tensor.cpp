// Tensor: layouts, views, errors; the caching allocator; the thread pool.
#include <algorithm>
#include <atomic>

#include "helpers.hpp"
#include "pin/core/allocator.hpp"
#include "pin/core/parallel.hpp"
#include "pin/core/rng.hpp"

using namespace pin;
using namespace pin::test;

TEST_CASE("NCHW <-> NHWC conversion is a lossless transpose", "[tensor]") {
    const Tensor a = random_tensor({3, 5, 4, 7}, 1);
    const Tensor b = a.to_layout(Layout::NHWC);
    REQUIRE(b.layout() == Layout::NHWC);
    for (int64_t n = 0; n < 3; ++n)
        for (int64_t c = 0; c < 5; ++c)
            for (int64_t h = 0; h < 4; ++h)
                for (int64_t w = 0; w < 7; ++w) REQUIRE(a.at(n, c, h, w) == b.at(n, c, h, w));
    REQUIRE(bitwise_equal(b.to_layout(Layout::NCHW), a));
    REQUIRE(b.data()[1] == a.at(0, 1, 0, 0));  // channels innermost
}

TEST_CASE("slices and reshapes share storage", "[tensor]") {
    Tensor a = random_tensor({4, 2, 3, 3}, 2, 1.0f, Layout::NHWC);
    Tensor s = a.slice(1, 3);
    REQUIRE(s.shape() == Shape{2, 2, 3, 3});
    s.at(0, 1, 2, 2) = 42.0f;
    REQUIRE(a.at(1, 1, 2, 2) == 42.0f);
    Tensor r = a.reshape({4, 18});
    REQUIRE(r.data() == a.data());
    REQUIRE_THROWS_WITH(a.reshape({5, 18}), Catch::Contains("element counts differ"));
    REQUIRE_THROWS_WITH(a.slice(3, 5), Catch::Contains("out of range"));
    REQUIRE_THROWS_WITH(a.dim(4), Catch::Contains("out of range"));
}

TEST_CASE("clone is deep, check_shape names the mismatch", "[tensor]") {
    const Tensor a = random_tensor({2, 3}, 3);
    Tensor b = a.clone();
    b.data()[0] += 1.0f;
    REQUIRE(a.data()[0] != b.data()[0]);
    REQUIRE_THROWS_WITH(check_shape(a, {3, 2}, "weights"), Catch::Contains("weights: expected shape (3, 2), got (2, 3)"));
}

TEST_CASE("the caching allocator hands freed blocks out again", "[tensor][allocator]") {
    HostAllocator& alloc = HostAllocator::instance();
    alloc.empty_cache();
    const float* first;
    {
        Tensor t = Tensor::empty({1 << 20});
        first = t.data();
    }
    REQUIRE(alloc.cached_bytes() >= (size_t{4} << 20));
    Tensor again = Tensor::empty({1 << 20});
    REQUIRE(again.data() == first);
    alloc.empty_cache();
    REQUIRE(alloc.cached_bytes() == 0);
}

TEST_CASE("the allocator's cache is bounded by its floor or the most bytes ever live", "[tensor][allocator]") {
    HostAllocator& alloc = HostAllocator::instance();
    alloc.empty_cache();
    constexpr size_t kFloor = size_t{1} << 20;
    constexpr int64_t kMiB = 1 << 18;  // floats
    alloc.set_cache_limit(kFloor);
    alloc.reset_peak();
    const size_t live0 = alloc.live_bytes();
    std::vector<const float*> blocks;
    {
        // Three MiB live at once, then all freed: the 1 MiB floor alone would keep one of them.
        Tensor a = Tensor::empty({kMiB}), b = Tensor::empty({kMiB}), c = Tensor::empty({kMiB});
        REQUIRE(alloc.live_bytes() == live0 + 3 * kFloor);
        blocks = {a.data(), b.data(), c.data()};
    }
    REQUIRE(alloc.peak_live_bytes() >= live0 + 3 * kFloor);
    REQUIRE(alloc.cached_bytes() == 3 * kFloor);
    {
        // The same three again (the next step of a training loop): all from the cache.
        Tensor a = Tensor::empty({kMiB}), b = Tensor::empty({kMiB}), c = Tensor::empty({kMiB});
        REQUIRE(alloc.cached_bytes() == 0);
        for (const float* p : {a.data(), b.data(), c.data()})
            REQUIRE(std::find(blocks.begin(), blocks.end(), p) != blocks.end());
    }
    // Random sizes, kept and freed at random: the cache never holds more than the bound.
    alloc.empty_cache();
    alloc.reset_peak();
    const PhiloxStream rng(2024, 0);
    std::vector<Tensor> held;
    for (uint64_t i = 0; i < 300; ++i) {
        const uint32_t r = rng.bits(i);
        if (!held.empty() && r % 2 == 0) {
            held.erase(held.begin() + static_cast<int64_t>((r >> 1) % held.size()));
        } else {
            held.push_back(Tensor::empty({(1 << 14) + static_cast<int64_t>((r >> 1) % 4) * (1 << 16)}));
        }
        REQUIRE(alloc.cached_bytes() <= std::max(kFloor, alloc.peak_live_bytes()));
    }
    held.clear();
    REQUIRE(alloc.cached_bytes() <= std::max(kFloor, alloc.peak_live_bytes()));
    REQUIRE(alloc.cached_bytes() > 0);
    alloc.empty_cache();
    alloc.set_cache_limit(size_t{1} << 30);
    REQUIRE(alloc.live_bytes() == live0);
}

TEST_CASE("parallel_for runs every task once and propagates exceptions", "[threads]") {
    set_num_threads(2);
    REQUIRE(num_threads() == 2);
    std::vector<std::atomic<int>> hits(1000);
    parallel_for(1000, [&](int64_t i) { hits[static_cast<size_t>(i)]++; });
    for (auto& h : hits) REQUIRE(h.load() == 1);
    REQUIRE_THROWS_WITH(parallel_for(10, [](int64_t i) { PIN_CHECK(i != 7, "task ", i, " failed"); }),
                        "task 7 failed");
    // The pool still works after an exception.
    std::atomic<int> count{0};
    parallel_for(50, [&](int64_t) { count++; });
    REQUIRE(count == 50);
    REQUIRE_THROWS_WITH(set_num_threads(0), Catch::Contains("at least 1"));
}

TEST_CASE("out of memory is an error with a message, not a crash", "[tensor][memory]") {
    // 2^45 floats = 128 TiB: no machine has it; the allocator reports instead of aborting.
    REQUIRE_THROWS_WITH(Tensor::empty({int64_t{1} << 45}), Catch::Contains("out of memory allocating"));
    REQUIRE_THROWS_WITH(check_batch_memory(1 << 20, 1e9, "pin train"),
                        Catch::Contains("pin train: a batch of 1048576 needs about") && Catch::Contains("use a smaller --batch"));
    REQUIRE_NOTHROW(check_batch_memory(2, 1e6, "pin train"));
}
