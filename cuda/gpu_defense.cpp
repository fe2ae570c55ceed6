// cuda/gpu_defense.cpp - see gpu_defense.hpp. Layer order and fusions mirror the CPU modules'
// inference paths (nn/res_block.hpp, nn/up_block.hpp, model/*.hpp).
#include "gpu_defense.hpp"

#include "pin/core/error.hpp"

namespace pin::cuda {

namespace {
DeviceBuffer upload(const Tensor& t) {
    const Tensor c = t.to_layout(Layout::NCHW);
    DeviceBuffer b(static_cast<size_t>(c.numel()));
    b.upload(c.data(), static_cast<size_t>(c.numel()));
    return b;
}
// n activations stored as bfloat16 (two per float of the buffer) or fp32, and views of them.
DeviceBuffer activations(int64_t n, bool bf16) { return DeviceBuffer(static_cast<size_t>(bf16 ? (n + 1) / 2 : n)); }
Activations out(const DeviceBuffer& b, bool bf16) {
    if (bf16) return reinterpret_cast<Bf16*>(b.data());
    return b.data();
}
ConstActivations in(const DeviceBuffer& b, bool bf16) {
    if (bf16) return reinterpret_cast<const Bf16*>(b.data());
    return static_cast<const float*>(b.data());
}
}  // namespace

GpuDefense::GpuDefense(model::Agent& agent, const model::EigenBasis& basis) {
    for (const nn::NamedParameter& p : agent.parameters()) weights_.emplace(p.name, upload(p.param->value));
    n_ = basis.count();
    d_ = basis.pixels();
    PIN_CHECK(d_ == 112 * 112, "GpuDefense: the eigenbasis must have 12544 pixels, has ", d_);
    basis_ = upload(basis.basis());
    mean_ = upload(basis.mean());
    basis_t_ = DeviceBuffer(static_cast<size_t>(n_ * d_));
    transpose(basis_.data(), basis_t_.data(), d_, n_);
    synchronize_stream("GpuDefense: copying the weights");  // other threads' streams read them next
}

const float* GpuDefense::w(const std::string& name) const {
    auto it = weights_.find(name);
    PIN_CHECK(it != weights_.end(), "GpuDefense: no parameter '", name, "'");
    return it->second.data();
}

const float* GpuDefense::packed_once(const std::string& name, const std::function<DeviceBuffer()>& pack) {
    // Calls may come from several threads, each on its own stream: pack under the lock and let the
    // packing finish before another stream can read the result.
    std::lock_guard<std::mutex> lock(packed_mutex_);
    auto it = packed_.find(name);
    if (it == packed_.end()) {
        DeviceBuffer b = pack();
        synchronize_stream("GpuDefense: packing a weight");
        it = packed_.emplace(name, std::move(b)).first;
    }
    return it->second.data();
}
PackedWeight GpuDefense::packed(const std::string& name, const ConvShape& s, bool transposed) {
    const float* fp32 = packed_once(name, [&] {
        return transposed ? pack_conv_transpose2d_forward_weight(w(name), s) : pack_conv2d_forward_weight(w(name), s);
    });
    // The bfloat16 copy lets the convolutions with bfloat16 activations copy both operands straight
    // to shared memory (ops.cuh PackedWeight); made only where that kernel can run.
    if (activation_storage() != ActivationStorage::BF16 || math_mode() != MathMode::BF16 || gather_mode() != GatherMode::Vector)
        return fp32;
    const int64_t K = s.kernel * s.kernel * s.in_c;
    const float* bf16 = packed_once(name + " (bfloat16)", [&] { return pack_bf16(fp32, K * s.out_c); });
    // And K-major for the warpgroup-MMA kernel, where it is asked for and can run.
    if (async_tile() != AsyncTileShape::Wgmma || !wgmma_supported()) return PackedWeight(fp32, reinterpret_cast<const Bf16*>(bf16));
    const float* kmajor = packed_once(name + " (bfloat16, K-major)", [&] { return pack_bf16_kmajor(fp32, K, s.out_c); });
    return PackedWeight(fp32, reinterpret_cast<const Bf16*>(bf16), reinterpret_cast<const Bf16*>(kmajor));
}
const float* GpuDefense::packed_linear(const std::string& name, int64_t in, int64_t out) {
    return packed_once(name, [&] { return pack_linear_forward_weight(w(name), in, out); });
}

std::string GpuDefense::conv_kind(const std::string& name, const ConvShape& s, bool transposed) {
    std::string kind = name.substr(0, 3) + " ";
    if (transposed) return kind + "transposed conv 3x3/2";
    if (s.in_c == 1) return kind + "conv, 1 input channel";
    if (s.out_c == 1) return kind + "conv, 1 output channel";
    if (s.kernel == 1) return kind + "conv 1x1 (shortcut)";
    return kind + "conv 3x3/" + std::to_string(s.stride);
}

DeviceBuffer GpuDefense::res_block(ConstActivations x, int64_t B, int64_t& H, int64_t& W, int64_t cin, int64_t cout, int64_t stride,
                                   const std::string& prefix, bool shortcut, bool bf16) {
    const ConvShape s1{B, H, W, cin, cout, 3, 1, 1};
    const DeviceBuffer y1 = activations(B * H * W * cout, bf16);
    timed_conv(prefix, s1, false, [&] {
        conv2d_forward(x, w(prefix + "conv1.weight"), out(y1, bf16), s1, nullptr, w(prefix + "nolinear1.weight"), false,
                       packed(prefix + "conv1.weight", s1, false));
    });
    const ConvShape s2{B, H, W, cout, cout, 3, stride, 1};
    const int64_t Ho = conv2d_out(s2, H), Wo = conv2d_out(s2, W);
    DeviceBuffer y = activations(B * Ho * Wo * cout, bf16);
    if (shortcut) {
        const ConvShape ss{B, H, W, cin, cout, 1, stride, 0};
        timed_conv(prefix, ss, false, [&] {
            conv2d_forward(x, w(prefix + "shortcut_layer.0.weight"), out(y, bf16), ss, nullptr, nullptr, false,
                           packed(prefix + "shortcut_layer.0.weight", ss, false));
        });
    }
    timed_conv(prefix, s2, false, [&] {
        conv2d_forward(in(y1, bf16), w(prefix + "conv2.weight"), out(y, bf16), s2, nullptr, w(prefix + "nolinear2.weight"), shortcut,
                       packed(prefix + "conv2.weight", s2, false));
    });
    H = Ho;
    W = Wo;
    return y;
}

DeviceBuffer GpuDefense::up_block(ConstActivations x, int64_t B, int64_t& H, int64_t& W, int64_t cin, int64_t cout, bool last,
                                  const std::string& prefix, bool bf16) {
    const ConvShape st{B, H, W, cin, cin, 3, 2, 1, 1};
    const int64_t Ho = conv_transpose2d_out(st, H), Wo = conv_transpose2d_out(st, W);
    const DeviceBuffer y = activations(B * Ho * Wo * cin, bf16);
    timed_conv(prefix, st, true, [&] {
        conv_transpose2d_forward(x, w(prefix + "conv1.weight"), out(y, bf16), st, w(prefix + "nolinear1.weight"),
                                 packed(prefix + "conv1.weight", st, true));
    });
    const bool out_bf16 = bf16 && !last;  // the DAE's output (tanh, then the ESN stem's and the caller's input) is fp32
    DeviceBuffer result = activations(B * Ho * Wo * cout, out_bf16);
    const ConvShape s2{B, Ho, Wo, cin, cout, 3, 1, 1};
    timed_conv(prefix, s2, false, [&] {
        conv2d_forward(in(y, bf16), w(prefix + "conv2.weight"), out(result, out_bf16), s2, nullptr,
                       last ? nullptr : w(prefix + "nolinear2.weight"), false, packed(prefix + "conv2.weight", s2, false));
        if (last) tanh_forward(result.data(), result.data(), B * Ho * Wo * cout);
    });
    H = Ho;
    W = Wo;
    return result;
}

const float* GpuDefense::dae_forward(const float* x, int64_t B, bool bf16, DeviceBuffer& h) {
    // The same encoder/decoder twice; each pass starts from and ends with fp32 faces.
    ConstActivations a = x;
    int64_t H = 112, W = 112;
    for (int pass = 0; pass < 2; ++pass) {
        const int64_t enc[3][2] = {{1, 64}, {64, 128}, {128, 256}}, dec[3][2] = {{256, 128}, {128, 64}, {64, 1}};
        for (int i = 0; i < 3; ++i) {
            h = res_block(a, B, H, W, enc[i][0], enc[i][1], 2, "dae.encoder1." + std::to_string(i) + ".", false, bf16);
            a = in(h, bf16);
        }
        for (int i = 0; i < 3; ++i) {
            h = up_block(a, B, H, W, dec[i][0], dec[i][1], i == 2, "dae.decoder1." + std::to_string(i) + ".", bf16);
            a = in(h, bf16 && i < 2);
        }
    }
    return h.data();
}

void GpuDefense::dae_forward(const float* x, int64_t B, float* out) {
    DeviceBuffer h;
    copy(dae_forward(x, B, activation_storage() == ActivationStorage::BF16, h), out, B * d_);
}

void GpuDefense::forward(const float* x, int64_t B, uint64_t seed, uint64_t first_image, float* p, float* q, float* y, float* dae) {
    const bool bf16 = activation_storage() == ActivationStorage::BF16;
    DeviceBuffer h;
    const float* denoised = dae_forward(x, B, bf16, h);
    int64_t H = 112, W = 112;
    if (dae) profiler_.time("copy", [&] { copy(denoised, dae, B * d_); });
    // ESN.
    DeviceBuffer f = activations(B * H * W * 64, bf16);
    const ConvShape sin{B, H, W, 1, 64, 3, 1, 1};
    timed_conv("esn", sin, false, [&] {
        conv2d_forward(denoised, w("esn.in_layer.0.weight"), out(f, bf16), sin, nullptr, w("esn.in_layer.1.weight"), false,
                       packed("esn.in_layer.0.weight", sin, false));
    });
    const int64_t spec[8][3] = {{64, 64, 2}, {64, 64, 1}, {64, 128, 2}, {128, 128, 1}, {128, 256, 2}, {256, 256, 1}, {256, 512, 2}, {512, 512, 1}};
    for (int i = 0; i < 8; ++i)
        f = res_block(in(f, bf16), B, H, W, spec[i][0], spec[i][1], spec[i][2], "esn.block" + std::to_string(i + 1) + ".", true, bf16);
    // Head: flatten in PyTorch's (c, h, w) order, fc1 + PReLU, fc2 + sigmoid.
    const int64_t features = 512 * H * W;
    DeviceBuffer flat(static_cast<size_t>(B * features)), hidden(static_cast<size_t>(B * 512));
    profiler_.time("head (flatten, fc1, fc2)", [&] {
        nhwc_to_nchw(in(f, bf16), flat.data(), B, 512, H, W);
        linear_forward(flat.data(), w("head.fc1.1.weight"), w("head.fc1.1.bias"), hidden.data(), B, features, 512,
                       packed_linear("head.fc1.1.weight", features, 512));
        prelu_forward(hidden.data(), w("head.fc1.2.weight"), hidden.data(), B * 512, 512);
        linear_forward(hidden.data(), w("head.fc2.0.weight"), w("head.fc2.0.bias"), p, B, 512, n_,
                       packed_linear("head.fc2.0.weight", 512, n_));
        sigmoid_forward(p, p, B * n_);
    });
    // Masks and projection of the input face.
    profiler_.time("masks", [&] { sample_masks(p, q, B, n_, seed, first_image); });
    DeviceBuffer c(static_cast<size_t>(B * n_));
    profiler_.time("projection", [&] {
        project_coefficients(basis_.data(), mean_.data(), x, c.data(), B, d_, n_);
        reconstruct(basis_t_.data(), mean_.data(), c.data(), q, y, B, d_, n_);
    });
}

model::Defense::Accelerator make_accelerator(const model::Defense& defense) {
    PIN_CHECK(defense.kind() == model::DefenseKind::PIN && defense.agent() && defense.basis(),
              "cuda::make_accelerator: the GPU runs the PIN defense only");
    return make_accelerator(std::make_shared<GpuDefense>(*defense.agent(), *defense.basis()));
}

model::Defense::Accelerator make_accelerator(std::shared_ptr<GpuDefense> gpu) {
    PIN_CHECK(gpu != nullptr, "cuda::make_accelerator: no GPU defense");
    return [gpu](const Tensor& x, uint64_t seed, uint64_t first_image) {
        // Each calling thread works on its own stream, so defenses called from several threads
        // overlap on the GPU (the weights are shared, read-only).
        thread_local Stream stream;
        const StreamScope scope(stream);
        const int64_t B = x.n(), D = x.h() * x.w(), N = gpu->eigenvectors();
        DeviceBuffer gx(static_cast<size_t>(B * D)), gp(static_cast<size_t>(B * N)), gq(static_cast<size_t>(B * N)),
            gy(static_cast<size_t>(B * D));
        gx.upload(x.data(), static_cast<size_t>(B * D));
        gpu->forward(gx.data(), B, seed, first_image, gp.data(), gq.data(), gy.data());
        model::DefenseOutput out;
        out.defended = Tensor::empty(x.shape(), Layout::NHWC);
        out.p = Tensor::empty({B, N});
        out.q = Tensor::empty({B, N});
        gy.download(out.defended.data(), static_cast<size_t>(B * D));
        gp.download(out.p.data(), static_cast<size_t>(B * N));
        gq.download(out.q.data(), static_cast<size_t>(B * N));
        return out;
    };
}

}  // namespace pin::cuda
