// tests/cuda_emulation.hpp - just enough CUDA to run pin's GPU kernels on the CPU, so that their
// tiling, pipelines, WMMA fragment offsets and all of cuda/'s host code are tested in every CI run
// although CI has no GPU (tests/test_gemm_emulated.cpp, test_reduce_emulated.cpp, and
// pin_tests_cuda_emulated: tests/test_cuda.cpp against the backend built for this emulation).
//
// A launch runs the grid's blocks one after another on the calling thread, in index order on even
// launches and in reverse order on odd ones. A block's threads are
// fibers on that one OS thread: each runs until its next __syncthreads (or its end), then the next
// one runs; when every thread that has not returned has reached the barrier, they all go on. The
// order alternates (thread 0 first, then thread 255 first; from block to block and from barrier to
// barrier), so a missing barrier shows in either direction: a thread reads shared memory before or
// after all the others wrote it, never "mostly in time". Static shared arrays (PIN_SHARED_ARRAY,
// cuda/launch.cuh) are heap blocks of exactly their size, one per declaration and OS thread, shared
// by its fibers, so launches from several threads (streams) do not share them; each block starts
// with them filled with 0xFF bytes (NaN), as a GPU block starts with garbage there, and under
// AddressSanitizer an index past either end is reported (a bare __shared__ does not compile here). A thread that
// returns early is not awaited by later barriers (as sm_70+ and the kernels here assume). A fiber
// switch is a few instructions (x86-64: callee-saved registers and the stack pointer; elsewhere
// POSIX ucontext), not a system call: a 256-thread barrier costs microseconds.
//
// Dynamic shared memory (cuda/launch.cuh PIN_LAUNCH_SHARED) is a buffer of exactly the launch's
// size, filled the same way per block. cp.async (cuda/async_copy.cuh) copies land only at the
// async_wait that covers their group, so a kernel that reads a stage before waiting for it reads
// the fill.
//
// wgmma (cuda/wgmma.cuh) follows the PTX ISA: each thread's share of the accumulators is computed
// from shared memory through the descriptors (no-swizzle bfloat16, K-major or M/N-major) when the wgmma_wait
// that covers its group completes, so reading the accumulators earlier, or overwriting the operands'
// shared memory before that wait, gives wrong results here as on a GPU; a missing wgmma_fence, a
// block that is not whole warpgroups, a descriptor outside the dynamic shared memory and a thread
// ending with an MMA in flight fail the launch.
//
// WMMA follows the CUDA C++ Programming Guide's description of nvcuda::wmma: a fragment is the whole
// tile, warp-collective operations are done once (by lane 0, the only lane whose fragments are
// observed, since only it stores) and every lane's pointer and leading dimension are checked
// against WMMA's rules (256-bit aligned pointers, ldm a multiple of 16 bytes); a violation fails the
// launch. mbarriers and named barriers (cuda/mbarrier.cuh) are emulated with their phases: a thread
// waiting on one yields to the others until it opens; copies handed to an mbarrier land when its
// phase completes; a named barrier's generations must be completed by the same warps each time.
// Warp shuffles (__shfl_xor_sync) wait for all 32 lanes. What this cannot show: timing, bank
// conflicts, register limits, or a hardware deviating from the documented semantics. That is what
// the lent GPU is for (bench/gpu_check.sh).
//
// bfloat16 comes from the CUDA Toolkit's own cuda_bf16.h, whose conversions are host code too.
#pragma once
#define PIN_CUDA_EMULATION 1

#include <cuda.h>  // CUtensorMap (cuda/tma.cuh), a type only: nothing of the driver is called
#include <cuda_bf16.h>
#include <vector_types.h>
// cuRAND's device API is host code too (cuda/ops.cu's MaskSampler::CuRand runs its Philox here); its
// MTGP generator declares `extern const uint3 threadIdx` for host callers, which would clash with
// the per-thread built-ins below: renamed while it is read (MTGP is not used).
#define threadIdx pin_emulation_curand_threadIdx
#define blockDim pin_emulation_curand_blockDim
#include <curand_kernel.h>
#undef threadIdx
#undef blockDim

#include <math.h>  // CUDA device code calls fmaf, expf, tanhf unqualified

#include <sys/mman.h>
// The x86-64 switch below, or POSIX ucontext (elsewhere, or with PIN_EMULATION_UCONTEXT defined).
#if defined(__x86_64__) && !defined(PIN_EMULATION_UCONTEXT)
#define PIN_EMULATION_ASM_SWITCH 1
#include <xmmintrin.h>
#else
#include <ucontext.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#define PIN_EMULATION_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PIN_EMULATION_ASAN 1
#endif
#endif
#if defined(PIN_EMULATION_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

// The Toolkit's host_defines.h makes __shared__ empty for host compilers, which would make a shared
// array an automatic variable of each fiber: here it fails to compile, naming the macro to use.
#undef __shared__
#define __shared__ static_assert(false, "cuda emulation: declare shared arrays with PIN_SHARED_ARRAY (cuda/launch.cuh)");
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

#if defined(PIN_EMULATION_ASM_SWITCH)
// pin_emulation_switch(&save, load): pushes the callee-saved registers (System V: rbx, rbp,
// r12-r15, and the SSE and x87 control words) on the current stack, stores its pointer in *save,
// continues on the stack `load` saved. A new fiber's stack holds such a frame whose return address
// is pin_emulation_start, which calls r12(rbx) (fiber_main(fiber)). Weak: every translation unit
// that includes this header defines them; the linker keeps one.
extern "C" void pin_emulation_switch(void** save, void* load);
extern "C" void pin_emulation_start();
__asm__(
    ".text\n"
    ".weak pin_emulation_switch\n"
    ".type pin_emulation_switch, @function\n"
    "pin_emulation_switch:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  subq $8, %rsp\n"
    "  stmxcsr (%rsp)\n"
    "  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n"
    "  fldcw 4(%rsp)\n"
    "  addq $8, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size pin_emulation_switch, .-pin_emulation_switch\n"
    ".weak pin_emulation_start\n"
    ".type pin_emulation_start, @function\n"
    "pin_emulation_start:\n"
    "  movq %rbx, %rdi\n"
    "  callq *%r12\n"
    "  ud2\n"
    ".size pin_emulation_start, .-pin_emulation_start\n");
#endif

namespace pin_emulation {
// A suspended context: its stack pointer (the x86-64 switch), or a ucontext.
#if defined(PIN_EMULATION_ASM_SWITCH)
using Context = void*;
#else
using Context = ucontext_t;
#endif
struct Scheduler;
// A 16-byte copy to shared memory issued with cp.async (cuda/async_copy.cuh): the bytes are read at
// issue and written at the wait that covers their group.
struct AsyncCopy {
    void* dst;
    unsigned char bytes[16];
};
// A wgmma.mma_async (cuda/wgmma.cuh) issued by one thread: its accumulators and descriptors, and a
// hash of the operands' bits as they were at the issue. The accumulators are written when
// wgmma_wait completes its group, from the shared memory as it is then, which must still hold those
// bits (a 64-bit FNV-1a hash: a change that kept it would be a chance of about 2^-64).
struct WgmmaOp {
    float* d;
    int n;  // the instruction's N
    uint64_t a, b;
    bool accumulate;
    bool mn_major;  // both operands M/N-major (the transpose immediates)
    uint64_t issued;
};
// One thread of a block. Suspended at a barrier, at the end of a block, or not yet started.
struct Fiber {
    Scheduler* scheduler = nullptr;
    uint3 index{};
    unsigned linear = 0;  // threadIdx as one number
    bool done = false;  // returned from the kernel for the current block
    std::vector<AsyncCopy> open_copies;             // issued since the last commit
    std::deque<std::vector<AsyncCopy>> copy_groups;  // committed, not yet landed (oldest first)
    std::vector<WgmmaOp> open_mma;                   // wgmma issued since the last commit
    std::deque<std::vector<WgmmaOp>> mma_groups;     // committed, not yet done
    std::vector<WgmmaOp> spare_mma;                  // a finished group's storage, for the next open group
    bool mma_fenced = false;                         // a wgmma_fence since the last wait (or the start)
    unsigned spins = 0;                              // barrier waits in a row that found it open
    char* stack = nullptr;
    size_t stack_size = 0;
    Context context{};
};
// A launch on one OS thread: its fibers, the scheduler's own context, what went wrong.
struct Scheduler {
    Fiber* current = nullptr;
    unsigned threads = 0;  // a block's
    void (*body)(void*) = nullptr;  // runs the kernel once, as the current fiber
    void* kernel = nullptr;
    std::string violation;  // the first broken WMMA rule (empty: none)
    std::exception_ptr error;
    const void* stack_bottom = nullptr;  // the scheduler's (the OS thread's) stack, for ASan
    size_t stack_size = 0;
    Context context{};
};
inline thread_local Scheduler* tl_scheduler = nullptr;

// Shared memory starts undefined in every block of a GPU launch; here a block's shared arrays
// would keep the previous block's values (zeros in the first block), which hides a read of an
// element the block never wrote. So the first of a block's threads to reach an array's declaration
// fills it with 0xFF bytes: NaN as float, double and bfloat16, -1 as an integer. tl_block numbers
// the blocks run on this OS thread.
inline thread_local uint64_t tl_block = 0;
// Launches made on this OS thread (pin_emulation::launch alternates the blocks' order by it).
inline thread_local uint64_t tl_launches = 0;

// A static shared array (PIN_SHARED_ARRAY, cuda/launch.cuh): a function-local thread_local of the
// kernel holds one, so there is one per declaration (and kernel instantiation) and OS thread. Its
// storage is a heap block of exactly sizeof(T) bytes, not the thread_local itself, because
// AddressSanitizer puts no redzones around thread-local variables (nor around the function-local
// statics of templates): past either end of the block lies a redzone, so an index out of the
// array's bounds is reported, not silently read from or written to a neighbouring variable.
template <class T, size_t kAlign>
class StaticShared {
  public:
    static_assert(std::is_array<T>::value && std::is_trivially_copyable<T>::value, "a shared array of plain values");
    static constexpr size_t kAlignment = kAlign < 16 ? 16 : kAlign;  // as a GPU's shared arrays (16 bytes at least)
    StaticShared() : data_(static_cast<T*>(::operator new(sizeof(T), std::align_val_t{kAlignment}))) {}
    ~StaticShared() { ::operator delete(data_, std::align_val_t{kAlignment}); }
    StaticShared(const StaticShared&) = delete;
    StaticShared& operator=(const StaticShared&) = delete;
    // The array as the current block sees it: filled with 0xFF bytes at its first use in a block.
    T& block_copy() {
        if (block_ != tl_block) {
            block_ = tl_block;
            std::memset(static_cast<void*>(data_), 0xff, sizeof(T));
        }
        return *data_;
    }

  private:
    T* data_;
    uint64_t block_ = ~uint64_t{0};  // the block that last filled it (none yet)
};

// Dynamic shared memory (PIN_LAUNCH_SHARED, PIN_DYNAMIC_SHARED in cuda/launch.cuh): one buffer of
// the launch's size per OS thread, exactly that size (so ASan sees an overrun), 128-byte aligned,
// filled with 0xFF bytes at the start of every block as the static arrays are.
struct DynamicShared {
    unsigned char* data = nullptr;
    size_t bytes = 0;
    uint64_t block = 0;  // the block that last filled it
};
inline thread_local DynamicShared tl_dynamic;
inline unsigned char* dynamic_shared() {
    if (tl_dynamic.bytes == 0) throw std::runtime_error("cuda emulation: a kernel uses dynamic shared memory, launched without any");
    if (tl_dynamic.block != tl_block) {
        tl_dynamic.block = tl_block;
        std::memset(tl_dynamic.data, 0xff, tl_dynamic.bytes);
    }
    return tl_dynamic.data;
}

// A GPU gives a kernel at most 48 KB of dynamic shared memory unless the kernel was allowed more
// (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), which the
// emulated runtime, tests/cuda_runtime_emulation.cpp, records here), and never more than the 227 KB
// a block of sm_90 may have; a launch asking for more fails there with "invalid argument". A
// PIN_LAUNCH_SHARED launch (Launch below) checks the same here, by the kernel's address, so code
// that forgets the attribute fails its emulated tests rather than the first run on a GPU.
constexpr size_t kDefaultDynamicShared = 48 * 1024, kMaxDynamicShared = 227 * 1024;
// The most a block of the emulated devices may have: sm_90's 227 KB, or, to emulate a card that
// allows less (the 8.6 / 8.9 cards' 99 KB, 101376 bytes, on which the sm_80 build runs), the bytes
// in PIN_EMULATE_SHARED_PER_BLOCK (from 48 KB to 227 KB). Read on every call, so a test may set it
// for a while; the runtime reports it as cudaDevAttrMaxSharedMemoryPerBlockOptin.
inline size_t max_dynamic_shared() {
    const char* text = std::getenv("PIN_EMULATE_SHARED_PER_BLOCK");
    if (!text || !*text) return kMaxDynamicShared;
    char* end = nullptr;
    const unsigned long long bytes = std::strtoull(text, &end, 10);
    if (*end != '\0' || bytes < kDefaultDynamicShared || bytes > kMaxDynamicShared)
        throw std::runtime_error(std::string("cuda emulation: PIN_EMULATE_SHARED_PER_BLOCK='") + text + "' is not a byte count from " +
                                 std::to_string(kDefaultDynamicShared) + " to " + std::to_string(kMaxDynamicShared));
    return static_cast<size_t>(bytes);
}
// The emulated runtime has two devices, so that code which moves between devices (cudaSetDevice)
// is tested too: a kernel's attributes are per device, as a GPU's are per device context. The
// calling thread's current device, as the runtime's is per host thread:
constexpr int kEmulatedDevices = 2;
inline thread_local int tl_device = 0;
struct DynamicSharedAllowances {
    std::mutex mutex;
    std::map<std::pair<int, const void*>, size_t> bytes;  // (device, kernel) -> the most it was allowed
};
inline DynamicSharedAllowances& dynamic_shared_allowances() {
    static DynamicSharedAllowances a;
    return a;
}
inline void allow_dynamic_shared(const void* kernel, size_t bytes) {
    DynamicSharedAllowances& a = dynamic_shared_allowances();
    std::lock_guard<std::mutex> lock(a.mutex);
    a.bytes[{tl_device, kernel}] = bytes;
}
inline void check_dynamic_shared(const void* kernel, size_t bytes) {
    const size_t most = max_dynamic_shared();
    if (bytes > most)
        throw std::runtime_error("cuda emulation: a launch with " + std::to_string(bytes) + " bytes of dynamic shared memory, over the " +
                                 std::to_string(most / 1024) + " KB (" + std::to_string(most) + " bytes) a block of the emulated device may have");
    if (bytes <= kDefaultDynamicShared) return;
    size_t allowed = kDefaultDynamicShared;
    {
        DynamicSharedAllowances& a = dynamic_shared_allowances();
        std::lock_guard<std::mutex> lock(a.mutex);
        const auto it = a.bytes.find({tl_device, kernel});
        if (it != a.bytes.end()) allowed = it->second;
    }
    if (bytes > allowed)
        throw std::runtime_error("cuda emulation: a launch with " + std::to_string(bytes) + " bytes of dynamic shared memory, over the " +
                                 std::to_string(allowed) + " its kernel was allowed on device " + std::to_string(tl_device) +
                                 " (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) first, on "
                                 "every device)");
}
// The address of the kernel template specialisation a launch with these arguments calls: its
// parameters are the arguments' types, by value, as pin::cuda's kernels take them.
template <class... Args>
const void* kernel_address(void (*kernel)(std::decay_t<Args>...), const Args&...) {
    return reinterpret_cast<const void*>(kernel);
}

inline void report(const std::string& what) {
    if (tl_scheduler->violation.empty()) tl_scheduler->violation = what;
}

// cp.async, as cuda/async_copy.cuh uses it: both addresses 16-byte aligned (else a violation, as a
// misaligned cp.async faults on a GPU); !valid writes zeros and reads nothing. The destination is
// undefined from the issue (filled with 0xFF bytes: NaN) until async_wait completes the copy's group,
// so a read before the wait, or a reader of the previous contents still at work after the issue (a
// wgmma in flight), never finds the copied bytes or the old ones. The cache hint (cache_l1:
// cp.async.ca rather than .cg) changes nothing here but a count, which the tests read to see that a
// setting reached the copies (l1_cached_copies).
inline std::atomic<int64_t>& l1_cached_copies() {
    static std::atomic<int64_t> count{0};
    return count;
}
inline void async_copy16(void* dst, const void* src, bool valid, bool cache_l1) {
    if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || (valid && reinterpret_cast<uintptr_t>(src) % 16 != 0))
        report("cp.async with an address that is not 16-byte aligned");
    if (cache_l1) l1_cached_copies().fetch_add(1, std::memory_order_relaxed);
    AsyncCopy c{dst, {}};
    if (valid) std::memcpy(c.bytes, src, 16);
    tl_scheduler->current->open_copies.push_back(c);
    std::memset(dst, 0xff, 16);  // undefined while the copy is in flight (a reader meets NaN)
}
inline void async_commit() {
    Fiber& f = *tl_scheduler->current;
    f.copy_groups.push_back(std::move(f.open_copies));
    f.open_copies.clear();
}
// Writes copies' bytes to their destinations (the copies land).
inline void land(const std::vector<AsyncCopy>& copies) {
    for (const AsyncCopy& c : copies) std::memcpy(c.dst, c.bytes, 16);
}
// Lands every committed group but the newest `pending`; copies not yet committed stay in flight.
inline void async_wait(int pending) {
    Fiber& f = *tl_scheduler->current;
    while (static_cast<int>(f.copy_groups.size()) > pending) {
        land(f.copy_groups.front());
        f.copy_groups.pop_front();
    }
}

// wgmma (cuda/wgmma.cuh) as the PTX ISA describes it, for bfloat16 operands in the no-swizzle K-major
// or M/N-major layout. Its descriptors hold shared-memory addresses: here offsets into the launch's dynamic shared
// memory (the only kind the kernels give wgmma).
inline uint32_t shared_address(const void* p) {
    const auto* c = static_cast<const unsigned char*>(p);
    if (!tl_dynamic.data || c < tl_dynamic.data || c >= tl_dynamic.data + tl_dynamic.bytes) {
        report("a shared-memory address outside the launch's dynamic shared memory");
        return 0;
    }
    return static_cast<uint32_t>(c - tl_dynamic.data);
}
inline void wgmma_fence() { tl_scheduler->current->mma_fenced = true; }
// The 128-byte swizzle, a function of the shared-memory address as the hardware's: the 16-byte
// chunk (address bits 4-6) XORed with the row of 128 bytes within 1024 (bits 7-9).
inline size_t swizzle128(size_t at) { return at ^ (((at >> 7) & 7) << 4); }
// An m64nNk16's operands as the tensor cores read them: for each descriptor, the core matrices of
// its rows (64 for A, N for B; 8 rows x 16 K values each, 8 rows of 16 contiguous bytes at
// (r / 8) SBO + (k / 8) LBO + row i of 16 bytes) . K-major, the 16 bytes of row i are row r = 8 c + i's
// k .. k + 7; M/N-major (mn_major), rows r .. r + 7 at k = 8 h + i. Both layouts read the same
// 16-byte rows: only their meaning differs.
constexpr int kWgmmaMaxN = 256;
struct WgmmaOperand {
    size_t start, lbo, sbo;
    bool swizzled;  // 128 bytes
    // 128-byte swizzle, K-major: rows of 128 bytes (64 K values), 8 of them to an atom of 1024
    // bytes, atoms SBO apart; a start within the atom's first row (16 K values further: 32 bytes
    // on), the swizzle applied to the address as the hardware's (swizzle128).
    explicit WgmmaOperand(uint64_t desc)
        : start((desc & 0x3FFF) << 4), lbo(((desc >> 16) & 0x3FFF) << 4), sbo(((desc >> 32) & 0x3FFF) << 4), swizzled(desc >> 62 == 1) {
        if ((desc >> 49 & 7) != 0 || desc >> 62 > 1) report("a wgmma descriptor with a base offset or a 64- or 32-byte swizzle (not emulated)");
        if (swizzled && (start & 0x380) != 0) report("a 128-byte-swizzled wgmma operand that starts past its atom's first row");
    }
    // The 16 bytes of core matrix c's row i, K half h, within the dynamic shared memory (else null).
    const unsigned char* row(int c, int h, int i, unsigned char* data, size_t bytes) const {
        const size_t at = swizzled ? swizzle128(start + c * sbo + i * 128 + h * 16) : start + c * sbo + h * lbo + i * 16;
        if (at + 16 <= bytes) return data + at;
        report("a wgmma operand outside the launch's dynamic shared memory");
        return nullptr;
    }
};
// A hash of all of both operands' bits as they are now: FNV-1a over 8-byte words in four lanes
// held in registers, 32 bytes at a time (each thread of a warpgroup hashes them twice an
// instruction, at the issue and at the wait: a serial chain over 2-byte values, and then lanes
// indexed in memory, took most of the emulated kernels' time).
struct WgmmaHash {
    static constexpr uint64_t kPrime = 1099511628211ull, kBasis = 1469598103934665603ull;
    uint64_t l0 = kBasis, l1 = kBasis ^ 1, l2 = kBasis ^ 2, l3 = kBasis ^ 3;
    void add(const unsigned char* p, const unsigned char* q) {  // two 16-byte rows
        uint64_t w[4];
        std::memcpy(w, p, 16);
        std::memcpy(w + 2, q, 16);
        l0 = (l0 ^ w[0]) * kPrime, l1 = (l1 ^ w[1]) * kPrime, l2 = (l2 ^ w[2]) * kPrime, l3 = (l3 ^ w[3]) * kPrime;
    }
    uint64_t value() const { return (((l0 ^ l1) * kPrime ^ l2) * kPrime ^ l3) * kPrime; }
};
inline uint64_t wgmma_operands_hash(uint64_t a, uint64_t b, int n) {
    static const unsigned char kOutside[16] = {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                                               0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
    WgmmaHash hash;
    unsigned char* const data = tl_dynamic.data;
    const size_t bytes = tl_dynamic.bytes;
    for (int operand = 0; operand < 2; ++operand) {
        const WgmmaOperand op(operand == 0 ? a : b);
        const int matrices = (operand == 0 ? 64 : n) / 8;
        for (int c = 0; c < matrices; ++c) {
            const size_t base = op.start + c * op.sbo;
            const auto checked = [&](int h, int i) {
                const unsigned char* const p = op.row(c, h, i, data, bytes);
                return p ? p : kOutside;
            };
            if (op.swizzled) {  // the row's two 16-byte pieces, in one 128-byte row of the atom
                for (int i = 0; i < 8; ++i) {
                    const size_t row = base + i * 128, x = ((row >> 7) & 7) << 4;
                    if ((row | 127) < bytes)
                        hash.add(data + (row ^ x), data + ((row + 16) ^ x));
                    else
                        hash.add(checked(0, i), checked(1, i));
                }
            } else {  // each K half's 8 rows: 128 contiguous bytes
                for (int h = 0; h < 2; ++h) {
                    const size_t half = base + h * op.lbo;
                    for (int i = 0; i < 8; i += 2)
                        if (half + 128 <= bytes)
                            hash.add(data + half + i * 16, data + half + i * 16 + 16);
                        else
                            hash.add(checked(h, i), checked(h, i + 1));
                }
            }
        }
    }
    return hash.value();
}
// The 16-byte rows that hold `thread`'s share (its index in the block): its result reads A's rows
// 16 w + l / 4 and + 8 and B's columns 8 j + 2 (l % 4) and + 1 (w, l: its warp in the warpgroup and
// its lane), so core matrices 2 w and 2 w + 1 of A and, K-major, rows i = l / 4 of those and
// i = 2 (l % 4), + 1 of B's (M/N-major, a 16-byte row holds 8 of the operand's rows: all of B's then).
// Decoding only these in each thread, in place of both operands once per OS thread through a
// cache of the last 8 that the warp-specialized kernels' order of MMAs kept missing (a consumer
// thread runs on through every stage filled before it yields), and the hash above in registers,
// took the emulated [wide] tests from 88 s to 42 s (Intel Xeon, 2026-12-05).
template <class RowFn>  // row(operand 0 or 1, core matrix c, K half h, row i, 16 bytes or null outside)
inline void wgmma_thread_rows(uint64_t a, uint64_t b, int n, bool mn_major, unsigned thread, RowFn row) {
    const int w = static_cast<int>(thread % 128 / 32), l = static_cast<int>(thread % 32);
    unsigned char* const data = tl_dynamic.data;
    const size_t bytes = tl_dynamic.bytes;
    for (int operand = 0; operand < 2; ++operand) {
        const WgmmaOperand op(operand == 0 ? a : b);
        const int c0 = operand == 0 ? 2 * w : 0, c1 = operand == 0 ? 2 * w + 2 : n / 8;
        int i0 = 0, i1 = 8;
        if (!mn_major) {
            i0 = operand == 0 ? l / 4 : 2 * (l % 4);
            i1 = operand == 0 ? i0 + 1 : i0 + 2;
        }
        for (int c = c0; c < c1; ++c)
            for (int h = 0; h < 2; ++h)
                for (int i = i0; i < i1; ++i) row(operand, c, h, i, op.row(c, h, i, data, bytes));
    }
}
inline void wgmma_bf16(float* d, int n, uint64_t a, uint64_t b, bool accumulate, bool mn_major) {
    Fiber& f = *tl_scheduler->current;
    if (tl_scheduler->threads % 128 != 0) report("wgmma in a block that is not whole warpgroups (128 threads)");
    if (!f.mma_fenced) report("wgmma.mma_async without a wgmma.fence since the accumulators were last accessed");
    if (n <= 0 || n > kWgmmaMaxN || n % 8 != 0) report("a wgmma with an N the emulation does not take");
    if (mn_major && ((a >> 62) != 0 || (b >> 62) != 0)) report("a swizzled M/N-major wgmma operand (not emulated)");
    n = std::min(std::max(n / 8 * 8, 8), kWgmmaMaxN);
    f.open_mma.push_back(WgmmaOp{d, n, a, b, accumulate, mn_major, wgmma_operands_hash(a, b, n)});
}
inline void wgmma_commit() {
    Fiber& f = *tl_scheduler->current;
    f.mma_groups.push_back(std::move(f.open_mma));
    f.open_mma = std::move(f.spare_mma);  // reuse a finished group's storage (an allocation per slice otherwise)
    f.open_mma.clear();
}
// Finishes one thread's share of an m64nNk16: rows 16 w + l / 4 and + 8, columns 8 j + 2 (l % 4) and + 1
// (w, l: the thread's warp in its warpgroup and its lane), products summed in fp32 in k order. On a
// GPU the tensor cores read the operands somewhere between the issue and the wait: shared memory
// that changed in between (not yet written by every thread at the issue, or overwritten before the
// wait) gives a wrong result there, so here it is a violation.
inline void wgmma_apply(const WgmmaOp& op, unsigned thread) {
    if (wgmma_operands_hash(op.a, op.b, op.n) != op.issued) report("the shared memory a wgmma reads changed between its issue and its wait");
    // The thread's rows as floats: A's 64 rows then B's n, each row's 16 K values (only its own filled).
    thread_local float decoded[(64 + kWgmmaMaxN) * 16];
    float* const v = decoded;  // its address once (a thread_local's can cost a call at each use)
    wgmma_thread_rows(op.a, op.b, op.n, op.mn_major, thread, [&](int operand, int c, int h, int i, const unsigned char* bytes) {
        uint16_t bits[8];
        if (bytes)
            std::memcpy(bits, bytes, 16);
        else
            std::fill(bits, bits + 8, uint16_t{0xFFFF});
        uint32_t u[8];
        for (int j = 0; j < 8; ++j) u[j] = static_cast<uint32_t>(bits[j]) << 16;
        float* const out = v + (operand == 0 ? 0 : 64 * 16);
        if (!op.mn_major) {  // row 8 c + i, k = 8 h .. 8 h + 7
            std::memcpy(&out[(8 * c + i) * 16 + 8 * h], u, sizeof u);
        } else {  // rows 8 c .. 8 c + 7, k = 8 h + i
            for (int j = 0; j < 8; ++j) std::memcpy(&out[(8 * c + j) * 16 + 8 * h + i], &u[j], 4);
        }
    });
    const int w = static_cast<int>(thread % 128 / 32), l = static_cast<int>(thread % 32);
    const float* const rows[2] = {v + (16 * w + l / 4) * 16, v + (16 * w + l / 4 + 8) * 16};  // this thread's two rows of A
    for (int j = 0; j < op.n / 8; ++j)
        for (int e = 0; e < 4; ++e) {
            const float* const col = v + (64 + 8 * j + 2 * (l % 4) + e % 2) * 16;
            float sum = 0;
            for (int k = 0; k < 16; ++k) sum += rows[e / 2][k] * col[k];
            op.d[4 * j + e] = (op.accumulate ? op.d[4 * j + e] : 0.0f) + sum;
        }
}
inline void wgmma_wait(int pending) {
    Fiber& f = *tl_scheduler->current;
    while (static_cast<int>(f.mma_groups.size()) > pending) {
        for (const WgmmaOp& op : f.mma_groups.front()) wgmma_apply(op, f.linear);
        f.spare_mma = std::move(f.mma_groups.front());
        f.mma_groups.pop_front();
    }
    f.mma_fenced = false;
}

// Stacks of 256 KB below a guard page (an overflow faults rather than corrupts), reserved once per
// OS thread and reused by every launch there; pages are committed as they are touched.
constexpr size_t kStackSize = 256 * 1024, kGuard = 4096;
struct StackPool {
    std::vector<char*> stacks;
    ~StackPool() {
        for (char* s : stacks) munmap(s - kGuard, kStackSize + kGuard);
    }
    char* get(size_t i) {
        while (stacks.size() <= i) {
            void* m = mmap(nullptr, kStackSize + kGuard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (m == MAP_FAILED) throw std::runtime_error("cuda emulation: cannot map a fiber stack");
            mprotect(m, kGuard, PROT_NONE);
            stacks.push_back(static_cast<char*>(m) + kGuard);
        }
        return stacks[i];
    }
};
inline thread_local StackPool tl_stacks;

// Suspends the running context into `from` and resumes `to`, whose stack is [stack, stack + size);
// ASan is told about the change of stack. From the scheduler to a fiber (enter) and back (leave).
inline void switch_to(Context& from, Context& to, const void* stack, size_t size) {
#if defined(PIN_EMULATION_ASAN)
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, stack, size);
#else
    (void)stack, (void)size;
#endif
#if defined(PIN_EMULATION_ASM_SWITCH)
    pin_emulation_switch(&from, to);
#else
    swapcontext(&from, &to);
#endif
#if defined(PIN_EMULATION_ASAN)
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}
inline void enter(Scheduler& s, Fiber& f) {
    s.current = &f;
    switch_to(s.context, f.context, f.stack, f.stack_size);
}
inline void leave(Fiber& f) {
    Scheduler& s = *f.scheduler;
    switch_to(f.context, s.context, s.stack_bottom, s.stack_size);
}
// A fiber's life: run the kernel for each block the scheduler resumes it for.
inline void fiber_main(Fiber* f) {
#if defined(PIN_EMULATION_ASAN)
    __sanitizer_finish_switch_fiber(nullptr, &f->scheduler->stack_bottom, &f->scheduler->stack_size);
#endif
    for (;;) {
        Scheduler& s = *f->scheduler;
        try {
            s.body(s.kernel);
        } catch (...) {
            if (!s.error) s.error = std::current_exception();
        }
        f->done = true;
        leave(*f);
    }
}
#if !defined(PIN_EMULATION_ASM_SWITCH)
inline void fiber_entry(unsigned lo, unsigned hi) {
    fiber_main(reinterpret_cast<Fiber*>((static_cast<uintptr_t>(hi) << 32) | lo));
}
#endif
// A fresh start for fiber f on its stack.
inline void prepare(Fiber& f) {
#if defined(PIN_EMULATION_ASAN)
    // The stack is reused from earlier launches, whose fibers never returned from fiber_main: clear
    // the redzones their frames left, or ASan's own runtime (which is not instrumented) trips over
    // them when a kernel throws.
    __asan_unpoison_memory_region(f.stack, f.stack_size);
#endif
#if defined(PIN_EMULATION_ASM_SWITCH)
    // The frame pin_emulation_switch pops: control words, r15..r12, rbx, rbp, return address.
    uint64_t* top = reinterpret_cast<uint64_t*>(f.stack + f.stack_size);  // 16-byte aligned
    uint64_t* sp = top - 8;  // after the final ret, rsp = top: aligned for the call in pin_emulation_start
    const uint32_t control = _mm_getcsr();
    const uint16_t x87 = 0x037f;  // the System V default
    std::memcpy(&sp[0], &control, 4);
    std::memcpy(reinterpret_cast<char*>(&sp[0]) + 4, &x87, 2);
    sp[1] = 0;                                               // r15
    sp[2] = 0;                                               // r14
    sp[3] = 0;                                               // r13
    sp[4] = reinterpret_cast<uint64_t>(&fiber_main);         // r12
    sp[5] = reinterpret_cast<uint64_t>(&f);                  // rbx
    sp[6] = 0;                                               // rbp
    sp[7] = reinterpret_cast<uint64_t>(&pin_emulation_start);  // return address
    f.context = sp;
#else
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = f.stack_size;
    f.context.uc_link = nullptr;
    const uintptr_t p = reinterpret_cast<uintptr_t>(&f);
    makecontext(&f.context, reinterpret_cast<void (*)()>(&fiber_entry), 2, static_cast<unsigned>(p), static_cast<unsigned>(p >> 32));
#endif
}

// mbarriers and named barriers (cuda/mbarrier.cuh). A barrier's state lives here, per OS thread,
// keyed by its shared-memory offset and forgotten at the start of every block (a block starts with
// none); its 8 bytes of shared memory hold a pattern that every use checks, so shared memory written
// over a live barrier fails the launch. The copies a thread hands a barrier (async_copies_arrive)
// land when the phase they arrive for completes.
struct MBarrier {
    unsigned count = 0, pending = 0, phase = 0;  // phase: completed phases (its low bit the parity waited for)
    int64_t tx = 0;         // bytes expected (mbarrier_arrive_expect_tx) less those that tensor copies brought
    int64_t in_flight = 0;  // bytes of tensor copies issued (tma_load) that have not landed
    std::vector<AsyncCopy> copies;
};
// A named barrier: the threads arrived in the open generation and their warps (bit w: warp w of the
// block, at most 32), and the warps that completed the generation before.
struct NamedBarrier {
    unsigned arrived = 0;
    uint64_t generation = 0;
    uint32_t warps = 0, last_warps = 0;
};
// A warp's shuffle in progress (__shfl_xor_sync): the values its lanes have put in, how many have
// arrived and how many have taken theirs out (a lane at the next shuffle waits for the last one).
struct WarpShuffle {
    float values[32];
    unsigned arrived = 0, departed = 0;
    uint64_t generation = 0;
};
struct BlockBarriers {
    uint64_t block = ~uint64_t{0};
    std::map<uint32_t, MBarrier> mbarriers;
    std::map<unsigned, NamedBarrier> named;  // by id
    std::vector<WarpShuffle> shuffles;  // by warp
};
inline thread_local BlockBarriers tl_barriers;
inline BlockBarriers& block_barriers() {
    if (tl_barriers.block != tl_block) {
        tl_barriers.block = tl_block;
        tl_barriers.mbarriers.clear();
        tl_barriers.named.clear();
        tl_barriers.shuffles.clear();
    }
    return tl_barriers;
}
// Warp `warp`'s shuffle state in this block (looked up anew after every yield: another fiber may
// have grown the vector meanwhile).
inline WarpShuffle& warp_shuffle(unsigned warp) {
    std::vector<WarpShuffle>& all = block_barriers().shuffles;
    if (all.size() <= warp) all.resize(warp + 1);
    return all[warp];
}
constexpr uint64_t kMBarrierPattern = 0x6d62617272696572ull;  // "mbarrier"
inline MBarrier* find_mbarrier(uint64_t* bar) {
    const uint32_t at = shared_address(bar);
    if (reinterpret_cast<uintptr_t>(bar) % 8 != 0) report("an mbarrier that is not 8-byte aligned");
    auto& all = block_barriers().mbarriers;
    const auto it = all.find(at);
    if (it == all.end()) {
        report("an mbarrier used before mbarrier_init in this block");
        return nullptr;
    }
    if (*bar != kMBarrierPattern) report("shared memory written over a live mbarrier");
    return &it->second;
}
inline void mbarrier_init(uint64_t* bar, unsigned count) {
    if (count == 0) report("an mbarrier initialised with a count of 0");
    MBarrier& b = block_barriers().mbarriers[shared_address(bar)];
    b = MBarrier{};
    b.count = b.pending = count;
    *bar = kMBarrierPattern;
}
// A phase completes when every arrival is in and the transaction count is back to 0 (every byte
// that was expected has come): the copies given to it land, and the next phase opens.
inline void complete_if_due(MBarrier& b) {
    if (b.pending > 0 || b.tx != 0) return;
    land(b.copies);
    b.copies.clear();
    b.pending = b.count;
    ++b.phase;
}
inline void mbarrier_arrive(uint64_t* bar) {
    MBarrier* b = find_mbarrier(bar);
    if (!b) return;
    if (b->pending == 0) {
        report("an arrival at an mbarrier whose phase has all its arrivals (waiting for its bytes)");
        return;
    }
    --b->pending;
    complete_if_due(*b);
}
// mbarrier.arrive.expect_tx: the phase also waits for `bytes` more bytes of tensor copies
// (tma_load), then this thread's arrival. (Expecting other than the bytes the copies bring leaves the
// phase open for ever here: a deadlock, where a GPU would complete it at the wrong moment.)
inline void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
    if (MBarrier* b = find_mbarrier(bar)) b->tx += bytes;
    mbarrier_arrive(bar);
}
// Every copy this thread issued and has not waited for, committed or not, goes to the barrier.
inline void async_copies_arrive(uint64_t* bar) {
    Fiber& f = *tl_scheduler->current;
    if (MBarrier* b = find_mbarrier(bar)) {
        for (auto& group : f.copy_groups) {
            b->copies.insert(b->copies.end(), group.begin(), group.end());
            group.clear();  // the group stays (async_wait counts groups), empty
        }
        b->copies.insert(b->copies.end(), f.open_copies.begin(), f.open_copies.end());
        f.open_copies.clear();
    }
    mbarrier_arrive(bar);
}
// A thread that finds a barrier closed this many times in a row waits for something that no other
// thread will do (a legitimate wait here lasts a few scheduling rounds).
constexpr unsigned kSpinLimit = 1u << 16;
inline void yield_waiting(const char* what) {
    Fiber& f = *tl_scheduler->current;
    if (++f.spins > kSpinLimit) throw std::runtime_error(std::string("cuda emulation: a thread waits for ever on ") + what + " (a deadlock)");
    leave(f);
}
inline bool mbarrier_try_wait(uint64_t* bar, unsigned parity) {
    MBarrier* b = find_mbarrier(bar);
    if (b && b->pending == 0 && b->in_flight > 0) {  // the tensor copies land now
        b->tx -= b->in_flight;
        b->in_flight = 0;
        complete_if_due(*b);
    }
    // Phase parity p has completed when the phase now open has the other parity. (A waiter more than
    // one phase behind would see the wrong one: the kernels never let a side get that far ahead.)
    if (!b || (b->phase & 1u) != (parity & 1u)) {
        tl_scheduler->current->spins = 0;
        return true;
    }
    yield_waiting("an mbarrier");
    return false;
}
// As bar.sync: the count-th arriving thread opens the generation, whichever warps they came from. One
// rule beyond the PTX ISA's, which pin's kernels keep: every generation of an id is completed by the
// same warps. Two groups of warps that share an id by mistake would let a mix of both through on a
// GPU whenever their arrivals interleave, which a run here, one thread at a time, rarely makes
// happen; held to this rule, they fail the launch at once.
inline void named_barrier_sync(unsigned id, unsigned count) {
    if (id == 0 || id > 15 || count == 0 || count % 32 != 0 || count > tl_scheduler->threads)
        report("a named barrier with an id outside 1-15 or a count that is not whole warps of the block");
    NamedBarrier& state = block_barriers().named[id];
    const uint64_t generation = state.generation;
    const unsigned warp = tl_scheduler->current->linear / 32;
    if (warp < 32) state.warps |= 1u << warp;
    if (++state.arrived >= count) {
        if (state.last_warps != 0 && state.warps != state.last_warps)
            report("named barrier " + std::to_string(id) + " completed by other warps than its generation before (two groups of "
                   "warps sharing an id?)");
        state.last_warps = state.warps;
        state.warps = 0;
        state.arrived = 0;
        ++state.generation;
        return;
    }
    while (block_barriers().named[id].generation == generation) yield_waiting("a named barrier");
    tl_scheduler->current->spins = 0;
}
// __shfl_xor_sync(mask, v, lane_mask) of floats, as the tensor-core epilogues use it: every lane of
// the warp (the mask all 32) puts its value in, waits for the others', takes lane ^ lane_mask's and
// leaves; a lane that reaches the warp's next shuffle first waits until all have left this one.
inline float shuffle_xor(unsigned mask, float v, int lane_mask) {
    Fiber& f = *tl_scheduler->current;
    if (mask != 0xffffffffu || lane_mask < 0 || lane_mask > 31 || tl_scheduler->threads % 32 != 0)
        report("a warp shuffle without all 32 lanes, or with a lane mask outside 0-31");
    const unsigned warp = f.linear / 32, lane = f.linear % 32;
    while (warp_shuffle(warp).arrived == 32) yield_waiting("a warp shuffle (lanes still leaving the one before)");
    WarpShuffle& x = warp_shuffle(warp);
    x.values[lane] = v;
    const uint64_t generation = x.generation;
    if (++x.arrived < 32)
        while (warp_shuffle(warp).arrived < 32 && warp_shuffle(warp).generation == generation)
            yield_waiting("a warp shuffle (a lane of the warp not there)");
    f.spins = 0;
    WarpShuffle& done = warp_shuffle(warp);
    const float got = done.values[lane ^ static_cast<unsigned>(lane_mask)];
    if (++done.departed == 32) {
        done.arrived = done.departed = 0;
        ++done.generation;
    }
    return got;
}

// Tensor copies (cuda/tma.cuh: sm_90's tensor memory accelerator). A tensor map is encoded here into
// the CUtensorMap's 128 opaque bytes as the fields below (the driver's encoding is its own); the
// rules the driver checks are checked here (a map the driver would refuse is refused).
struct TensorMapData {
    const unsigned char* base;
    uint32_t rank, swizzle;  // swizzle: 0, or 128 (bytes: CU_TENSOR_MAP_SWIZZLE_128B)
    uint64_t dims[5];        // elements, innermost first
    uint64_t strides[5];     // bytes between consecutive indices of each dimension (strides[0]: 2, bfloat16)
    uint32_t box[5];         // the box a copy traverses, elements per dimension
    uint8_t step[5];         // the traversal's element strides (1-8): ceil(box / step) elements loaded, step apart
};
static_assert(sizeof(TensorMapData) <= sizeof(CUtensorMap), "the fields fit the opaque bytes");
// Stores a bfloat16 map in `map`; false (and why) where cuTensorMapEncodeTiled would refuse it.
inline bool encode_tensor_map(CUtensorMap* map, const void* base, uint32_t rank, const uint64_t* dims, const uint64_t* strides,
                              const uint32_t* box, const uint32_t* element_strides, uint32_t swizzle, std::string* why) {
    const auto refuse = [&](const std::string& what) {
        if (why) *why = what;
        return false;
    };
    if (rank < 1 || rank > 5) return refuse("a rank outside 1-5");
    if (reinterpret_cast<uintptr_t>(base) % 16 != 0) return refuse("a global address that is not 16-byte aligned");
    if (swizzle != 0 && swizzle != 128) return refuse("a swizzle the emulation does not take (0 or 128 bytes)");
    TensorMapData d{};
    d.base = static_cast<const unsigned char*>(base);
    d.rank = rank, d.swizzle = swizzle;
    d.strides[0] = 2;
    for (uint32_t i = 0; i < rank; ++i) {
        if (dims[i] == 0 || dims[i] > (uint64_t{1} << 32)) return refuse("a dimension of 0 or over 2^32 elements");
        if (box[i] == 0 || box[i] > 256) return refuse("a box dimension outside 1-256");
        if (element_strides[i] == 0 || element_strides[i] > 8) return refuse("an element stride outside 1-8");
        // (The first dimension's stride is ignored by the hardware without interleave: 1 here.)
        if (i == 0 && element_strides[0] != 1) return refuse("an element stride other than 1 in the innermost dimension");
        d.step[i] = static_cast<uint8_t>(element_strides[i]);
        if (i > 0 && (strides[i - 1] % 16 != 0 || strides[i - 1] >= (uint64_t{1} << 40))) return refuse("a stride that is not a multiple of 16 bytes");
        d.dims[i] = dims[i], d.box[i] = box[i];
        if (i > 0) d.strides[i] = strides[i - 1];
    }
    if (box[0] * 2 % 16 != 0) return refuse("an inner box dimension that is not a multiple of 16 bytes");
    // The swizzled rows the wgmma descriptors read (WgmmaOperand): exactly the swizzle's 128 bytes.
    if (swizzle == 128 && box[0] * 2 != 128) return refuse("a 128-byte swizzle with an inner box of other than 128 bytes");
    std::memset(map, 0, sizeof(CUtensorMap));
    std::memcpy(map, &d, sizeof d);
    return true;
}
// cp.async.bulk.tensor (tile mode) into shared memory at dst, the box at coords (innermost first,
// signed: a box may start outside the tensor), completing its bytes on `bar`: the box's rows
// (innermost dimension, box[0] elements) one after another in the order of the outer
// dimensions, each outer dimension i traversed ceil(box[i] / step[i]) elements, step[i] apart
// (the map's element strides), elements outside the tensor zero; swizzled where the map says so. The bytes are read
// now and land (counting against the expected ones) when a thread first waits on the barrier after
// its arrivals are in, so the phase completes then; until then dst holds 0xFF bytes, so a reader
// that did not wait finds NaN.
inline void tma_load(void* dst, const CUtensorMap* map, const int32_t* coords, uint64_t* bar) {
    TensorMapData d;
    std::memcpy(&d, map, sizeof d);
    MBarrier* b = find_mbarrier(bar);
    if (!b) return;
    const uint32_t at = shared_address(dst);
    if (at % (d.swizzle ? 1024 : 128) != 0) report("a tensor copy to shared memory not aligned to 128 bytes (1024 when swizzled)");
    const size_t row_bytes = d.box[0] * 2;
    size_t rows = 1, loaded[5] = {d.box[0], 1, 1, 1, 1};
    for (uint32_t i = 1; i < d.rank; ++i) {
        loaded[i] = (d.box[i] + d.step[i] - 1) / d.step[i];
        rows *= loaded[i];
    }
    if (at + rows * row_bytes > tl_dynamic.bytes) {
        report("a tensor copy past the launch's dynamic shared memory");
        return;
    }
    std::memset(tl_dynamic.data + at, 0xff, rows * row_bytes);
    for (size_t row = 0; row < rows; ++row) {
        // The row's outer coordinates, and whether it lies inside the tensor along them.
        int64_t offset = 0;
        bool inside = true;
        size_t rest = row;
        for (uint32_t i = 1; i < d.rank; ++i) {
            const int64_t c = static_cast<int64_t>(coords[i]) + static_cast<int64_t>(rest % loaded[i]) * d.step[i];
            rest /= loaded[i];
            inside = inside && c >= 0 && c < static_cast<int64_t>(d.dims[i]);
            offset += c * static_cast<int64_t>(d.strides[i]);
        }
        for (size_t chunk = 0; chunk < row_bytes / 16; ++chunk) {
            AsyncCopy copy{};
            for (int e = 0; e < 8; ++e) {
                const int64_t x = static_cast<int64_t>(coords[0]) + static_cast<int64_t>(chunk * 8) + e;
                uint16_t v = 0;
                if (inside && x >= 0 && x < static_cast<int64_t>(d.dims[0])) std::memcpy(&v, d.base + offset + x * 2, 2);
                std::memcpy(copy.bytes + 2 * e, &v, 2);
            }
            const size_t to = at + row * row_bytes + chunk * 16;
            copy.dst = tl_dynamic.data + (d.swizzle ? swizzle128(to) : to);
            b->copies.push_back(copy);
        }
    }
    b->in_flight += static_cast<int64_t>(rows * row_bytes);
}
}  // namespace pin_emulation

inline thread_local uint3 threadIdx, blockIdx;
inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask) { return pin_emulation::shuffle_xor(mask, v, lane_mask); }
inline thread_local dim3 blockDim, gridDim;
inline void __syncthreads() { pin_emulation::leave(*pin_emulation::tl_scheduler->current); }

namespace pin_emulation {
// Runs kernel() as every thread of every block of `grid`, blocks of `block` threads (at most 1024),
// on the calling thread; throws if a WMMA rule was broken or the kernel threw.
template <class Kernel>
void launch(dim3 grid, dim3 block, Kernel kernel, size_t dynamic_shared_bytes = 0) {
    const unsigned threads = block.x * block.y * block.z;
    if (threads == 0 || threads > 1024) throw std::runtime_error("cuda emulation: a block of " + std::to_string(threads) + " threads");
    // This launch's dynamic shared memory; the previous one's is restored at the end.
    struct DynamicScope {
        DynamicShared saved = tl_dynamic;
        explicit DynamicScope(size_t bytes) {
            tl_dynamic = DynamicShared{};
            if (bytes == 0) return;
            tl_dynamic.data = static_cast<unsigned char*>(::operator new(bytes, std::align_val_t{128}));
            tl_dynamic.bytes = bytes;
        }
        ~DynamicScope() {
            if (tl_dynamic.data) ::operator delete(tl_dynamic.data, std::align_val_t{128});
            tl_dynamic = saved;
        }
    } dynamic_scope(dynamic_shared_bytes);
    Scheduler s;
    s.threads = threads;
    std::vector<Fiber> fibers(threads);
    s.kernel = &kernel;
    s.body = [](void* k) { (*static_cast<Kernel*>(k))(); };
    for (unsigned t = 0; t < threads; ++t) {
        Fiber& f = fibers[t];
        f.scheduler = &s;
        f.index = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
        f.linear = t;
        f.stack = tl_stacks.get(t);
        f.stack_size = kStackSize;
        prepare(f);
    }
    Scheduler* const outer = tl_scheduler;
    tl_scheduler = &s;
    blockDim = block;
    gridDim = grid;
    // A GPU runs a grid's blocks in no set order, many at once: a kernel whose block reads what
    // another block of the same launch writes is wrong there, whatever order hides it here. So the
    // blocks go in index order on even launches of this OS thread and in reverse order on odd ones,
    // and such a dependence fails one of the two.
    const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
    const bool reverse = tl_launches++ % 2 == 1;
    for (uint64_t b = 0; b < blocks; ++b) {
        const uint64_t linear = reverse ? blocks - 1 - b : b;
        const unsigned x = static_cast<unsigned>(linear % grid.x), y = static_cast<unsigned>(linear / grid.x % grid.y),
                       z = static_cast<unsigned>(linear / grid.x / grid.y);
        blockIdx = uint3{x, y, z};
        ++tl_block;
        for (Fiber& f : fibers) {  // copies or MMAs a thread left in flight at its end never land in a later block
            f.done = false;
            f.open_copies.clear();
            f.copy_groups.clear();
            f.open_mma.clear();
            f.mma_groups.clear();
            f.mma_fenced = false;
            f.spins = 0;
        }
        // Phases between barriers, every live thread once per phase, in alternating order
        // (odd blocks start with the last thread, so a kernel without barriers meets both).
        const unsigned first_order = x + y + z;
        for (unsigned phase = 0;; ++phase) {
            unsigned waiting = 0;
            for (unsigned i = 0; i < threads; ++i) {
                Fiber& f = fibers[(first_order + phase) % 2 ? threads - 1 - i : i];
                if (f.done) continue;
                threadIdx = f.index;
                enter(s, f);
                waiting += !f.done;
            }
            if (waiting == 0) break;
        }
        for (const Fiber& f : fibers)
            if (!f.open_mma.empty() || !f.mma_groups.empty()) report("a thread ended with a wgmma it did not wait for");
    }
    tl_scheduler = outer;
    if (s.error) std::rethrow_exception(s.error);
    if (!s.violation.empty()) throw std::runtime_error("emulated kernel broke a WMMA / wgmma rule: " + s.violation);
}
// PIN_LAUNCH(grid, block, stream, kernel)(args...) (cuda/launch.cuh): every thread calls the kernel
// with its own copies of the arguments, as the kernel's by-value parameters are per thread on a GPU.
// With dynamic shared memory (PIN_LAUNCH_SHARED), `address` names the kernel, whose allowance the
// launch checks first (check_dynamic_shared).
template <class Call, class Address = std::nullptr_t>
struct Launch {
    dim3 grid, block;
    Call call;
    size_t dynamic_shared_bytes;
    Address address;
    template <class... Args>
    void operator()(Args&&... args) const {
        if constexpr (!std::is_same_v<Address, std::nullptr_t>) check_dynamic_shared(address(args...), dynamic_shared_bytes);
        launch(grid, block, [&] { call(args...); }, dynamic_shared_bytes);
    }
};
template <class Call>
Launch<Call> make_launch(dim3 grid, dim3 block, Call call) {
    return Launch<Call>{grid, block, call, 0, nullptr};
}
template <class Call, class Address>
Launch<Call, Address> make_launch(dim3 grid, dim3 block, Call call, size_t dynamic_shared_bytes, Address address) {
    return Launch<Call, Address>{grid, block, call, dynamic_shared_bytes, address};
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
