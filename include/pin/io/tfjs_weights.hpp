// pin/io/tfjs_weights.hpp - TensorFlow.js "weights manifest" models (face-api's format): a JSON
// array of groups {paths: [bin files], weights: [{name, shape, dtype, quantization?}]}; each group's
// bin files are concatenated and hold its weights in order. Quantized weights are stored as uint8
// or uint16 codes with value = code * scale + min, or as float16; unquantized ones as float32 (or
// int32). Everything is returned as float32 tensors with the manifest's shapes (row-major).
// Every inconsistency (sizes, shapes, dtypes, truncated or oversized bins) is an error naming the
// file and the weight.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pin/core/error.hpp"
#include "pin/core/tensor.hpp"
#include "pin/io/file_util.hpp"
#include "pin/io/half.hpp"

namespace pin::io {

struct TfjsWeights {
    std::map<std::string, Tensor> tensors;  // float32, row-major, the manifest's shape
    const Tensor& at(const std::string& name, const std::string& path) const {
        auto it = tensors.find(name);
        PIN_CHECK(it != tensors.end(), path, ": no weight named '", name, "'");
        return it->second;
    }
};

// Parses a manifest given its text and a reader for the bin files it names (tests and fuzzing pass
// in-memory files; load_tfjs_weights reads them from the manifest's folder).
template <typename ReadBin>
TfjsWeights parse_tfjs_weights(const std::string& manifest_text, const std::string& path, ReadBin read_bin) {
    nlohmann::json manifest;
    try {
        manifest = nlohmann::json::parse(manifest_text);
    } catch (const std::exception& e) {
        throw Error(path + ": not valid JSON (" + e.what() + ")");
    }
    PIN_CHECK(manifest.is_array() && !manifest.empty(), path, ": a weights manifest is a non-empty JSON array of groups");
    TfjsWeights out;
    for (size_t gi = 0; gi < manifest.size(); ++gi) {
        const nlohmann::json& group = manifest[gi];
        const std::string where = path + ": group " + std::to_string(gi);
        PIN_CHECK(group.is_object() && group.contains("paths") && group["paths"].is_array() && group.contains("weights") &&
                      group["weights"].is_array(),
                  where, ": needs 'paths' and 'weights' arrays");
        std::vector<unsigned char> data;
        for (const auto& p : group["paths"]) {
            PIN_CHECK(p.is_string(), where, ": 'paths' must hold file names");
            const std::string name = p.get<std::string>();
            PIN_CHECK(!name.empty() && name.find("..") == std::string::npos && name[0] != '/', where, ": bad bin file name '",
                      name, "'");
            const std::vector<unsigned char> bytes = read_bin(name);
            data.insert(data.end(), bytes.begin(), bytes.end());
        }
        size_t offset = 0;
        for (const auto& w : group["weights"]) {
            PIN_CHECK(w.is_object() && w.contains("name") && w["name"].is_string() && w.contains("shape") && w["shape"].is_array() &&
                          w.contains("dtype") && w["dtype"].is_string(),
                      where, ": every weight needs 'name', 'shape' and 'dtype'");
            const std::string name = w["name"].get<std::string>();
            const std::string wname = path + ": weight '" + name + "'";
            PIN_CHECK(!out.tensors.count(name), wname, " appears twice");
            Shape shape;
            int64_t count = 1;
            for (const auto& d : w["shape"]) {
                PIN_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0 && d.get<int64_t>() <= (int64_t{1} << 31), wname,
                          ": bad shape entry");
                shape.push_back(d.get<int64_t>());
                count *= shape.back();
                PIN_CHECK(count <= (int64_t{1} << 31), wname, ": too many elements");
            }
            const std::string dtype = w["dtype"].get<std::string>();
            PIN_CHECK(dtype == "float32" || dtype == "int32", wname, ": dtype '", dtype, "' is not supported (float32, int32)");
            std::string qtype;
            double scale = 1, minimum = 0;
            if (w.contains("quantization")) {
                const auto& q = w["quantization"];
                PIN_CHECK(q.is_object() && q.contains("dtype") && q["dtype"].is_string(), wname, ": bad 'quantization'");
                qtype = q["dtype"].get<std::string>();
                PIN_CHECK(qtype == "uint8" || qtype == "uint16" || qtype == "float16", wname, ": quantization dtype '", qtype,
                          "' is not supported (uint8, uint16, float16)");
                if (qtype != "float16") {
                    PIN_CHECK(q.contains("scale") && q["scale"].is_number() && q.contains("min") && q["min"].is_number(), wname,
                              ": ", qtype, " quantization needs numeric 'scale' and 'min'");
                    scale = q["scale"].get<double>();
                    minimum = q["min"].get<double>();
                    PIN_CHECK(std::isfinite(scale) && std::isfinite(minimum), wname, ": non-finite quantization scale or min");
                }
            }
            const size_t elem = qtype == "uint8" ? 1 : (qtype == "uint16" || qtype == "float16") ? 2 : 4;
            const size_t bytes = static_cast<size_t>(count) * elem;
            PIN_CHECK(offset + bytes <= data.size(), wname, ": the bin files end after ", data.size(), " bytes, the weight needs ",
                      bytes, " bytes at offset ", offset, " (truncated file?)");
            Tensor t = Tensor::empty(shape.empty() ? Shape{1} : shape);
            const unsigned char* src = data.data() + offset;
            float* dst = t.data();
            for (int64_t i = 0; i < count; ++i) {
                const unsigned char* s = src + static_cast<size_t>(i) * elem;
                float v;
                if (qtype == "uint8") {
                    v = static_cast<float>(s[0] * scale + minimum);
                } else if (qtype == "uint16") {
                    v = static_cast<float>((s[0] | (s[1] << 8)) * scale + minimum);
                } else if (qtype == "float16") {
                    v = half_to_float(static_cast<uint16_t>(s[0] | (s[1] << 8)));
                } else if (dtype == "int32") {
                    int32_t k;
                    std::memcpy(&k, s, 4);
                    v = static_cast<float>(k);
                } else {
                    std::memcpy(&v, s, 4);
                }
                PIN_CHECK(std::isfinite(v), wname, ": non-finite value at element ", i);
                dst[i] = v;
            }
            offset += bytes;
            out.tensors.emplace(name, std::move(t));
        }
        PIN_CHECK(offset == data.size(), where, ": the bin files hold ", data.size(), " bytes but the weights use ", offset,
                  " (wrong bin file?)");
    }
    return out;
}

inline TfjsWeights load_tfjs_weights(const std::string& manifest_path) {
    namespace fs = std::filesystem;
    const std::vector<unsigned char> text = read_file_bytes(manifest_path);
    const fs::path dir = fs::path(manifest_path).parent_path();
    return parse_tfjs_weights(std::string(text.begin(), text.end()), manifest_path,
                              [&](const std::string& name) { return read_file_bytes((dir / name).string()); });
}

}  // namespace pin::io
