// libFuzzer target: the safetensors reader on arbitrary bytes. A malformed file must end in
// pin::Error (a message), never a crash, a hang or a sanitizer report.
#include <cstddef>
#include <cstdint>

#include "pin/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const pin::io::SafetensorsContents c = pin::io::parse_safetensors(data, size, "fuzz.safetensors");
        for (const auto& kv : c.tensors) (void)kv.second.numel();
    } catch (const pin::Error&) {
    }
    return 0;
}
