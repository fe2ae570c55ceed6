// pin - the command-line program.
//   pin info                                   this build: SIMD path, threads, CUDA, model size
//   pin eigen --data DIR -o FILE [...]         eigenfaces of a face folder (mean, basis, eigenvalues)
//   pin defend --in DIR|FILE --out DIR [...]   defended faces as PNG (PIN, PCA-k, DAE, JPEG, bit depth or none)
//   pin agent-forward --model DIR --in X --out Y  the agent on a tensor file (checks against PyTorch)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "pin/core/progress.hpp"
#include "pin/io/face_dataset.hpp"
#include "pin/io/image.hpp"
#include "pin/io/state_dict.hpp"
#include "pin/model/defense.hpp"
#include "pin/model/eigenbasis.hpp"
#include "pin/pin.hpp"
#include "cli/options.hpp"
#include "cli/device.hpp"
#include "cli/train_commands.hpp"
#include "cli/eval_commands.hpp"
#include "cli/align_commands.hpp"
#include "cli/demo_command.hpp"

namespace {
using cli::Options;
using cli::fail_usage;
using cli::int_option;

void usage(std::FILE* f) {
    std::fprintf(f,
                 "usage: pin <command> [options]\n"
                 "commands:\n"
                 "  info        describe this build (SIMD path, threads, CUDA) and the PIN model size\n"
                 "  eigen       eigenfaces of a folder of aligned faces\n"
                 "              --data DIR      faces as DIR/<person>/*.png|jpg (or DIR/images/<person>/),\n"
                 "                              or a text file listing image paths\n"
                 "              --split S       train | dev-test | all (default train; needs DIR/pairs.txt,\n"
                 "                              otherwise all images are used, with a notice)\n"
                 "              --count N       use N faces, drawn with --seed (default 5000)\n"
                 "              --keep K        eigenfaces to keep (default 2500)\n"
                 "              --seed S        selection seed (default 0)\n"
                 "              -o FILE         output safetensors (eig_vec, avg_face, eig_val)\n"
                 "  defend      defend faces: writes the defended faces as PNG, mirroring the input tree\n"
                 "              --in DIR|FILE   aligned faces (PNG/JPEG/BMP/PGM; colour -> gray, resized to 112)\n"
                 "              --out DIR       output folder\n"
                 "              --defense D     pin (default) | pca-K (first K eigenfaces) | dae | jpeg-Q | bits-K | none\n"
                 "              --model PATH    PIN model folder or single safetensors file (default: weights/)\n"
                 "              --basis FILE    eigenbasis for pca-K (default: the model folder's)\n"
                 "              --mode M        sample (default) | threshold | mean-threshold | expectation\n"
                 "              --seed S        mask seed (default 0); same seed -> same files\n"
                 "              --batch B       faces per batch (default 16)\n"
                 "              --device D      cpu (default) | cuda (PIN, --mode sample; same masks as the CPU;\n"
                 "                              the GPU GEMM kernels it reached go to stderr)\n"
                 "              --gpu-math M    with cuda: fp32 (default) | tf32 | bf16 tensor cores (then the settings\n"
                 "                              below default to the H200's fastest: vector, bf16, wgmma, wait, l1)\n"
                 "              --gpu-gather G  with cuda: generic (default) | rows | vector (with bf16 math: the\n"
                 "                              wide and asynchronous-copy tensor-core kernels)\n"
                 "              --gpu-storage S with cuda: fp32 (default) | bf16 activations between convolutions\n"
                 "              --gpu-tile T    with cuda: 64 (default) | 128 | wgmma, the tensor-core tile\n"
                 "                              (256 x T; 128 where the output channels are a multiple of 128)\n"
                 "              --gpu-pipeline P with wgmma: wait (default) | inflight (one slice's MMAs in flight)\n"
                 "                              | ws (a copying warpgroup feeding two MMA warpgroups) | pingpong\n"
                 "                              (the two on tiles of their own in turn)\n"
                 "              --gpu-loads L   with ws / pingpong: cp-async (default) | tma (the convolutions'\n"
                 "                              operands brought by tensor copies)\n"
                 "              --gpu-mma-n N   with tma: 128 (default) | 256 (the wide m64n256k16 / m64n224k16 tiles where a\n"
                 "                              layer takes them)\n"
                 "              --gpu-gather-cache C\n"
                 "                              with cuda: l2 (default) | l1 (the gathered activations' copies\n"
                 "                              through L1 too)\n"
                 "              --gpu-tune      with --gpu-math bf16: first run each bfloat16 configuration this GPU\n"
                 "                              runs on a batch, check it against the fp32 forward, time those that\n"
                 "                              agree and use the fastest (stderr names it, as flags to pass next time)\n"
                 "              --gpu-tune-repeats N  timed forwards per configuration (default 3)\n"
                 "              --gpu-tune-only IDS  only these configurations, comma-separated: tile64, tile64-l1,\n"
                 "                              tile128, wgmma-wait, wgmma-inflight, ws, pingpong, ws-tma, pingpong-tma,\n"
                 "                              ws-tma-n256, pingpong-tma-n256 (tuning prints each one's id)\n"
                 "  agent-forward  run the agent on x (B,1,112,112) from a safetensors file; writes its\n"
                 "              DAE output 'dae', ESN features 'features', logits-free 'p'\n"
                 "              --model DIR (agent.safetensors), --in FILE, --out FILE\n"
                 "  export      a model folder for shipping: --model DIR --out DIR [--half-from N] (eigenfaces and\n"
                 "              agent tensors of >= N elements, default 1024, as float16; 0 = all float32)\n"
                 "  pretrain-dae  train the denoising autoencoder (MSE to the clean face, noise 0.04)\n"
                 "              --data DIR --split S (default train) --out DIR (checkpoint, log.csv, dae.safetensors)\n"
                 "              --epochs E (10) --batch B (16) --lr L (0.01) --momentum M (0.9) --lr-halve-every E (20)\n"
                 "              --noise I (0.04) --seed S (0) --flip --steps N (stop after N steps) --resume\n"
                 "  train       train the agent by policy gradient (DAE frozen); --out becomes a model folder\n"
                 "              --data DIR --split S (train) --dae FILE --basis FILE --out DIR\n"
                 "              --estimator reinforce|rloo|local (local) --cost l2|mse (l2) --lambda L (0.015)\n"
                 "              --masks K (30) --epochs E (200) --batch B (20) --lr L (0.01) --lr-halve-every E (20)\n"
                 "              --momentum M (0.9) --noise I (0.04) --seed S (0) --flip --steps N --resume\n"
                 "              --clip-norm C   rescale the gradient to L2 norm C when larger (default 1; 0: off)\n"
                 "              --features-lr-scale F  lr multiplier for all but the head's output bias (1)\n"
                 "              --head-init-scale S  output layer weights x S and bias 0 at the start (0.01;\n"
                 "                              1 = PyTorch's default, which saturates most sigmoids)\n"
                 "              --emulate-gpu-bf16  on the CPU: every GEMM operand rounded to bfloat16 as\n"
                 "                              --gpu-math bf16 rounds them, to see whether the GPU's fast\n"
                 "                              settings train as well (docs/training.md)\n"
                 "              --device D      cpu (default) | cuda (the whole step on the GPU; checkpoints are the\n"
                 "                              same format, so a run may resume on either device; the GPU GEMM\n"
                 "                              kernels it reached go to stderr)\n"
                 "              --gpu-math M    with cuda: fp32 (default) | tf32 | bf16 tensor cores (then the settings\n"
                 "                              below default to the H200's fastest: vector, bf16, wgmma, wait, l1)\n"
                 "              --gpu-gather G  with cuda: generic (default) | rows | vector (with bf16 math: the\n"
                 "                              wide and asynchronous-copy tensor-core kernels)\n"
                 "              --gpu-storage S with cuda: fp32 (default) | bf16 activations in the frozen DAE\n"
                 "              --gpu-tile T    with cuda: 64 (default) | 128 | wgmma, the tensor-core tile\n"
                 "                              (256 x T; 128 where the output channels are a multiple of 128)\n"
                 "              --gpu-pipeline P with wgmma: wait (default) | inflight (one slice's MMAs in flight)\n"
                 "                              | ws (a copying warpgroup feeding two MMA warpgroups) | pingpong\n"
                 "                              (the two on tiles of their own in turn)\n"
                 "              --gpu-loads L   with ws / pingpong: cp-async (default) | tma (the convolutions'\n"
                 "                              operands brought by tensor copies)\n"
                 "              --gpu-mma-n N   with tma: 128 (default) | 256 (the wide m64n256k16 / m64n224k16 tiles where a\n"
                 "                              layer takes them)\n"
                 "              --gpu-gather-cache C\n"
                 "                              with cuda: l2 (default) | l1 (the gathered activations' copies\n"
                 "                              through L1 too)\n"
                 "              --gpu-tune      with --gpu-math bf16: first run one training step of each bfloat16\n"
                 "                              configuration this GPU runs at --batch, check its gradients against the\n"
                 "                              fp32 step's, time those that agree and train with the fastest (stderr\n"
                 "                              names it as flags)   --gpu-tune-repeats N  timed steps each (default 3)\n"
                 "              --gpu-tune-only IDS  only these configurations (as for defend)\n"
                 "              Ctrl-C saves a checkpoint and exits; --resume continues bit-identically\n"
                 "  eval        face verification on LFW-style pairs through a defense, clean or attacked\n"
                 "              --data DIR      pairs.txt + images/<name>/<name>_NNNN.png (e.g. ../shared/data/lfw112)\n"
                 "              --folds F       e.g. 5-8 or 1,3,5-6 (default: all folds of pairs.txt)\n"
                 "              --defense D     none (default) | pin | pca-K | dae | jpeg-Q (quality Q) | bits-K (K-bit pixels)\n"
                 "                              (--model DIR, --basis FILE, --mode M)\n"
                 "              --attack A      none (default) | fgsm | ifgsm | pgd (L2) | pgd-linf | deepfool | di2-fgsm\n"
                 "                              | random-search | evolutionary (black box) | sticker (20x72 forehead patch)\n"
                 "              --protocol P    offline (attack the bare recognizer, default) | online (through the defense)\n"
                 "              --pin-gradient G  online through PIN: sample (default) | eot | bpda | expectation | fixed\n"
                 "                              | expectation-agent (the surrogate differentiated through the agent too)\n"
                 "              --eot M         masks averaged per step by --pin-gradient eot (20)\n"
                 "              --eps I         attack intensity ||eta|| / ||x|| (0.04)   --iterations N (10)\n"
                 "              --queries Q     random search: points tried (20); evolutionary: budget (10000; MSE\n"
                 "                              reported at 1000 / 5000 / 10000)\n"
                 "              --overshoot O (DeepFool, 0.02)  --momentum M (DI2-FGSM, sticker; 1)  --sticker-step S (0.04)\n"
                 "              --identities N  sticker: faces of different people, each against one target (1000)\n"
                 "              --pairs N       attack and score only N pairs spread evenly over the folds (default all)\n"
                 "              --cache DIR     share clean embeddings and offline-attacked faces between runs\n"
                 "              --json FILE     eer, auc, tar_at_far, pairs, scores, roc, ... (written atomically)\n"
                 "              --examples DIR  PNGs of a few pairs' first faces: clean, attacked, defended\n"
                 "              --recognizer MANIFEST  face-api weights manifest (default: weights/face-api/, from setup.sh)\n"
                 "              --device D      cpu (default) | cuda (the PIN defense's forward, --mode sample; the\n"
                 "                              recognizer and the attacks stay on the CPU; the JSON has the GPU\n"
                 "                              GEMM kernels it reached and their GFLOP, gpu_gemm_launches,\n"
                 "                              gpu_gemm_gflop and gpu_gemm_gflop_total)\n"
                 "              --gpu-math M    with cuda: fp32 (default) | tf32 | bf16 tensor cores (then the settings\n"
                 "                              below default to the H200's fastest: vector, bf16, wgmma, wait, l1)\n"
                 "              --gpu-gather G  with cuda: generic (default) | rows | vector (with bf16 math: the\n"
                 "                              wide and asynchronous-copy tensor-core kernels)\n"
                 "              --gpu-storage S with cuda: fp32 (default) | bf16 activations between convolutions\n"
                 "              --gpu-tile T    with cuda: 64 (default) | 128 | wgmma, the tensor-core tile\n"
                 "                              (256 x T; 128 where the output channels are a multiple of 128)\n"
                 "              --gpu-pipeline P with wgmma: wait (default) | inflight (one slice's MMAs in flight)\n"
                 "                              | ws (a copying warpgroup feeding two MMA warpgroups) | pingpong\n"
                 "                              (the two on tiles of their own in turn)\n"
                 "              --gpu-loads L   with ws / pingpong: cp-async (default) | tma (the convolutions'\n"
                 "                              operands brought by tensor copies)\n"
                 "              --gpu-mma-n N   with tma: 128 (default) | 256 (the wide m64n256k16 / m64n224k16 tiles where a\n"
                 "                              layer takes them)\n"
                 "              --gpu-gather-cache C\n"
                 "                              with cuda: l2 (default) | l1 (the gathered activations' copies\n"
                 "                              through L1 too)\n"
                 "              --gpu-tune      with --gpu-math bf16: as for defend, at --batch or the pairs' number of\n"
                 "                              faces if smaller (the JSON has the chosen gpu_* settings and\n"
                 "                              gpu_tuned; --cache keys on the choice)\n"
                 "              --gpu-tune-repeats N, --gpu-tune-only IDS  as for defend\n"
                 "  embed       recognizer embeddings: --in DIR|LIST --out FILE.safetensors ('embeddings', files in metadata)\n"
                 "  align       find, landmark and align the faces of photos (face-api tiny face detector + 68 landmarks)\n"
                 "              --in PHOTO|DIR  photos (searched recursively)   --out DIR  one gray 112x112 PNG per face,\n"
                 "                              mirroring the input tree (2nd, 3rd face of a photo: NAME_face2.png, ...)\n"
                 "              --json FILE     photos, photos_with_face, faces, per photo boxes, scores, 5 points and\n"
                 "                              68 landmarks (default OUT/faces.json)\n"
                 "              --min-score S   detection score threshold (default 0.3)\n"
                 "              --input-size N  detector input, a multiple of 32 (default auto: the photo's side, 160..416)\n"
                 "              --color         also write 150x150 colour chips (NAME.rgb150.png)\n"
                 "              --face-api DIR  face-api model folder (default: weights/face-api/, from setup.sh)\n"
                 "  demo        the main job: every face of the photos (default: face-api's demo photos) found,\n"
                 "              aligned, attacked (L2 PGD, dodging) and defended with PIN; prints similarities,\n"
                 "              writes OUT/montage.png and OUT/demo.json\n"
                 "              --in PHOTO|DIR  --out DIR (demo)  --model DIR (weights/pin-default)\n"
                 "              --eps I (0.04)  --iterations N (10)  --seed S (0)\n"
                 "common options:\n"
                 "  --threads T CPU threads (default: all hardware threads)\n"
                 "  --no-progress  no progress bars\n"
                 "  -h, --help  this text\n"
                 "--device cuda runs on the first GPU CUDA makes visible; CUDA_VISIBLE_DEVICES=N picks another\n"
                 "benchmarks: pin-bench --help\n");
}

int cmd_info() {
    pin::model::Agent agent(2500);
    std::printf("pin %s\n", "0.1.0");
    std::printf("  SIMD path        %s (%d float lanes)\n", pin::simd::VecF::kName, pin::simd::VecF::kLanes);
    std::printf("  CPU threads      %d\n", pin::num_threads());
#if defined(PIN_HAVE_CUDA)
    std::printf("  CUDA kernels     built\n");
    std::string reason;
    if (pin::cuda::device_available(&reason))
        std::printf("  CUDA device      %s (--device cuda; --gpu-math, --gpu-gather, --gpu-storage, --gpu-tile, --gpu-pipeline, --gpu-loads, --gpu-mma-n, --gpu-gather-cache; --gpu-tune)\n", pin::cuda::device_name().c_str());
    else
        std::printf("  CUDA device      none usable: %s\n", reason.c_str());
#else
    std::printf("  CUDA kernels     not linked into this program\n");
#endif
    std::printf("  agent parameters DAE %lld, ESN %lld, head %lld\n",
                static_cast<long long>(agent.dae().parameter_count()),
                static_cast<long long>(agent.esn().parameter_count()),
                static_cast<long long>(agent.head().parameter_count()));
    return 0;
}

int cmd_eigen(const Options& o) {
    using Clock = std::chrono::steady_clock;
    const auto t_start = Clock::now();
    if (!o.values.count("data")) fail_usage("eigen needs --data DIR");
    if (!o.values.count("out")) fail_usage("eigen needs -o FILE");
    const std::string data = o.values.at("data"), out = o.values.at("out");
    const std::string split = o.values.count("split") ? o.values.at("split") : "train";
    const int64_t count = int_option(o, "count", 5000, 2, 1'000'000);
    const int64_t keep = int_option(o, "keep", 2500, 1, 1'000'000);
    const uint64_t seed = static_cast<uint64_t>(int_option(o, "seed", 0, 0, INT64_MAX));

    pin::io::FaceListing listing = pin::io::list_face_images(data, split);
    if (!listing.note.empty()) std::fprintf(stderr, "pin eigen: %s\n", listing.note.c_str());
    std::vector<std::string> files = listing.files;
    if (static_cast<int64_t>(files.size()) > count) {
        // Seeded Fisher-Yates on the sorted list, then keep the first `count`, sorted again.
        const pin::PhiloxStream rng(seed, 0xE16E);
        for (size_t i = files.size() - 1; i > 0; --i)
            std::swap(files[i], files[static_cast<size_t>(rng.bits(i) % (i + 1))]);
        files.resize(static_cast<size_t>(count));
        std::sort(files.begin(), files.end());
    } else if (static_cast<int64_t>(files.size()) < count) {
        std::fprintf(stderr, "pin eigen: split '%s' of %s has %zu faces, fewer than --count %lld: using all of them\n",
                     listing.split_used.c_str(), data.c_str(), files.size(), static_cast<long long>(count));
    }
    const int64_t n = static_cast<int64_t>(files.size());
    if (keep > n - 1) fail_usage("--keep " + std::to_string(keep) + " needs at least " + std::to_string(keep + 1) + " faces, have " + std::to_string(n));

    constexpr int kSize = 112, D = kSize * kSize;
    pin::Tensor faces = pin::Tensor::empty({n, D});
    std::vector<std::string> errors(static_cast<size_t>(n));
    std::vector<char> resized(static_cast<size_t>(n), 0), coloured(static_cast<size_t>(n), 0);
    {
        pin::ProgressBar bar("loading faces", n, "images");
        std::atomic<int64_t> done{0};
        pin::parallel_for(n, [&](int64_t i) {
            try {
                const pin::io::FaceImage img = pin::io::load_face_image(files[static_cast<size_t>(i)], kSize);
                std::copy(img.pixels.begin(), img.pixels.end(), faces.data() + i * D);
                resized[static_cast<size_t>(i)] = img.resized;
                coloured[static_cast<size_t>(i)] = img.converted_to_gray;
            } catch (const pin::Error& e) {
                errors[static_cast<size_t>(i)] = e.what();
            }
            const int64_t d = ++done;
            if (d % 64 == 0) bar.update(d);
        });
        bar.update(n);
    }
    for (const std::string& e : errors)
        if (!e.empty()) {
            std::fprintf(stderr, "pin eigen: %s\n", e.c_str());
            return 1;
        }
    const int64_t n_resized = std::count(resized.begin(), resized.end(), 1);
    const int64_t n_colour = std::count(coloured.begin(), coloured.end(), 1);
    if (n_resized) std::fprintf(stderr, "pin eigen: %lld images were not %dx%d and were resized\n", static_cast<long long>(n_resized), kSize, kSize);
    if (n_colour) std::fprintf(stderr, "pin eigen: %lld colour images were converted to gray\n", static_cast<long long>(n_colour));
    const double load_s = std::chrono::duration<double>(Clock::now() - t_start).count();

    std::fprintf(stderr, "pin eigen: %lld faces of split '%s', keeping %lld eigenfaces\n", static_cast<long long>(n),
                 listing.split_used.c_str(), static_cast<long long>(keep));
    pin::model::EigenBasisTimings timings;
    std::string last_stage;
    const pin::model::EigenBasis eb = pin::model::EigenBasis::compute(faces, keep, &timings, [&](const char* stage, double f) {
        if (last_stage != stage) {
            std::fprintf(stderr, "pin eigen: %s...\n", stage);
            last_stage = stage;
        }
        (void)f;
    });
    eb.save(out);
    const double total_s = std::chrono::duration<double>(Clock::now() - t_start).count();
    const double ortho = eb.orthonormality_error();
    // The batched projection against the formula evaluated in double, on two of the faces with a
    // random half of the eigenfaces selected.
    double proj_err = 0;
    {
        const int64_t K = eb.count();
        std::vector<float> q(static_cast<size_t>(2 * K)), rec(static_cast<size_t>(2 * D));
        const pin::PhiloxStream rng(seed, 0x9E0);
        for (size_t j = 0; j < q.size(); ++j) q[j] = rng.bernoulli(j, 0.5f);
        eb.project(faces.data(), q.data(), 2, rec.data());
        const float* B = eb.basis().data();
        const float* m = eb.mean().data();
        for (int64_t b = 0; b < 2; ++b) {
            std::vector<double> c(static_cast<size_t>(K), 0.0);
            for (int64_t d = 0; d < D; ++d)
                for (int64_t j = 0; j < K; ++j) c[static_cast<size_t>(j)] += static_cast<double>(B[d * K + j]) * (faces.data()[b * D + d] - m[d]);
            for (int64_t d = 0; d < D; ++d) {
                double r = m[d];
                for (int64_t j = 0; j < K; ++j) r += static_cast<double>(B[d * K + j]) * q[static_cast<size_t>(b * K + j)] * c[static_cast<size_t>(j)];
                proj_err = std::max(proj_err, std::fabs(r - rec[static_cast<size_t>(b * D + d)]));
            }
        }
    }
    std::printf("wrote %s: %lld eigenfaces of %d pixels from %lld faces\n", out.c_str(), static_cast<long long>(keep), D,
                static_cast<long long>(n));
    std::printf("time: load %.1f s, mean + Gram %.1f s, eigenpairs %.1f s, back-projection %.1f s, total %.1f s\n", load_s,
                timings.gram_s, timings.eigen_s, timings.backproject_s, total_s);
    std::printf("covariance eigenvalues (per-image variance along eigenface):");
    for (int64_t j : {1, 10, 100, 500, 1000, 2500})
        if (j <= keep) std::printf(" #%lld %.4g", static_cast<long long>(j), eb.eigenvalues().data()[j - 1]);
    double total = 0;
    for (int64_t j = 0; j < keep; ++j) total += eb.eigenvalues().data()[j];
    std::printf("; sum %.1f\n", total);
    std::printf("orthonormality: max |B^T B - I| = %.2e; projection vs float64 formula: max error %.2e\n", ortho, proj_err);
    if (!(ortho < 1e-3)) {
        std::fprintf(stderr, "pin eigen: the basis is not orthonormal (max |B^T B - I| = %.2e)\n", ortho);
        return 1;
    }
    return 0;
}


#ifndef PIN_DEFAULT_MODEL_DIR
#define PIN_DEFAULT_MODEL_DIR "weights/pin-default"
#endif

// `o` by value: --gpu-tune writes the configuration it chose into it (cli::apply_device).
int cmd_defend(Options o) {
    namespace fs = std::filesystem;
    if (!o.values.count("in")) fail_usage("defend needs --in DIR|FILE");
    if (!o.values.count("out")) fail_usage("defend needs --out DIR");
    const std::string in = o.values.at("in"), out_dir = o.values.at("out");
    const std::string defense_name = o.values.count("defense") ? o.values.at("defense") : "pin";
    const int64_t batch = int_option(o, "batch", 16, 1, 4096);
    (void)pin::model::parse_sampling_mode(o.get("mode", "sample"));  // a bad --mode fails for every defense

    pin::model::Defense defense = cli::load_defense(o, PIN_DEFAULT_MODEL_DIR, "pin");

    // The inputs: one file, or every image under a folder (sorted; outputs mirror the tree).
    std::vector<fs::path> inputs;
    std::error_code ec;
    fs::path base;
    if (fs::is_regular_file(in, ec)) {
        inputs.push_back(in);
        base = fs::path(in).parent_path();
    } else if (fs::is_directory(in, ec)) {
        base = in;
        for (auto it = fs::recursive_directory_iterator(in, ec); it != fs::recursive_directory_iterator(); it.increment(ec))
            if (it->is_regular_file() && pin::io::is_image_file(it->path())) inputs.push_back(it->path());
        std::sort(inputs.begin(), inputs.end());
    } else {
        std::fprintf(stderr, "pin defend: %s: no such file or folder\n", in.c_str());
        return 1;
    }
    if (inputs.empty()) {
        std::fprintf(stderr, "pin defend: %s: no images (png, jpg, jpeg, bmp, pgm, ppm)\n", in.c_str());
        return 1;
    }
    constexpr int kSize = 112, D = kSize * kSize;
    const int64_t n = static_cast<int64_t>(inputs.size());
    pin::check_batch_memory(std::min(batch, n), 30e6, "pin defend");  // the agent's activations per face

    // --device cuda: the PIN forward on the GPU, its weights copied there once; the same Philox masks.
    if (!cli::apply_device(o, defense, "defend", std::min(batch, n))) return 1;
    int64_t failures = 0, resized = 0, coloured = 0;
    double kept = 0;
    std::optional<pin::ProgressBar> bar;  // on stderr, unless --no-progress
    if (!o.has("no-progress")) bar.emplace("defending", n, "faces");
    for (int64_t b0 = 0; b0 < n; b0 += batch) {
        const int64_t bn = std::min(batch, n - b0);
        pin::Tensor x = pin::Tensor::zeros({bn, 1, kSize, kSize}, pin::Layout::NHWC);
        std::vector<std::string> errors(static_cast<size_t>(bn));
        std::vector<char> flags(static_cast<size_t>(bn) * 2, 0);
        pin::parallel_for(bn, [&](int64_t i) {
            try {
                const auto img = pin::io::load_face_image(inputs[static_cast<size_t>(b0 + i)].string(), kSize);
                std::copy(img.pixels.begin(), img.pixels.end(), x.data() + i * D);
                flags[static_cast<size_t>(2 * i)] = img.resized;
                flags[static_cast<size_t>(2 * i + 1)] = img.converted_to_gray;
            } catch (const pin::Error& e) {
                errors[static_cast<size_t>(i)] = e.what();
            }
        });
        const pin::model::DefenseOutput res = defense.inactivate(x, static_cast<uint64_t>(b0));
        if (res.q.defined()) kept += pin::cpu::reduce_sum(res.q);
        pin::parallel_for(bn, [&](int64_t i) {
            if (!errors[static_cast<size_t>(i)].empty()) return;
            const fs::path rel = fs::relative(inputs[static_cast<size_t>(b0 + i)], base);
            fs::path target = fs::path(out_dir) / rel;
            target.replace_extension(".png");
            try {
                std::error_code mk;
                fs::create_directories(target.parent_path(), mk);
                pin::io::write_face_png(target.string(), res.defended.data() + i * D, kSize);
            } catch (const pin::Error& e) {
                errors[static_cast<size_t>(i)] = e.what();
            }
        });
        for (int64_t i = 0; i < bn; ++i) {
            resized += flags[static_cast<size_t>(2 * i)];
            coloured += flags[static_cast<size_t>(2 * i + 1)];
            if (!errors[static_cast<size_t>(i)].empty()) {
                ++failures;
                std::fprintf(stderr, "\npin defend: %s\n", errors[static_cast<size_t>(i)].c_str());
            }
        }
        if (bar) bar->update(b0 + bn);
    }
    if (bar) bar->finish();
    if (resized) std::fprintf(stderr, "pin defend: %lld images were not %dx%d and were resized\n", static_cast<long long>(resized), kSize, kSize);
    if (coloured) std::fprintf(stderr, "pin defend: %lld colour images were converted to gray\n", static_cast<long long>(coloured));
    std::printf("defended %lld of %lld faces with %s into %s", static_cast<long long>(n - failures),
                static_cast<long long>(n), defense_name.c_str(), out_dir.c_str());
    if (defense.kind() == pin::model::DefenseKind::PIN) std::printf("; mean eigenfaces kept %.1f", kept / static_cast<double>(n));
    std::printf("\n");
    if (o.get("device", "cpu") == "cuda") cli::report_gpu_gemm_launches("defend");
    if (failures) {
        std::fprintf(stderr, "pin defend: %lld faces failed (listed above)\n", static_cast<long long>(failures));
        return 1;
    }
    return 0;
}

// A model folder for shipping: the eigenfaces and every agent tensor of at least --half-from
// elements stored as float16 (biases and PReLU slopes stay float32).
int cmd_export(const Options& o) {
    namespace fs = std::filesystem;
    if (!o.values.count("model") || !o.values.count("out")) fail_usage("export needs --model DIR and --out DIR");
    const std::string in = o.values.at("model"), out = o.values.at("out");
    const int64_t half_from = int_option(o, "half-from", 1024, 0, INT64_MAX);
    const pin::model::Defense d = pin::model::Defense::load_pin(in);  // checks the folder is a complete PIN model
    fs::create_directories(out);
    d.basis()->save((fs::path(out) / "eigenbasis.safetensors").string(), half_from > 0);
    pin::io::write_safetensors((fs::path(out) / "agent.safetensors").string(), pin::io::parameter_entries(d.agent()->parameters(), "", half_from),
                               {{"exported_from", in}});
    std::printf("wrote %s: eigenbasis.safetensors, agent.safetensors (%s)\n", out.c_str(),
                half_from > 0 ? ("float16 for tensors of >= " + std::to_string(half_from) + " elements").c_str() : "float32");
    return 0;
}

int cmd_agent_forward(const Options& o) {
    namespace fs = std::filesystem;
    for (const char* k : {"model", "in", "out"})
        if (!o.values.count(k)) fail_usage(std::string("agent-forward needs --") + k);
    const std::string agent_path = (fs::path(o.values.at("model")) / "agent.safetensors").string();
    const pin::io::SafetensorsContents weights = pin::io::read_safetensors(agent_path);
    const pin::Tensor& bias = weights.at("head.fc2.0.bias", agent_path);
    pin::model::Agent agent(bias.dim(0));
    pin::io::load_parameters(agent.parameters(), weights, agent_path);
    const pin::io::SafetensorsContents input = pin::io::read_safetensors(o.values.at("in"));
    const pin::Tensor& x = input.at("x", o.values.at("in"));
    PIN_CHECK(x.rank() == 4 && x.c() == 1 && x.h() == 112 && x.w() == 112, o.values.at("in"), ": x must be (B, 1, 112, 112), got ",
              pin::shape_to_string(x.shape()));
    for (int64_t i = 0; i < x.numel(); ++i)
        PIN_CHECK(std::isfinite(x.data()[i]), o.values.at("in"), ": x holds a non-finite value (", x.data()[i], ") at element ", i);
    const pin::Tensor xs = x.reshape(x.shape(), pin::Layout::NHWC);  // one channel: same memory
    const pin::Tensor d = agent.dae().forward(xs);
    const pin::Tensor f = agent.esn().forward(d);
    const pin::Tensor p = agent.head().forward(f);
    pin::io::write_safetensors(o.values.at("out"), {{"dae", d}, {"features", f}, {"p", p}});
    std::printf("wrote %s: p %s\n", o.values.at("out").c_str(), pin::shape_to_string(p.shape()).c_str());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    const Options o = cli::parse(argc, argv, usage);
    try {
        if (o.values.count("threads")) pin::set_num_threads(static_cast<int>(int_option(o, "threads", 1, 1, 1024)));
        const bool gpu_command = o.command == "defend" || o.command == "eval" || o.command == "train";
        if (o.has("device") && !gpu_command && o.get("device", "") != "cpu")
            fail_usage("--device " + o.get("device", "") + ": only defend, eval and train run on a GPU; " + o.command +
                       " runs on the CPU");
        for (const cli::GpuSetting& s : cli::gpu_settings())
            if (o.has(s.flag) && !gpu_command) fail_usage(std::string("--") + s.flag + ": " + o.command + " runs on the CPU");
        for (const char* flag : {"gpu-tune", "gpu-tune-repeats", "gpu-tune-only"})
            if (o.has(flag) && !gpu_command) fail_usage(std::string("--") + flag + ": " + o.command + " runs on the CPU");
        if (o.command == "info") return cmd_info();
        if (o.command == "eigen") return cmd_eigen(o);
        if (o.command == "defend") return cmd_defend(o);
        if (o.command == "agent-forward") return cmd_agent_forward(o);
        if (o.command == "export") return cmd_export(o);
        if (o.command == "pretrain-dae") return cli::cmd_pretrain_dae(o);
        if (o.command == "train") return cli::cmd_train(o);
        if (o.command == "eval") return cli::cmd_eval(o, PIN_DEFAULT_MODEL_DIR);
        if (o.command == "embed") return cli::cmd_embed(o);
        if (o.command == "align") return cli::cmd_align(o);
        if (o.command == "demo") return cli::cmd_demo(o, PIN_DEFAULT_MODEL_DIR);
        fail_usage("unknown command '" + o.command + "'");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "pin: %s\n", e.what());
        return 1;
    }
}
