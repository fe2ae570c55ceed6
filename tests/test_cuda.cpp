// CUDA side of the RNG: the device draws the same Philox stream as the CPU, bit for bit.
// Skips with a printed reason when pin was built without CUDA or no GPU is present.
#include <string>
#include <vector>

#include "helpers.hpp"

#if defined(PIN_HAVE_CUDA)
#include "rng.cuh"
#endif

using namespace pin;

TEST_CASE("Philox uniforms and Bernoulli masks are identical on the GPU and the CPU", "[cuda][rng]") {
#if !defined(PIN_HAVE_CUDA)
    WARN("SKIPPED: pin was built without CUDA (PIN_CUDA=OFF or no nvcc)");
    return;
#else
    std::string reason;
    if (!pin::cuda::device_available(&reason)) {
        WARN("SKIPPED: no usable CUDA device: " << reason);
        return;
    }
    const int64_t n = 100003;
    std::vector<float> gpu(n), p(n), gq(n);
    pin::cuda::philox_uniform(77, 3, 1000, n, gpu.data());
    const PhiloxStream rng(77, 3);
    for (int64_t i = 0; i < n; ++i) REQUIRE(gpu[i] == rng.uniform(1000 + static_cast<uint64_t>(i)));
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(i % 101) / 100.0f;
    pin::cuda::philox_bernoulli(77, 4, 0, p.data(), n, gq.data());
    const PhiloxStream rq(77, 4);
    for (int64_t i = 0; i < n; ++i) REQUIRE(gq[i] == rq.bernoulli(static_cast<uint64_t>(i), p[i]));
#endif
}
