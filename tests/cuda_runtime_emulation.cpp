// tests/cuda_runtime_emulation.cpp - the CUDA runtime calls pin::cuda makes, for the emulated backend
// (tests/emulated_backend.cpp): "device" memory is host memory, streams are names, every copy and
// launch completes before it returns. Declared by the Toolkit's own cuda_runtime_api.h, so the
// signatures are the real ones; this program links no libcudart.
//
// What it checks that a GPU would not report as plainly: every copy must lie inside one live device
// allocation on its device side and outside all of them on its host side (cudaMemcpyKind says which
// is which); freeing a pointer that cudaMalloc did not return fails. New device memory is filled
// with NaNs (all bits set), so a kernel that reads memory nothing wrote gives NaNs, not the zeros
// a fresh host page would. Allocations are exact-sized heap blocks: in the sanitizer build, ASan
// reports a kernel that reads or writes past the end of one.
#include "cuda_emulation.hpp"  // pin_emulation::allow_dynamic_shared

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

struct CUstream_st {
    int id;
};

namespace {
std::mutex& table_mutex() {
    static std::mutex m;
    return m;
}
struct Allocation {
    size_t bytes;
    int device;  // current when it was made
};
std::map<uintptr_t, Allocation>& allocations() {  // by start
    static std::map<uintptr_t, Allocation> a;
    return a;
}
// The live allocation that holds [p, p + bytes), or null (the table's lock held by the caller).
const Allocation* holding(const void* p, size_t bytes) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = allocations().upper_bound(a);
    if (it == allocations().begin()) return nullptr;
    --it;
    return a >= it->first && a + bytes <= it->first + it->second.bytes ? &it->second : nullptr;
}
// Whether [p, p + bytes) lies inside one live allocation (inside_one), or touches none (touches_none).
bool inside_one(const void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(table_mutex());
    return holding(p, bytes) != nullptr;
}
bool touches_none(const void* p, size_t bytes) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    std::lock_guard<std::mutex> lock(table_mutex());
    auto it = allocations().lower_bound(a);
    if (it != allocations().end() && it->first < a + bytes) return false;
    if (it == allocations().begin()) return true;
    --it;
    return it->first + it->second.bytes <= a;
}
bool copy_ok(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    if (bytes == 0) return true;
    switch (kind) {
        case cudaMemcpyHostToDevice: return inside_one(dst, bytes) && touches_none(src, bytes);
        case cudaMemcpyDeviceToHost: return inside_one(src, bytes) && touches_none(dst, bytes);
        case cudaMemcpyDeviceToDevice: return inside_one(src, bytes) && inside_one(dst, bytes);
        default: return false;  // pin::cuda always says which way it copies
    }
}
}  // namespace

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
    void* p = nullptr;
    if (bytes == 0 || posix_memalign(&p, 256, bytes) != 0) return cudaErrorMemoryAllocation;  // 256: cudaMalloc's alignment
    std::memset(p, 0xff, bytes);
    {
        std::lock_guard<std::mutex> lock(table_mutex());
        allocations()[reinterpret_cast<uintptr_t>(p)] = Allocation{bytes, pin_emulation::tl_device};
    }
    *ptr = p;
    return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
    if (!ptr) return cudaSuccess;
    {
        std::lock_guard<std::mutex> lock(table_mutex());
        if (allocations().erase(reinterpret_cast<uintptr_t>(ptr)) == 0) return cudaErrorInvalidValue;
    }
    std::free(ptr);
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    if (!copy_ok(dst, src, bytes, kind)) return cudaErrorInvalidValue;
    if (bytes) std::memmove(dst, src, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
    return cudaMemcpy(dst, src, bytes, kind);
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
    static std::atomic<int> next{1};
    *stream = new CUstream_st{next++};
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    delete stream;
    return cudaSuccess;
}
// The attributes pin::cuda sets: a kernel's dynamic shared memory, at most what a block of the
// emulated device may have (sm_90's 227 KB, or PIN_EMULATE_SHARED_PER_BLOCK), recorded for the
// launches' check (pin_emulation::check_dynamic_shared); and its shared-memory carveout, a
// percentage (or -1, no preference) that only a GPU's L1 would feel.
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
    if (func && attr == cudaFuncAttributePreferredSharedMemoryCarveout)
        return value >= -1 && value <= 100 ? cudaSuccess : cudaErrorInvalidValue;
    if (!func || attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || static_cast<size_t>(value) > pin_emulation::max_dynamic_shared())
        return cudaErrorInvalidValue;
    pin_emulation::allow_dynamic_shared(func, static_cast<size_t>(value));
    return cudaSuccess;
}
// Every emulated kernel has an image for the emulated devices (compute capability 9.0), except with
// PIN_EMULATE_NO_KERNEL_IMAGE=1 in the environment: a device the build has no code for, as a GPU
// of another architecture reports it (pin::cuda::device_available's message; test_cuda.cpp).
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, const void* func) {
    if (!func) return cudaErrorInvalidDeviceFunction;
    const char* no_image = std::getenv("PIN_EMULATE_NO_KERNEL_IMAGE");
    if (no_image && std::strcmp(no_image, "1") == 0) return cudaErrorNoKernelImageForDevice;
    *attributes = cudaFuncAttributes{};
    attributes->maxThreadsPerBlock = 1024;
    attributes->binaryVersion = attributes->ptxVersion = 90;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
    if (device < 0 || device >= pin_emulation::kEmulatedDevices) return cudaErrorInvalidDevice;
    switch (attribute) {
        case cudaDevAttrComputeCapabilityMajor: *value = 9; return cudaSuccess;
        case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
        case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(pin_emulation::max_dynamic_shared()); return cudaSuccess;
        default: return cudaErrorInvalidValue;  // no other attribute is asked of the emulation
    }
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaGetLastError() { return cudaSuccess; }  // a failed emulated launch throws instead
const char* cudaGetErrorString(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "no error";
        case cudaErrorMemoryAllocation: return "out of memory (emulated device)";
        case cudaErrorInvalidValue: return "invalid argument (emulated device: a copy outside device allocations, or a bad free)";
        case cudaErrorNoKernelImageForDevice: return "no kernel image is available for execution on the device (emulated: PIN_EMULATE_NO_KERNEL_IMAGE=1)";
        default: return "error (emulated device)";
    }
}
// Two devices (pin_emulation::kEmulatedDevices), the current one per host thread.
cudaError_t cudaGetDevice(int* device) {
    *device = pin_emulation::tl_device;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
    if (device < 0 || device >= pin_emulation::kEmulatedDevices) return cudaErrorInvalidDevice;
    pin_emulation::tl_device = device;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int* count) {
    *count = pin_emulation::kEmulatedDevices;
    return cudaSuccess;
}
// Which device an allocation is on (the one thing of cudaPointerAttributes the tests ask).
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attributes, const void* ptr) {
    *attributes = cudaPointerAttributes{};
    std::lock_guard<std::mutex> lock(table_mutex());
    const Allocation* const found = holding(ptr, 1);
    if (!found) return cudaErrorInvalidValue;
    attributes->type = cudaMemoryTypeDevice;
    attributes->device = found->device;
    attributes->devicePointer = const_cast<void*>(ptr);
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
    if (device < 0 || device >= pin_emulation::kEmulatedDevices) return cudaErrorInvalidDevice;
    *prop = cudaDeviceProp{};
    std::strncpy(prop->name, "CPU emulation of CUDA (tests/cuda_emulation.hpp)", sizeof prop->name - 1);
    return cudaSuccess;
}
