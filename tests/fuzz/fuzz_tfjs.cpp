// libFuzzer target: the tfjs weights-manifest parser. Input: manifest JSON, a NUL byte, then the
// bytes every bin file of the manifest reads as (so both the JSON and the size checks are reached).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "pin/io/tfjs_weights.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const void* nul = std::memchr(data, 0, size);
    const size_t split = nul ? static_cast<size_t>(static_cast<const uint8_t*>(nul) - data) : size;
    const std::string manifest(reinterpret_cast<const char*>(data), split);
    const std::vector<unsigned char> bin(data + std::min(size, split + 1), data + size);
    try {
        (void)pin::io::parse_tfjs_weights(manifest, "fuzz.json", [&](const std::string&) { return bin; });
    } catch (const pin::Error&) {
    }
    return 0;
}
