// pin/io/face_dataset.hpp - folders of faces (root/<person>/<image>) and LFW's pairs file.
//
// Splits of ../shared/data/lfw112 (its README): "dev-test" = every person in folds 5-8 of
// pairs.txt, "train" = everybody else, "all" = every image. A folder without pairs.txt has only
// "all"; asking it for another split falls back to all images and says so.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "pin/core/error.hpp"

namespace pin::io {

struct FacePair {
    std::string person_a, person_b;
    int index_a = 0, index_b = 0;  // 1-based image numbers, as in LFW
    bool same = false;
    int fold = 0;                  // 1-based
};

// Reads LFW's View 2 pairs format: "folds<TAB>n", then per fold n same-person lines
// "name i j" and n different-person lines "name1 i name2 j".
// `path` names the source in error messages.
inline std::vector<FacePair> parse_pairs(std::istream& in, const std::string& path) {
    int folds = 0, per = 0;
    std::string line;
    PIN_CHECK(std::getline(in, line), path, ": empty pairs file");
    {
        std::istringstream first(line);
        PIN_CHECK((first >> folds >> per) && folds > 0 && per > 0, path,
                  ":1: first line must be '<folds> <pairs per class>', got '", line, "'");
        PIN_CHECK(folds <= 1000 && per <= 1000000, path, ":1: ", folds, " folds of ", per,
                  " pairs per class is more than a pairs file holds (at most 1000 folds, 1000000 pairs)");
    }
    std::vector<FacePair> pairs;
    int line_no = 1;
    for (int f = 1; f <= folds; ++f)
        for (int k = 0; k < 2 * per; ++k) {
            ++line_no;
            PIN_CHECK(std::getline(in, line), path, ":", line_no, ": file ends inside fold ", f, " (expected ",
                      2LL * folds * per, " pairs)");
            std::istringstream ls(line);
            std::vector<std::string> fields;
            std::string field;
            while (ls >> field) fields.push_back(field);
            FacePair p;
            p.fold = f;
            p.same = k < per;
            auto number = [&](const std::string& s) {
                char* end = nullptr;
                const long v = std::strtol(s.c_str(), &end, 10);
                PIN_CHECK(*end == '\0' && v >= 1 && v < 100000, path, ":", line_no, ": '", s,
                          "' is not an image number");
                return static_cast<int>(v);
            };
            if (p.same) {
                PIN_CHECK(fields.size() == 3, path, ":", line_no, ": a same-person pair needs 'name i j', got '", line, "'");
                p.person_a = p.person_b = fields[0];
                p.index_a = number(fields[1]);
                p.index_b = number(fields[2]);
            } else {
                PIN_CHECK(fields.size() == 4, path, ":", line_no, ": a different-person pair needs 'name1 i name2 j', got '",
                          line, "'");
                p.person_a = fields[0];
                p.index_a = number(fields[1]);
                p.person_b = fields[2];
                p.index_b = number(fields[3]);
            }
            pairs.push_back(p);
        }
    return pairs;
}

inline std::vector<FacePair> read_pairs_file(const std::string& path) {
    std::ifstream in(path);
    PIN_CHECK(in, path, ": cannot open the pairs file");
    return parse_pairs(in, path);
}

// How many different images `pairs` name (a person's image number counted once however many pairs
// it is in): the faces a verification run defends and embeds.
inline int64_t count_pair_images(const std::vector<FacePair>& pairs) {
    std::set<std::pair<std::string, int>> images;
    for (const FacePair& p : pairs) images.emplace(p.person_a, p.index_a), images.emplace(p.person_b, p.index_b);
    return static_cast<int64_t>(images.size());
}

inline bool is_image_file(const std::filesystem::path& p) {
    std::string ext = p.extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp" || ext == ".pgm" || ext == ".ppm";
}

struct FaceListing {
    std::vector<std::string> files;  // sorted
    std::string split_used;          // the split actually applied ("all" after a fall-back)
    std::string note;                // what the caller should tell the user, if anything
};

// Lists the face images of a dataset folder for a split ("train", "dev-test" or "all").
// Images live in root/images/<person>/ (lfw112) or root/<person>/. `root` may also be a text
// file listing image paths, one per line (relative ones are taken from the list's folder).
inline FaceListing list_face_images(const std::string& root, const std::string& split) {
    namespace fs = std::filesystem;
    PIN_CHECK(split == "train" || split == "dev-test" || split == "all", "unknown split '", split,
              "' (expected train, dev-test or all)");
    std::error_code ec;
    if (fs::is_regular_file(root, ec)) {
        FaceListing out;
        out.split_used = "all";
        if (split != "all") out.note = root + " is a list of images: split '" + split + "' is not defined there, using all";
        std::ifstream in(root);
        PIN_CHECK(in, root, ": cannot open the image list");
        std::string line;
        int line_no = 0;
        while (std::getline(in, line)) {
            ++line_no;
            while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
            if (line.empty() || line[0] == '#') continue;
            fs::path p(line);
            if (p.is_relative()) p = fs::path(root).parent_path() / p;
            PIN_CHECK(fs::is_regular_file(p, ec), root, ":", line_no, ": ", p.string(), " is not a file");
            out.files.push_back(p.string());
        }
        PIN_CHECK(!out.files.empty(), root, ": the image list is empty");
        return out;
    }
    PIN_CHECK(fs::is_directory(root, ec), root, ": not a folder");
    const fs::path images = fs::is_directory(fs::path(root) / "images", ec) ? fs::path(root) / "images" : fs::path(root);
    const fs::path pairs_path = fs::path(root) / "pairs.txt";
    FaceListing out;
    out.split_used = split;
    std::set<std::string> dev_people;
    if (split != "all") {
        if (fs::exists(pairs_path, ec)) {
            for (const FacePair& p : read_pairs_file(pairs_path.string()))
                if (p.fold >= 5 && p.fold <= 8) {
                    dev_people.insert(p.person_a);
                    dev_people.insert(p.person_b);
                }
        } else {
            out.split_used = "all";
            out.note = "no pairs.txt in " + root + ": split '" + split + "' is not defined there, using all images";
        }
    }
    for (const auto& person : fs::directory_iterator(images, ec)) {
        if (!person.is_directory()) continue;
        const std::string name = person.path().filename().string();
        if (out.split_used == "train" && dev_people.count(name)) continue;
        if (out.split_used == "dev-test" && !dev_people.count(name)) continue;
        for (const auto& f : fs::directory_iterator(person.path(), ec))
            if (f.is_regular_file() && is_image_file(f.path())) out.files.push_back(f.path().string());
    }
    PIN_CHECK(!ec, images.string(), ": cannot list: ", ec.message());
    std::sort(out.files.begin(), out.files.end());
    PIN_CHECK(!out.files.empty(), images.string(), ": no face images (root/<person>/*.png|jpg) for split '",
              out.split_used, "'");
    return out;
}

}  // namespace pin::io
