// agent_forward - the PIN agent on a batch in a dozen lines: build it, run it, look at p.
// (Random weights here; trained weights arrive with `pin train`.)
#include <cstdio>

#include "pin/pin.hpp"

int main() {
    pin::set_num_threads(2);
    pin::model::Agent agent(2500);  // DAE + ESN + selection head, N = 2500 eigenfaces
    agent.reset_parameters(/*seed=*/1);

    // A batch of 4 faces, 112x112 gray in [-1, 1]; activations are channels-last (NHWC).
    pin::Tensor faces = pin::Tensor::empty({4, 1, 112, 112}, pin::Layout::NHWC);
    const pin::PhiloxStream rng(/*seed=*/7, /*stream=*/0);
    for (int64_t i = 0; i < faces.numel(); ++i) faces.data()[i] = 2.0f * rng.uniform(i) - 1.0f;

    const pin::Tensor p = agent.forward(faces);  // (4, 2500) selection probabilities
    for (int64_t n = 0; n < p.dim(0); ++n) {
        double expected_kept = 0;
        for (int64_t j = 0; j < p.dim(1); ++j) expected_kept += p.data()[n * p.dim(1) + j];
        std::printf("face %lld: expected number of eigenfaces kept %.1f of %lld\n", static_cast<long long>(n),
                    expected_kept, static_cast<long long>(p.dim(1)));
    }
    return 0;
}
