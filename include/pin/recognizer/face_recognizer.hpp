// pin/recognizer/face_recognizer.hpp - what the evaluation needs from a face recognizer: embeddings
// of a batch of aligned faces, and the gradient of a loss on those embeddings with respect to the
// faces (attacks need it). Any recognizer plugs in by implementing these two calls.
#pragma once
#include <string>

#include "pin/core/tensor.hpp"

namespace pin::recognizer {

class FaceRecognizer {
public:
    virtual ~FaceRecognizer() = default;
    // faces (B, 1, 112, 112) in [-1, 1] -> embeddings (B, dim).
    virtual Tensor embed(const Tensor& faces) = 0;
    // Embeddings as embed(), keeping what input_gradient() needs.
    virtual Tensor embed_for_gradient(const Tensor& faces) = 0;
    // d loss / d faces (B, 1, 112, 112) given d loss / d embeddings (B, dim) of the last
    // embed_for_gradient() call.
    virtual Tensor input_gradient(const Tensor& d_embeddings) = 0;
    virtual int64_t dim() const = 0;
    virtual std::string name() const = 0;
};

}  // namespace pin::recognizer
