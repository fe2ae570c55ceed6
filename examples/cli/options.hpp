// examples/cli/options.hpp - command-line parsing shared by the pin commands: `pin <command>
// [--flag value | --switch]...`, typed accessors that reject bad values with a usage error (exit 2).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace cli {

struct Options {
    std::string command;
    std::map<std::string, std::string> values;  // flag name without "--" -> value ("1" for switches)
    bool has(const std::string& key) const { return values.count(key) != 0; }
    std::string get(const std::string& key, const std::string& fallback) const {
        auto it = values.find(key);
        return it == values.end() ? fallback : it->second;
    }
};

[[noreturn]] inline void fail_usage(const std::string& message) {
    std::fprintf(stderr, "pin: %s (see pin --help)\n", message.c_str());
    std::exit(2);
}

// Flags taking a value, and switches (no value).
inline const std::set<std::string>& value_flags() {
    static const std::set<std::string> f = {
        "threads", "data",   "split",  "count",   "keep",      "seed",           "out",      "in",       "defense",
        "model",   "basis",  "mode",   "batch",   "dae",       "epochs",         "masks",    "estimator", "cost",
        "lambda",  "lr",     "lr-halve-every",    "momentum",  "noise",          "steps",    "folds",    "attack",
        "protocol", "json",  "device", "gpu-math", "gpu-gather", "gpu-storage", "gpu-tile", "gpu-pipeline", "gpu-loads", "gpu-mma-n", "gpu-gather-cache", "gpu-tune-repeats", "gpu-tune-only", "recognizer", "eps",    "iterations", "pin-gradient", "eot", "examples", "min-score", "input-size", "face-api", "clip-norm", "features-lr-scale", "head-init-scale", "half-from",
        "queries", "overshoot", "sticker-step", "pairs", "identities", "cache"};
    return f;
}
inline const std::set<std::string>& switch_flags() {
    static const std::set<std::string> f = {"flip", "resume", "no-progress", "color", "emulate-gpu-bf16", "gpu-tune"};
    return f;
}

template <typename Usage>
Options parse(int argc, char** argv, Usage usage) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "-h" || a == "--help") {
            usage(stdout);
            std::exit(0);
        }
        const std::string key = a == "-o" ? "out" : a.rfind("--", 0) == 0 ? a.substr(2) : "";
        if (value_flags().count(key)) {
            if (i + 1 >= argc) fail_usage(a + " needs a value");
            o.values[key] = argv[++i];
        } else if (switch_flags().count(key)) {
            o.values[key] = "1";
        } else if (o.command.empty() && !a.empty() && a[0] != '-') {
            o.command = a;
        } else {
            fail_usage("unknown argument '" + a + "'");
        }
    }
    if (o.command.empty()) {
        usage(stderr);
        std::exit(2);
    }
    return o;
}

// The items of --flag's comma-separated value ("a,b,c"), in order; an empty one ("a,,b", "a,", "") is
// a usage error naming the flag.
inline std::vector<std::string> comma_items(const std::string& flag, const std::string& list) {
    std::vector<std::string> items;
    for (size_t at = 0;;) {
        const size_t comma = std::min(list.find(',', at), list.size());
        items.push_back(list.substr(at, comma - at));
        if (items.back().empty()) fail_usage("--" + flag + ": an empty item in '" + list + "'");
        if (comma == list.size()) return items;
        at = comma + 1;
    }
}

inline int64_t int_option(const Options& o, const std::string& key, int64_t fallback, int64_t lo, int64_t hi) {
    auto it = o.values.find(key);
    if (it == o.values.end()) return fallback;
    char* end = nullptr;
    const long long v = std::strtoll(it->second.c_str(), &end, 10);
    if (it->second.empty() || *end != '\0' || v < lo || v > hi)
        fail_usage("--" + key + " expects an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got '" +
                   it->second + "'");
    return v;
}

inline double real_option(const Options& o, const std::string& key, double fallback, double lo, double hi) {
    auto it = o.values.find(key);
    if (it == o.values.end()) return fallback;
    char* end = nullptr;
    const double v = std::strtod(it->second.c_str(), &end);
    if (it->second.empty() || *end != '\0' || !(v >= lo && v <= hi))
        fail_usage("--" + key + " expects a number in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got '" +
                   it->second + "'");
    return v;
}

}  // namespace cli
