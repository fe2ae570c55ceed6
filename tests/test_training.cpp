// The training plumbing: the batch loader's order and flips are pure functions of (seed, epoch,
// position); checkpoints restore parameters and momentum exactly and refuse other settings or
// other kinds with messages that name them; the learning-rate schedule halves on time.
#include <cstdio>
#include <filesystem>
#include <set>
#include <string>

#include "helpers.hpp"
#include "pin/io/image.hpp"
#include "pin/nn/layers.hpp"
#include "pin/train/checkpoint.hpp"
#include "pin/train/face_batches.hpp"
#include "pin/train/training_loop.hpp"

using namespace pin;
namespace fs = std::filesystem;

namespace {
std::vector<std::string> write_faces(const fs::path& dir, int n) {
    fs::create_directories(dir);
    std::vector<std::string> files;
    for (int i = 0; i < n; ++i) {
        std::vector<float> px(112 * 112);
        for (int y = 0; y < 112; ++y)
            for (int x = 0; x < 112; ++x) px[static_cast<size_t>(y * 112 + x)] = std::sin(0.1f * x * (i + 1) + 0.02f * y);
        files.push_back((dir / ("f" + std::to_string(i) + ".png")).string());
        io::write_face_png(files.back(), px.data(), 112);
    }
    return files;
}
}  // namespace

TEST_CASE("face batches: seeded permutation, flips, prefetch and resume positions", "[train][data]") {
    const fs::path dir = fs::temp_directory_path() / "pin_test_batches";
    fs::remove_all(dir);
    const std::vector<std::string> files = write_faces(dir, 11);
    train::FaceBatchOptions o;
    o.batch = 3;
    o.flip = true;
    o.seed = 5;
    train::FaceBatchLoader loader(files, o);
    REQUIRE(loader.batches_per_epoch() == 3);  // 11 / 3, the partial batch dropped
    const std::vector<int64_t> p0 = loader.permutation(0), p1 = loader.permutation(1);
    REQUIRE(std::set<int64_t>(p0.begin(), p0.end()).size() == 11);
    REQUIRE(p0 != p1);
    REQUIRE(p0 == loader.permutation(0));
    // Whole epoch through the prefetching path == batches loaded one by one, also from a resume point.
    loader.start_epoch(1);
    std::vector<train::FaceBatch> seen;
    train::FaceBatch b;
    while (loader.next(b)) seen.push_back(b);
    REQUIRE(seen.size() == 3);
    int flipped = 0;
    for (const auto& s : seen) {
        const train::FaceBatch direct = loader.load(1, p1, s.index);
        REQUIRE(pin::test::bitwise_equal(s.images, direct.images));
        for (int64_t i = 0; i < 3; ++i) {
            const io::FaceImage f = io::load_face_image(files[static_cast<size_t>(s.sources[static_cast<size_t>(i)])]);
            const float* got = s.images.data() + i * 12544;
            const bool same = std::equal(f.pixels.begin(), f.pixels.end(), got);
            bool mirror = true;
            for (int y = 0; y < 112 && mirror; ++y)
                for (int x = 0; x < 112; ++x)
                    if (got[y * 112 + x] != f.pixels[static_cast<size_t>(y * 112 + 111 - x)]) {
                        mirror = false;
                        break;
                    }
            REQUIRE((same || mirror));
            flipped += !same;
        }
    }
    REQUIRE(flipped > 0);
    REQUIRE(flipped < 9);
    loader.start_epoch(1, 2);
    REQUIRE(loader.next(b));
    REQUIRE(b.index == 2);
    REQUIRE(pin::test::bitwise_equal(b.images, seen[2].images));
    REQUIRE_FALSE(loader.next(b));
    REQUIRE_THROWS_WITH(train::FaceBatchLoader(std::vector<std::string>(files.begin(), files.begin() + 2), o),
                        Catch::Contains("fewer than one batch of 3"));
    // A broken image surfaces from the prefetch thread with its name.
    std::FILE* f = std::fopen(files[0].c_str(), "wb");
    std::fputs("not a png", f);
    std::fclose(f);
    train::FaceBatchOptions plain;
    plain.batch = 11;
    plain.shuffle = false;
    train::FaceBatchLoader broken(files, plain);
    broken.start_epoch(0);
    REQUIRE_THROWS_WITH(broken.next(b), Catch::Contains(files[0]) && Catch::Contains("not a readable image"));
    fs::remove_all(dir);
}

TEST_CASE("checkpoints restore weights and momentum exactly and refuse other settings", "[train][checkpoint]") {
    nn::Linear a(7, 5), b(7, 5);
    a.reset_parameters(1, 1);
    b.reset_parameters(2, 2);
    nn::SGD sa(a.parameters(), 0.1f), sb(b.parameters(), 0.1f);
    for (auto& p : a.parameters()) p.param->grad = pin::test::random_tensor(p.param->value.shape(), 3);
    sa.step();
    sa.step();
    const std::string path = (fs::temp_directory_path() / "pin_test_checkpoint.safetensors").string();
    const std::map<std::string, std::string> config = {{"batch", "20"}, {"lambda", "0.015"}};
    train::save_checkpoint(path, {"agent", {3, 4, 25}, 0, config}, a.parameters(), a.parameters(), sa);
    const train::Checkpoint ck = train::load_checkpoint(path, "agent", config, b.parameters(), b.parameters(), sb);
    REQUIRE(ck.position.epoch == 3);
    REQUIRE(ck.position.batch == 4);
    REQUIRE(ck.position.step == 25);
    REQUIRE(sb.steps() == 2);
    for (size_t i = 0; i < a.parameters().size(); ++i) {
        REQUIRE(pin::test::bitwise_equal(a.parameters()[i].param->value, b.parameters()[i].param->value));
        REQUIRE(pin::test::bitwise_equal(sa.velocity()[i], sb.velocity()[i]));
    }
    REQUIRE_THROWS_WITH(train::load_checkpoint(path, "dae", config, b.parameters(), b.parameters(), sb),
                        Catch::Contains("a 'agent' checkpoint, this command resumes 'dae' training"));
    REQUIRE_THROWS_WITH(train::load_checkpoint(path, "agent", {{"batch", "8"}, {"lambda", "0.015"}}, b.parameters(), b.parameters(), sb),
                        Catch::Contains("batch=20 (now 8)"));
    // A setting newer than the checkpoint: absent means its stated old value, and only that.
    std::map<std::string, std::string> newer = config;
    newer["emulate_gpu_bf16"] = "0";
    REQUIRE_THROWS_WITH(train::load_checkpoint(path, "agent", newer, b.parameters(), b.parameters(), sb),
                        Catch::Contains("emulate_gpu_bf16=(absent) (now 0)"));
    REQUIRE_NOTHROW(train::load_checkpoint(path, "agent", newer, b.parameters(), b.parameters(), sb, {{"emulate_gpu_bf16", "0"}}));
    newer["emulate_gpu_bf16"] = "1";
    REQUIRE_THROWS_WITH(train::load_checkpoint(path, "agent", newer, b.parameters(), b.parameters(), sb, {{"emulate_gpu_bf16", "0"}}),
                        Catch::Contains("emulate_gpu_bf16=0 (now 1)"));
    nn::Linear c(7, 6);
    nn::SGD sc(c.parameters(), 0.1f);
    REQUIRE_THROWS_WITH(train::load_checkpoint(path, "agent", config, c.parameters(), c.parameters(), sc),
                        Catch::Contains(path) && Catch::Contains("has shape"));
    io::write_safetensors(path, io::parameter_entries(a.parameters()));
    REQUIRE_THROWS_WITH(train::load_checkpoint(path, "agent", config, b.parameters(), b.parameters(), sb),
                        Catch::Contains("not a pin training checkpoint"));
    fs::remove(path);
}

TEST_CASE("the learning rate halves every lr_halve_every epochs", "[train]") {
    train::LoopOptions o;
    o.lr = 0.01f;
    o.lr_halve_every = 20;
    REQUIRE(train::scheduled_lr(o, 0) == 0.01f);
    REQUIRE(train::scheduled_lr(o, 19) == 0.01f);
    REQUIRE(train::scheduled_lr(o, 20) == 0.005f);
    REQUIRE(train::scheduled_lr(o, 45) == 0.0025f);
    o.lr_halve_every = 0;
    REQUIRE(train::scheduled_lr(o, 100) == 0.01f);
}
