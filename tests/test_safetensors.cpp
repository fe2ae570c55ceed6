// safetensors: round trips, conversions, and a clear error for every malformed input.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <unistd.h>
#include <string>

#include "helpers.hpp"
#include "pin/io/half.hpp"
#include "pin/io/safetensors.hpp"
#include "pin/io/state_dict.hpp"
#include "pin/nn/layers.hpp"

using namespace pin;
using namespace pin::test;

namespace {
std::string temp_path(const std::string& name) { return "/tmp/pin_test_" + std::to_string(::getpid()) + "_" + name; }

std::vector<unsigned char> make_file(const std::string& header_json, const std::vector<unsigned char>& data,
                                     int64_t header_len_override = -1) {
    std::vector<unsigned char> out(8);
    const uint64_t n = header_len_override >= 0 ? static_cast<uint64_t>(header_len_override) : header_json.size();
    for (int i = 0; i < 8; ++i) out[i] = static_cast<unsigned char>(n >> (8 * i));
    out.insert(out.end(), header_json.begin(), header_json.end());
    out.insert(out.end(), data.begin(), data.end());
    return out;
}
std::string parse_error(const std::vector<unsigned char>& bytes) {
    try {
        io::parse_safetensors(bytes.data(), bytes.size(), "model.safetensors");
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}
}  // namespace

TEST_CASE("half <-> float conversions are exact and round to nearest even", "[io][half]") {
    for (uint32_t h = 0; h < 65536; ++h) {
        const float f = io::half_to_float(static_cast<uint16_t>(h));
        if (std::isnan(f)) {
            REQUIRE(std::isnan(io::half_to_float(io::float_to_half(f))));
            continue;
        }
        REQUIRE(io::float_to_half(f) == h);
    }
    REQUIRE(io::half_to_float(io::float_to_half(1.0f)) == 1.0f);
    REQUIRE(io::half_to_float(io::float_to_half(65504.0f)) == 65504.0f);
    REQUIRE(std::isinf(io::half_to_float(io::float_to_half(70000.0f))));
    REQUIRE(io::half_to_float(io::float_to_half(1.0f + 1.0f / 2048)) == 1.0f);  // tie -> even
    REQUIRE(io::half_to_float(io::float_to_half(1.0f + 3.0f / 2048)) == 1.0f + 4.0f / 2048);
    REQUIRE(io::half_to_float(io::float_to_half(5.96046448e-08f)) == 5.96046448e-08f);  // smallest subnormal
    // Against a double reference on random values: the nearest half.
    const PhiloxStream rng(3, 3);
    for (uint64_t i = 0; i < 100000; ++i) {
        const float f = std::ldexp(rng.uniform(i) - 0.5f, static_cast<int>(rng.bits(i + 1000000) % 40) - 28);
        const float r = io::half_to_float(io::float_to_half(f));
        const float up = io::half_to_float(static_cast<uint16_t>(io::float_to_half(f) + 1));
        REQUIRE(std::fabs(static_cast<double>(r) - f) <= std::fabs(static_cast<double>(up) - f) + 1e-30);
    }
    REQUIRE(io::bfloat16_to_float(0x3f80) == 1.0f);
}

TEST_CASE("safetensors round trip: F32 exact, F16 within half precision, metadata kept", "[io][safetensors]") {
    const Tensor a = random_tensor({3, 5, 2, 7}, 1), b = random_tensor({11}, 2), c = random_tensor({4, 6}, 3);
    const Tensor nhwc = random_tensor({2, 3, 4, 5}, 4, 1.0f, Layout::NHWC);
    const std::string path = temp_path("round.safetensors");
    io::write_safetensors(path, {{"a", a}, {"b", b, io::StoredType::F16}, {"c", c}, {"act", nhwc}}, {{"format", "pt"}});
    const auto back = io::read_safetensors(path);
    REQUIRE(back.metadata.at("format") == "pt");
    REQUIRE(bitwise_equal(back.at("a"), a));
    REQUIRE(back.stored.at("b") == io::StoredType::F16);
    for (int64_t i = 0; i < b.numel(); ++i) REQUIRE(back.at("b").data()[i] == Approx(b.data()[i]).epsilon(1e-3));
    REQUIRE(bitwise_equal(back.at("act"), nhwc.to_layout(Layout::NCHW)));  // written in NCHW order
    REQUIRE(back.at("a").shape() == a.shape());
    REQUIRE_THROWS_WITH(back.at("zzz", path), Catch::Contains("no tensor named 'zzz'"));
    std::remove(path.c_str());
}

TEST_CASE("safetensors reads F64 and BF16, and the header offsets as written by other tools", "[io][safetensors]") {
    std::vector<unsigned char> data;
    const double d[2] = {1.5, -2.25};
    data.insert(data.end(), reinterpret_cast<const unsigned char*>(d), reinterpret_cast<const unsigned char*>(d) + 16);
    data.push_back(0x80);  // bf16 1.0 = 0x3f80, little endian
    data.push_back(0x3f);
    const std::string header =
        R"({"x":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},"y":{"dtype":"BF16","shape":[1,1],"data_offsets":[16,18]}})";
    const auto bytes = make_file(header, data);
    const auto c = io::parse_safetensors(bytes.data(), bytes.size(), "mem");
    REQUIRE(c.at("x").data()[0] == 1.5f);
    REQUIRE(c.at("x").data()[1] == -2.25f);
    REQUIRE(c.at("y").data()[0] == 1.0f);
}

TEST_CASE("malformed safetensors files give errors naming the file and the problem", "[io][safetensors][errors]") {
    const std::vector<unsigned char> four(16, 0);
    const std::string ok = R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
    REQUIRE(parse_error(make_file(ok, four)).empty());
    REQUIRE_THAT(parse_error({1, 2, 3}), Catch::Contains("model.safetensors") && Catch::Contains("shorter than"));
    REQUIRE_THAT(parse_error(make_file(ok, four, 1 << 20)), Catch::Contains("header length 1048576 is larger than the file"));
    REQUIRE_THAT(parse_error(make_file("{not json", four)), Catch::Contains("not valid JSON"));
    REQUIRE_THAT(parse_error(make_file("[1,2]", four)), Catch::Contains("not a JSON object"));
    REQUIRE_THAT(parse_error(make_file(R"({"w":{"dtype":"I8","shape":[16],"data_offsets":[0,16]}})", four)),
                 Catch::Contains("has dtype I8"));
    REQUIRE_THAT(parse_error(make_file(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}})", four)),
                 Catch::Contains("needs 24 bytes, data_offsets give 16"));
    REQUIRE_THAT(parse_error(make_file(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,32]}})", four)),
                 Catch::Contains("outside the data section") && Catch::Contains("truncated"));
    REQUIRE_THAT(parse_error(make_file(R"({"w":{"dtype":"F32","shape":[-2,2],"data_offsets":[0,16]}})", four)),
                 Catch::Contains("not a non-negative integer"));
    REQUIRE_THAT(parse_error(make_file(R"({"w":{"dtype":"F32","shape":[4]}})", four)), Catch::Contains("lacks dtype"));
    REQUIRE_THAT(parse_error(make_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[8,0]}})", four)),
                 Catch::Contains("outside the data section"));
    REQUIRE_THAT(parse_error(make_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,16]}})", four)),
                 Catch::Contains("absurdly large"));
    REQUIRE_THROWS_WITH(io::read_safetensors("/nonexistent/dir/model.safetensors"),
                        Catch::Contains("/nonexistent/dir/model.safetensors: cannot open"));
}

TEST_CASE("module parameters load by state_dict name with strict checks", "[io][state_dict]") {
    nn::Linear layer(3, 2);
    layer.reset_parameters(5, 0);
    const std::string path = temp_path("linear.safetensors");
    io::write_safetensors(path, io::parameter_entries(layer.parameters(), "fc."));
    nn::Linear other(3, 2);
    const auto contents = io::read_safetensors(path);
    io::load_parameters(other.parameters(), contents, path, "fc.");
    REQUIRE(bitwise_equal(other.weight().value, layer.weight().value));
    REQUIRE(bitwise_equal(other.bias().value, layer.bias().value));

    nn::Linear wrong(4, 2);
    REQUIRE_THROWS_WITH(io::load_parameters(wrong.parameters(), contents, path, "fc."),
                        Catch::Contains("'fc.weight' has shape (2, 3), the model expects (2, 4)"));
    REQUIRE_THROWS_WITH(io::load_parameters(other.parameters(), contents, path, "head."),
                        Catch::Contains("missing tensors: head.weight, head.bias"));
    io::write_safetensors(path, {{"fc.weight", layer.weight().value}, {"fc.bias", layer.bias().value},
                                 {"fc.extra", random_tensor({2}, 9)}});
    REQUIRE_THROWS_WITH(io::load_parameters(other.parameters(), io::read_safetensors(path), path, "fc."),
                        Catch::Contains("unexpected tensors: fc.extra"));
    Tensor bad = layer.weight().value.clone();
    bad.data()[4] = std::nanf("");
    io::write_safetensors(path, {{"fc.weight", bad}, {"fc.bias", layer.bias().value}});
    REQUIRE_THROWS_WITH(io::load_parameters(other.parameters(), io::read_safetensors(path), path, "fc."),
                        Catch::Contains("non-finite value") && Catch::Contains("element 4"));
    std::remove(path.c_str());
}
