// cuda/ops_wgmma.cu - the host side of the sm_90a kernels (wgmma_gemm.cuh). A translation unit of its
// own because it is the only one compiled for sm_90a (cuda/CMakeLists.txt, pin_cuda_sm90a): the
// wgmma instructions exist only there, and an sm_90a cubin runs only on compute capability 9.0.
#include "ops_internal.cuh"
#include "wgmma_gemm.cuh"

namespace pin::cuda {

bool wgmma_supported(std::string* reason) {
#if defined(PIN_CUDA_EMULATION)
    (void)reason;
    return true;  // the CPU emulation runs wgmma as the PTX ISA describes it
#else
    int device = 0, major = 0, minor = 0;
    if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
        if (reason) *reason = "no usable CUDA device";
        return false;
    }
    if (major == 9 && minor == 0) return true;
    if (reason) *reason = "compute capability " + std::to_string(major) + "." + std::to_string(minor) + " (the wgmma kernels are built for sm_90a only)";
    return false;
#endif
}

void gemm_bf16_wgmma(const Bf16* a, const Bf16* b, float* c, int64_t M, int64_t N, int64_t K) {
    const std::string shape = "(M " + std::to_string(M) + ", N " + std::to_string(N) + ", K " + std::to_string(K) + ")";
    if (M <= 0 || N <= 0 || K <= 0 || K % 8 != 0 || !aligned16(a) || !aligned16(b))
        ::pin::detail::throw_error("CUDA gemm_bf16_wgmma ", shape, ": needs M, N > 0, K a positive multiple of 8 and 16-byte aligned operands");
    check_gemm_size(M, N, K, "gemm_bf16_wgmma", shape);
    std::string why;
    if (!wgmma_supported(&why)) ::pin::detail::throw_error("CUDA gemm_bf16_wgmma ", shape, ": this device cannot run it: ", why);
    using T = WgmmaGemmTile;
    const int64_t gx = (M + T::rows - 1) / T::rows, gy = (N + T::cols - 1) / T::cols;
    if (gy > 65535) ::pin::detail::throw_error("CUDA gemm_bf16_wgmma ", shape, ": too many column tiles");
    static const cudaError_t allowed = cudaFuncSetAttribute(reinterpret_cast<const void*>(&gemm_bf16_wgmma_kernel),
                                                            cudaFuncAttributeMaxDynamicSharedMemorySize, T::smem_bytes);
    check(allowed, "gemm_bf16_wgmma", shape);
    PIN_LAUNCH_SHARED(dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), T::threads, T::smem_bytes, cur(), gemm_bf16_wgmma_kernel)(
        M, N, K, a, b, c);
    check(cudaGetLastError(), "gemm_bf16_wgmma", shape);
}

}  // namespace pin::cuda
