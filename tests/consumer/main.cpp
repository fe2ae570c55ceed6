#include <cstdio>

#include "pin/pin.hpp"

int main() {
    pin::nn::ResBlock block(1, 8, 2, true);
    block.reset_parameters(1, 0);
    pin::Tensor x = pin::Tensor::full({1, 1, 16, 16}, 0.5f, pin::Layout::NHWC);
    const pin::Tensor y = block.forward(x);
    const bool ok = y.shape() == pin::Shape{1, 8, 8, 8};
    std::printf("consumer: output %s %s\n", pin::shape_to_string(y.shape()).c_str(), ok ? "ok" : "WRONG");
    return ok ? 0 : 1;
}
