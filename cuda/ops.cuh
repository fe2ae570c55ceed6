// cuda/ops.cuh - the engine's kernels on the GPU (host API). Every pointer is device memory;
// activations are NHWC like the CPU engine, weights keep PyTorch's layouts:
//   conv2d (cout, cin, k, k), conv_transpose2d (cin, cout, k, k), linear (out, in).
// All convolutions and the linear layer run through one shared-memory tiled GEMM whose operands are
// gathered on the fly (implicit GEMM); reductions are split into fixed chunks and summed in a fixed
// order, so results are deterministic run to run. Every launch is checked; a failure throws
// pin::Error naming the kernel and the shape.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "bfloat16.cuh"

namespace pin::cuda {

// ---- memory --------------------------------------------------------------------------------------
// A device allocation on the current device; freed blocks are cached by device, stream and size and
// reused (training steps allocate the same shapes again and again).
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(size_t floats);
    ~DeviceBuffer();
    DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), floats_(o.floats_), stream_(o.stream_), device_(o.device_) {
        o.ptr_ = nullptr, o.floats_ = 0;
    }
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    float* data() const { return ptr_; }
    size_t size() const { return floats_; }
    void upload(const float* host, size_t floats);
    void download(float* host, size_t floats) const;

private:
    float* ptr_ = nullptr;
    size_t floats_ = 0;
    void* stream_ = nullptr;  // the stream current at allocation: its cache gets the block back
    int device_ = 0;          // the device current at allocation, whose memory it is
};
void synchronize(const char* what);  // the whole device

// ---- streams -------------------------------------------------------------------------------------
// Every kernel and copy of pin::cuda runs on the calling thread's current stream: the legacy
// default stream, unless a StreamScope is alive on that thread. Copies to and from the host are
// complete when they return. DeviceBuffers go back to the cache of the stream that was current when
// they were allocated, so a block is reused only by work queued after its last use there; using one
// buffer from two streams is the caller's to order (synchronize), as with any CUDA stream.
class Stream {
public:
    Stream();   // a non-blocking stream (not ordered with the legacy default stream)
    ~Stream();  // waits for its work, then destroys it
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    void synchronize() const;
    void* handle() const { return handle_; }  // the cudaStream_t

private:
    void* handle_ = nullptr;
};
class StreamScope {
public:
    explicit StreamScope(const Stream& s);
    ~StreamScope();
    StreamScope(const StreamScope&) = delete;
    StreamScope& operator=(const StreamScope&) = delete;

private:
    void* previous_;
};
void synchronize_stream(const char* what);  // the calling thread's current stream

// ---- arithmetic of the GEMMs ----------------------------------------------------------------------
// FP32: CUDA-core FMAs, results within ~1e-6 of the CPU engine's (relative to each output's scale).
// TF32: tensor cores; GEMM inputs rounded to 10 mantissa bits, sums in fp32: about 1e-3 relative
// (tests/test_cuda.cpp checks 5e-3). BF16: tensor cores, inputs rounded to bfloat16 (8 mantissa
// bits), sums in fp32: about 4x TF32's error (checked at 2e-2), twice its tensor-core rate.
// Process-wide; FP32 unless set.
enum class MathMode { FP32, TF32, BF16 };
void set_math_mode(MathMode mode);
MathMode math_mode();

// How the convolutions' implicit GEMM reads its gathered operand. Generic: every element decodes
// its pixel and tap from the flat GEMM indices (four 32-bit integer divisions, most of the
// kernel's instructions). Rows: each thread decodes its rows' pixels once per launch and each
// 16-deep K slice's tap once, for the forward and input-gradient passes of layers whose gathered
// channel count is a multiple of 16 (the same values in the same order as Generic); and
// convolutions with one output channel run as a per-pixel dot product, and those with one input
// channel as a per-pixel, per-4-channels sum of their taps (fp32 in every math mode, sums in
// another order), instead of a GEMM that would fill 1 of its tile's 64 columns or spend a 16-deep
// K slice on 9 products.
// Rows and Vector also split strided transposed gathers (transposed convolutions, input gradients
// of strided convolutions) into sub-pixel classes, each a GEMM over its own taps only.
// Vector: as Rows, and with MathMode::BF16 the wide tensor-core kernel (16-byte vector loads,
// 32-deep slices, two shared-memory stages; gemm_kernels.cuh gemm_wide_kernel) for the forward and
// input-gradient passes of layers whose gathered channel count is a multiple of 32 and output
// channel count a multiple of 4, for weight gradients whose channel counts are multiples of 4, and
// for the linear layers and the eigenface projection when their sizes are multiples of 4; and
// where both operands are bfloat16 in memory (see PackedWeight), the asynchronous-copy kernel.
// Process-wide. Generic unless set: Rows and Vector have not yet run on a GPU (bench/gpu_check.sh
// tests and times them; make the fastest that passes there the default).
enum class GatherMode { Generic, Rows, Vector };
void set_gather_mode(GatherMode mode);
GatherMode gather_mode();

// How GpuDefense stores the activations between its layers. FP32, or BF16: bfloat16, half the bytes
// that every layer writes and the next reads (at batch 256 a 64-channel 112 x 112 tensor is 0.8 GB
// in fp32). With MathMode::BF16 the tensor cores round their operands to bfloat16 anyway; what BF16
// storage adds is the rounding of what the epilogues store (the residual sums and PReLU outputs)
// and of the inputs of the fp32 per-pixel kernels. The DAE's output and everything after the ESN
// stay fp32. Process-wide; FP32 unless set.
enum class ActivationStorage { FP32, BF16 };
void set_activation_storage(ActivationStorage storage);
ActivationStorage activation_storage();

// The asynchronous-copy kernel's block tile (gemm_kernels.cuh AsyncTile): 256 x 64, two blocks per
// SM, or, for the GEMMs whose N (output channels) is a multiple of 128, 256 x 128: one block per SM
// (128 accumulator registers per thread), half the shared-memory traffic per tensor-core product.
// Wgmma: the forward convolutions given K-major bfloat16 weights (PackedWeight::bf16_kmajor), and
// the input gradients from a bfloat16 dy (conv2d_backward_input packs them), run on sm_90a's
// warpgroup MMA instead (wgmma_gemm.cuh: both operands read by the tensor cores from
// shared memory, 128 x 128 tiles, 128 x 64 where N is not a multiple of 128), where the device is
// compute capability 9.0 and the gathered channel count a multiple of 64; every other GEMM of the
// kernel as with Cols64. Process-wide; Cols64 unless set: none has run on a GPU (pin-bench-gpu
// times them; make the fastest that passes the GPU tests the default).
enum class AsyncTileShape { Cols64, Cols128, Wgmma };
void set_async_tile(AsyncTileShape shape);
AsyncTileShape async_tile();

// How the warpgroup-MMA kernel (AsyncTileShape::Wgmma, gemm_bf16_wgmma) waits for its MMAs: each
// warpgroup after every 64-deep slice (WaitEachSlice: one barrier per slice; the tensor cores idle
// between a slice's last MMA and the next slice's first unless the SM's other block fills the gap),
// or one slice's MMAs left running while the next slice's are issued (OneSliceInFlight: a second
// barrier per slice, before the copies into the stage they read), or WarpSpecialized: a third
// warpgroup only copies, into 3-4 stages, and the two MMA warpgroups wait on mbarriers for the
// stage they need rather than on the whole block, one persistent block per SM (wgmma_gemm.cuh
// gemm_wgmma_ws_kernel; tiles 128 x 128 where N is a multiple of 128, else 256 x 64 computed
// transposed, the output channels as the MMA's M, but for the sub-pixel gathers, which keep
// WaitEachSlice's kernel there unless tensor copies feed them, WgmmaLoads); the forward convolutions, input gradients
// and gemm_bf16_wgmma, not the weight gradients (those wait for each slice). PingPong: the same
// kernel with each MMA warpgroup taking whole tiles of half the size (64 x 128, or 128 x 64
// transposed; the sub-pixel gathers' too), the two in turn, so that one's epilogue runs under the
// other's MMAs. Process-wide;
// WaitEachSlice unless set (pin-bench-gpu times each).
enum class WgmmaPipeline { WaitEachSlice, OneSliceInFlight, WarpSpecialized, PingPong };
void set_wgmma_pipeline(WgmmaPipeline pipeline);
WgmmaPipeline wgmma_pipeline();
// Whether `pipeline` runs the warp-specialized kernel (a producer warpgroup, mbarrier-ordered stages).
inline bool warp_specialized(WgmmaPipeline pipeline) {
    return pipeline == WgmmaPipeline::WarpSpecialized || pipeline == WgmmaPipeline::PingPong;
}

// The warp-specialized kernels' shared memory a block: their tiles take as many stages as fit in
// `kib` KiB with the 1 KiB the system reserves per block, at least 2 and at most their own count
// (0: no limit, their own counts, 203-212 KB a block, which leave about 28 KB of an SM's 256 to L1).
// What a block does not take is L1, which caches the gathered copies with GatherCaching::L1 (worth
// 1.6x to the measured wgmma kernel): at 196 KiB ping-pong keeps 4 stages of 5, the 128 x 128 tile
// 3 of 4 and the swapped 256 x 64 one 2 of 3, and L1 about 60 KB; at 164 KiB 3, 2 and 2, L1 about
// 92 KB. Every launch also asks the driver for just the shared-memory carveout it needs. Whether
// fewer stages or more L1 is faster, only a GPU can tell (pin-bench-gpu times both limits).
// Process-wide; 0 unless set; throws unless kib is 0 or 1 .. 227.
void set_wgmma_ws_smem_kib(int kib);
int wgmma_ws_smem_kib();

// How the warp-specialized kernels' epilogue stores C: ThroughShared, each MMA warpgroup's
// accumulators into a C region of shared memory (34-68 KB a block) and read back in rows by the
// store functor, four columns per vector; or Direct, from the registers, four consecutive columns
// gathered in registers by warp shuffles first (wgmma_gemm.cuh store_accumulators): no C regions,
// so every tile keeps all its stages within 164 KiB and leaves ~92 KB of the SM to L1, and no
// shared-memory traffic beside the tensor cores' (a 256 x 64 tile's C is 64 KB written and read
// back), for stores of half a 32-byte sector per row where the tile is not transposed (the next
// 8 columns' store fills the other half). The same values either way. Process-wide; ThroughShared
// unless set (pin-bench-gpu times both).
enum class WgmmaStores { ThroughShared, Direct };
void set_wgmma_stores(WgmmaStores stores);
WgmmaStores wgmma_stores();

// How the warp-specialized kernels' producer brings the operands into shared memory: CpAsync, its
// 128 threads each computing addresses and issuing 16-byte copies (8-16 per slice) into the padded
// no-swizzle layout; or TensorCopies, sm_90's tensor memory accelerator (tma.cuh), one thread
// issuing a slice's two box copies into the 128-byte swizzled layout (no padding, no bank
// conflicts by construction), the hardware computing the addresses and zero-filling past the
// matrix (wgmma_gemm.cuh WgmmaTensorDenseOperands, WgmmaTensorConvOperands). Our GEMM reaches 141
// TFLOP/s on the H200 where cuBLAS (TMA-fed) reaches 802: this is the probe of how much of that
// gap the copies are. It applies to the dense GEMM (gemm_bf16_wgmma), the forward convolutions
// (any stride: the copies' element strides), the stride-1 input gradients and transposed
// convolutions, and the strided ones' sub-pixel classes (each class's output grid in place of the
// output: its source pixels are consecutive), where an output row
// fits a tile (a tile is whole output rows of one image, or whole images: the 64-channel layers'
// tiles of 224 or 112 pixels are filled at 112 x 112 and 56 x 56, 128-pixel tiles 7/8 at 28 x 28
// and 77 % at 14 x 14 and 7 x 7, ws's split-column tiles of 112 or 200 pixels 87-100 % at those
// (ops_wgmma.cu conv_on_tensor_copies); the padding is the copies' zero fill); the weight
// gradients keep cp.async. Process-wide; CpAsync unless set (`pin
// --gpu-loads tma`).
enum class WgmmaLoads { CpAsync, TensorCopies };
void set_wgmma_loads(WgmmaLoads loads);
WgmmaLoads wgmma_loads();

// The warpgroup MMA's N where tensor copies feed it (WgmmaLoads::TensorCopies with a
// warp-specialized pipeline): N128, m64n128k16 as the other tiles; or N256, the wide tiles:
// m64n256k16, the shape CUTLASS's fastest Hopper GEMMs use (wgmma_gemm.cuh WgmmaWsWideTile: 128 x
// 256 for `ws` where the output channels are a multiple of 256), m64n224k16
// (WgmmaPingPongWideSwappedTile: 224-pixel tiles for `pingpong`'s 64-channel layers) and
// m64n200k16 (WgmmaWsWideSwappedTile: `ws`'s convolutions with 128k channels whose output rows
// fill 200 pixels better than 128, each MMA warpgroup 64 of the channels: the 28 x 28, 14 x 14 and
// 7 x 7 layers), which the tensor cores run at fewer shared-memory bytes and instructions per
// product; their 100-128 accumulators a thread fit because the producer warpgroup gives its
// registers to the consumers (setmaxnreg 40 / 232), and C goes from the registers. Other layers
// keep their tiles. Process-wide; N128 unless set (`pin --gpu-mma-n 256`).
enum class WgmmaMmaN { N128, N256 };
void set_wgmma_mma_n(WgmmaMmaN n);
WgmmaMmaN wgmma_mma_n();

// Where the asynchronous-copy and warpgroup-MMA kernels' copies of a gathered bfloat16 operand (the
// activations of a convolution's implicit GEMM, all three passes) are cached on their way to shared
// memory: in L2 only (L2: cp.async.cg), or also in the SM's L1 (L1: cp.async.ca). A 3 x 3
// convolution copies every activation once per tap, nine times, and a block copies the taps of
// neighbouring pixels close together in time, so L1 could serve most of those copies where L2 must
// serve them all (a 64-channel layer at 300 TFLOP/s asks about 4.7 TB/s of it). But L1 shares each
// SM's 256 KB with the kernels' shared memory (192 KB for two wgmma blocks): how much it keeps, and
// whether it helps, only a GPU can tell. The same values either way. Process-wide; L2 unless set
// (pin-bench-gpu times both).
enum class GatherCaching { L2, L1 };
void set_gather_caching(GatherCaching caching);
GatherCaching gather_caching();

// A device pointer to NHWC activations stored either way (conv2d_forward,
// conv_transpose2d_forward and nhwc_to_nchw read and write both).
struct ConstActivations {
    const void* data;
    bool bf16;
    ConstActivations(const float* p) : data(p), bf16(false) {}  // NOLINT: implicit, as a float* argument
    ConstActivations(const Bf16* p) : data(p), bf16(true) {}    // NOLINT
};
struct Activations {
    void* data;
    bool bf16;
    Activations(float* p) : data(p), bf16(false) {}  // NOLINT
    Activations(Bf16* p) : data(p), bf16(true) {}    // NOLINT
};

// A count per GEMM kernel: of launches (kernel_launches) or of arithmetic (kernel_gemm_flops).
struct KernelCounts {
    int64_t fp32 = 0, tensor_core = 0, wide = 0, one_output = 0, one_input = 0;
    int64_t one_input_bands = 0;  // of one_input's, those by output row bands (the 3 x 3 stems; a part of one_input)
    int64_t async = 0;
    int64_t async_cols128 = 0;  // of async's, those of the 256 x 128 tile (a part of async, not beside it)
    int64_t wgmma = 0;          // the warpgroup-MMA kernel's (AsyncTileShape::Wgmma, gemm_bf16_wgmma)
    int64_t wgmma_tma = 0;      // of wgmma's, those fed by tensor copies (WgmmaLoads::TensorCopies; a part of wgmma)
    int64_t wgmma_wide = 0;     // of wgmma_tma's, those on the m64n256k16 tiles (WgmmaMmaN::N256; a part of wgmma_tma)
    int64_t wgmma_split = 0;    // of wgmma_tma's, those on ws's split-column tiles, 200 or 112 pixels x 128 channels (a part of wgmma_tma)
    // Over all kernels (one_input_bands, async_cols128, wgmma_tma, wgmma_wide and wgmma_split being
    // inside one_input, async and wgmma).
    int64_t total() const { return fp32 + tensor_core + wide + one_output + one_input + async + wgmma; }
    // Counter by counter: what happened between two readings (`pin` leaves GPU tuning's launches out so).
    KernelCounts operator-(const KernelCounts& base) const {
        static_assert(sizeof(KernelCounts) == 12 * sizeof(int64_t), "a counter added to KernelCounts needs subtracting here");
        KernelCounts d = *this;
        d.fp32 -= base.fp32, d.tensor_core -= base.tensor_core, d.wide -= base.wide, d.one_output -= base.one_output;
        d.one_input -= base.one_input, d.one_input_bands -= base.one_input_bands, d.async -= base.async;
        d.async_cols128 -= base.async_cols128, d.wgmma -= base.wgmma;
        d.wgmma_tma -= base.wgmma_tma, d.wgmma_wide -= base.wgmma_wide, d.wgmma_split -= base.wgmma_split;
        return d;
    }
};
// How many GEMM launches each kernel has had in this process (tests check that a configuration
// reaches the kernel it is meant for; pin-bench-gpu reports them).
using KernelLaunches = KernelCounts;
KernelLaunches kernel_launches();
// The same per kernel, counting each GEMM launch's 2 M N K (multiplications and additions of the
// products it computes, padding and zero taps included): where a run's arithmetic went, which is
// what its speed depends on (a launch count says nothing of size). pin-bench-gpu and `pin` report
// them beside the launches.
using KernelFlops = KernelCounts;
KernelFlops kernel_gemm_flops();
// The counts with the names reports use for them ("fp32", "tensor_core", ..., "wgmma"), in the
// struct's order: `pin`'s kernel report and pin-bench-gpu's JSON name them the same way.
inline std::vector<std::pair<const char*, int64_t>> named_counts(const KernelCounts& k) {
    static_assert(sizeof(KernelCounts) == 12 * sizeof(int64_t), "a counter added to KernelCounts needs its name here, and in total()");
    return {{"fp32", k.fp32}, {"tensor_core", k.tensor_core}, {"wide", k.wide}, {"one_output", k.one_output},
            {"one_input", k.one_input}, {"one_input_bands", k.one_input_bands}, {"async", k.async},
            {"async_cols128", k.async_cols128}, {"wgmma", k.wgmma}, {"wgmma_tma", k.wgmma_tma}, {"wgmma_wide", k.wgmma_wide},
            {"wgmma_split", k.wgmma_split}};
}

// ---- convolutions (NHWC activations) -------------------------------------------------------------
struct ConvShape {
    int64_t batch, in_h, in_w, in_c, out_c, kernel, stride, padding, output_padding = 0;
};
int64_t conv2d_out(const ConvShape& s, int64_t in);            // (in + 2p - k) / s + 1
int64_t conv_transpose2d_out(const ConvShape& s, int64_t in);  // (in - 1) s - 2p + k + op

// A forward convolution's weight already in the GEMM's layout (pack_conv2d_forward_weight,
// pack_conv_transpose2d_forward_weight), and optionally the same as bfloat16 (pack_bf16 of it).
// With both operands bfloat16 in memory (a bfloat16 x and `bf16`), MathMode::BF16 and
// GatherMode::Vector, the convolution runs on the asynchronous-copy kernel (gemm_kernels.cuh
// gemm_async_kernel: global to shared memory without the registers), where its shape allows:
// the input channel count a multiple of 32, the output channel count a multiple of 8.
// bf16_kmajor: the same weights as bfloat16 transposed (pack_bf16_kmajor: row n holds output
// channel n's K values), which the warpgroup-MMA kernel reads (AsyncTileShape::Wgmma).
struct PackedWeight {
    const float* fp32 = nullptr;
    const Bf16* bf16 = nullptr;
    const Bf16* bf16_kmajor = nullptr;
    PackedWeight() = default;
    PackedWeight(const float* p) : fp32(p) {}  // NOLINT: implicit, as the plain packed pointer it extends
    PackedWeight(const float* p, const Bf16* b, const Bf16* k = nullptr) : fp32(p), bf16(b), bf16_kmajor(k) {}
};
// y = act(conv(x) + bias) (+ y when accumulate); bias and prelu_slope may be null (prelu_slope
// all zeros = ReLU). The forward passes repack w into the GEMM's layout on every call unless given
// `packed` with the same shape (an inference model packs each weight once). x and y may each be
// fp32 or bfloat16.
void conv2d_forward(ConstActivations x, const float* w, Activations y, const ConvShape& s, const float* bias = nullptr,
                    const float* prelu_slope = nullptr, bool accumulate = false, PackedWeight packed = {});
DeviceBuffer pack_conv2d_forward_weight(const float* w, const ConvShape& s);
DeviceBuffer pack_conv_transpose2d_forward_weight(const float* w, const ConvShape& s);
// n floats as n bfloat16 (rounded to nearest even), in a buffer of (n + 1) / 2 floats' bytes.
DeviceBuffer pack_bf16(const float* x, int64_t n);
inline const Bf16* bf16_data(const DeviceBuffer& b) { return reinterpret_cast<const Bf16*>(b.data()); }
// A packed forward weight (K rows x N columns, fp32) as bfloat16, transposed: out[n K + k] =
// packed[k N + n] rounded (PackedWeight::bf16_kmajor).
DeviceBuffer pack_bf16_kmajor(const float* packed, int64_t K, int64_t N);
// dx = (or, with `accumulate`, +=) the input gradient of conv2d_forward for dy. dy may be fp32 or
// bfloat16; from bfloat16, with MathMode::BF16 and GatherMode::Vector, the weight is packed as
// bfloat16 too and the GEMMs run on the asynchronous-copy kernel where the shape allows (the
// output channel count, which the gather reads, a multiple of 32; the input channel count a
// multiple of 8).
void conv2d_backward_input(ConstActivations dy, const float* w, float* dx, const ConvShape& s, bool accumulate = false);
// dw = the weight gradient of conv2d_forward for x and dy, each fp32 or bfloat16. Both bfloat16, with
// MathMode::BF16 and GatherMode::Vector: on the asynchronous-copy kernel where the shape allows (the
// input and output channel counts multiples of 8); elsewhere bfloat16 operands are widened to fp32.
void conv2d_backward_weight(ConstActivations x, ConstActivations dy, float* dw, const ConvShape& s);
void conv_transpose2d_forward(ConstActivations x, const float* w, Activations y, const ConvShape& s, const float* prelu_slope = nullptr,
                              PackedWeight packed = {});
void conv_transpose2d_backward_input(const float* dy, const float* w, float* dx, const ConvShape& s);
void conv_transpose2d_backward_weight(const float* x, const float* dy, float* dw, const ConvShape& s);

// ---- linear: y (B, out) = x (B, in) W^T + b ---------------------------------------------------------
// The forward pass transposes w into the GEMM's (in, out) layout on every call unless given
// `packed`, from pack_linear_forward_weight (an inference model packs each weight once: the head's
// first layer is 25,088 x 512).
void linear_forward(const float* x, const float* w, const float* b, float* y, int64_t batch, int64_t in, int64_t out,
                    const float* packed = nullptr);
DeviceBuffer pack_linear_forward_weight(const float* w, int64_t in, int64_t out);
void linear_backward_input(const float* dy, const float* w, float* dx, int64_t batch, int64_t in, int64_t out);
void linear_backward_params(const float* x, const float* dy, float* dw, float* db, int64_t batch, int64_t in, int64_t out);

// ---- element-wise (channels = the innermost dimension) ---------------------------------------------
void prelu_forward(const float* x, const float* slope, float* y, int64_t n, int64_t channels);
void prelu_backward(const float* x, const float* slope, const float* dy, float* dx, float* dslope, int64_t n, int64_t channels);
void tanh_forward(const float* x, float* y, int64_t n);
void tanh_backward(const float* y, const float* dy, float* dx, int64_t n);
void sigmoid_forward(const float* x, float* y, int64_t n);
void sigmoid_backward(const float* y, const float* dy, float* dx, int64_t n);
void add(const float* a, const float* b, float* y, int64_t n);

// ---- PIN: masks, projection, mask costs ---------------------------------------------------------------
// q[b, j] = PhiloxStream(seed, first_image + b).bernoulli(j, p[b, j]): the CPU Defense's masks.
// Two generators draw them, with the same bits: pin's own Philox4x32-10 (pin/core/rng.hpp), or
// cuRAND's (curand_kernel.h, curandStatePhilox4_32_10_t), whose curand_init(seed, subsequence,
// offset) puts the key and counter where PhiloxStream(seed, subsequence) puts them for element
// `offset`. The masks of the fused cost and gradient kernels are drawn with pin's. Process-wide;
// Pin unless set.
enum class MaskSampler { Pin, CuRand };
void set_mask_sampler(MaskSampler sampler);
MaskSampler mask_sampler();

// The process-wide choices of this header (math, gather, activation storage, tile, wgmma pipeline,
// gather caching, mask sampler, the warp-specialized kernels' shared memory, stores, loads and MMA N) as one
// value: current() reads them, apply() sets them all.
struct KernelSettings {
    MathMode math = MathMode::FP32;
    GatherMode gather = GatherMode::Generic;
    ActivationStorage storage = ActivationStorage::FP32;
    AsyncTileShape tile = AsyncTileShape::Cols64;
    WgmmaPipeline pipeline = WgmmaPipeline::WaitEachSlice;
    GatherCaching caching = GatherCaching::L2;
    MaskSampler sampler = MaskSampler::Pin;
    int ws_smem_kib = 0;
    WgmmaStores stores = WgmmaStores::ThroughShared;
    WgmmaLoads loads = WgmmaLoads::CpAsync;
    WgmmaMmaN mma_n = WgmmaMmaN::N128;
    static KernelSettings current() {
        return {math_mode(),      gather_mode(),  activation_storage(), async_tile(),   wgmma_pipeline(), gather_caching(),
                mask_sampler(),   wgmma_ws_smem_kib(), wgmma_stores(),  wgmma_loads(),  wgmma_mma_n()};
    }
    void apply() const {
        set_math_mode(math), set_gather_mode(gather), set_activation_storage(storage), set_async_tile(tile);
        set_wgmma_pipeline(pipeline), set_gather_caching(caching), set_mask_sampler(sampler), set_wgmma_ws_smem_kib(ws_smem_kib);
        set_wgmma_stores(stores), set_wgmma_loads(loads), set_wgmma_mma_n(mma_n);
    }
};
// Puts back the settings in force when it was made as it goes out of scope, an exception included:
// for code that tries other settings for a while (the benchmark, the tests) without leaking them
// into what runs after it.
class KernelSettingsScope {
public:
    KernelSettingsScope() : saved_(KernelSettings::current()) {}
    ~KernelSettingsScope() { saved_.apply(); }
    KernelSettingsScope(const KernelSettingsScope&) = delete;
    KernelSettingsScope& operator=(const KernelSettingsScope&) = delete;

private:
    KernelSettings saved_;
};
void sample_masks(const float* p, float* q, int64_t batch, int64_t n, uint64_t seed, uint64_t first_image);
// basis (D, N) row-major as EigenBasis; basis_t (N, D) its transpose (see transpose()).
// c (B, N) = (x - mean) B.
void project_coefficients(const float* basis, const float* mean, const float* x, float* c, int64_t batch, int64_t D, int64_t N);
// y (B, D) = (q .* c) B^T + mean; q may be null (all ones).
void reconstruct(const float* basis_t, const float* mean, const float* c, const float* q, float* y, int64_t batch, int64_t D,
                 int64_t N);
void transpose(const float* a, float* at, int64_t rows, int64_t cols);
// The cost of k masks per image in O(N) each (train/mask_cost.hpp): g (B, N) = c^2 - 2 c d,
// y2 (B) = ||x - m||^2; masks drawn as the CPU estimator does: PhiloxStream(seed,
// (first_image + b) * k + s).bernoulli(j, p). cost[b*k + s] = sqrt(S) (l2) or S / D (mse) + lambda kept.
void mask_costs(const float* p, const float* g, const double* y2, double* cost, double* kept, int64_t batch, int64_t n, int64_t k,
                bool l2, double lambda, int64_t pixels, uint64_t seed, uint64_t first_image);

// The local-expectation estimator fused (train/estimators.hpp, Estimator::LocalExpectation): the same
// masks as mask_costs, and dz (B, N) = p (1 - p) / (k B) * sum over the k masks of
// Delta_j(q) = f(q, bit j on) - f(q, bit j off), every j in O(1) from S(q); also each mask's cost and
// ||q||_0 (B * k). Doubles for dz, cost and kept, as on the CPU.
void local_gradient(const float* p, const float* g, const double* y2, double* dz, double* cost, double* kept, int64_t batch,
                    int64_t n, int64_t k, bool l2, double lambda, int64_t pixels, uint64_t seed, uint64_t first_image);

// ---- the training step's remaining pieces (cuda/gpu_trainer.hpp) ----------------------------------
// xn = x + eta for B images of `pixels` values, as train::add_relative_noise (the same Philox
// normals; ||eta|| = intensity ||x|| per image; float rounding may differ in the last bit).
void relative_noise(const float* x, float* xn, int64_t batch, int64_t pixels, double intensity, uint64_t seed, uint64_t first_image);
// x (B, C, H, W) in NHWC order from y in NCHW order: the head's flatten, backwards.
void nchw_to_nhwc(const float* x, float* y, int64_t batch, int64_t channels, int64_t h, int64_t w);
// sum of x[i]^2 in double, in a fixed order (the same value on every run and every GPU).
double sum_squares(const float* x, int64_t n);
void scale(float* x, int64_t n, float s);
// SGD with momentum (PyTorch's rule, no weight decay): v = first ? g : momentum v + g; w -= lr v.
void sgd_step(float* w, const float* g, float* v, int64_t n, float lr, float momentum, bool first);
// g (B, N) = c^2 - 2 c d (in double, stored as float) and y2 (B) = ||x_b - mean||^2 in double: the
// O(N) mask-cost terms (train/mask_cost.hpp) from c = (xn - m) B, d = (x - m) B and x (B, D).
void mask_cost_terms(const float* c, const float* d, const float* x, const float* mean, float* g, double* y2, int64_t batch,
                     int64_t n, int64_t pixels);
// REINFORCE / RLOO from per-mask advantages (train/estimators.hpp): dz[b, j] = sum over s of
// adv[b k + s] (q_bsj - p_bj), with q_bs drawn as mask_costs draws it; summed in s order in double.
void policy_gradient(const float* p, const double* advantage, float* dz, int64_t batch, int64_t n, int64_t k, uint64_t seed,
                     uint64_t first_image);
void to_float(const double* x, float* y, int64_t n);

// The GPU's name and its measured bandwidth-free facts, for reports.
std::string device_name();

// ---- sm_90a's warpgroup MMA (cuda/wgmma_gemm.cuh): the dense GEMM it is probed with ----------------
// c (M x N, fp32, row-major) = a b^T, a (M x K) and b (N x K) bfloat16 with K contiguous; K a multiple
// of 8, a and b 16-byte aligned. Throws (naming the shape) where the device cannot run it.
void gemm_bf16_wgmma(const Bf16* a, const Bf16* b, float* c, int64_t M, int64_t N, int64_t K);
// Whether this device runs the sm_90a kernels (compute capability 9.0: H100, H200); `reason` says why not.
bool wgmma_supported(std::string* reason = nullptr);

}  // namespace pin::cuda

namespace pin::cuda {
// y (B, C, H, W) in NCHW order from x in NHWC order (the head flattens like PyTorch).
void nhwc_to_nchw(ConstActivations x, float* y, int64_t batch, int64_t channels, int64_t h, int64_t w);
}  // namespace pin::cuda

namespace pin::cuda {
void copy(const float* src, float* dst, int64_t n);  // device to device
void copy_to_device(const float* host, float* dst, int64_t n);
void copy_to_host(const float* src, float* host, int64_t n);
}  // namespace pin::cuda
