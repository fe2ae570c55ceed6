// Catch2's main for every test program, with stdout line-buffered: bench/gpu_check.sh ends a test
// group that overruns its time with `timeout`, and what it printed until then (the "match" lines)
// must reach the log rather than die in the buffer.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>

int main(int argc, char* argv[]) {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    return Catch::Session().run(argc, argv);
}
