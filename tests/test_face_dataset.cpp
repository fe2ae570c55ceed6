// LFW pairs files and dataset splits: parsing, the train/dev-test split rule, clear errors.
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "helpers.hpp"
#include "pin/io/face_dataset.hpp"

using namespace pin;

namespace {
struct TempDir {
    std::filesystem::path path;
    TempDir() : path("/tmp/pin_ds_" + std::to_string(::getpid())) { std::filesystem::create_directories(path); }
    ~TempDir() { std::filesystem::remove_all(path); }
    void write(const std::string& rel, const std::string& text) const {
        std::filesystem::create_directories((path / rel).parent_path());
        std::ofstream(path / rel) << text;
    }
};
}  // namespace

TEST_CASE("pairs files: folds, same and different pairs, errors with line numbers", "[io][pairs]") {
    TempDir t;
    // 8 folds of 1 same + 1 different pair; people A..P.
    std::string text = "8\t1\n";
    for (int f = 0; f < 8; ++f) {
        const char a = static_cast<char>('A' + 2 * f), b = static_cast<char>('B' + 2 * f);
        text += std::string(1, a) + "_x\t1\t2\n" + std::string(1, a) + "_x\t1\t" + std::string(1, b) + "_y\t3\n";
    }
    t.write("lfw/pairs.txt", text);
    const auto pairs = io::read_pairs_file((t.path / "lfw/pairs.txt").string());
    REQUIRE(pairs.size() == 16);
    REQUIRE(pairs[0].same);
    REQUIRE(pairs[0].person_a == "A_x");
    REQUIRE(pairs[0].index_b == 2);
    REQUIRE_FALSE(pairs[1].same);
    REQUIRE(pairs[1].person_b == "B_y");
    REQUIRE(pairs[15].fold == 8);
    // Each fold names A_x #1 (twice), A_x #2 and B_y #3 of its own two people: 3 images a fold.
    REQUIRE(io::count_pair_images(pairs) == 24);
    REQUIRE(io::count_pair_images({pairs.begin(), pairs.begin() + 2}) == 3);
    REQUIRE(io::count_pair_images({pairs[1], pairs[1]}) == 2);
    REQUIRE(io::count_pair_images({}) == 0);

    // Splits: people of folds 5-8 (I..P) are dev-test, everybody else train.
    for (const char* person : {"A_x", "B_y", "I_x", "Z_z"}) t.write(std::string("lfw/images/") + person + "/" + person + "_0001.png", "x");
    const auto train = io::list_face_images((t.path / "lfw").string(), "train");
    const auto dev = io::list_face_images((t.path / "lfw").string(), "dev-test");
    REQUIRE(train.files.size() == 3);  // A_x, B_y, Z_z
    REQUIRE(dev.files.size() == 1);    // I_x
    REQUIRE(dev.files[0].find("I_x") != std::string::npos);

    t.write("bad1.txt", "eight 300\n");
    REQUIRE_THROWS_WITH(io::read_pairs_file((t.path / "bad1.txt").string()), Catch::Contains("bad1.txt:1: first line"));
    t.write("bad2.txt", "1\t1\nA\t1\t2\nA\t1\n");
    REQUIRE_THROWS_WITH(io::read_pairs_file((t.path / "bad2.txt").string()),
                        Catch::Contains("bad2.txt:3: a different-person pair needs"));
    t.write("bad3.txt", "1\t1\nA\t1\tx\n");
    REQUIRE_THROWS_WITH(io::read_pairs_file((t.path / "bad3.txt").string()), Catch::Contains("'x' is not an image number"));
    t.write("bad4.txt", "2\t1\nA\t1\t2\nA\t1\tB\t2\n");
    REQUIRE_THROWS_WITH(io::read_pairs_file((t.path / "bad4.txt").string()), Catch::Contains("file ends inside fold 2"));
    REQUIRE_THROWS_WITH(io::read_pairs_file((t.path / "none.txt").string()), Catch::Contains("cannot open the pairs file"));
    std::filesystem::create_directories(t.path / "empty");
    REQUIRE_THROWS_WITH(io::list_face_images((t.path / "empty").string(), "all"), Catch::Contains("no face images"));
    REQUIRE_THROWS_WITH(io::list_face_images((t.path / "lfw").string(), "validation"), Catch::Contains("unknown split"));
}
