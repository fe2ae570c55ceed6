// libFuzzer target: the face-image loading wrapper (stb_image decode, gray conversion, resize).
// Images larger than 8192 x 8192 are refused by the wrapper before their pixels are decoded. The
// harness also skips headers claiming more than 4 megapixels: decoding a legitimate 30-megapixel
// image takes over 10 s under ASan + UBSan + coverage and would be reported as a timeout
// (regression_tga_30M_pixels.tga); the wrapper's own code paths are the same for any size.
#include <cstddef>
#include <cstdint>

#include "pin/io/image.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    int w = 0, h = 0, c = 0;
    // (PNM headers go through pin's own check first: stb's PNM header parser overflows, see image.hpp.)
    if (size < (size_t{1} << 31) && pin::io::detail::pnm_header_problem(data, size).empty() && stbi_info_from_memory(data, static_cast<int>(size), &w, &h, &c) &&
        static_cast<int64_t>(w) * h > (int64_t{1} << 22))
        return 0;
    try {
        const pin::io::FaceImage f = pin::io::decode_face_image(data, size, "fuzz.img", 112);
        (void)f.pixels.size();
    } catch (const pin::Error&) {
    }
    return 0;
}
