// pin/recognizer/dlib_resnet.hpp - the dlib face-recognition ResNet as shipped by face-api
// (@vladmandic/face-api 1.7.15, src/faceRecognitionNet/, model/face_recognition_model*), on our
// kernels, with the gradient of the embeddings with respect to the input face.
//
// Network (tfjs NHWC, 150 x 150 RGB in 0..255, normalised (v - mean_rgb) / 255):
//   conv 7x7/2 valid 3->32 + bias, scale, ReLU; maxpool 3/2 valid          150 -> 72 -> 35
//   3 x residual 32; residual-down 64 + 3 x residual 64;                     35 -> 17
//   residual-down 128 + 2 x residual 128; residual-down 256 + 2 x res 256;   17 -> 8 -> 4
//   residual-down 256 ("down_out"); global average; FC 256 -> 128 (no bias)   4 -> 2 -> 1
//   residual(x)      = ReLU(conv2(ReLU(conv1(x))) + x)                         3x3 "same"
//   residual-down(x) = ReLU(pad(conv2(ReLU(conv1/2(x)))) + chanpad(avgpool2(x)))  conv1 3x3/2 valid;
//     the conv branch is zero-padded at the bottom/right when pooling gives one more row/column,
//     the pooled branch with zero channels up to the output width.
// Every conv is followed by a per-channel scale layer (y * s + b): folded into the weights at load.
// Our input is the 112 x 112 gray face in [-1, 1]: upsampled bilinearly to 150 x 150 (half-pixel
// centres) and replicated to RGB. Replication and normalisation fold exactly into the first
// convolution (1 input channel, adjusted bias): its padding is "valid", so no border sees the
// constant differently.
#pragma once
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "pin/cpu/activations.hpp"
#include "pin/cpu/conv2d.hpp"
#include "pin/cpu/linear.hpp"
#include "pin/cpu/pooling.hpp"
#include "pin/io/tfjs_weights.hpp"
#include "pin/recognizer/face_recognizer.hpp"

namespace pin::recognizer {

class DlibResNet : public FaceRecognizer {
public:
    static constexpr int64_t kInput = 150;

    explicit DlibResNet(const std::string& manifest_path) : DlibResNet(io::load_tfjs_weights(manifest_path), manifest_path) {}

    DlibResNet(const io::TfjsWeights& weights, const std::string& path) {
        const float mean_rgb[3] = {122.782f, 117.001f, 104.298f};
        // Stem: 3 colour channels of the same gray value -> one channel.
        {
            const Tensor& f = weights.at("conv32_down/conv/filters", path);
            PIN_CHECK(f.shape() == Shape({7, 7, 3, 32}), path, ": conv32_down/conv/filters has shape ", shape_to_string(f.shape()),
                      ", expected (7, 7, 3, 32)");
            const std::vector<float> s = vec(weights, "conv32_down/scale/weights", 32, path);
            const std::vector<float> sb = vec(weights, "conv32_down/scale/biases", 32, path);
            const std::vector<float> b = vec(weights, "conv32_down/conv/bias", 32, path);
            stem_.w = Tensor::zeros({32, 1, 7, 7});
            stem_.b.assign(32, 0.0f);
            stem_.p = {7, 2, 0};
            for (int64_t co = 0; co < 32; ++co) {
                double shift = 0;
                for (int64_t t = 0; t < 49; ++t)
                    for (int64_t c = 0; c < 3; ++c) {
                        const double v = f.data()[(t * 3 + c) * 32 + co];
                        stem_.w.data()[co * 49 + t] += static_cast<float>(0.5 * v * s[co]);
                        shift += v * (0.5 - mean_rgb[c] / 255.0);
                    }
                stem_.b[co] = static_cast<float>((b[co] + shift) * s[co] + sb[co]);
            }
        }
        const struct {
            const char* name;
            bool down;
        } blocks[] = {{"conv32_1", false},  {"conv32_2", false},     {"conv32_3", false},  {"conv64_down", true},
                      {"conv64_1", false},  {"conv64_2", false},     {"conv64_3", false},  {"conv128_down", true},
                      {"conv128_1", false}, {"conv128_2", false},    {"conv256_down", true}, {"conv256_1", false},
                      {"conv256_2", false}, {"conv256_down_out", true}};
        for (const auto& b : blocks) {
            Block blk;
            blk.down = b.down;
            blk.c1 = conv_unit(weights, std::string(b.name) + "/conv1", b.down ? Conv2dGeometry{3, 2, 0} : Conv2dGeometry{3, 1, 1}, path);
            blk.c2 = conv_unit(weights, std::string(b.name) + "/conv2", Conv2dGeometry{3, 1, 1}, path);
            blocks_.push_back(std::move(blk));
        }
        const Tensor& fc = weights.at("fc", path);
        PIN_CHECK(fc.shape() == Shape({256, 128}), path, ": fc has shape ", shape_to_string(fc.shape()), ", expected (256, 128)");
        fc_ = Tensor::empty({128, 256});
        for (int64_t i = 0; i < 256; ++i)
            for (int64_t o = 0; o < 128; ++o) fc_.data()[o * 256 + i] = fc.data()[i * 128 + o];
        fc_bias_ = Tensor::zeros({128});
        relu_slope_.assign(256, 0.0f);
        PIN_CHECK(weights.tensors.size() == 1 + 4 + blocks_.size() * 8, path, ": ", weights.tensors.size(),
                  " weights, the face recognition net has ", 1 + 4 + blocks_.size() * 8, " (another model?)");
    }

    Tensor embed(const Tensor& faces) override { return run(faces, nullptr); }
    Tensor embed_for_gradient(const Tensor& faces) override {
        cache_ = std::make_unique<Cache>();
        return run(faces, cache_.get());
    }
    Tensor input_gradient(const Tensor& d_embeddings) override {
        PIN_CHECK(cache_, "DlibResNet::input_gradient: call embed_for_gradient first");
        Cache& c = *cache_;
        const int64_t B = c.input_shape[0];
        check_shape(d_embeddings, {B, 128}, "DlibResNet::input_gradient d_embeddings");
        Tensor d_avg = Tensor::empty({B, 256});
        cpu::linear_backward_input(d_embeddings, fc_, d_avg);
        Tensor d = cpu::global_avgpool_backward(d_avg, c.outs.back().shape());
        for (size_t i = blocks_.size(); i-- > 0;) {
            const Block& blk = blocks_[i];
            const Tensor& in = i == 0 ? c.pooled : c.outs[i - 1];
            cpu::relu_backward_inplace(c.outs[i], d);
            Tensor dx = Tensor::empty(in.shape(), Layout::NHWC);
            Tensor dh = Tensor::empty(c.hs[i].shape(), Layout::NHWC);
            if (!blk.down) {
                cpu::conv2d_backward_input(d, blk.c2.w, dh, blk.c2.p);
                cpu::relu_backward_inplace(c.hs[i], dh);
                cpu::conv2d_backward_input(dh, blk.c1.w, dx, blk.c1.p);
                cpu::add_inplace(dx, d);
            } else {
                // The conv branch saw only its own (possibly smaller) window of the output.
                const Tensor d_conv = crop(d, c.hs[i].h(), c.hs[i].w());
                cpu::conv2d_backward_input(d_conv, blk.c2.w, dh, blk.c2.p);
                cpu::relu_backward_inplace(c.hs[i], dh);
                cpu::conv2d_backward_input(dh, blk.c1.w, dx, blk.c1.p);
                const Tensor d_pool = channels(d, in.c());
                Tensor dx_pool = Tensor::empty(in.shape(), Layout::NHWC);
                cpu::avgpool2d_backward(d_pool, 2, 2, dx_pool);
                cpu::add_inplace(dx, dx_pool);
            }
            d = std::move(dx);
        }
        Tensor d_stem = Tensor::empty(c.stem.shape(), Layout::NHWC);
        cpu::maxpool2d_backward(d, c.argmax, d_stem);
        cpu::relu_backward_inplace(c.stem, d_stem);
        Tensor d_up = Tensor::empty({B, 1, kInput, kInput}, Layout::NHWC);
        cpu::conv2d_backward_input(d_stem, stem_.w, d_up, stem_.p);
        Tensor dx = Tensor::empty(c.input_shape, Layout::NHWC);
        cpu::resize_bilinear_backward(d_up, dx);
        return dx;
    }
    int64_t dim() const override { return 128; }
    std::string name() const override { return "face-api dlib ResNet (128-d)"; }

private:
    using Conv2dGeometry = cpu::Conv2dParams;
    struct ConvUnit {
        Tensor w;  // (cout, cin, k, k), scale folded in
        std::vector<float> b;
        cpu::Conv2dParams p;
    };
    struct Block {
        ConvUnit c1, c2;
        bool down = false;
    };
    struct Cache {
        Shape input_shape;
        Tensor stem, pooled;
        std::vector<int64_t> argmax;
        std::vector<Tensor> hs, outs;
    };

    static std::vector<float> vec(const io::TfjsWeights& w, const std::string& name, int64_t n, const std::string& path) {
        const Tensor& t = w.at(name, path);
        PIN_CHECK(t.numel() == n, path, ": ", name, " has ", t.numel(), " values, expected ", n);
        return std::vector<float>(t.data(), t.data() + n);
    }
    static ConvUnit conv_unit(const io::TfjsWeights& w, const std::string& prefix, const cpu::Conv2dParams& p, const std::string& path) {
        const Tensor& f = w.at(prefix + "/conv/filters", path);
        PIN_CHECK(f.rank() == 4 && f.dim(0) == p.kernel && f.dim(1) == p.kernel, path, ": ", prefix, "/conv/filters has shape ",
                  shape_to_string(f.shape()));
        const int64_t k = p.kernel, cin = f.dim(2), cout = f.dim(3);
        const std::vector<float> s = vec(w, prefix + "/scale/weights", cout, path);
        const std::vector<float> sb = vec(w, prefix + "/scale/biases", cout, path);
        const std::vector<float> b = vec(w, prefix + "/conv/bias", cout, path);
        ConvUnit u;
        u.p = p;
        u.w = Tensor::empty({cout, cin, k, k});
        u.b.resize(static_cast<size_t>(cout));
        for (int64_t co = 0; co < cout; ++co) {
            for (int64_t ci = 0; ci < cin; ++ci)
                for (int64_t t = 0; t < k * k; ++t)
                    u.w.data()[(co * cin + ci) * k * k + t] = f.data()[(t * cin + ci) * cout + co] * s[co];
            u.b[co] = b[co] * s[co] + sb[co];
        }
        return u;
    }
    static Tensor crop(const Tensor& d, int64_t h, int64_t w) {
        if (d.h() == h && d.w() == w) return d;
        Tensor out = Tensor::empty({d.n(), d.c(), h, w}, Layout::NHWC);
        const int64_t C = d.c();
        for (int64_t n = 0; n < d.n(); ++n)
            for (int64_t y = 0; y < h; ++y)
                std::copy(d.data() + ((n * d.h() + y) * d.w()) * C, d.data() + ((n * d.h() + y) * d.w() + w) * C,
                          out.data() + ((n * h + y) * w) * C);
        return out;
    }
    static Tensor channels(const Tensor& d, int64_t c) {
        if (d.c() == c) return d;
        Tensor out = Tensor::empty({d.n(), c, d.h(), d.w()}, Layout::NHWC);
        const int64_t P = d.n() * d.h() * d.w();
        for (int64_t p = 0; p < P; ++p) std::copy(d.data() + p * d.c(), d.data() + p * d.c() + c, out.data() + p * c);
        return out;
    }
    Tensor conv(const Tensor& x, const ConvUnit& u, bool relu, Tensor* accumulate_into = nullptr) const {
        cpu::ConvEpilogue ep;
        ep.bias = u.b.data();
        ep.prelu_slope = relu ? relu_slope_.data() : nullptr;
        ep.accumulate = accumulate_into != nullptr;
        Tensor y = accumulate_into ? *accumulate_into
                                   : Tensor::empty({x.n(), u.w.dim(0), cpu::conv2d_output_size(x.h(), u.p), cpu::conv2d_output_size(x.w(), u.p)},
                                                   Layout::NHWC);
        cpu::conv2d_forward(x, u.w, y, u.p, ep);
        return y;
    }

    Tensor run(const Tensor& faces, Cache* cache) const {
        const int64_t B = faces.n();
        check_shape(faces, {B, 1, 112, 112}, "DlibResNet input");
        for (int64_t i = 0; i < faces.numel(); ++i)
            PIN_CHECK(std::isfinite(faces.data()[i]), "DlibResNet: face ", i / 12544, " holds a non-finite value at pixel ", i % 12544);
        const Tensor x = faces.reshape(faces.shape(), Layout::NHWC);  // one channel: same memory
        Tensor up = Tensor::empty({B, 1, kInput, kInput}, Layout::NHWC);
        cpu::resize_bilinear_forward(x, up);
        Tensor stem = conv(up, stem_, true);
        Tensor h = Tensor::empty({B, 32, cpu::pool_output_size(stem.h(), 3, 2), cpu::pool_output_size(stem.w(), 3, 2)}, Layout::NHWC);
        cpu::maxpool2d_forward(stem, 3, 2, h, cache ? &cache->argmax : nullptr);
        if (cache) {
            cache->input_shape = faces.shape();
            cache->stem = stem;
            cache->pooled = h;
        }
        for (const Block& blk : blocks_) {
            const Tensor a = conv(h, blk.c1, true);
            Tensor out;
            if (!blk.down) {
                out = Tensor::empty(h.shape(), Layout::NHWC);
                std::copy(h.data(), h.data() + h.numel(), out.data());
                conv(a, blk.c2, false, &out);
            } else {
                const Tensor branch = conv(a, blk.c2, false);
                const int64_t cout = branch.c(), cin = h.c();
                const int64_t Hp = cpu::pool_output_size(h.h(), 2, 2), Wp = cpu::pool_output_size(h.w(), 2, 2);
                PIN_CHECK(Hp >= branch.h() && Wp >= branch.w() && cout >= cin, "DlibResNet: unexpected residual-down geometry");
                Tensor pooled = Tensor::empty({B, cin, Hp, Wp}, Layout::NHWC);
                cpu::avgpool2d_forward(h, 2, 2, pooled);
                out = Tensor::zeros({B, cout, Hp, Wp}, Layout::NHWC);
                for (int64_t n = 0; n < B; ++n)
                    for (int64_t y = 0; y < Hp; ++y)
                        for (int64_t xq = 0; xq < Wp; ++xq) {
                            float* o = out.data() + ((n * Hp + y) * Wp + xq) * cout;
                            const float* pp = pooled.data() + ((n * Hp + y) * Wp + xq) * cin;
                            for (int64_t c = 0; c < cin; ++c) o[c] = pp[c];
                            if (y < branch.h() && xq < branch.w()) {
                                const float* bp = branch.data() + ((n * branch.h() + y) * branch.w() + xq) * cout;
                                for (int64_t c = 0; c < cout; ++c) o[c] += bp[c];
                            }
                        }
            }
            cpu::relu_inplace(out);
            if (cache) {
                cache->hs.push_back(a);
                cache->outs.push_back(out);
            }
            h = std::move(out);
        }
        const Tensor avg = cpu::global_avgpool_forward(h);
        Tensor e = Tensor::empty({B, 128});
        cpu::linear_forward(avg, fc_, fc_bias_, e);
        return e;
    }

    ConvUnit stem_;
    std::vector<Block> blocks_;
    Tensor fc_, fc_bias_;
    std::vector<float> relu_slope_;
    std::unique_ptr<Cache> cache_;
};

}  // namespace pin::recognizer
