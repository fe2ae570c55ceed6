// pin/io/file_util.hpp - reading whole files and writing files atomically (temp name + rename).
#pragma once
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "pin/core/error.hpp"

namespace pin::io {

inline std::vector<unsigned char> read_file_bytes(const std::string& path) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    PIN_CHECK(f, path, ": cannot open: ", std::strerror(errno));
    std::vector<unsigned char> bytes;
    unsigned char buffer[1 << 16];
    size_t n;
    while ((n = std::fread(buffer, 1, sizeof buffer, f)) > 0) bytes.insert(bytes.end(), buffer, buffer + n);
    const bool failed = std::ferror(f) != 0;
    std::fclose(f);
    PIN_CHECK(!failed, path, ": read error");
    return bytes;
}

// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a reader
// (or a crash) never sees a half-written file.
inline void write_file_atomically(const std::string& path, const void* data, size_t size) {
    const std::string tmp = path + ".tmp";
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    PIN_CHECK(f, tmp, ": cannot create: ", std::strerror(errno));
    const bool ok = std::fwrite(data, 1, size, f) == size && std::fflush(f) == 0;
    const int close_rc = std::fclose(f);
    if (!ok || close_rc != 0) {
        std::remove(tmp.c_str());
        PIN_CHECK(false, path, ": write failed: ", std::strerror(errno));
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        const int e = errno;
        std::remove(tmp.c_str());
        PIN_CHECK(false, path, ": cannot rename the temporary file into place: ", std::strerror(e));
    }
}

}  // namespace pin::io
