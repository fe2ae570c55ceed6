// tests/cuda_emulation.hpp - just enough CUDA to run the GEMM kernels of cuda/gemm_kernels.cuh on
// the CPU, so that their tiling, pipelines and WMMA fragment offsets are tested in every CI run
// although CI has no GPU (tests/test_gemm_emulated.cpp).
//
// A launch runs the grid's blocks one after another; a block is std::threads sharing the kernel's
// function-local statics (its __shared__ arrays) and a barrier (__syncthreads). A thread that
// returns early must not be awaited by a later __syncthreads of its block (as the kernels here). WMMA
// follows the CUDA C++ Programming Guide's description of nvcuda::wmma: a fragment is the whole
// tile, warp-collective operations are done once (by lane 0, the only lane whose fragments are
// observed, since only it stores) and every lane's pointer and leading dimension are checked
// against WMMA's rules (256-bit aligned pointers, ldm a multiple of 16 bytes); a violation fails the
// launch. What this cannot show: timing, bank conflicts, register limits, or a hardware deviating
// from the documented semantics. That is what the lent GPU is for (bench/gpu_check.sh).
//
// bfloat16 comes from the CUDA Toolkit's own cuda_bf16.h, whose conversions are host code too.
#pragma once
#define PIN_CUDA_EMULATION 1

#include <cuda_bf16.h>
#include <vector_types.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

// The Toolkit's host_defines.h makes __shared__ empty for host compilers: here it is a
// function-local static, one copy shared by the block's threads (blocks run one at a time).
#undef __shared__
#define __shared__ static
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace pin_emulation {
// A reusable barrier for the threads of one block. Waiters yield rather than sleep: a block is 256
// threads on a couple of cores, and a sleeping barrier spent most of its time waking them.
class Barrier {
public:
    explicit Barrier(unsigned n) : n_(n) {}
    void wait() {
        const unsigned gen = generation_.load(std::memory_order_acquire);
        if (waiting_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
            waiting_.store(0, std::memory_order_relaxed);
            generation_.store(gen + 1, std::memory_order_release);
        } else {
            while (generation_.load(std::memory_order_acquire) == gen) std::this_thread::yield();
        }
    }

private:
    const unsigned n_;
    std::atomic<unsigned> waiting_{0}, generation_{0};
};
inline thread_local Barrier* tl_barrier = nullptr;

// The first broken WMMA rule of the current launch (empty: none).
inline std::mutex& violation_mutex() {
    static std::mutex m;
    return m;
}
inline std::string& violation() {
    static std::string v;
    return v;
}
inline void report(const std::string& what) {
    std::lock_guard<std::mutex> lock(violation_mutex());
    if (violation().empty()) violation() = what;
}
}  // namespace pin_emulation

inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;
inline void __syncthreads() { pin_emulation::tl_barrier->wait(); }

namespace pin_emulation {
// Runs kernel() as every thread of every block of `grid`, blocks of `block` threads; throws if a
// WMMA rule was broken. The block's threads are made once and walk the blocks together: a barrier
// ends each block, so a block's shared memory is not touched by the next one before it is done.
template <class Kernel>
void launch(dim3 grid, dim3 block, Kernel kernel) {
    violation().clear();
    const unsigned threads = block.x * block.y * block.z;
    Barrier barrier(threads);
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            threadIdx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            blockDim = block;
            gridDim = grid;
            tl_barrier = &barrier;
            for (unsigned z = 0; z < grid.z; ++z)
                for (unsigned y = 0; y < grid.y; ++y)
                    for (unsigned x = 0; x < grid.x; ++x) {
                        blockIdx = uint3{x, y, z};
                        kernel();
                        barrier.wait();
                    }
        });
    for (std::thread& th : pool) th.join();
    if (!violation().empty()) throw std::runtime_error("emulated kernel broke a WMMA rule: " + violation());
}
template <class Kernel>
void launch(dim3 grid, unsigned threads, Kernel kernel) {
    launch(grid, dim3(threads, 1, 1), kernel);
}
}  // namespace pin_emulation

namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

// cvt.rna.tf32.f32: round to 10 mantissa bits, ties away from zero (the low 13 bits cleared).
inline float __float_to_tf32(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
    std::memcpy(&x, &u, 4);
    return x;
}

template <class Use, int M, int N, int K, class T = float, class Layout = void>
struct fragment {
    static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
    static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
    float v[rows][cols];
};

namespace detail {
inline bool lane0() { return threadIdx.x % 32 == 0; }
inline void check(const void* p, unsigned ldm, size_t elem, const char* op) {
    if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
        pin_emulation::report(std::string(op) + ": pointer not 256-bit aligned (thread " + std::to_string(threadIdx.x) + ")");
    if ((ldm * elem) % 16 != 0) pin_emulation::report(std::string(op) + ": ldm " + std::to_string(ldm) + " not a multiple of 16 bytes");
}
template <class T>
float value(float x) {
    return std::is_same<T, precision::tf32>::value ? __float_to_tf32(x) : x;
}
template <class T>
float value(__nv_bfloat16 x) {
    return __bfloat162float(x);
}
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float v) {
    for (auto& row : f.v)
        for (float& e : row) e = v;
}
template <class Use, int M, int N, int K, class T, class Layout, class E>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const E* p, unsigned ldm) {
    static_assert(std::is_same<T, precision::tf32>::value ? std::is_same<E, float>::value : std::is_same<E, T>::value,
                  "WMMA loads tf32 fragments from float, others from their own type");
    detail::check(p, ldm, sizeof(E), "load_matrix_sync");
    if (!detail::lane0()) return;
    using F = fragment<Use, M, N, K, T, Layout>;
    for (int r = 0; r < F::rows; ++r)
        for (int c = 0; c < F::cols; ++c)
            f.v[r][c] = detail::value<T>(std::is_same<Layout, row_major>::value ? p[r * ldm + c] : p[c * ldm + r]);
}
template <int M, int N, int K, class TA, class TB, class LA, class LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
    if (!detail::lane0()) return;
    float out[M][N];
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            float s = c.v[i][j];
            for (int k = 0; k < K; ++k) s += a.v[i][k] * b.v[k][j];
            out[i][j] = s;
        }
    std::memcpy(d.v, out, sizeof out);
}
template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
    detail::check(p, ldm, sizeof(float), "store_matrix_sync");
    if (!detail::lane0()) return;
    for (int r = 0; r < M; ++r)
        for (int c = 0; c < N; ++c) p[layout == mem_row_major ? r * ldm + c : c * ldm + r] = f.v[r][c];
}
}  // namespace nvcuda::wmma
