// pin/train/face_batches.hpp - batches of aligned faces for training: seeded shuffling, optional
// horizontal flips, and a prefetch thread that decodes the next batch while the current one trains.
//
// Every choice is a pure function of (seed, epoch, position): the epoch's permutation is a
// Fisher-Yates shuffle driven by Philox(seed, epoch), the flip of the image at position i by one
// Philox bit. So a run resumed at (epoch, batch) sees exactly the batches the uninterrupted run saw,
// whatever the thread count or the prefetch timing.
#pragma once
#include <cstdint>
#include <future>
#include <string>
#include <utility>
#include <vector>

#include "pin/core/error.hpp"
#include "pin/core/rng.hpp"
#include "pin/core/tensor.hpp"
#include "pin/io/image.hpp"

namespace pin::train {

struct FaceBatchOptions {
    int64_t batch = 20;
    bool shuffle = true;
    bool flip = false;     // mirror each face with probability 1/2
    uint64_t seed = 0;
};

struct FaceBatch {
    Tensor images;          // (B, 1, 112, 112) in [-1, 1]
    int64_t index = 0;      // batch number within the epoch
    std::vector<int64_t> sources;  // file index of each image
};

class FaceBatchLoader {
public:
    // The last partial batch of an epoch is dropped (the batch-mean baseline wants full batches);
    // at least one full batch must fit.
    FaceBatchLoader(std::vector<std::string> files, FaceBatchOptions options)
        : files_(std::move(files)), opt_(options) {
        PIN_CHECK(opt_.batch > 0, "FaceBatchLoader: batch size must be positive");
        PIN_CHECK(static_cast<int64_t>(files_.size()) >= opt_.batch, "FaceBatchLoader: ", files_.size(),
                  " images, fewer than one batch of ", opt_.batch);
    }
    ~FaceBatchLoader() {
        if (pending_.valid()) pending_.wait();
    }
    FaceBatchLoader(const FaceBatchLoader&) = delete;
    FaceBatchLoader& operator=(const FaceBatchLoader&) = delete;

    int64_t batches_per_epoch() const { return static_cast<int64_t>(files_.size()) / opt_.batch; }
    int64_t batch_size() const { return opt_.batch; }
    const std::vector<std::string>& files() const { return files_; }

    // The file order of an epoch.
    std::vector<int64_t> permutation(int64_t epoch) const {
        std::vector<int64_t> order(files_.size());
        for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
        if (!opt_.shuffle) return order;
        const PhiloxStream rng(opt_.seed ^ 0x73687566666C65ull, static_cast<uint64_t>(epoch));
        for (size_t i = order.size(); i > 1; --i) {
            // 64 random bits reduced to [0, i): bias below 2^-40 for any dataset that fits in memory.
            const uint64_t r = rng.bits(2 * (i - 1)) | (static_cast<uint64_t>(rng.bits(2 * (i - 1) + 1)) << 32);
            std::swap(order[i - 1], order[static_cast<size_t>(r % i)]);
        }
        return order;
    }

    // Starts an epoch at batch `first_batch` (0, or where an interrupted run stopped) and begins
    // decoding that batch in the background.
    void start_epoch(int64_t epoch, int64_t first_batch = 0) {
        PIN_CHECK(first_batch >= 0 && first_batch <= batches_per_epoch(), "FaceBatchLoader: batch ", first_batch,
                  " is outside the epoch (", batches_per_epoch(), " batches)");
        if (pending_.valid()) pending_.wait();
        epoch_ = epoch;
        order_ = permutation(epoch);
        next_ = first_batch;
        prefetch();
    }

    // The next batch of the epoch, or false at its end. Errors of the background decode (a broken
    // image, named) surface here.
    bool next(FaceBatch& out) {
        if (!pending_.valid()) return false;
        out = pending_.get();
        ++next_;
        prefetch();
        return true;
    }

    // Loads one batch synchronously (used by the prefetch thread and by tests).
    FaceBatch load(int64_t epoch, const std::vector<int64_t>& order, int64_t index) const {
        FaceBatch b;
        b.index = index;
        b.images = Tensor::empty({opt_.batch, 1, 112, 112}, Layout::NHWC);  // one channel: NCHW order too
        const PhiloxStream flips(opt_.seed ^ 0x666C6970ull, static_cast<uint64_t>(epoch));
        for (int64_t i = 0; i < opt_.batch; ++i) {
            const int64_t position = index * opt_.batch + i;
            const int64_t file = order[static_cast<size_t>(position)];
            b.sources.push_back(file);
            const io::FaceImage face = io::load_face_image(files_[static_cast<size_t>(file)], 112);
            float* dst = b.images.data() + i * 112 * 112;
            const bool flip = opt_.flip && (flips.bits(static_cast<uint64_t>(position)) & 1u);
            for (int y = 0; y < 112; ++y)
                for (int x = 0; x < 112; ++x)
                    dst[y * 112 + x] = face.pixels[static_cast<size_t>(y * 112 + (flip ? 111 - x : x))];
        }
        return b;
    }

private:
    void prefetch() {
        if (next_ >= batches_per_epoch()) {
            pending_ = {};
            return;
        }
        const int64_t epoch = epoch_, index = next_;
        pending_ = std::async(std::launch::async, [this, epoch, index] { return load(epoch, order_, index); });
    }

    std::vector<std::string> files_;
    FaceBatchOptions opt_;
    std::vector<int64_t> order_;
    int64_t epoch_ = 0, next_ = 0;
    std::future<FaceBatch> pending_;
};

}  // namespace pin::train
