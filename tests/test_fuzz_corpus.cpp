// Replays every input of the fuzz seed corpus (tests/fuzz/corpus: the seeds and the crashes fuzzing
// found, kept as regression inputs) through the same parsers as the libFuzzer targets: each one
// must parse or fail with pin::Error - under ASan + UBSan in CI, where a memory error also fails.
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "pin/io/face_dataset.hpp"
#include "pin/io/file_util.hpp"
#include "pin/io/image.hpp"
#include "pin/io/safetensors.hpp"
#include "pin/io/tfjs_weights.hpp"

using namespace pin;
namespace fs = std::filesystem;

namespace {
std::vector<std::string> corpus(const std::string& target) {
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(std::string(PIN_SOURCE_DIR) + "/tests/fuzz/corpus/" + target))
        files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
    return files;
}
template <typename F>
int replay(const std::string& target, F parse) {
    int parsed = 0;
    for (const std::string& f : corpus(target)) {
        const std::vector<unsigned char> bytes = io::read_file_bytes(f);
        INFO(f);
        try {
            parse(bytes);
            ++parsed;
        } catch (const Error& e) {
            REQUIRE(std::string(e.what()).size() > 0);
        }
    }
    return parsed;
}
}  // namespace

TEST_CASE("fuzz corpus: every input parses or fails with a message", "[fuzz]") {
    // Each folder holds valid seeds, so some inputs must parse.
    REQUIRE(replay("safetensors", [](const std::vector<unsigned char>& b) { io::parse_safetensors(b.data(), b.size(), "x"); }) > 0);
    REQUIRE(replay("tfjs", [](const std::vector<unsigned char>& b) {
                const auto nul = std::find(b.begin(), b.end(), 0);
                const std::string manifest(b.begin(), nul);
                const std::vector<unsigned char> bin(nul == b.end() ? b.end() : nul + 1, b.end());
                io::parse_tfjs_weights(manifest, "x", [&](const std::string&) { return bin; });
            }) > 0);
    REQUIRE(replay("pairs", [](const std::vector<unsigned char>& b) {
                std::istringstream in(std::string(b.begin(), b.end()));
                io::parse_pairs(in, "x");
            }) > 0);
    REQUIRE(replay("image", [](const std::vector<unsigned char>& b) {
                // As the fuzz harness: headers claiming more than 4 megapixels are valid but slow to decode
                // under the sanitizers; their header handling is what the corpus keeps (see fuzz_image.cpp).
                int w = 0, h = 0, c = 0;
                if (io::detail::pnm_header_problem(b.data(), b.size()).empty() &&
                    stbi_info_from_memory(b.data(), static_cast<int>(b.size()), &w, &h, &c) && int64_t{w} * h > (int64_t{1} << 22))
                    return;
                io::decode_face_image(b.data(), b.size(), "x", 112);
            }) > 0);
}

TEST_CASE("fuzz regression: a PNM header without pixels is refused by name", "[fuzz]") {
    const std::vector<unsigned char> b =
        io::read_file_bytes(std::string(PIN_SOURCE_DIR) + "/tests/fuzz/corpus/image/regression_pgm_bad_header.pgm");
    REQUIRE_THROWS_WITH(io::decode_face_image(b.data(), b.size(), "bad.pgm", 112), Catch::StartsWith("bad.pgm: "));
}

TEST_CASE("fuzz regression: a PNM header number too long for stb is refused before stb parses it", "[fuzz]") {
    const std::vector<unsigned char> b =
        io::read_file_bytes(std::string(PIN_SOURCE_DIR) + "/tests/fuzz/corpus/image/regression_pnm_huge_width.pgm");
    REQUIRE_THROWS_WITH(io::decode_face_image(b.data(), b.size(), "huge.pgm", 112),
                        Catch::Contains("huge.pgm: not a readable image (a PNM header number with"));
}

TEST_CASE("fuzz regression: an 11-megapixel-wide, 1-pixel-high BMP is refused, not resized for seconds", "[fuzz]") {
    const std::vector<unsigned char> b =
        io::read_file_bytes(std::string(PIN_SOURCE_DIR) + "/tests/fuzz/corpus/image/regression_bmp_11M_wide.bmp");
    REQUIRE_THROWS_WITH(io::decode_face_image(b.data(), b.size(), "wide.bmp", 112),
                        Catch::Contains("wide.bmp: the image is 11272368 x 1 pixels, larger than pin accepts"));
}
