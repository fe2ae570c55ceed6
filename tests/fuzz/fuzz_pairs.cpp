// libFuzzer target: the LFW pairs-file parser.
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>

#include "pin/io/face_dataset.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
    try {
        (void)pin::io::parse_pairs(in, "fuzz_pairs.txt");
    } catch (const pin::Error&) {
    }
    return 0;
}
