// Face image I/O (stb) and the sampling modes.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <unistd.h>

#include "helpers.hpp"
#include "pin/io/image.hpp"
#include "pin/model/sampling.hpp"

using namespace pin;
using namespace pin::test;

namespace {
std::string temp_path(const std::string& name) { return "/tmp/pin_img_" + std::to_string(::getpid()) + "_" + name; }
}

TEST_CASE("gray PNG round trip within 8-bit quantisation", "[io][image]") {
    const Tensor face = random_tensor({112 * 112}, 1, 0.5f);
    std::vector<float> px(face.data(), face.data() + face.numel());
    for (float& v : px) v = std::clamp(v, -1.0f, 1.0f);
    const std::string path = temp_path("face.png");
    io::write_face_png(path, px.data(), 112);
    const io::FaceImage back = io::load_face_image(path);
    REQUIRE(back.size == 112);
    REQUIRE_FALSE(back.resized);
    REQUIRE_FALSE(back.converted_to_gray);
    REQUIRE(back.source_channels == 1);
    for (size_t i = 0; i < px.size(); ++i) REQUIRE(std::fabs(back.pixels[i] - px[i]) <= 0.5f / 127.5f + 1e-6f);
    std::remove(path.c_str());
}

TEST_CASE("colour images become ITU-R 601 luma, other sizes are resized", "[io][image]") {
    const int w = 150, h = 150;
    std::vector<unsigned char> rgb(static_cast<size_t>(w) * h * 3);
    for (int i = 0; i < w * h; ++i) {
        rgb[3 * i] = static_cast<unsigned char>(i % 251);
        rgb[3 * i + 1] = static_cast<unsigned char>((i / 7) % 256);
        rgb[3 * i + 2] = 200;
    }
    const std::string path = temp_path("colour.png");
    REQUIRE(stbi_write_png(path.c_str(), w, h, 3, rgb.data(), w * 3) != 0);
    const io::FaceImage face = io::load_face_image(path);
    REQUIRE(face.converted_to_gray);
    REQUIRE(face.resized);
    REQUIRE(face.source_width == 150);
    REQUIRE(face.pixels.size() == 112u * 112u);
    // The same picture at 112 x 112 converts pixel for pixel.
    REQUIRE(stbi_write_png(path.c_str(), 112, 112, 3, rgb.data(), 112 * 3) != 0);
    const io::FaceImage same = io::load_face_image(path);
    REQUIRE_FALSE(same.resized);
    for (int i = 0; i < 112 * 112; ++i) {
        const double luma = 0.299 * rgb[3 * i] + 0.587 * rgb[3 * i + 1] + 0.114 * rgb[3 * i + 2];
        REQUIRE(same.pixels[static_cast<size_t>(i)] == Approx(luma / 127.5 - 1.0).margin(1e-5));
    }
    std::remove(path.c_str());
}

TEST_CASE("resizing keeps flat images flat and ramps linear", "[io][image]") {
    std::vector<float> flat(200 * 180, 0.25f), ramp(224 * 224);
    for (int y = 0; y < 224; ++y)
        for (int x = 0; x < 224; ++x) ramp[static_cast<size_t>(y) * 224 + x] = static_cast<float>(x);
    const auto f = io::detail::resize_bilinear(flat, 200, 180, 112, 112);
    for (float v : f) REQUIRE(v == Approx(0.25f));
    const auto r = io::detail::resize_bilinear(ramp, 224, 224, 112, 112);
    for (int x = 1; x < 111; ++x) REQUIRE(r[static_cast<size_t>(50) * 112 + x] == Approx(2.0 * x + 0.5).margin(1e-3));
}

TEST_CASE("unreadable images give errors naming the file", "[io][image][errors]") {
    const std::string empty = temp_path("empty.png"), text = temp_path("notes.png");
    { std::ofstream(empty, std::ios::binary); }
    { std::ofstream(text) << "this is not an image"; }
    REQUIRE_THROWS_WITH(io::load_face_image(empty), Catch::Contains(empty + ": empty file"));
    REQUIRE_THROWS_WITH(io::load_face_image(text), Catch::Contains(text + ": not a readable image"));
    REQUIRE_THROWS_WITH(io::load_face_image("/no/such/face.png"), Catch::Contains("/no/such/face.png: cannot open"));
    std::remove(empty.c_str());
    std::remove(text.c_str());
}

TEST_CASE("a PNG with empty IDAT chunks decodes like the same PNG without them", "[io][image]") {
    // stb_image memcpy's from a null buffer for a leading zero-length IDAT (UB found by fuzzing);
    // the loader drops such chunks, which hold no data.
    std::vector<unsigned char> gray(37 * 23);
    for (size_t i = 0; i < gray.size(); ++i) gray[i] = static_cast<unsigned char>((i * 37) % 251);
    int len = 0;
    unsigned char* png = stbi_write_png_to_mem(gray.data(), 37, 37, 23, 1, &len);
    REQUIRE(png);
    std::vector<unsigned char> plain(png, png + len);
    STBIW_FREE(png);
    // Insert two empty IDATs (length 0, type, CRC) after IHDR (8 signature + 25 bytes) and one before IEND.
    const unsigned char empty_idat[12] = {0, 0, 0, 0, 'I', 'D', 'A', 'T', 0x35, 0xaf, 0x06, 0x1e};
    std::vector<unsigned char> padded(plain.begin(), plain.begin() + 33);
    padded.insert(padded.end(), empty_idat, empty_idat + 12);
    padded.insert(padded.end(), empty_idat, empty_idat + 12);
    padded.insert(padded.end(), plain.begin() + 33, plain.end() - 12);
    padded.insert(padded.end(), empty_idat, empty_idat + 12);
    padded.insert(padded.end(), plain.end() - 12, plain.end());
    REQUIRE(io::detail::png_without_empty_idat(plain.data(), plain.size()).empty());
    REQUIRE(io::detail::png_without_empty_idat(padded.data(), padded.size()) == plain);
    const io::FaceImage a = io::decode_face_image(plain.data(), plain.size(), "plain.png");
    const io::FaceImage b = io::decode_face_image(padded.data(), padded.size(), "padded.png");
    REQUIRE(a.source_width == 37);
    REQUIRE(a.pixels == b.pixels);
}

TEST_CASE("sampling modes", "[model][sampling]") {
    const int64_t B = 4, N = 3000;
    Tensor p = Tensor::empty({B, N});
    const PhiloxStream rng(5, 5);
    for (int64_t i = 0; i < p.numel(); ++i) p.data()[i] = rng.uniform(static_cast<uint64_t>(i));
    Tensor q = Tensor::empty({B, N});

    // Bernoulli: frequency follows p; a mask depends only on (seed, image index).
    model::sample_mask(p, model::SamplingMode::Bernoulli, 42, 100, q);
    double agree = 0;
    for (int64_t i = 0; i < q.numel(); ++i) {
        REQUIRE((q.data()[i] == 0.0f || q.data()[i] == 1.0f));
        agree += q.data()[i] * p.data()[i] + (1 - q.data()[i]) * (1 - p.data()[i]);
    }
    // E[agreement] = E[p^2 + (1-p)^2] = 2/3 for uniform p.
    REQUIRE(agree / q.numel() == Approx(2.0 / 3.0).margin(0.01));
    Tensor half = Tensor::empty({2, N});
    model::sample_mask(p.slice(2, 4), model::SamplingMode::Bernoulli, 42, 102, half);
    for (int64_t i = 0; i < 2 * N; ++i) REQUIRE(half.data()[i] == q.data()[2 * N + i]);
    Tensor other = Tensor::empty({B, N});
    model::sample_mask(p, model::SamplingMode::Bernoulli, 43, 100, other);
    REQUIRE_FALSE(bitwise_equal(other, q));

    model::sample_mask(p, model::SamplingMode::Threshold, 0, 0, q);
    for (int64_t i = 0; i < q.numel(); ++i) REQUIRE(q.data()[i] == (p.data()[i] > 0.5f ? 1.0f : 0.0f));
    model::sample_mask(p, model::SamplingMode::MeanThreshold, 0, 0, q);
    for (int64_t b = 0; b < B; ++b) {
        double mean = 0;
        for (int64_t j = 0; j < N; ++j) mean += p.data()[b * N + j];
        mean /= N;
        for (int64_t j = 0; j < N; ++j) REQUIRE(q.data()[b * N + j] == (p.data()[b * N + j] > mean ? 1.0f : 0.0f));
    }
    model::sample_mask(p, model::SamplingMode::Expectation, 0, 0, q);
    REQUIRE(bitwise_equal(p, q));
    REQUIRE(model::parse_sampling_mode("mean-threshold") == model::SamplingMode::MeanThreshold);
    REQUIRE_THROWS_WITH(model::parse_sampling_mode("random"), Catch::Contains("unknown sampling mode 'random'"));
}
