// pin - the command-line program. Subcommands arrive with the issues that build them; today:
//   pin info [--threads T]     what this build is: SIMD path, threads, CUDA, model size
#include <cstdio>
#include <cstdlib>
#include <string>

#include "pin/pin.hpp"

namespace {

void usage(std::FILE* f) {
    std::fprintf(f,
                 "usage: pin <command> [options]\n"
                 "commands:\n"
                 "  info        describe this build (SIMD path, threads, CUDA) and the PIN model size\n"
                 "options:\n"
                 "  --threads T CPU threads (default: all hardware threads)\n"
                 "  -h, --help  this text\n"
                 "benchmarks: pin-bench --help\n");
}

int cmd_info(int threads) {
    if (threads > 0) pin::set_num_threads(threads);
    pin::model::Agent agent(2500);
    std::printf("pin %s\n", "0.1.0");
    std::printf("  SIMD path        %s (%d float lanes)\n", pin::simd::VecF::kName, pin::simd::VecF::kLanes);
    std::printf("  CPU threads      %d\n", pin::num_threads());
#if defined(PIN_HAVE_CUDA)
    std::printf("  CUDA kernels     built\n");
#else
    std::printf("  CUDA kernels     not linked into this program\n");
#endif
    std::printf("  agent parameters DAE %lld, ESN %lld, head %lld\n",
                static_cast<long long>(agent.dae().parameter_count()),
                static_cast<long long>(agent.esn().parameter_count()),
                static_cast<long long>(agent.head().parameter_count()));
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::string command;
    int threads = 0;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "-h" || a == "--help") {
            usage(stdout);
            return 0;
        } else if (a == "--threads") {
            if (i + 1 >= argc || std::atoi(argv[i + 1]) < 1) {
                std::fprintf(stderr, "pin: --threads needs a positive integer\n");
                return 2;
            }
            threads = std::atoi(argv[++i]);
        } else if (command.empty() && a[0] != '-') {
            command = a;
        } else {
            std::fprintf(stderr, "pin: unknown argument '%s' (see pin --help)\n", a.c_str());
            return 2;
        }
    }
    if (command.empty()) {
        usage(stderr);
        return 2;
    }
    try {
        if (command == "info") return cmd_info(threads);
        std::fprintf(stderr, "pin: unknown command '%s' (see pin --help)\n", command.c_str());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "pin: %s\n", e.what());
        return 1;
    }
}
