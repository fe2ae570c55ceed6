// The Defense API: a PIN model folder written here (random agent, eigenbasis of synthetic faces),
// masks and outputs independent of batching and threads, the modes, PCA and none.
#include <filesystem>
#include <unistd.h>

#include "helpers.hpp"
#include "pin/core/parallel.hpp"
#include "pin/model/defense.hpp"

using namespace pin;
using namespace pin::test;

TEST_CASE("PIN defense from a model folder: deterministic, batching-independent, modes", "[defense][slow]") {
    namespace fs = std::filesystem;
    const std::string dir = "/tmp/pin_defense_" + std::to_string(::getpid());
    fs::create_directories(dir);
    // Eigenbasis of 60 random-ish faces, 40 eigenfaces.
    const Tensor faces = random_tensor({60, 112 * 112}, 1, 0.3f);
    const model::EigenBasis basis = model::EigenBasis::compute(faces, 40);
    basis.save(dir + "/eigenbasis.safetensors");
    model::Agent agent(40);
    agent.reset_parameters(3);
    io::write_safetensors(dir + "/agent.safetensors", io::parameter_entries(agent.parameters()));

    const model::Defense d = model::Defense::load_pin(dir, model::SamplingMode::Bernoulli, 11);
    const Tensor x = random_tensor({3, 1, 112, 112}, 2, 0.5f, Layout::NHWC);
    set_num_threads(2);
    const model::DefenseOutput all = d.inactivate(x, 0);
    REQUIRE(all.p.shape() == Shape{3, 40});
    REQUIRE(all.q.shape() == Shape{3, 40});
    set_num_threads(1);
    const model::DefenseOutput last = d.inactivate(x.slice(2, 3), 2);  // image 2 alone, one thread
    set_num_threads(2);
    for (int64_t i = 0; i < 40; ++i) REQUIRE(last.q.data()[i] == all.q.data()[80 + i]);
    for (int64_t i = 0; i < 112 * 112; ++i) REQUIRE(last.defended.data()[i] == all.defended.data()[2 * 112 * 112 + i]);

    // The defended face is the projection with the returned mask.
    std::vector<float> expect(112 * 112);
    basis.project(x.data(), all.q.data(), 1, expect.data());
    for (int64_t i = 0; i < 112 * 112; ++i) REQUIRE(all.defended.data()[i] == expect[static_cast<size_t>(i)]);

    // Expectation mode: q == p.
    const model::Defense e = model::Defense::load_pin(dir, model::SamplingMode::Expectation, 0);
    const model::DefenseOutput eo = e.inactivate(x, 0);
    REQUIRE(bitwise_equal(eo.p, eo.q));

    // PCA-k and none.
    const model::DefenseOutput pca = model::Defense::pca(basis, 10).inactivate(x, 0);
    REQUIRE_FALSE(pca.q.defined());
    basis.truncated(10).project(x.data(), nullptr, 1, expect.data());
    for (int64_t i = 0; i < 112 * 112; ++i) REQUIRE(pca.defended.data()[i] == expect[static_cast<size_t>(i)]);
    REQUIRE(bitwise_equal(model::Defense::none().inactivate(x, 0).defended, x));
    // DAE-only: the autoencoder of the same weights.
    const model::DefenseOutput dae = model::Defense::load_dae(dir).inactivate(x, 0);
    REQUIRE(bitwise_equal(dae.defended, agent.dae().forward(x)));

    // One safetensors file holding both parts gives the same defense.
    {
        std::vector<io::SafetensorsEntry> all_entries = io::parameter_entries(agent.parameters());
        all_entries.push_back({"eig_vec", basis.basis()});
        all_entries.push_back({"avg_face", basis.mean()});
        io::write_safetensors(dir + "/model.safetensors", all_entries);
        const model::DefenseOutput single = model::Defense::load_pin(dir + "/model.safetensors", model::SamplingMode::Bernoulli, 11).inactivate(x, 0);
        REQUIRE(bitwise_equal(single.defended, all.defended));
        all_entries.push_back({"esn.extra", random_tensor({3}, 1)});
        io::write_safetensors(dir + "/model.safetensors", all_entries);
        REQUIRE_THROWS_WITH(model::Defense::load_pin(dir + "/model.safetensors"), Catch::Contains("unexpected tensors: esn.extra"));
    }
    // Bad input and a broken folder are reported.
    Tensor bad = x.clone();
    bad.data()[17] = std::nanf("");
    REQUIRE_THROWS_WITH(d.inactivate(bad, 0), Catch::Contains("non-finite value at element 17"));
    fs::remove(dir + "/agent.safetensors");
    REQUIRE_THROWS_WITH(model::Defense::load_pin(dir), Catch::Contains("not a PIN model"));
    fs::remove_all(dir);
}

TEST_CASE("Defense accelerator: used for PIN Bernoulli masks only, with the defense's seed; shapes checked",
          "[defense]") {
    const Tensor faces = random_tensor({30, 112 * 112}, 4, 0.3f);
    auto basis = std::make_shared<model::EigenBasis>(model::EigenBasis::compute(faces, 12));
    auto agent = std::make_shared<model::Agent>(12);
    agent->reset_parameters(5);
    model::Defense d = model::Defense::from_parts(basis, agent, model::SamplingMode::Bernoulli, 21);
    const Tensor x = random_tensor({2, 1, 112, 112}, 6, 0.5f, Layout::NHWC);
    const model::DefenseOutput cpu = d.inactivate(x, 9);
    // A stand-in backend that runs the CPU path itself and marks its output: the defense must
    // return the backend's result and pass it the seed and image numbers it was given.
    int calls = 0;
    uint64_t seen_seed = 0, seen_first = 0;
    const model::Defense plain = model::Defense::from_parts(basis, agent, model::SamplingMode::Bernoulli, 21);
    d.set_accelerator([&](const Tensor& batch, uint64_t seed, uint64_t first) {
        ++calls;
        seen_seed = seed;
        seen_first = first;
        model::DefenseOutput out = plain.inactivate(batch, first);
        out.defended.data()[0] = 1234.5f;
        return out;
    });
    REQUIRE(d.accelerated());
    const model::DefenseOutput acc = d.inactivate(x, 9);
    REQUIRE(calls == 1);
    REQUIRE(seen_seed == 21);
    REQUIRE(seen_first == 9);
    REQUIRE(acc.defended.data()[0] == 1234.5f);
    for (int64_t i = 0; i < cpu.q.numel(); ++i) REQUIRE(acc.q.data()[i] == cpu.q.data()[i]);
    // Other modes run on the CPU.
    d.set_sampling(model::SamplingMode::Threshold, 21);
    REQUIRE(!d.accelerated());
    (void)d.inactivate(x, 9);
    REQUIRE(calls == 1);
    // A backend returning the wrong shapes is an error naming them.
    d.set_sampling(model::SamplingMode::Bernoulli, 21);
    d.set_accelerator([](const Tensor&, uint64_t, uint64_t) { return model::DefenseOutput{}; });
    REQUIRE_THROWS_WITH(d.inactivate(x, 0), Catch::Matchers::Contains("accelerator returned wrong shapes"));
    // Only PIN takes one.
    model::Defense none = model::Defense::none();
    REQUIRE_THROWS_WITH(none.set_accelerator([](const Tensor&, uint64_t, uint64_t) { return model::DefenseOutput{}; }),
                        Catch::Matchers::Contains("only the PIN defense"));
}
