// pin/io/image.hpp - face images in and out: any stb_image format (PNG, JPEG, BMP, ...) to a
// gray 112 x 112 face in [-1, 1], and gray faces back to 8-bit PNG.
//
// Colour is converted to luma with ITU-R 601 weights (as the lfw112 data was made); other sizes
// are resized bilinearly (half-pixel centres, averaging over the source footprint when
// shrinking), and the result says so, so programs can tell the user.
#pragma once
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#endif
// Private (static) copies of stb in every translation unit that includes this header: the
// library stays header-only and never clashes with a user's own stb implementation.
#ifndef STBI_INCLUDE_STB_IMAGE_H
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#endif
#include <stb/stb_image.h>
#ifndef INCLUDE_STB_IMAGE_WRITE_H
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#endif
#include <stb/stb_image_write.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#include "pin/core/error.hpp"
#include "pin/io/file_util.hpp"

namespace pin::io {

struct FaceImage {
    std::vector<float> pixels;  // size x size, row-major, in [-1, 1]
    int size = 0;
    int source_width = 0, source_height = 0, source_channels = 0;
    bool resized = false;        // the file was not size x size
    bool converted_to_gray = false;
};

namespace detail {
// Bilinear resampling with half-pixel centres; when shrinking, each output pixel averages the
// bilinear samples over its footprint so no source pixel is skipped.
inline std::vector<float> resize_bilinear(const std::vector<float>& src, int sw, int sh, int dw, int dh) {
    std::vector<float> dst(static_cast<size_t>(dw) * dh);
    const double sx = static_cast<double>(sw) / dw, sy = static_cast<double>(sh) / dh;
    const int nx = std::max(1, static_cast<int>(std::ceil(sx))), ny = std::max(1, static_cast<int>(std::ceil(sy)));
    auto sample = [&](double x, double y) {
        x = std::clamp(x, 0.0, sw - 1.0);
        y = std::clamp(y, 0.0, sh - 1.0);
        const int x0 = static_cast<int>(x), y0 = static_cast<int>(y);
        const int x1 = std::min(x0 + 1, sw - 1), y1 = std::min(y0 + 1, sh - 1);
        const double fx = x - x0, fy = y - y0;
        const double top = src[static_cast<size_t>(y0) * sw + x0] * (1 - fx) + src[static_cast<size_t>(y0) * sw + x1] * fx;
        const double bot = src[static_cast<size_t>(y1) * sw + x0] * (1 - fx) + src[static_cast<size_t>(y1) * sw + x1] * fx;
        return top * (1 - fy) + bot * fy;
    };
    for (int y = 0; y < dh; ++y)
        for (int x = 0; x < dw; ++x) {
            double acc = 0;
            for (int j = 0; j < ny; ++j)
                for (int i = 0; i < nx; ++i)
                    acc += sample((x + (i + 0.5) / nx) * sx - 0.5, (y + (j + 0.5) / ny) * sy - 0.5);
            dst[static_cast<size_t>(y) * dw + x] = static_cast<float>(acc / (nx * ny));
        }
    return dst;
}
}  // namespace detail

namespace detail {
// stb_image parses PNM header numbers with a signed int that overflows on long digit runs (found by
// fuzzing, tests/fuzz/corpus/image/regression_pnm_huge_width.pgm): read PNM headers here first and
// refuse numbers stb cannot hold. Returns an empty string when the header is acceptable.
inline std::string pnm_header_problem(const unsigned char* data, size_t size) {
    if (size < 2 || data[0] != 'P' || data[1] < '1' || data[1] > '7') return "";
    size_t i = 2;
    for (int field = 0; field < 3 && i < size; ++field) {
        while (i < size && (std::isspace(data[i]) || data[i] == '#')) {
            if (data[i] == '#')
                while (i < size && data[i] != '\n' && data[i] != '\r') ++i;
            else
                ++i;
        }
        size_t digits = 0;
        while (i < size && data[i] >= '0' && data[i] <= '9') ++i, ++digits;
        if (digits > 6) return "a PNM header number with " + std::to_string(digits) + " digits";
        if (digits == 0) return "";  // not a number: stb reports the format error
    }
    return "";
}

// stb_image copies a zero-length IDAT chunk that comes before any image data with memcpy(NULL, .., 0),
// undefined behaviour that UBSan reports (found by fuzzing, tests/fuzz/corpus/image/
// regression_png_empty_idat.png). Such a chunk carries no data, so dropping it loses nothing: returns
// the PNG without its empty IDAT chunks, or an empty vector when there are none (or it is no PNG).
inline std::vector<unsigned char> png_without_empty_idat(const unsigned char* data, size_t size) {
    static const unsigned char signature[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
    if (size < 8 || std::memcmp(data, signature, 8) != 0) return {};
    auto chunk_length = [&](size_t at) {
        return (size_t{data[at]} << 24) | (size_t{data[at + 1]} << 16) | (size_t{data[at + 2]} << 8) | data[at + 3];
    };
    bool found = false;
    for (size_t at = 8; at + 12 <= size; at += 12 + chunk_length(at))
        if (chunk_length(at) == 0 && std::memcmp(data + at + 4, "IDAT", 4) == 0) found = true;
    if (!found) return {};
    std::vector<unsigned char> out(data, data + 8);
    size_t at = 8;
    for (; at + 12 <= size; at += 12 + chunk_length(at)) {
        const size_t end = std::min(size, at + 12 + chunk_length(at));
        if (!(chunk_length(at) == 0 && std::memcmp(data + at + 4, "IDAT", 4) == 0))
            out.insert(out.end(), data + at, data + end);
    }
    if (at < size) out.insert(out.end(), data + at, data + size);  // a truncated tail: stb reports it
    return out;
}
}  // namespace detail

namespace detail {
struct DecodedPixels {
    int width = 0, height = 0, channels = 0;
    std::vector<unsigned char> bytes;  // width x height x channels, row-major
};
// Every check the loaders share: empty/oversized files, PNM headers stb mishandles, empty PNG IDAT
// chunks, gigapixel headers (refused before allocating), images without pixels.
inline DecodedPixels decode_pixels(const unsigned char* data, size_t size, const std::string& path) {
    PIN_CHECK(size > 0, path, ": empty file, not an image");
    PIN_CHECK(size < (size_t{1} << 31), path, ": file too large to be a face image");
    const std::vector<unsigned char> cleaned = png_without_empty_idat(data, size);
    if (!cleaned.empty()) data = cleaned.data(), size = cleaned.size();
    const std::string pnm = pnm_header_problem(data, size);
    PIN_CHECK(pnm.empty(), path, ": not a readable image (", pnm, ")");
    int w = 0, h = 0, channels = 0;
    // The header first: a few bytes can claim a gigapixel image; refuse before allocating for it.
    PIN_CHECK(stbi_info_from_memory(data, static_cast<int>(size), &w, &h, &channels), path,
              ": not a readable image (", stbi_failure_reason(), ")");
    PIN_CHECK(w <= 8192 && h <= 8192, path, ": the image is ", w, " x ", h, " pixels, larger than pin accepts (8192 x 8192)");
    unsigned char* decoded = stbi_load_from_memory(data, static_cast<int>(size), &w, &h, &channels, 0);
    PIN_CHECK(decoded, path, ": not a readable image (", stbi_failure_reason(), ")");
    if (w <= 0 || h <= 0 || channels <= 0) {  // found by fuzzing: a PNM header stb accepts with no pixels
        stbi_image_free(decoded);
        throw Error(path + ": the image has no pixels (" + std::to_string(w) + " x " + std::to_string(h) + ")");
    }
    DecodedPixels out;
    out.width = w, out.height = h, out.channels = channels;
    out.bytes.assign(decoded, decoded + static_cast<size_t>(w) * h * channels);
    stbi_image_free(decoded);
    return out;
}
}  // namespace detail

// A photo in colour: width x height x 3, row-major, values 0..255 (gray images replicated to RGB,
// alpha dropped). Face detection and alignment start from this.
struct RgbImage {
    int width = 0, height = 0;
    std::vector<float> rgb;
    float at(int x, int y, int c) const { return rgb[(static_cast<size_t>(y) * width + x) * 3 + c]; }
};

inline RgbImage decode_rgb_image(const unsigned char* data, size_t size, const std::string& path) {
    const detail::DecodedPixels d = detail::decode_pixels(data, size, path);
    RgbImage out;
    out.width = d.width, out.height = d.height;
    out.rgb.resize(static_cast<size_t>(d.width) * d.height * 3);
    for (size_t i = 0; i < static_cast<size_t>(d.width) * d.height; ++i)
        for (int c = 0; c < 3; ++c) out.rgb[i * 3 + c] = d.bytes[i * d.channels + (d.channels >= 3 ? c : 0)];
    return out;
}
inline RgbImage load_rgb_image(const std::string& path) {
    const std::vector<unsigned char> bytes = read_file_bytes(path);
    return decode_rgb_image(bytes.data(), bytes.size(), path);
}

// Decodes image bytes; `path` names the source in error messages.
inline FaceImage decode_face_image(const unsigned char* data, size_t size, const std::string& path, int face_size = 112) {
    const detail::DecodedPixels d = detail::decode_pixels(data, size, path);
    const int w = d.width, h = d.height, channels = d.channels;
    FaceImage out;
    out.size = face_size;
    out.source_width = w;
    out.source_height = h;
    out.source_channels = channels;
    out.converted_to_gray = channels >= 3;
    std::vector<float> gray(static_cast<size_t>(w) * h);
    for (size_t i = 0; i < gray.size(); ++i) {
        const unsigned char* px = d.bytes.data() + i * static_cast<size_t>(channels);
        // channels: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA (alpha ignored)
        gray[i] = channels >= 3 ? static_cast<float>(0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2]) : px[0];
    }
    if (w != face_size || h != face_size) {
        gray = detail::resize_bilinear(gray, w, h, face_size, face_size);
        out.resized = true;
    }
    out.pixels.resize(gray.size());
    for (size_t i = 0; i < gray.size(); ++i) out.pixels[i] = gray[i] / 127.5f - 1.0f;
    return out;
}

inline FaceImage load_face_image(const std::string& path, int face_size = 112) {
    const std::vector<unsigned char> bytes = read_file_bytes(path);
    return decode_face_image(bytes.data(), bytes.size(), path, face_size);
}

// Writes a size x size face in [-1, 1] (values outside are clipped) as an 8-bit gray PNG,
// atomically (temp file + rename).
// Writes a width x height gray image with values in [-1, 1] (clipped) as an 8-bit PNG, atomically.
inline void write_gray_png(const std::string& path, const float* pixels, int width, int height) {
    std::vector<unsigned char> gray(static_cast<size_t>(width) * height);
    for (size_t i = 0; i < gray.size(); ++i)
        gray[i] = static_cast<unsigned char>(std::lround(std::clamp((pixels[i] + 1.0f) * 127.5f, 0.0f, 255.0f)));
    std::vector<unsigned char> png;
    auto sink = [](void* ctx, void* data, int n) {
        auto* out = static_cast<std::vector<unsigned char>*>(ctx);
        out->insert(out->end(), static_cast<unsigned char*>(data), static_cast<unsigned char*>(data) + n);
    };
    PIN_CHECK(stbi_write_png_to_func(sink, &png, width, height, 1, gray.data(), width) != 0, path, ": PNG encoding failed");
    write_file_atomically(path, png.data(), png.size());
}
inline void write_face_png(const std::string& path, const float* pixels, int size) { write_gray_png(path, pixels, size, size); }

// Writes an RgbImage (values clipped to 0..255) as an 8-bit colour PNG, atomically.
inline void write_rgb_png(const std::string& path, const RgbImage& img) {
    std::vector<unsigned char> px(img.rgb.size());
    for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<unsigned char>(std::lround(std::clamp(img.rgb[i], 0.0f, 255.0f)));
    std::vector<unsigned char> png;
    auto sink = [](void* ctx, void* data, int n) {
        auto* out = static_cast<std::vector<unsigned char>*>(ctx);
        out->insert(out->end(), static_cast<unsigned char*>(data), static_cast<unsigned char*>(data) + n);
    };
    PIN_CHECK(stbi_write_png_to_func(sink, &png, img.width, img.height, 3, px.data(), img.width * 3) != 0, path, ": PNG encoding failed");
    write_file_atomically(path, png.data(), png.size());
}

}  // namespace pin::io
