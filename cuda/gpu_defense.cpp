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

const float* GpuDefense::packed(const std::string& name, const ConvShape& s, bool transposed) {
    // Calls may come from several threads, each on its own stream: pack under the lock and let the
    // packing finish before another stream can read the result.
    std::lock_guard<std::mutex> lock(packed_mutex_);
    auto it = packed_.find(name);
    if (it == packed_.end()) {
        DeviceBuffer b = transposed ? pack_conv_transpose2d_forward_weight(w(name), s) : pack_conv2d_forward_weight(w(name), s);
        synchronize_stream("GpuDefense: packing a weight");
        it = packed_.emplace(name, std::move(b)).first;
    }
    return it->second.data();
}

DeviceBuffer GpuDefense::res_block(const float* x, int64_t B, int64_t& H, int64_t& W, int64_t cin, int64_t cout, int64_t stride,
                                   const std::string& prefix, bool shortcut) {
    const ConvShape s1{B, H, W, cin, cout, 3, 1, 1};
    DeviceBuffer y1(static_cast<size_t>(B * H * W * cout));
    conv2d_forward(x, w(prefix + "conv1.weight"), y1.data(), s1, nullptr, w(prefix + "nolinear1.weight"), false,
                   packed(prefix + "conv1.weight", s1, false));
    const ConvShape s2{B, H, W, cout, cout, 3, stride, 1};
    const int64_t Ho = conv2d_out(s2, H), Wo = conv2d_out(s2, W);
    DeviceBuffer out(static_cast<size_t>(B * Ho * Wo * cout));
    if (shortcut) {
        const ConvShape ss{B, H, W, cin, cout, 1, stride, 0};
        conv2d_forward(x, w(prefix + "shortcut_layer.0.weight"), out.data(), ss, nullptr, nullptr, false,
                       packed(prefix + "shortcut_layer.0.weight", ss, false));
    }
    conv2d_forward(y1.data(), w(prefix + "conv2.weight"), out.data(), s2, nullptr, w(prefix + "nolinear2.weight"), shortcut,
                   packed(prefix + "conv2.weight", s2, false));
    H = Ho;
    W = Wo;
    return out;
}

DeviceBuffer GpuDefense::up_block(const float* x, int64_t B, int64_t& H, int64_t& W, int64_t cin, int64_t cout, bool last,
                                  const std::string& prefix) {
    const ConvShape st{B, H, W, cin, cin, 3, 2, 1, 1};
    const int64_t Ho = conv_transpose2d_out(st, H), Wo = conv_transpose2d_out(st, W);
    DeviceBuffer y(static_cast<size_t>(B * Ho * Wo * cin));
    conv_transpose2d_forward(x, w(prefix + "conv1.weight"), y.data(), st, w(prefix + "nolinear1.weight"),
                             packed(prefix + "conv1.weight", st, true));
    DeviceBuffer out(static_cast<size_t>(B * Ho * Wo * cout));
    const ConvShape s2{B, Ho, Wo, cin, cout, 3, 1, 1};
    conv2d_forward(y.data(), w(prefix + "conv2.weight"), out.data(), s2, nullptr, last ? nullptr : w(prefix + "nolinear2.weight"), false,
                   packed(prefix + "conv2.weight", s2, false));
    if (last) tanh_forward(out.data(), out.data(), B * Ho * Wo * cout);
    H = Ho;
    W = Wo;
    return out;
}

const float* GpuDefense::dae_forward(const float* x, int64_t B, DeviceBuffer& h) {
    // The same encoder/decoder twice.
    const float* in = x;
    int64_t H = 112, W = 112;
    for (int pass = 0; pass < 2; ++pass) {
        const int64_t enc[3][2] = {{1, 64}, {64, 128}, {128, 256}}, dec[3][2] = {{256, 128}, {128, 64}, {64, 1}};
        for (int i = 0; i < 3; ++i) {
            h = res_block(in, B, H, W, enc[i][0], enc[i][1], 2, "dae.encoder1." + std::to_string(i) + ".", false);
            in = h.data();
        }
        for (int i = 0; i < 3; ++i) {
            h = up_block(in, B, H, W, dec[i][0], dec[i][1], i == 2, "dae.decoder1." + std::to_string(i) + ".");
            in = h.data();
        }
    }
    return in;
}

void GpuDefense::dae_forward(const float* x, int64_t B, float* out) {
    DeviceBuffer h;
    copy(dae_forward(x, B, h), out, B * d_);
}

void GpuDefense::forward(const float* x, int64_t B, uint64_t seed, uint64_t first_image, float* p, float* q, float* y, float* dae) {
    DeviceBuffer h;
    const float* in = dae_forward(x, B, h);
    int64_t H = 112, W = 112;
    if (dae) copy(in, dae, B * d_);
    // ESN.
    DeviceBuffer f(static_cast<size_t>(B * H * W * 64));
    const ConvShape sin{B, H, W, 1, 64, 3, 1, 1};
    conv2d_forward(in, w("esn.in_layer.0.weight"), f.data(), sin, nullptr, w("esn.in_layer.1.weight"), false,
                   packed("esn.in_layer.0.weight", sin, false));
    const int64_t spec[8][3] = {{64, 64, 2}, {64, 64, 1}, {64, 128, 2}, {128, 128, 1}, {128, 256, 2}, {256, 256, 1}, {256, 512, 2}, {512, 512, 1}};
    for (int i = 0; i < 8; ++i) f = res_block(f.data(), B, H, W, spec[i][0], spec[i][1], spec[i][2], "esn.block" + std::to_string(i + 1) + ".", true);
    // Head: flatten in PyTorch's (c, h, w) order, fc1 + PReLU, fc2 + sigmoid.
    const int64_t features = 512 * H * W;
    DeviceBuffer flat(static_cast<size_t>(B * features)), hidden(static_cast<size_t>(B * 512));
    nhwc_to_nchw(f.data(), flat.data(), B, 512, H, W);
    linear_forward(flat.data(), w("head.fc1.1.weight"), w("head.fc1.1.bias"), hidden.data(), B, features, 512);
    prelu_forward(hidden.data(), w("head.fc1.2.weight"), hidden.data(), B * 512, 512);
    linear_forward(hidden.data(), w("head.fc2.0.weight"), w("head.fc2.0.bias"), p, B, 512, n_);
    sigmoid_forward(p, p, B * n_);
    // Masks and projection of the input face.
    sample_masks(p, q, B, n_, seed, first_image);
    DeviceBuffer c(static_cast<size_t>(B * n_));
    project_coefficients(basis_.data(), mean_.data(), x, c.data(), B, d_, n_);
    reconstruct(basis_t_.data(), mean_.data(), c.data(), q, y, B, d_, n_);
}

model::Defense::Accelerator make_accelerator(const model::Defense& defense) {
    PIN_CHECK(defense.kind() == model::DefenseKind::PIN && defense.agent() && defense.basis(),
              "cuda::make_accelerator: the GPU runs the PIN defense only");
    auto gpu = std::make_shared<GpuDefense>(*defense.agent(), *defense.basis());
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
