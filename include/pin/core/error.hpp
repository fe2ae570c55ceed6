// pin/core/error.hpp - the exception type every pin component throws, and a check macro.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace pin {

// One exception type for the library: programs catch it, print what() on one line and exit
// non-zero. Messages name the thing that is wrong (a file, a shape, a flag) and why.
class Error : public std::runtime_error {
public:
    explicit Error(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {
template <typename... Parts>
[[noreturn]] inline void throw_error(const Parts&... parts) {
    std::ostringstream os;
    (os << ... << parts);
    throw Error(os.str());
}
}  // namespace detail

}  // namespace pin

// PIN_CHECK(condition, message parts...): throws pin::Error with the parts streamed together.
#define PIN_CHECK(cond, ...)                                  \
    do {                                                      \
        if (!(cond)) ::pin::detail::throw_error(__VA_ARGS__); \
    } while (0)
