// pin/core/tensor.hpp - an owning float32 tensor with views, a layout and a device tag.
//
// Shapes are always given in NCHW order at the API (batch, channels, height, width), for rank 4;
// rank 1-3 tensors are plain row-major. A rank-4 tensor stores its elements either NCHW
// (Layout::NCHW) or channels-last (Layout::NHWC). The CPU convolution kernels work channels-last
// because then the channels of one pixel are contiguous and a 3x3 convolution needs no im2col
// copy (see cpu/conv2d.hpp); conversions are explicit (to_layout).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <new>
#include <sstream>
#include <string>
#include <vector>

#include "pin/core/allocator.hpp"
#include "pin/core/error.hpp"

namespace pin {

enum class Device { CPU, CUDA };
enum class Layout { NCHW, NHWC };

using Shape = std::vector<int64_t>;

inline std::string shape_to_string(const Shape& s) {
    std::ostringstream os;
    os << "(";
    for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
    os << ")";
    return os.str();
}

inline int64_t shape_numel(const Shape& s) {
    int64_t n = 1;
    for (int64_t d : s) n *= d;
    return n;
}

namespace detail {
inline std::shared_ptr<float> allocate_floats(int64_t count) {
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(float);
    float* p = static_cast<float*>(HostAllocator::instance().allocate(bytes));
    return std::shared_ptr<float>(p, [bytes](float* q) { HostAllocator::instance().release(q, bytes); });
}
}  // namespace detail

class Tensor {
public:
    Tensor() = default;

    // Uninitialised storage (contents unspecified); use zeros() when the values matter.
    static Tensor empty(const Shape& shape, Layout layout = Layout::NCHW, Device device = Device::CPU) {
        for (int64_t d : shape) PIN_CHECK(d >= 0, "negative dimension in shape ", shape_to_string(shape));
        PIN_CHECK(device == Device::CPU,
                  "Tensor::empty: device tensors are created by the CUDA backend (pin/cuda), not here");
        Tensor t;
        t.shape_ = shape;
        t.layout_ = shape.size() == 4 ? layout : Layout::NCHW;
        t.device_ = device;
        t.storage_ = detail::allocate_floats(shape_numel(shape));
        t.data_ = t.storage_.get();
        return t;
    }
    static Tensor zeros(const Shape& shape, Layout layout = Layout::NCHW) {
        Tensor t = empty(shape, layout);
        std::memset(t.data_, 0, static_cast<size_t>(t.numel()) * sizeof(float));
        return t;
    }
    static Tensor full(const Shape& shape, float value, Layout layout = Layout::NCHW) {
        Tensor t = empty(shape, layout);
        std::fill(t.data_, t.data_ + t.numel(), value);
        return t;
    }
    // Copies `values` (in storage order) into a new tensor.
    static Tensor from(const Shape& shape, const std::vector<float>& values, Layout layout = Layout::NCHW) {
        PIN_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "Tensor::from: ", values.size(),
                  " values for shape ", shape_to_string(shape));
        Tensor t = empty(shape, layout);
        std::copy(values.begin(), values.end(), t.data_);
        return t;
    }

    // A non-owning view of `count(shape)` floats at `data` (host memory the caller keeps alive): lets
    // code that holds raw buffers (the backend-generic trainer's CPU backend) call the Tensor API.
    static Tensor borrow(float* data, const Shape& shape, Layout layout = Layout::NCHW) {
        PIN_CHECK(data != nullptr, "Tensor::borrow: null data for shape ", shape_to_string(shape));
        for (int64_t d : shape) PIN_CHECK(d >= 0, "negative dimension in shape ", shape_to_string(shape));
        Tensor t;
        t.shape_ = shape;
        t.layout_ = shape.size() == 4 ? layout : Layout::NCHW;
        t.data_ = data;
        return t;
    }

    bool defined() const { return data_ != nullptr; }
    const Shape& shape() const { return shape_; }
    int rank() const { return static_cast<int>(shape_.size()); }
    int64_t dim(int i) const {
        PIN_CHECK(i >= 0 && i < rank(), "dimension ", i, " out of range for shape ", shape_to_string(shape_));
        return shape_[static_cast<size_t>(i)];
    }
    int64_t numel() const { return defined() ? shape_numel(shape_) : 0; }
    Layout layout() const { return layout_; }
    Device device() const { return device_; }

    // NCHW accessors for rank-4 tensors.
    int64_t n() const { return dim(0); }
    int64_t c() const { return dim(1); }
    int64_t h() const { return dim(2); }
    int64_t w() const { return dim(3); }

    float* data() { return data_; }
    const float* data() const { return data_; }

    // Element (n, c, h, w) of a rank-4 tensor, whatever its layout.
    int64_t offset(int64_t n, int64_t c, int64_t h, int64_t w) const {
        const int64_t C = shape_[1], H = shape_[2], W = shape_[3];
        return layout_ == Layout::NCHW ? ((n * C + c) * H + h) * W + w : ((n * H + h) * W + w) * C + c;
    }
    float& at(int64_t n, int64_t c, int64_t h, int64_t w) { return data_[offset(n, c, h, w)]; }
    float at(int64_t n, int64_t c, int64_t h, int64_t w) const { return data_[offset(n, c, h, w)]; }

    // Same storage, new shape (element count must match; layout becomes NCHW unless `layout` given).
    Tensor reshape(const Shape& shape, Layout layout = Layout::NCHW) const {
        PIN_CHECK(shape_numel(shape) == numel(), "reshape ", shape_to_string(shape_), " to ", shape_to_string(shape),
                  ": element counts differ");
        Tensor t = *this;
        t.shape_ = shape;
        t.layout_ = shape.size() == 4 ? layout : Layout::NCHW;
        return t;
    }
    // Rows [begin, end) of the first dimension, sharing storage (works for both layouts).
    Tensor slice(int64_t begin, int64_t end) const {
        PIN_CHECK(rank() >= 1 && begin >= 0 && begin <= end && end <= shape_[0], "slice [", begin, ", ", end,
                  ") out of range for shape ", shape_to_string(shape_));
        Tensor t = *this;
        const int64_t row = shape_[0] == 0 ? 0 : numel() / shape_[0];
        t.shape_[0] = end - begin;
        t.data_ = data_ + begin * row;
        return t;
    }
    Tensor clone() const {
        Tensor t = empty(shape_, layout_);
        std::memcpy(t.data_, data_, static_cast<size_t>(numel()) * sizeof(float));
        return t;
    }
    void fill(float value) { std::fill(data_, data_ + numel(), value); }
    void copy_from(const Tensor& other) {
        PIN_CHECK(other.shape_ == shape_ && other.layout_ == layout_, "copy_from: shape/layout mismatch ",
                  shape_to_string(other.shape_), " -> ", shape_to_string(shape_));
        std::memcpy(data_, other.data_, static_cast<size_t>(numel()) * sizeof(float));
    }

    // A copy in the requested layout (or this tensor, shared, when it already is).
    Tensor to_layout(Layout target) const {
        if (rank() != 4 || layout_ == target) return *this;
        Tensor t = empty(shape_, target);
        const int64_t N = shape_[0], C = shape_[1], HW = shape_[2] * shape_[3];
        for (int64_t n = 0; n < N; ++n) {
            const float* src = data_ + n * C * HW;
            float* dst = t.data_ + n * C * HW;
            if (target == Layout::NHWC) {
                for (int64_t c = 0; c < C; ++c)
                    for (int64_t p = 0; p < HW; ++p) dst[p * C + c] = src[c * HW + p];
            } else {
                for (int64_t p = 0; p < HW; ++p)
                    for (int64_t c = 0; c < C; ++c) dst[c * HW + p] = src[p * C + c];
            }
        }
        return t;
    }

private:
    std::shared_ptr<float> storage_;
    float* data_ = nullptr;
    Shape shape_;
    Layout layout_ = Layout::NCHW;
    Device device_ = Device::CPU;
};

inline void check_shape(const Tensor& t, const Shape& expected, const char* what) {
    PIN_CHECK(t.defined(), what, ": tensor is empty");
    PIN_CHECK(t.shape() == expected, what, ": expected shape ", shape_to_string(expected), ", got ",
              shape_to_string(t.shape()));
}

}  // namespace pin
