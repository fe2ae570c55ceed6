// pin/io/state_dict.hpp - module parameters to and from safetensors, by PyTorch state_dict names.
#pragma once
#include <cmath>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "pin/io/safetensors.hpp"
#include "pin/nn/module.hpp"

namespace pin::io {

namespace detail {
inline std::string join_names(const std::vector<std::string>& names, size_t max_shown = 5) {
    std::ostringstream os;
    for (size_t i = 0; i < names.size() && i < max_shown; ++i) os << (i ? ", " : "") << names[i];
    if (names.size() > max_shown) os << " and " << names.size() - max_shown << " more";
    return os.str();
}
}  // namespace detail

// Copies the tensors named prefix + parameter name into the parameters. Checks shapes, and that
// every value is finite. With `strict`, every parameter must be present and every tensor under
// `prefix` must be used; errors list the offending names.
inline void load_parameters(const std::vector<nn::NamedParameter>& params, const SafetensorsContents& contents,
                            const std::string& path, const std::string& prefix = "", bool strict = true) {
    std::vector<std::string> missing;
    std::set<std::string> used;
    for (const auto& p : params) {
        const std::string key = prefix + p.name;
        auto it = contents.tensors.find(key);
        if (it == contents.tensors.end()) {
            missing.push_back(key);
            continue;
        }
        const Tensor& src = it->second;
        PIN_CHECK(src.shape() == p.param->value.shape(), path, ": tensor '", key, "' has shape ",
                  shape_to_string(src.shape()), ", the model expects ", shape_to_string(p.param->value.shape()));
        for (int64_t i = 0; i < src.numel(); ++i)
            PIN_CHECK(std::isfinite(src.data()[i]), path, ": tensor '", key, "' holds a non-finite value (",
                      src.data()[i], ") at element ", i);
        std::memcpy(p.param->value.data(), src.data(), static_cast<size_t>(src.numel()) * sizeof(float));
        used.insert(key);
    }
    PIN_CHECK(missing.empty() || !strict, path, ": missing tensors: ", detail::join_names(missing));
    if (strict) {
        std::vector<std::string> unexpected;
        for (const auto& kv : contents.tensors)
            if (kv.first.rfind(prefix, 0) == 0 && !used.count(kv.first)) unexpected.push_back(kv.first);
        PIN_CHECK(unexpected.empty(), path, ": unexpected tensors: ", detail::join_names(unexpected));
    }
}

// The parameters as safetensors entries named prefix + name; tensors with at least
// `half_from_elements` elements are stored as F16 (0 = never).
inline std::vector<SafetensorsEntry> parameter_entries(const std::vector<nn::NamedParameter>& params,
                                                       const std::string& prefix = "",
                                                       int64_t half_from_elements = 0) {
    std::vector<SafetensorsEntry> out;
    for (const auto& p : params) {
        const bool half = half_from_elements > 0 && p.param->value.numel() >= half_from_elements;
        out.push_back({prefix + p.name, p.param->value, half ? StoredType::F16 : StoredType::F32});
    }
    return out;
}

}  // namespace pin::io
