// pin/io/safetensors.hpp - reading and writing safetensors files (the format of Hugging Face's
// `safetensors`, which PyTorch users read and write with one call).
//
// Layout: 8 bytes little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [d0, ...], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value"}}
// then the raw little-endian tensor data; offsets are relative to the end of the header.
// Every tensor is returned as float32 (F16, BF16 and F64 are converted). Every malformed input
// is an Error whose message names the file and what is wrong; nothing is read out of bounds.
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "pin/core/error.hpp"
#include "pin/core/tensor.hpp"
#include "pin/io/file_util.hpp"
#include "pin/io/half.hpp"

namespace pin::io {

enum class StoredType { F32, F16, BF16, F64 };

inline const char* stored_type_name(StoredType t) {
    switch (t) {
        case StoredType::F32: return "F32";
        case StoredType::F16: return "F16";
        case StoredType::BF16: return "BF16";
        case StoredType::F64: return "F64";
    }
    return "?";
}
inline size_t stored_type_size(StoredType t) {
    return t == StoredType::F64 ? 8 : t == StoredType::F32 ? 4 : 2;
}

struct SafetensorsContents {
    std::map<std::string, Tensor> tensors;       // float32, row-major, rank-4 ones Layout::NCHW
    std::map<std::string, StoredType> stored;    // the dtype each tensor had in the file
    std::map<std::string, std::string> metadata;

    const Tensor& at(const std::string& name, const std::string& path = "") const {
        auto it = tensors.find(name);
        PIN_CHECK(it != tensors.end(), path.empty() ? "safetensors" : path, ": no tensor named '", name, "'");
        return it->second;
    }
};

namespace detail {
inline uint64_t read_u64_le(const unsigned char* p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
    return v;
}
inline bool host_is_little_endian() {
    const uint16_t one = 1;
    unsigned char b;
    std::memcpy(&b, &one, 1);
    return b == 1;
}
}  // namespace detail

// Parses safetensors bytes; `path` only names the source in error messages.
inline SafetensorsContents parse_safetensors(const unsigned char* data, size_t size, const std::string& path) {
    PIN_CHECK(detail::host_is_little_endian(), path, ": safetensors reading needs a little-endian host");
    PIN_CHECK(size >= 8, path, ": not a safetensors file (", size, " bytes, shorter than the 8-byte header length)");
    const uint64_t header_len = detail::read_u64_le(data);
    PIN_CHECK(header_len <= size - 8, path, ": header length ", header_len, " is larger than the file (", size,
              " bytes)");
    PIN_CHECK(header_len >= 2, path, ": header length ", header_len, " is too small for a JSON object");
    const char* hbegin = reinterpret_cast<const char*>(data + 8);
    nlohmann::json header;
    try {
        header = nlohmann::json::parse(hbegin, hbegin + header_len);
    } catch (const nlohmann::json::exception& e) {
        PIN_CHECK(false, path, ": header is not valid JSON (", e.what(), ")");
    }
    PIN_CHECK(header.is_object(), path, ": header is not a JSON object");
    const unsigned char* buffer = data + 8 + header_len;
    const uint64_t buffer_size = size - 8 - header_len;

    SafetensorsContents out;
    for (auto it = header.begin(); it != header.end(); ++it) {
        const std::string& name = it.key();
        const nlohmann::json& entry = it.value();
        if (name == "__metadata__") {
            PIN_CHECK(entry.is_object(), path, ": __metadata__ is not an object");
            for (auto m = entry.begin(); m != entry.end(); ++m) {
                PIN_CHECK(m.value().is_string(), path, ": __metadata__ value of '", m.key(), "' is not a string");
                out.metadata[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        PIN_CHECK(entry.is_object() && entry.contains("dtype") && entry.contains("shape") &&
                      entry.contains("data_offsets"),
                  path, ": tensor '", name, "' lacks dtype, shape or data_offsets");
        PIN_CHECK(entry["dtype"].is_string(), path, ": tensor '", name, "': dtype is not a string");
        const std::string dtype = entry["dtype"].get<std::string>();
        StoredType type;
        if (dtype == "F32") type = StoredType::F32;
        else if (dtype == "F16") type = StoredType::F16;
        else if (dtype == "BF16") type = StoredType::BF16;
        else if (dtype == "F64") type = StoredType::F64;
        else PIN_CHECK(false, path, ": tensor '", name, "' has dtype ", dtype, "; pin reads F32, F16, BF16 and F64");
        PIN_CHECK(entry["shape"].is_array() && entry["shape"].size() <= 8, path, ": tensor '", name,
                  "': shape is not an array of at most 8 dimensions");
        Shape shape;
        uint64_t count = 1;
        for (const auto& d : entry["shape"]) {
            PIN_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0), path, ": tensor '",
                      name, "': shape has a dimension that is not a non-negative integer");
            const uint64_t v = d.get<uint64_t>();
            PIN_CHECK(v == 0 || count <= std::numeric_limits<uint64_t>::max() / 16 / v, path, ": tensor '", name,
                      "': shape is absurdly large");
            count *= v;
            shape.push_back(static_cast<int64_t>(v));
        }
        const auto& offs = entry["data_offsets"];
        PIN_CHECK(offs.is_array() && offs.size() == 2 && offs[0].is_number_unsigned() && offs[1].is_number_unsigned(),
                  path, ": tensor '", name, "': data_offsets must be two non-negative integers");
        const uint64_t begin = offs[0].get<uint64_t>(), end = offs[1].get<uint64_t>();
        PIN_CHECK(begin <= end && end <= buffer_size, path, ": tensor '", name, "': data [", begin, ", ", end,
                  ") lies outside the data section (", buffer_size, " bytes; the file may be truncated)");
        const uint64_t want = count * stored_type_size(type);
        PIN_CHECK(end - begin == want, path, ": tensor '", name, "': shape ", shape_to_string(shape), " of ", dtype,
                  " needs ", want, " bytes, data_offsets give ", end - begin);
        Tensor t = Tensor::empty(shape);
        float* dst = t.data();
        const unsigned char* src = buffer + begin;
        switch (type) {
            case StoredType::F32: std::memcpy(dst, src, want); break;
            case StoredType::F64:
                for (uint64_t i = 0; i < count; ++i) {
                    double v;
                    std::memcpy(&v, src + 8 * i, 8);
                    dst[i] = static_cast<float>(v);
                }
                break;
            case StoredType::F16:
            case StoredType::BF16:
                for (uint64_t i = 0; i < count; ++i) {
                    const uint16_t h = static_cast<uint16_t>(src[2 * i] | (src[2 * i + 1] << 8));
                    dst[i] = type == StoredType::F16 ? half_to_float(h) : bfloat16_to_float(h);
                }
                break;
        }
        out.tensors.emplace(name, std::move(t));
        out.stored[name] = type;
    }
    return out;
}

inline SafetensorsContents read_safetensors(const std::string& path) {
    const std::vector<unsigned char> bytes = read_file_bytes(path);
    return parse_safetensors(bytes.data(), bytes.size(), path);
}

struct SafetensorsEntry {
    std::string name;
    Tensor tensor;                       // any layout; written in NCHW (row-major) order
    StoredType type = StoredType::F32;   // F32 or F16 for writing
};

// Serialises tensors (and string metadata) into safetensors bytes.
inline std::vector<unsigned char> serialize_safetensors(const std::vector<SafetensorsEntry>& entries,
                                                        const std::map<std::string, std::string>& metadata = {}) {
    nlohmann::json header = nlohmann::json::object();
    uint64_t offset = 0;
    for (const auto& e : entries) {
        PIN_CHECK(e.type == StoredType::F32 || e.type == StoredType::F16, "safetensors writer: tensor '", e.name,
                  "': can write F32 or F16, not ", stored_type_name(e.type));
        PIN_CHECK(!header.contains(e.name) && e.name != "__metadata__", "safetensors writer: duplicate or reserved name '",
                  e.name, "'");
        const uint64_t bytes = static_cast<uint64_t>(e.tensor.numel()) * stored_type_size(e.type);
        header[e.name] = {{"dtype", stored_type_name(e.type)},
                          {"shape", e.tensor.shape()},
                          {"data_offsets", {offset, offset + bytes}}};
        offset += bytes;
    }
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::string text = header.dump();
    while ((8 + text.size()) % 8 != 0) text.push_back(' ');  // align the data section to 8 bytes
    std::vector<unsigned char> out(8 + text.size() + offset);
    const uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<unsigned char>(n >> (8 * i));
    std::memcpy(out.data() + 8, text.data(), text.size());
    unsigned char* dst = out.data() + 8 + text.size();
    for (const auto& e : entries) {
        const Tensor t = e.tensor.to_layout(Layout::NCHW);
        if (e.type == StoredType::F32) {
            std::memcpy(dst, t.data(), static_cast<size_t>(t.numel()) * 4);
            dst += t.numel() * 4;
        } else {
            for (int64_t i = 0; i < t.numel(); ++i) {
                const uint16_t h = float_to_half(t.data()[i]);
                *dst++ = static_cast<unsigned char>(h & 0xff);
                *dst++ = static_cast<unsigned char>(h >> 8);
            }
        }
    }
    return out;
}

// Writes a safetensors file atomically (temp file + rename).
inline void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& entries,
                              const std::map<std::string, std::string>& metadata = {}) {
    const std::vector<unsigned char> bytes = serialize_safetensors(entries, metadata);
    write_file_atomically(path, bytes.data(), bytes.size());
}

}  // namespace pin::io
