// The CPU emulation of CUDA (tests/cuda_emulation.hpp) that the emulated kernel tests and
// pin_tests_cuda_emulated rely on: barriers, early returns, shared memory per block and per OS
// thread, both orders of a race and of a launch's blocks, cp.async, wgmma, errors reported from
// inside a kernel.
#include "cuda_emulation.hpp"  // first: it defines the built-ins (threadIdx, __syncthreads, ...)

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "helpers.hpp"
#include "async_copy.cuh"
#include "bfloat16.cuh"
#include "launch.cuh"
#include "mbarrier.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

namespace {
// Each thread writes its value to shared memory and, after the barrier (when `sync`), reads its
// neighbour's (t + step, wrapping) into out[block * n + t].
void neighbour_kernel(const int* in, int* out, int n, int step, bool sync) {
    PIN_SHARED_ARRAY(int, s, [256]);  // a slot read before its thread wrote it holds -1, not a stale value that may fit
    const int t = static_cast<int>(threadIdx.x), b = static_cast<int>(blockIdx.x);
    s[t] = in[b * n + t];
    if (sync) __syncthreads();
    out[b * n + t] = s[(t + step + n) % n];
}
struct Neighbours {
    std::vector<int> in, out;
    int n, blocks;
    Neighbours(int n_, int blocks_) : in(static_cast<size_t>(n_ * blocks_)), out(in.size(), -1), n(n_), blocks(blocks_) {
        for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<int>(i * 7 + 3);
    }
    void run(int step, bool sync) {
        pin_emulation::launch(dim3(static_cast<unsigned>(blocks)), dim3(static_cast<unsigned>(n)),
                              [&] { neighbour_kernel(in.data(), out.data(), n, step, sync); });
    }
    // How many threads read a wrong value (with `wrap` false, only those whose neighbour is not
    // across the block's end).
    int wrong(int step, bool wrap = true) const {
        int w = 0;
        for (int b = 0; b < blocks; ++b)
            for (int t = 0; t < n; ++t)
                if (wrap || (t + step >= 0 && t + step < n)) w += out[b * n + t] != in[b * n + (t + step + n) % n];
        return w;
    }
};
}  // namespace

TEST_CASE("emulation: a barrier publishes every thread's shared-memory writes, block by block", "[emulated][emulation]") {
    for (const int n : {256, 96, 33}) {
        Neighbours k(n, 5);
        for (const int step : {1, -1, 17}) {
            k.run(step, true);
            INFO("block of " << n << ", neighbour " << step);
            REQUIRE(k.wrong(step) == 0);
        }
    }
}

TEST_CASE("emulation: a missing barrier is seen in both directions", "[emulated][emulation]") {
    // Without the barrier a thread reads its neighbour's slot before or after the neighbour wrote
    // it, depending on the order the threads run in: reading ahead (+1) and behind (-1), away from
    // the block's ends, must each give wrong values in a 2-block launch (one order per block; a
    // single order would see only one of the two).
    for (const int step : {1, -1}) {
        Neighbours k(64, 2);
        k.run(step, false);
        INFO("neighbour " << step);
        REQUIRE(k.wrong(step, false) > 0);
        REQUIRE(k.wrong(step, false) < 64);  // the other block's order reads them in time
    }
}

// Block b of a 3D grid counts itself and, as a chain, writes one more than its predecessor's value
// (which it reads from the same launch: a dependence no GPU honours).
void chain_kernel(int* chain, int* runs) {
    if (threadIdx.x != 0) return;
    const unsigned b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    ++runs[b];
    chain[b] = (b == 0 ? 0 : chain[b - 1]) + 1;
}

TEST_CASE("emulation: a launch's blocks run in both orders, each exactly once", "[emulated][emulation]") {
    // A kernel whose blocks read what other blocks of the same launch write must fail in one of
    // two consecutive launches: the chain is whole (1, 2, 3, ...) in index order and broken in
    // the reverse order. Every block of a 3D grid runs once per launch either way.
    const dim3 grid(3, 2, 5);
    const unsigned blocks = grid.x * grid.y * grid.z;
    int whole = 0;
    for (int launch = 0; launch < 2; ++launch) {
        std::vector<int> chain(blocks, 0), runs(blocks, 0);
        pin_emulation::launch(grid, dim3(32), [&] { chain_kernel(chain.data(), runs.data()); });
        bool in_order = true;
        for (unsigned b = 0; b < blocks; ++b) {
            INFO("launch " << launch << ", block " << b);
            REQUIRE(runs[b] == 1);
            in_order = in_order && chain[b] == static_cast<int>(b) + 1;
        }
        whole += in_order;
    }
    REQUIRE(whole == 1);
}

TEST_CASE("emulation: shared memory starts undefined in every block", "[emulated][emulation]") {
    // Every thread but the last writes its slot; after the barrier thread t reads slot t. The last
    // slot, which no thread of the block wrote, must read as the fill (-1 as int, NaN as float) in
    // every block, the first one and those after a block that wrote it; the written slots must keep
    // what the block wrote (only the first thread to declare the arrays fills them, whichever order
    // the threads run in).
    constexpr unsigned kThreads = 64, kBlocks = 4;
    std::vector<int> ints(kThreads * kBlocks, 0);
    std::vector<float> floats(kThreads * kBlocks, 0.0f);
    for (int launch = 0; launch < 2; ++launch) {
        pin_emulation::launch(dim3(kBlocks), dim3(kThreads), [&] {
            PIN_SHARED_ARRAY(int, si, [kThreads]);
            PIN_SHARED_ARRAY(float, sf, [kThreads]);
            const unsigned t = threadIdx.x, b = blockIdx.x;
            // The last slot is written in odd blocks only, so the even block after it finds it stale.
            if (t + 1 < kThreads || b % 2 == 1) {
                si[t] = static_cast<int>(t + 1000 * b);
                sf[t] = 0.5f * static_cast<float>(t) + static_cast<float>(b);
            }
            __syncthreads();
            ints[b * kThreads + t] = si[t];
            floats[b * kThreads + t] = sf[t];
        });
        for (unsigned b = 0; b < kBlocks; ++b)
            for (unsigned t = 0; t < kThreads; ++t) {
                INFO("launch " << launch << ", block " << b << ", thread " << t);
                if (t + 1 < kThreads || b % 2 == 1) {
                    REQUIRE(ints[b * kThreads + t] == static_cast<int>(t + 1000 * b));
                    REQUIRE(floats[b * kThreads + t] == 0.5f * static_cast<float>(t) + static_cast<float>(b));
                } else {
                    REQUIRE(ints[b * kThreads + t] == -1);
                    REQUIRE(std::isnan(floats[b * kThreads + t]));
                }
            }
    }
}

TEST_CASE("emulation: a static shared array is a block of its own size, bounded for AddressSanitizer", "[emulated][emulation]") {
    // Each declaration (here two, of odd sizes, one 128-byte aligned) is its own heap block, kept
    // from launch to launch on an OS thread and another on each other thread; under
    // AddressSanitizer the bytes just before and just after it are a redzone, so an index out of
    // bounds is reported instead of reaching a neighbouring array (as the thread_local statics of
    // earlier sessions, which ASan does not guard, let it).
    struct Seen {
        const unsigned char* a;
        const unsigned char* b;
    };
    auto run = [] {
        Seen seen{};
        pin_emulation::launch(dim3(2), dim3(3), [&] {
            PIN_SHARED_ARRAY(float, a, [37]);
            PIN_SHARED_ARRAY_ALIGNED(128, double, b, [5][3]);
            a[36] = static_cast<float>(threadIdx.x);  // the last element of each is the array's
            b[4][2] = 1.0;
            seen = {reinterpret_cast<const unsigned char*>(&a), reinterpret_cast<const unsigned char*>(&b)};
        });
        return seen;
    };
    const Seen first = run(), again = run();
    Seen other{};
    std::thread([&] { other = run(); }).join();
    CHECK(first.a == again.a);  // one array per declaration and OS thread, as a thread_local
    CHECK(first.b == again.b);
    CHECK(other.a != first.a);  // another OS thread (a launch on another stream) has its own
    CHECK(other.b != first.b);
    CHECK(reinterpret_cast<uintptr_t>(first.b) % 128 == 0);
    CHECK(reinterpret_cast<uintptr_t>(first.a) % 16 == 0);  // as a GPU's shared arrays, at least
    const bool apart = first.a + 37 * sizeof(float) <= first.b || first.b + 15 * sizeof(double) <= first.a;
    CHECK(apart);
#if defined(PIN_EMULATION_ASAN)
    // (This thread's arrays: the other thread's were freed when it ended.)
    CHECK(__asan_address_is_poisoned(first.a - 1));
    CHECK(!__asan_address_is_poisoned(first.a + 37 * sizeof(float) - 1));
    CHECK(__asan_address_is_poisoned(first.a + 37 * sizeof(float)));  // a[37]
    CHECK(__asan_address_is_poisoned(first.b - 1));
    CHECK(!__asan_address_is_poisoned(first.b + 15 * sizeof(double) - 1));
    CHECK(__asan_address_is_poisoned(first.b + 15 * sizeof(double)));  // b[5][0]
#else
    std::printf("note: built without AddressSanitizer; the redzones around static shared arrays are checked in the ASan build\n");
#endif
}

TEST_CASE("emulation: threads that return early are not awaited by later barriers", "[emulated][emulation]") {
    std::vector<int> out(256, 0);
    pin_emulation::launch(dim3(3), dim3(256), [&] {
        PIN_SHARED_ARRAY(int, count, [1]);
        const unsigned t = threadIdx.x;
        if (t == 0) count[0] = 0;
        __syncthreads();
        if (t >= 100) return;
        __syncthreads();  // 100 threads arrive; the other 156 have returned
        if (t == 0) count[0] = 100;
        __syncthreads();
        out[t] += count[0];
    });
    for (int t = 0; t < 256; ++t) REQUIRE(out[static_cast<size_t>(t)] == (t < 100 ? 300 : 0));
}

TEST_CASE("emulation: 2D blocks number their threads x fastest, and grids visit every block once", "[emulated][emulation]") {
    std::vector<int> seen(static_cast<size_t>(4 * 3 * 2 * 32 * 8), 0);
    pin_emulation::launch(dim3(4, 3, 2), dim3(32, 8), [&] {
        const unsigned block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
        const unsigned thread = threadIdx.y * blockDim.x + threadIdx.x;
        seen[block * 256 + thread] += 1;
    });
    for (const int s : seen) REQUIRE(s == 1);
}

TEST_CASE("emulation: launches from several OS threads at once keep their shared memory apart", "[emulated][emulation]") {
    // As the GPU stream test does: each OS thread runs its own launches; a shared array common to
    // all of them would mix their blocks' values.
    std::vector<int> wrong(4, -1);
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i)
        threads.emplace_back([&, i] {
            Neighbours k(128, 20 + i);
            int w = 0;
            for (int r = 0; r < 5; ++r) {
                k.run(3 + i, true);
                w += k.wrong(3 + i);
            }
            wrong[static_cast<size_t>(i)] = w;
        });
    for (auto& t : threads) t.join();
    for (const int w : wrong) REQUIRE(w == 0);
}

TEST_CASE("emulation: cp.async copies land at the wait that covers their group", "[emulated][emulation]") {
    // Each thread copies two 16-byte rows of a source (group 1: row t, group 2: row n + t, or zeros
    // for odd t) into shared memory and reads its destinations before any wait, after waiting for
    // all but the newest group, and after waiting for all. Only landed copies may be seen; the rest
    // is the undefined fill. A misaligned address fails the launch.
    constexpr unsigned kThreads = 32;
    alignas(16) static float src[2 * kThreads * 4];
    for (unsigned i = 0; i < 2 * kThreads * 4; ++i) src[i] = static_cast<float>(i) + 0.5f;
    std::vector<float> seen(3 * 2 * kThreads * 4, 0.0f);
    pin_emulation::launch(dim3(2), dim3(kThreads), [&] {
        PIN_SHARED_ARRAY_ALIGNED(16, float, dst, [2 * kThreads * 4]);
        const unsigned t = threadIdx.x;
        pin::cuda::async_copy16(dst + 4 * t, src + 4 * t, true);
        pin::cuda::async_commit();
        pin::cuda::async_copy16(dst + 4 * (kThreads + t), src + 4 * (kThreads + t), t % 2 == 0);
        pin::cuda::async_commit();
        auto record = [&](int when) {
            for (unsigned row : {t, kThreads + t})
                for (unsigned j = 0; j < 4; ++j) seen[(when * 2 * kThreads + row) * 4 + j] = dst[4 * row + j];
        };
        record(0);
        pin::cuda::async_wait<1>();
        record(1);
        pin::cuda::async_wait<0>();
        record(2);
    });
    for (unsigned t = 0; t < kThreads; ++t)
        for (unsigned j = 0; j < 4; ++j) {
            INFO("thread " << t << ", element " << j);
            const unsigned first = 4 * t + j, second = 4 * (kThreads + t) + j;
            const float second_value = t % 2 == 0 ? src[second] : 0.0f;
            REQUIRE(std::isnan(seen[first]));  // nothing has landed before the first wait
            REQUIRE(std::isnan(seen[second]));
            REQUIRE(seen[2 * kThreads * 4 + first] == src[first]);  // the older group has
            REQUIRE(std::isnan(seen[2 * kThreads * 4 + second]));    // the newest has not
            REQUIRE(seen[4 * kThreads * 4 + first] == src[first]);  // after waiting for all, both
            REQUIRE(seen[4 * kThreads * 4 + second] == second_value);
        }
    REQUIRE_THROWS_WITH(pin_emulation::launch(dim3(1), dim3(1),
                                              [&] {
                                                  PIN_SHARED_ARRAY_ALIGNED(16, float, d, [8]);
                                                  pin::cuda::async_copy16(d + 1, src, true);
                                              }),
                        Catch::Contains("not 16-byte aligned"));
}

TEST_CASE("emulation: mbarriers hand a producer warp's copies to a consumer warp, stage by stage", "[emulated][emulation]") {
    // As gemm_wgmma_ws_kernel's pipeline: warp 1 copies round r's 32 rows (16 bytes each) into stage
    // r % 2 and hands them to full[r % 2]; warp 0 waits for them, each thread reading another
    // thread's row, and frees the stage (empty[r % 2]). Seven rounds take each barrier through
    // several phases, in both thread orders (two blocks).
    constexpr int kRounds = 7, kStages = 2, kRow = 4;
    alignas(16) static float src[kRounds * 32 * kRow];
    for (int i = 0; i < kRounds * 32 * kRow; ++i) src[i] = 0.25f * static_cast<float>(i) + 1.0f;
    std::vector<float> got(2 * kRounds * 32 * kRow, -1.0f);
    constexpr size_t kBarriers = kStages * 32 * 16, kBytes = kBarriers + 2 * kStages * 8;
    pin_emulation::launch(dim3(2), dim3(64), [&] {
        unsigned char* const smem = pin_emulation::dynamic_shared();
        float* const stage = reinterpret_cast<float*>(smem);
        uint64_t* const full = reinterpret_cast<uint64_t*>(smem + kBarriers);
        uint64_t* const empty = full + kStages;
        const int t = static_cast<int>(threadIdx.x);
        if (t == 0)
            for (int s = 0; s < kStages; ++s) pin::cuda::mbarrier_init(&full[s], 32), pin::cuda::mbarrier_init(&empty[s], 32);
        __syncthreads();
        if (t >= 32) {
            const int l = t - 32;
            for (int r = 0; r < kRounds; ++r) {
                const int s = r % kStages;
                if (r >= kStages) pin::cuda::mbarrier_wait(&empty[s], static_cast<unsigned>((r / kStages - 1) & 1));
                pin::cuda::async_copy16(stage + (s * 32 + l) * kRow, src + (r * 32 + l) * kRow, true);
                pin::cuda::async_copies_arrive(&full[s]);
            }
            return;
        }
        for (int r = 0; r < kRounds; ++r) {
            const int s = r % kStages, row = (t + 5) % 32;
            pin::cuda::mbarrier_wait(&full[s], static_cast<unsigned>((r / kStages) & 1));
            for (int j = 0; j < kRow; ++j) got[((blockIdx.x * kRounds + r) * 32 + row) * kRow + j] = stage[(s * 32 + row) * kRow + j];
            pin::cuda::mbarrier_arrive(&empty[s]);
        }
    }, kBytes);
    for (int b = 0; b < 2; ++b)
        for (int i = 0; i < kRounds * 32 * kRow; ++i) {
            INFO("block " << b << ", round " << i / (32 * kRow) << ", row " << i / kRow % 32);
            REQUIRE(got[b * kRounds * 32 * kRow + i] == src[i]);
        }
    // A wait nobody ends, shared memory written over a barrier, a barrier used uninitialised.
    REQUIRE_THROWS_WITH(pin_emulation::launch(dim3(1), dim3(32), [&] {
        uint64_t* const bar = reinterpret_cast<uint64_t*>(pin_emulation::dynamic_shared());
        if (threadIdx.x == 0) pin::cuda::mbarrier_init(bar, 33);
        __syncthreads();
        pin::cuda::mbarrier_arrive(bar);
        pin::cuda::mbarrier_wait(bar, 0);
    }, 8), Catch::Contains("deadlock"));
    REQUIRE_THROWS_WITH(pin_emulation::launch(dim3(1), dim3(32), [&] {
        uint64_t* const bar = reinterpret_cast<uint64_t*>(pin_emulation::dynamic_shared());
        if (threadIdx.x == 0) pin::cuda::mbarrier_init(bar, 32);
        __syncthreads();
        if (threadIdx.x == 7) reinterpret_cast<float*>(bar)[1] = 1.0f;
        pin::cuda::mbarrier_arrive(bar);
    }, 8), Catch::Contains("written over a live mbarrier"));
    REQUIRE_THROWS_WITH(pin_emulation::launch(dim3(1), dim3(32), [&] {
        pin::cuda::mbarrier_arrive(reinterpret_cast<uint64_t*>(pin_emulation::dynamic_shared()));
    }, 8), Catch::Contains("before mbarrier_init"));
}

TEST_CASE("emulation: a named barrier waits for its count of threads, while others wait elsewhere", "[emulated][emulation]") {
    // Warps 0 and 1 write their shared values and meet on barrier 1 (64 threads), then read each
    // other's; warp 2 then waits on an mbarrier that thread 0 arrives on only after the named
    // barrier, and reads them too. Warp 1 writes only after four rounds of ping-pong with warp 2
    // on two mbarriers (each round at least one scheduling round): a named barrier that let warp 0
    // through before warp 1 arrived would show it the unwritten values (-1).
    constexpr int kRounds = 4;
    std::vector<int> seen(2 * 96, 0);
    pin_emulation::launch(dim3(2), dim3(96), [&] {
        unsigned char* const smem = pin_emulation::dynamic_shared();
        uint64_t* const bar = reinterpret_cast<uint64_t*>(smem);
        uint64_t* const ping = bar + 1;
        uint64_t* const pong = bar + 2;
        int* const value = reinterpret_cast<int*>(smem + 24);
        const int t = static_cast<int>(threadIdx.x);
        if (t == 0) pin::cuda::mbarrier_init(bar, 1), pin::cuda::mbarrier_init(ping, 32), pin::cuda::mbarrier_init(pong, 32);
        __syncthreads();
        if (t < 64) {
            if (t >= 32)
                for (int r = 0; r < kRounds; ++r) {
                    pin::cuda::mbarrier_arrive(ping);
                    pin::cuda::mbarrier_wait(pong, static_cast<unsigned>(r & 1));
                }
            value[t] = 1000 + t;
            pin::cuda::named_barrier_sync(1, 64);
            if (t == 0) pin::cuda::mbarrier_arrive(bar);
            seen[blockIdx.x * 96 + t] = value[(t + 37) % 64];
        } else {
            for (int r = 0; r < kRounds; ++r) {
                pin::cuda::mbarrier_wait(ping, static_cast<unsigned>(r & 1));
                pin::cuda::mbarrier_arrive(pong);
            }
            pin::cuda::mbarrier_wait(bar, 0);
            seen[blockIdx.x * 96 + t] = value[t - 64];
        }
    }, 24 + 64 * 4);
    for (int b = 0; b < 2; ++b)
        for (int t = 0; t < 96; ++t) {
            INFO("block " << b << ", thread " << t);
            REQUIRE(seen[b * 96 + t] == 1000 + (t < 64 ? (t + 37) % 64 : t - 64));
        }
}

TEST_CASE("emulation: __shfl_xor_sync gives each lane its partner's value, shuffle after shuffle", "[emulated][emulation]") {
    // Two warps, 5 shuffles in a row with lane masks 1, 4, 8, 16 and 31, each value naming its
    // sender and the round: a lane that took a value before its partner had put this round's in
    // (or after the partner had put the next round's) sees the wrong round. Lanes of warp 1 reach
    // the shuffles after those of warp 0 have finished them all (an mbarrier), so the warps'
    // exchanges cannot mix. And a warp with a lane that never comes is a deadlock, not a value.
    constexpr int kRounds = 5;
    const int masks[kRounds] = {1, 4, 8, 16, 31};
    std::vector<float> got(64 * kRounds, -1.0f);
    pin_emulation::launch(dim3(1), dim3(64), [&] {
        uint64_t* const bar = reinterpret_cast<uint64_t*>(pin_emulation::dynamic_shared());
        const int t = static_cast<int>(threadIdx.x);
        if (t == 0) pin::cuda::mbarrier_init(bar, 32);
        __syncthreads();
        if (t >= 32) pin::cuda::mbarrier_wait(bar, 0);
        for (int r = 0; r < kRounds; ++r) got[t * kRounds + r] = __shfl_xor_sync(0xffffffffu, static_cast<float>(1000 * r + t), masks[r]);
        if (t < 32) pin::cuda::mbarrier_arrive(bar);
    }, 8);
    for (int t = 0; t < 64; ++t)
        for (int r = 0; r < kRounds; ++r) {
            INFO("thread " << t << ", round " << r);
            REQUIRE(got[t * kRounds + r] == static_cast<float>(1000 * r + (t ^ masks[r])));
        }
    REQUIRE_THROWS_WITH(pin_emulation::launch(dim3(1), dim3(32), [&] {
        if (threadIdx.x != 5) got[0] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
    }), Catch::Contains("deadlock"));
}

TEST_CASE("emulation: each generation of a named barrier is completed by the same warps", "[emulated][emulation]") {
    // Two groups of 2 warps meet on a barrier of 64 threads twice each: with an id of their own
    // (1 + group) the launch passes; sharing id 1 (the mistake a copied line makes), the generations
    // are completed by different warps and the launch fails, though no value read here would show it.
    for (const bool shared_id : {false, true}) {
        const auto run = [&] {
            pin_emulation::launch(dim3(1), dim3(128), [&] {
                const unsigned group = threadIdx.x / 64, id = shared_id ? 1 : 1 + group;
                for (int round = 0; round < 2; ++round) pin::cuda::named_barrier_sync(id, 64);
            });
        };
        INFO((shared_id ? "one id for both groups" : "an id per group"));
        if (shared_id)
            REQUIRE_THROWS_WITH(run(), Catch::Contains("named barrier 1 completed by other warps"));
        else
            REQUIRE_NOTHROW(run());
    }
}

TEST_CASE("emulation: a fresh mbarrier's phase before the first counts as complete; StageCursor follows i", "[emulated][emulation]") {
    // The warp-specialized GEMM's producer waits for "the phase before" of each stage's empty
    // barrier in its first round instead of testing the round: on a fresh barrier that wait must
    // return at once (the PTX ISA's parity rule), and parity 0 only once the first phase completes.
    // Warp 1 arrives only after thread 0's first wait has returned (barrier `go`): a first wait that
    // held thread 0 until an arrival would never end (the launch fails as a deadlock).
    int order[3] = {0, 0, 0}, step = 0;
    pin_emulation::launch(dim3(1), dim3(64), [&] {
        uint64_t* const bar = reinterpret_cast<uint64_t*>(pin_emulation::dynamic_shared());
        uint64_t* const go = bar + 1;
        const int t = static_cast<int>(threadIdx.x);
        if (t == 0) pin::cuda::mbarrier_init(bar, 32), pin::cuda::mbarrier_init(go, 1);
        __syncthreads();
        if (t == 0) {
            pin::cuda::mbarrier_wait(bar, 1);  // returns at once: nobody has arrived
            order[0] = ++step;
            pin::cuda::mbarrier_arrive(go);
            pin::cuda::mbarrier_wait(bar, 0);  // only after warp 1's 32 arrivals
            order[2] = ++step;
        }
        if (t >= 32) {
            pin::cuda::mbarrier_wait(go, 0);
            if (t == 32) order[1] = ++step;
            pin::cuda::mbarrier_arrive(bar);
        }
    }, 16);
    REQUIRE(order[0] == 1);
    REQUIRE(order[1] == 2);
    REQUIRE(order[2] == 3);
    // The cursor's stage and phase against i % stages and (i / stages) % 2, stepping and skipping,
    // for rings of 2, 3 and 5 stages (the warp-specialized kernel's fewest, and its tiles' counts).
    for (const int stages : {2, 3, 5}) {
        pin::cuda::StageCursor at(stages);
        int64_t i = 0;
        for (int64_t n : {0, 1, 1, 3, 7, 1, 12, 5, 1, 1, 9, 100, 2}) {
            if (n == 1) {
                at.next();
            } else {
                at.skip(n);
            }
            i += n;
            INFO(stages << " stages, i = " << i);
            REQUIRE(at.stage == static_cast<int>(i % stages));
            REQUIRE(at.phase == static_cast<unsigned>((i / stages) % 2));
        }
    }
}

TEST_CASE("emulation: a tensor copy lands its box at the barrier's wait: zeros outside the tensor, rows swizzled", "[emulated][emulation]") {
    // A 72 x 10 bfloat16 matrix, rows 80 values apart (160 bytes), and the 64 x 16 box at (16, -3):
    // values 72-79 of each row and rows -3..-1 and 10..12 lie outside it and come as zeros. Swizzled,
    // chunk c of box row r lands at chunk c ^ (r % 8) of its 128 bytes; not swizzled, in place.
    constexpr int kCols = 72, kRows = 10, kLd = 80, kBoxCols = 64, kBoxRows = 16, kX = 16, kY = -3;
    constexpr size_t kBytes = kBoxRows * kBoxCols * 2;
    alignas(16) static uint16_t tensor[kLd * kRows];
    for (int i = 0; i < kLd * kRows; ++i) tensor[i] = static_cast<uint16_t>(0x3f00 + i);  // distinct, never 0 or 0xFFFF
    pin::cuda::TensorMapShape shape;
    shape.rank = 2;
    shape.dims[0] = kCols, shape.dims[1] = kRows, shape.strides[0] = kLd * 2, shape.box[0] = kBoxCols, shape.box[1] = kBoxRows;
    for (const bool swizzled : {true, false}) {
        INFO((swizzled ? "swizzled" : "not swizzled"));
        shape.swizzle128 = swizzled;
        pin::cuda::TensorMap map;
        std::string why;
        REQUIRE(pin::cuda::encode_tensor_map_bf16(map, tensor, shape, &why));
        std::vector<uint16_t> before(kBytes / 2, 0), after(kBytes / 2, 0);
        pin_emulation::launch(dim3(1), dim3(64), [&] {
            unsigned char* const smem = pin_emulation::dynamic_shared();
            uint64_t* const bar = reinterpret_cast<uint64_t*>(smem + kBytes);
            const int t = static_cast<int>(threadIdx.x);
            if (t == 0) pin::cuda::mbarrier_init(bar, 1);
            __syncthreads();
            if (t == 0) {
                pin::cuda::mbarrier_arrive_expect_tx(bar, kBytes);
                pin::cuda::tma_load_2d(smem, map, kX, kY, bar);
            }
            __syncthreads();
            if (t == 1) std::memcpy(before.data(), smem, kBytes);  // issued and arrived, nobody waited: not landed
            __syncthreads();
            pin::cuda::mbarrier_wait(bar, 0);
            if (t == 2) std::memcpy(after.data(), smem, kBytes);
        }, kBytes + 8);
        REQUIRE(std::all_of(before.begin(), before.end(), [](uint16_t v) { return v == 0xFFFF; }));
        int wrong = 0, zeros = 0;
        for (int r = 0; r < kBoxRows; ++r)
            for (int e = 0; e < kBoxCols; ++e) {
                const int y = kY + r, x = kX + e;
                const bool inside = y >= 0 && y < kRows && x < kCols;
                const uint16_t want = inside ? tensor[y * kLd + x] : 0;
                const int at = r * 128 + (swizzled ? ((e / 8) ^ (r % 8)) * 16 : (e / 8) * 16) + (e % 8) * 2;
                wrong += after[static_cast<size_t>(at / 2)] != want;
                zeros += !inside;
            }
        REQUIRE(zeros == 6 * kBoxCols + 10 * 8);  // what is outside: 6 whole rows, 8 values of the other 10
        REQUIRE(wrong == 0);
    }
    {
        // Element strides (a stride-2 convolution's taps): a 3-dimensional 8 x 9 x 5 tensor and the
        // box of 8 x 6 x 3 elements traversed 1, 2, 2 apart at (0, -1, 1): 3 x 2 rows of 8 values,
        // at (row, plane) = (-1 | 1 | 3, 1 | 3); row -1 outside (zeros).
        alignas(16) static uint16_t cube[8 * 9 * 5];
        for (int i = 0; i < 8 * 9 * 5; ++i) cube[i] = static_cast<uint16_t>(0x4000 + 3 * i);
        pin::cuda::TensorMapShape strided;
        strided.rank = 3, strided.swizzle128 = false;
        strided.dims[0] = 8, strided.dims[1] = 9, strided.dims[2] = 5, strided.strides[0] = 16, strided.strides[1] = 144;
        strided.box[0] = 8, strided.box[1] = 6, strided.box[2] = 3;
        strided.element_strides[1] = strided.element_strides[2] = 2;
        pin::cuda::TensorMap map;
        REQUIRE(pin::cuda::encode_tensor_map_bf16(map, cube, strided, nullptr));
        std::vector<uint16_t> got(6 * 8, 0);
        pin_emulation::launch(dim3(1), dim3(32), [&] {
            unsigned char* const smem = pin_emulation::dynamic_shared();
            uint64_t* const bar = reinterpret_cast<uint64_t*>(smem + 128);
            if (threadIdx.x == 0) pin::cuda::mbarrier_init(bar, 1);
            __syncthreads();
            if (threadIdx.x == 0) {
                pin::cuda::mbarrier_arrive_expect_tx(bar, 6 * 16);
                const int32_t at[3] = {0, -1, 1};
                pin_emulation::tma_load(smem, &map, at, bar);
            }
            pin::cuda::mbarrier_wait(bar, 0);
            if (threadIdx.x == 0) std::memcpy(got.data(), smem, 6 * 16);
        }, 136);
        for (int plane = 0; plane < 2; ++plane)
            for (int row = 0; row < 3; ++row)
                for (int e = 0; e < 8; ++e) {
                    const int y = -1 + 2 * row, z = 1 + 2 * plane;
                    INFO("row " << y << ", plane " << z << ", element " << e);
                    REQUIRE(got[static_cast<size_t>((plane * 3 + row) * 8 + e)] == (y < 0 ? 0 : cube[(z * 9 + y) * 8 + e]));
                }
        strided.element_strides[0] = 2;
        REQUIRE_FALSE(pin::cuda::encode_tensor_map_bf16(map, cube, strided, nullptr));
    }
    // Expecting other bytes than the box brings never completes the phase; maps the hardware refuses.
    pin::cuda::TensorMap map;
    REQUIRE(pin::cuda::encode_tensor_map_bf16(map, tensor, shape, nullptr));
    REQUIRE_THROWS_WITH(pin_emulation::launch(dim3(1), dim3(32), [&] {
        unsigned char* const smem = pin_emulation::dynamic_shared();
        uint64_t* const bar = reinterpret_cast<uint64_t*>(smem + kBytes);
        if (threadIdx.x == 0) pin::cuda::mbarrier_init(bar, 1);
        __syncthreads();
        if (threadIdx.x == 0) {
            pin::cuda::mbarrier_arrive_expect_tx(bar, kBytes / 2);
            pin::cuda::tma_load_2d(smem, map, 0, 0, bar);
        }
        pin::cuda::mbarrier_wait(bar, 0);
    }, kBytes + 8), Catch::Contains("deadlock"));
    std::string why;
    pin::cuda::TensorMapShape narrow = shape;
    narrow.swizzle128 = true, narrow.box[0] = 32;
    REQUIRE_FALSE(pin::cuda::encode_tensor_map_bf16(map, tensor, narrow, &why));
    REQUIRE_THAT(why, Catch::Contains("128-byte swizzle"));
    REQUIRE_FALSE(pin::cuda::encode_tensor_map_bf16(map, tensor + 1, shape, &why));
    REQUIRE_THAT(why, Catch::Contains("16-byte aligned"));
    pin::cuda::TensorMapShape odd = shape;
    odd.strides[0] = 150;
    REQUIRE_FALSE(pin::cuda::encode_tensor_map_bf16(map, tensor, odd, &why));
    REQUIRE_THAT(why, Catch::Contains("multiple of 16 bytes"));
}

TEST_CASE("emulation: dynamic shared memory is the launch's size, per block undefined", "[emulated][emulation]") {
    // Each block's threads write their slot (all but the last) and read all after the barrier: the
    // unwritten slot reads as the fill in every block; a kernel launched without dynamic shared
    // memory that asks for it fails the launch.
    constexpr unsigned kThreads = 32;
    std::vector<int> seen(2 * kThreads, 0);
    pin_emulation::launch(
        dim3(2), dim3(kThreads),
        [&] {
            PIN_DYNAMIC_SHARED(smem);
            int* slots = reinterpret_cast<int*>(smem);
            const unsigned t = threadIdx.x;
            REQUIRE(reinterpret_cast<uintptr_t>(smem) % 128 == 0);
            if (t + 1 < kThreads) slots[t] = static_cast<int>(t + 100 * blockIdx.x);
            __syncthreads();
            seen[blockIdx.x * kThreads + t] = slots[t];
        },
        kThreads * sizeof(int));
    for (unsigned b = 0; b < 2; ++b)
        for (unsigned t = 0; t < kThreads; ++t) REQUIRE(seen[b * kThreads + t] == (t + 1 < kThreads ? static_cast<int>(t + 100 * b) : -1));
    REQUIRE_THROWS_WITH(pin_emulation::launch(dim3(1), dim3(1),
                                              [] {
                                                  __syncthreads();  // (ASan follows a throw from a fiber it has switched to)
                                                  PIN_DYNAMIC_SHARED(smem);
                                                  (void)smem;
                                              }),
                        Catch::Contains("without any"));
}

namespace {
// Writes its block's index to the last int of its dynamic shared memory and reads it back.
void last_slot_kernel(int* out, int ints) {
    PIN_DYNAMIC_SHARED(smem);
    int* slots = reinterpret_cast<int*>(smem);
    if (threadIdx.x == 0) slots[ints - 1] = static_cast<int>(blockIdx.x);
    __syncthreads();
    if (threadIdx.x == 1) out[blockIdx.x] = slots[ints - 1];
}
}  // namespace

TEST_CASE("emulation: dynamic shared memory over 48 KB needs the kernel's allowance", "[emulated][emulation]") {
    // As on a GPU: up to 48 KB any kernel may have; more only after cudaFuncSetAttribute allowed
    // that kernel at least as much (the emulated runtime records it through allow_dynamic_shared),
    // and never more than 227 KB. Another kernel's allowance does not count.
    std::vector<int> out(3, -1);
    int* o = out.data();
    const auto run = [&](size_t bytes) {
        const int ints = static_cast<int>(bytes / sizeof(int));
        std::fill(out.begin(), out.end(), -1);
        PIN_LAUNCH_SHARED(dim3(3), dim3(2), bytes, nullptr, last_slot_kernel)(o, ints);
        for (int b = 0; b < 3; ++b) REQUIRE(out[static_cast<size_t>(b)] == b);
    };
    run(48 * 1024);
    REQUIRE_THROWS_WITH(run(48 * 1024 + 4), Catch::Contains("cudaFuncSetAttribute") && Catch::Contains("49156"));
    REQUIRE(out[0] == -1);  // refused before any block ran
    pin_emulation::allow_dynamic_shared(reinterpret_cast<const void*>(&neighbour_kernel), 200 * 1024);
    REQUIRE_THROWS_WITH(run(64 * 1024), Catch::Contains("cudaFuncSetAttribute"));
    pin_emulation::allow_dynamic_shared(reinterpret_cast<const void*>(&last_slot_kernel), 100 * 1024);
    run(64 * 1024);
    run(100 * 1024);
    REQUIRE_THROWS_WITH(run(100 * 1024 + 4), Catch::Contains("102404") && Catch::Contains("102400"));
    REQUIRE_THROWS_WITH(run(228 * 1024), Catch::Contains("227"));
}

TEST_CASE("emulation: an exception or a broken WMMA rule inside a kernel fails the launch", "[emulated][emulation]") {
    REQUIRE_THROWS_WITH(pin_emulation::launch(dim3(2), dim3(64),
                                              [] {
                                                  __syncthreads();
                                                  if (blockIdx.x == 1 && threadIdx.x == 5) throw std::runtime_error("thread 5 failed");
                                              }),
                        "thread 5 failed");
    alignas(32) static float tile[16 * 17];
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc;
    nvcuda::wmma::fill_fragment(acc, 1.0f);
    REQUIRE_THROWS_WITH(pin_emulation::launch(dim3(1), dim3(32), [&] { nvcuda::wmma::store_matrix_sync(tile + 1, acc, 16, nvcuda::wmma::mem_row_major); }),
                        Catch::Contains("not 256-bit aligned"));
    REQUIRE_THROWS_WITH(pin_emulation::launch(dim3(1), dim3(32), [&] { nvcuda::wmma::store_matrix_sync(tile, acc, 17, nvcuda::wmma::mem_row_major); }),
                        Catch::Contains("not a multiple of 16 bytes"));
    // The emulation is usable after a failed launch.
    pin_emulation::launch(dim3(1), dim3(32), [&] { nvcuda::wmma::store_matrix_sync(tile, acc, 16, nvcuda::wmma::mem_row_major); });
    REQUIRE(tile[255] == 1.0f);
}

namespace {
// One m64n128k16 by one warpgroup from operands that thread 0 stores in the no-swizzle K-major layout
// (core matrices 128 bytes apart along K, 256 along M / N; A at byte 0, B at 2048), or with
// store_mn_major in the M/N-major one (each core matrix transposed), each thread's 64 accumulators
// written to out (64 x 128) where cuda/wgmma.cuh says they belong; read_mn_major: the instruction's
// transpose immediates. `broken` leaves out one rule: 1 the fence, 2 the operands stay put until
// the wait, 3 the wait.
enum WgmmaBreak { kNone, kNoFence, kOperandChanged, kNoWait };
float wgmma_a(int r, int k) { return static_cast<float>(r % 5 - 2 + k % 3); }
float wgmma_b(int n, int k) { return static_cast<float>((n % 7 - 3) * (k % 2 ? 1 : -2)); }
void wgmma_kernel(float* out, WgmmaBreak broken, bool store_mn_major = false, bool read_mn_major = false) {
    PIN_DYNAMIC_SHARED(smem);
    auto put = [&](int at, float v) {
        const uint16_t bits = pin::cuda::to_bf16(v).bits;
        std::memcpy(smem + at, &bits, 2);
    };
    const auto offset = [&](int r, int k) {
        return (r / 8) * 256 + (k / 8) * 128 + (store_mn_major ? (k % 8) * 16 + (r % 8) * 2 : (r % 8) * 16 + (k % 8) * 2);
    };
    const int t = static_cast<int>(threadIdx.x);
    if (t == 0)
        for (int k = 0; k < 16; ++k) {
            for (int r = 0; r < 64; ++r) put(offset(r, k), wgmma_a(r, k));
            for (int n = 0; n < 128; ++n) put(2048 + offset(n, k), wgmma_b(n, k));
        }
    __syncthreads();
    float d[64];
    for (float& v : d) v = 0.0f;
    if (broken != kNoFence) pin::cuda::wgmma_fence();
    const uint32_t base = pin::cuda::shared_address(smem);
    const uint64_t a = pin::cuda::wgmma_descriptor(base, 128, 256), b = pin::cuda::wgmma_descriptor(base + 2048, 128, 256);
    if (read_mn_major)
        pin::cuda::wgmma_bf16<128, true>(d, a, b, false);
    else
        pin::cuda::wgmma_bf16<128>(d, a, b, false);
    pin::cuda::wgmma_commit();
    if (broken == kOperandChanged && t == 0) put(offset(3, 5), 100.0f);
    if (broken == kNoWait) return;
    pin::cuda::wgmma_wait<0>();
    const int w = t / 32, l = t % 32;
    for (int j = 0; j < 16; ++j)
        for (int e = 0; e < 4; ++e) out[(16 * w + l / 4 + 8 * (e / 2)) * 128 + 8 * j + 2 * (l % 4) + e % 2] = d[4 * j + e];
}
}  // namespace

TEST_CASE("emulation: wgmma reads its operands through the descriptors, accumulators where the PTX ISA puts them", "[emulated][emulation]") {
    std::vector<float> out(64 * 128, std::nanf(""));
    // Both layouts, read as stored (the product), and the M/N-major store read as K-major and the
    // reverse (not the product: the immediates change what the instruction reads).
    for (const auto& [stored, read] : {std::pair{false, false}, std::pair{true, true}, std::pair{true, false}, std::pair{false, true}}) {
        INFO("stored " << (stored ? "M/N-major" : "K-major") << ", read " << (read ? "M/N-major" : "K-major"));
        std::fill(out.begin(), out.end(), std::nanf(""));
        pin_emulation::launch(dim3(1), dim3(128), [&, s = stored, r = read] { wgmma_kernel(out.data(), kNone, s, r); }, 6144);
        int wrong = 0;
        for (int r = 0; r < 64; ++r)
            for (int n = 0; n < 128; ++n) {
                double want = 0;
                for (int k = 0; k < 16; ++k) want += static_cast<double>(wgmma_a(r, k)) * wgmma_b(n, k);
                wrong += !(out[static_cast<size_t>(r * 128 + n)] == want);  // small integers: exact; NaN: never written
            }
        if (stored == read)
            REQUIRE(wrong == 0);
        else
            REQUIRE(wrong > 64 * 128 / 2);
    }
    const std::pair<WgmmaBreak, const char*> rules[] = {{kNoFence, "without a wgmma.fence"},
                                                        {kOperandChanged, "changed between its issue and its wait"},
                                                        {kNoWait, "did not wait for"}};
    for (const auto& [broken, message] : rules)
        REQUIRE_THROWS_WITH(pin_emulation::launch(dim3(1), dim3(128), [&, b = broken] { wgmma_kernel(out.data(), b); }, 6144),
                            Catch::Contains(message));
    REQUIRE_THROWS_WITH(pin_emulation::launch(dim3(1), dim3(64), [&] { wgmma_kernel(out.data(), kNone); }, 6144),
                        Catch::Contains("not whole warpgroups"));
}
