// libFuzzer target: the face-image loading wrapper (stb_image decode, gray conversion, resize).
// Images larger than 8192 x 8192 are refused by the wrapper before their pixels are decoded.
#include <cstddef>
#include <cstdint>

#include "pin/io/image.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const pin::io::FaceImage f = pin::io::decode_face_image(data, size, "fuzz.img", 112);
        (void)f.pixels.size();
    } catch (const pin::Error&) {
    }
    return 0;
}
