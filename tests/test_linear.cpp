// Linear layer against the float64 reference, finite differences, threads, errors; the projection
// coefficients (the same register tiles, here in the kernel tests of every SIMD path).
#include "helpers.hpp"
#include "pin/core/parallel.hpp"
#include "pin/cpu/linear.hpp"
#include "pin/cpu/projection.hpp"
#include "pin/cpu/reference.hpp"

using namespace pin;
using namespace pin::test;

TEST_CASE("linear forward/backward match the float64 reference", "[linear]") {
    struct Case {
        int64_t batch, in, out;
    };
    // The weight gradients of the last two cut rows into panels (out >= 192, few batch rows), the
    // last one into two runs of columns with a tail.
    for (const Case c : {Case{1, 7, 5}, Case{3, 1029, 17}, Case{16, 2048, 33}, Case{5, 31, 2500}, Case{3, 1500, 203}}) {
        INFO("batch " << c.batch << " in " << c.in << " out " << c.out);
        const Tensor x = random_tensor({c.batch, c.in}, 100), w = random_tensor({c.out, c.in}, 101, 0.05f),
                     b = random_tensor({c.out}, 102), dy = random_tensor({c.batch, c.out}, 103);
        Tensor y = Tensor::empty({c.batch, c.out}), dx = Tensor::empty(x.shape()), dw = Tensor::empty(w.shape()),
               db = Tensor::empty(b.shape());
        cpu::linear_forward(x, w, b, y);
        cpu::linear_backward_input(dy, w, dx);
        cpu::linear_backward_params(x, dy, dw, db);
        const DVec xd = to_nchw_doubles(x), wd = to_nchw_doubles(w), bd = to_nchw_doubles(b), dyd = to_nchw_doubles(dy);
        DVec rdx, rdw, rdb, sdx, sdw, sdb;
        reference::linear_backward(xd, wd, dyd, c.batch, c.in, c.out, rdx, rdw, rdb);
        reference::linear_backward(abs_of(xd), abs_of(wd), abs_of(dyd), c.batch, c.in, c.out, sdx, sdw, sdb);
        require_close(y, reference::linear_forward(xd, wd, bd, c.batch, c.in, c.out),
                      reference::linear_forward(abs_of(xd), abs_of(wd), abs_of(bd), c.batch, c.in, c.out), 2e-5, "forward");
        require_close(dx, rdx, sdx, 2e-5, "dx");
        require_close(dw, rdw, sdw, 2e-5, "dw");
        require_close(db, rdb, sdb, 2e-5, "db");
    }
}

TEST_CASE("linear backward agrees with finite differences", "[linear][gradcheck]") {
    Tensor x = random_tensor({4, 50}, 110), w = random_tensor({9, 50}, 111, 0.1f), b = random_tensor({9}, 112);
    const Tensor dy = random_tensor({4, 9}, 113);
    Tensor y = Tensor::empty({4, 9}), dx = Tensor::empty(x.shape()), dw = Tensor::empty(w.shape()), db = Tensor::empty({9});
    cpu::linear_backward_input(dy, w, dx);
    cpu::linear_backward_params(x, dy, dw, db);
    auto loss = [&] {
        cpu::linear_forward(x, w, b, y);
        return dot_double(y, dy);
    };
    require_directional_derivative(x, dx, loss, 114, 1e-3, "dx");
    require_directional_derivative(w, dw, loss, 115, 1e-3, "dw");
    require_directional_derivative(b, db, loss, 116, 1e-3, "db");
}

TEST_CASE("linear is identical for 1 and 2 threads and checks shapes", "[linear][threads][errors]") {
    // 70 outputs: the weight gradient cut by columns; 250: by panels of rows and runs of columns.
    for (const int64_t outputs : {70, 250}) {
        INFO("outputs " << outputs);
        const Tensor x = random_tensor({16, 3000}, 120), w = random_tensor({outputs, 3000}, 121, 0.02f),
                     b = random_tensor({outputs}, 122), dy = random_tensor({16, outputs}, 123);
        Tensor y[2], dx[2], dw[2], db[2];
        for (int t = 0; t < 2; ++t) {
            set_num_threads(t + 1);
            y[t] = Tensor::empty({16, outputs});
            dx[t] = Tensor::empty(x.shape());
            dw[t] = Tensor::empty(w.shape());
            db[t] = Tensor::empty(b.shape());
            cpu::linear_forward(x, w, b, y[t]);
            cpu::linear_backward_input(dy, w, dx[t]);
            cpu::linear_backward_params(x, dy, dw[t], db[t]);
        }
        set_num_threads(2);
        REQUIRE(bitwise_equal(y[0], y[1]));
        REQUIRE(bitwise_equal(dx[0], dx[1]));
        REQUIRE(bitwise_equal(dw[0], dw[1]));
        REQUIRE(bitwise_equal(db[0], db[1]));
    }
    // A shape error names both sizes.
    const Tensor w = random_tensor({70, 3000}, 121, 0.02f), b = random_tensor({70}, 122);
    Tensor bad = Tensor::empty({16, 70});
    REQUIRE_THROWS_WITH(cpu::linear_forward(random_tensor({16, 2999}, 1), w, b, bad), Catch::Contains("x has 2999 features, W expects 3000"));
}

// Batches 1..13 put every row count of a register tile (up to 12 rows, 6 with two or four vectors)
// at the end of the batch. N: whole column blocks (16 floats on AVX2, 64 on AVX-512) and a tail
// (the zero-padded panel), whole blocks only, a tail only; D over several 1024-row chunks.
TEST_CASE("project_coefficients matches the float64 reference for every tile height", "[linear][projection]") {
    for (const auto& [D, N] : std::vector<std::pair<int64_t, int64_t>>{{203, 3 * 64 + 5}, {2100, 128}, {1100, 5}}) {
        const Tensor basis = random_tensor({D, N}, 130, 0.1f), mean = random_tensor({D}, 131);
        for (int64_t batch = 1; batch <= 13; ++batch) {
            INFO("D " << D << ", N " << N << ", batch " << batch);
            const Tensor x = random_tensor({batch, D}, 132 + static_cast<uint64_t>(batch));
            Tensor c = Tensor::empty({batch, N});
            cpu::project_coefficients(basis.data(), mean.data(), D, N, x.data(), batch, c.data());
            DVec ref(static_cast<size_t>(batch * N)), scale(ref.size());
            for (int64_t b = 0; b < batch; ++b)
                for (int64_t j = 0; j < N; ++j) {
                    double s = 0, a = 0;
                    for (int64_t d = 0; d < D; ++d) {
                        const double t = (static_cast<double>(x.data()[b * D + d]) - mean.data()[d]) * basis.data()[d * N + j];
                        s += t;
                        a += std::fabs(t);
                    }
                    ref[static_cast<size_t>(b * N + j)] = s;
                    scale[static_cast<size_t>(b * N + j)] = a;
                }
            require_close(c, ref, scale, 2e-5, "coefficients");
        }
    }
}

// Tiles of 3 (AVX2) or 4 (AVX-512) rows of B by up to 4 images: batches 1..9 end on every image
// count, D = 203 leaves every row count at the end of a 64-row block, N with and without a
// partial last vector; weights q and none.
TEST_CASE("reconstruct_from_coefficients matches the float64 reference", "[linear][projection]") {
    for (const auto& [D, N] : std::vector<std::pair<int64_t, int64_t>>{{203, 197}, {130, 64}, {67, 5}}) {
        const Tensor basis = random_tensor({D, N}, 140, 0.1f), mean = random_tensor({D}, 141);
        for (int64_t batch = 1; batch <= 9; ++batch)
            for (bool weighted : {true, false}) {
                INFO("D " << D << ", N " << N << ", batch " << batch << (weighted ? ", weighted" : ""));
                const Tensor c = random_tensor({batch, N}, 142 + static_cast<uint64_t>(batch));
                const Tensor q = random_tensor({batch, N}, 160 + static_cast<uint64_t>(batch));
                Tensor out = Tensor::empty({batch, D});
                cpu::reconstruct_from_coefficients(basis.data(), mean.data(), D, N, c.data(), weighted ? q.data() : nullptr,
                                                   batch, out.data());
                DVec ref(static_cast<size_t>(batch * D)), scale(ref.size());
                for (int64_t b = 0; b < batch; ++b)
                    for (int64_t d = 0; d < D; ++d) {
                        double s = mean.data()[d], a = std::fabs(s);
                        for (int64_t j = 0; j < N; ++j) {
                            const double w = weighted ? static_cast<double>(q.data()[b * N + j]) : 1.0;
                            const double t = static_cast<double>(basis.data()[d * N + j]) * (w * c.data()[b * N + j]);
                            s += t;
                            a += std::fabs(t);
                        }
                        ref[static_cast<size_t>(b * D + d)] = s;
                        scale[static_cast<size_t>(b * D + d)] = a;
                    }
                require_close(out, ref, scale, 2e-5, "reconstruction");
            }
    }
}
