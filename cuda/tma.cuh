// cuda/tma.cuh - sm_90's tensor memory accelerator (TMA): one instruction copies a whole box of a
// tensor (up to 5 dimensions, up to 256 elements each) from global to shared memory, counting its
// bytes on an mbarrier (mbarrier.cuh mbarrier_arrive_expect_tx) as they land. Where cp.async needs
// every thread of a warpgroup to compute addresses and issue 16-byte copies (wgmma_gemm.cuh's
// producers issue 8-16 each per slice), one thread issues a tile's copies; elements outside the
// tensor come as zeros; and the box lands in the 128-byte swizzled layout that wgmma reads without
// bank conflicts (wgmma.cuh wgmma_descriptor_sw128), which the no-swizzle layout's padding only
// approximates.
//
// A tensor map (CUtensorMap, 128 bytes) describes the tensor and the box; it is encoded on the host
// (encode_tensor_map_bf16, through the driver's cuTensorMapEncodeTiled, reached from the runtime
// so that nothing links the driver library) and passed to the kernel as a __grid_constant__
// parameter, whose address the copy instruction takes. Under tests/cuda_emulation.hpp the map holds
// the emulation's own fields and a copy runs as the PTX ISA describes it (pin_emulation::tma_load).
#pragma once

#include <cstdint>
#include <string>

#include <cuda.h>  // CUtensorMap and its enums (types only)
#if !defined(PIN_CUDA_EMULATION) && defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

#include "mbarrier.cuh"
#include "wgmma.cuh"

namespace pin::cuda {

using TensorMap = CUtensorMap;

// A bfloat16 tensor as a tensor map sees it, innermost dimension first: `rank` dimensions of
// dims[i] elements, strides[i - 1] bytes between consecutive indices of dimension i (i >= 1:
// multiples of 16), and the box one copy traverses (box[i] elements, 1-256; box[0] 64 when
// swizzled: 128-byte rows), taking every element_strides[i]-th element of dimension i (1-8; 1 in
// dimension 0): ceil(box[i] / element_strides[i]) of them, so that a box of n elements s apart
// is box[i] = n s (the driver's rule).
struct TensorMapShape {
    uint32_t rank = 2;
    uint64_t dims[5] = {};
    uint64_t strides[4] = {};
    uint32_t box[5] = {};
    uint32_t element_strides[5] = {1, 1, 1, 1, 1};
    bool swizzle128 = true;
};

// Encodes `shape` over the tensor at `base` (16-byte aligned) into `map`; false, with the reason,
// where the driver (or the emulation) refuses it or cannot be reached.
inline bool encode_tensor_map_bf16(TensorMap& map, const void* base, const TensorMapShape& shape, std::string* why) {
#if defined(PIN_CUDA_EMULATION)
    return ::pin_emulation::encode_tensor_map(&map, base, shape.rank, shape.dims, shape.strides, shape.box, shape.element_strides,
                                              shape.swizzle128 ? 128 : 0, why);
#else
    using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*, const cuuint64_t*,
                                     const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                     CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
    // The driver's function, asked of the runtime once (the version whose signature this is: 12.0).
    static const EncodeTiled encode = [] {
        void* fn = nullptr;
        cudaDriverEntryPointQueryResult found{};
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) != cudaSuccess ||
            found != cudaDriverEntryPointSuccess)
            fn = nullptr;
        return reinterpret_cast<EncodeTiled>(fn);
    }();
    if (!encode) {
        if (why) *why = "the driver's cuTensorMapEncodeTiled could not be reached";
        return false;
    }
    cuuint64_t dims[5], strides[4];
    cuuint32_t box[5], element_strides[5];
    for (uint32_t i = 0; i < shape.rank && i < 5; ++i) {
        dims[i] = shape.dims[i], box[i] = shape.box[i], element_strides[i] = shape.element_strides[i];
        if (i > 0) strides[i - 1] = shape.strides[i - 1];
    }
    const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, shape.rank, const_cast<void*>(base), dims, strides, box,
                              element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                              shape.swizzle128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                              CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        if (why) *why = "cuTensorMapEncodeTiled refused the map (CUresult " + std::to_string(static_cast<int>(r)) + ")";
        return false;
    }
    return true;
#endif
}

// A row-major bfloat16 matrix of `rows` rows of `cols` values, `ld` values apart, as a 2-dimensional
// map whose box is `box_cols` values of `box_rows` rows (the wgmma operands' K-major tiles).
inline bool encode_matrix_map_bf16(TensorMap& map, const void* base, int64_t rows, int64_t cols, int64_t ld, uint32_t box_cols,
                                   uint32_t box_rows, std::string* why) {
    TensorMapShape s;
    s.rank = 2;
    s.dims[0] = static_cast<uint64_t>(cols), s.dims[1] = static_cast<uint64_t>(rows), s.strides[0] = static_cast<uint64_t>(ld) * 2;
    s.box[0] = box_cols, s.box[1] = box_rows;
    return encode_tensor_map_bf16(map, base, s, why);
}

// Copies the box at (c0, c1) of a 2-dimensional map into shared memory at dst (1024-byte aligned
// when swizzled, else 128), completing its bytes (the whole box's, zeros outside the tensor
// included) on bar. One thread issues it.
__device__ inline void tma_load_2d(void* dst, const TensorMap& map, int c0, int c1, uint64_t* bar) {
#if defined(PIN_CUDA_EMULATION)
    const int32_t coords[2] = {c0, c1};
    ::pin_emulation::tma_load(dst, &map, coords, bar);
#elif defined(__CUDA_ARCH__)
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
            shared_address(dst)),
        "l"(reinterpret_cast<uint64_t>(&map)), "r"(c0), "r"(c1), "r"(shared_address(bar))
        : "memory");
#else
    (void)dst, (void)map, (void)c0, (void)c1, (void)bar;
#endif
}

// The box at (c0, c1, c2, c3) of a 4-dimensional map, as tma_load_2d.
__device__ inline void tma_load_4d(void* dst, const TensorMap& map, int c0, int c1, int c2, int c3, uint64_t* bar) {
#if defined(PIN_CUDA_EMULATION)
    const int32_t coords[4] = {c0, c1, c2, c3};
    ::pin_emulation::tma_load(dst, &map, coords, bar);
#elif defined(__CUDA_ARCH__)
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(
            shared_address(dst)),
        "l"(reinterpret_cast<uint64_t>(&map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(shared_address(bar))
        : "memory");
#else
    (void)dst, (void)map, (void)c0, (void)c1, (void)c2, (void)c3, (void)bar;
#endif
}

// Brings a map into the cache of tensor maps before its first copy.
__device__ inline void tma_prefetch_map(const TensorMap& map) {
#if defined(__CUDA_ARCH__) && !defined(PIN_CUDA_EMULATION)
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&map)) : "memory");
#else
    (void)map;
#endif
}

}  // namespace pin::cuda
