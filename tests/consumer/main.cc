// A user's program on an installed qtrain (#include <qtrain/qtrain.h>, nothing else of the library):
//   consumer train FILE   defines its own small network, trains it on synthetic in-memory data, prints the test
//                         accuracy and saves the model to FILE
//   consumer eval FILE    a second process: loads FILE and prints the test accuracy again (the same, exactly)
//   consumer gemm         checks the dispatched SIMD GEMM against the scalar reference
// Exit code 0 on success, 2 on a usage or input error, 1 otherwise.
#include <qtrain/qtrain.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <vector>

namespace {

constexpr const char* kModelName = "tiny_resnet";  // the name model files record: register it before loading
constexpr std::size_t kSide = 8, kClasses = 4;     // 8×8 single-channel images of four patterns
constexpr int kSignal = 30, kNoise = 96;           // pattern ±30 under uniform noise ±96: |value| ≤ 126

// 1. The network: conv3x3 → norm+ReLU → residual block (conv-norm-ReLU-conv-norm, identity shortcut) → global
//    average pool → linear. Activations are NHWC (rows N·H·W, columns C); the output is N × classes logits.
//    Layer ids must be distinct: they name the layers ("conv0", "l1bn1", …) and key their random streams.
qtrain::ModelLayers tiny_resnet(const qtrain::ModelConfig& cfg, const qtrain::InputShape& in, std::size_t classes,
                                uint64_t seed) {
  const auto width = static_cast<std::size_t>(cfg.get_int("width", 8, 1, 256));  // read with its valid range
  const int bits = static_cast<int>(cfg.get_int("bits", 4, 2, 8));
  uint32_t id = 0;
  auto conv = [&](std::size_t in_channels, bool first) {
    qtrain::Conv2dSpec s;
    s.in_h = in.h;
    s.in_w = in.w;
    s.in_channels = in_channels;
    s.out_channels = width;
    s.padding = 1;
    s.weight_bits = s.act_bits = s.grad_bits = first ? 8 : bits;  // the first layer stays at 8 bits
    s.groups = qtrain::quant::max_groups(s.grad_bits);            // ShiftQuant gradient groups the bits allow
    s.signed_input = first;                                       // later inputs come after a ReLU
    s.needs_input_grad = !first;
    return std::make_unique<qtrain::Conv2d>(s, id++, seed);
  };
  auto norm = [&](bool relu) {
    qtrain::NormOptions opt;
    opt.relu = relu;
    return std::make_unique<qtrain::L1BatchNorm>(width, id++, opt);
  };
  qtrain::ModelLayers body;
  body.push_back(conv(width, false));
  body.push_back(norm(true));
  body.push_back(conv(width, false));
  body.push_back(norm(false));

  qtrain::ModelLayers layers;
  layers.push_back(conv(in.c, true));
  layers.push_back(norm(true));
  layers.push_back(std::make_unique<qtrain::Residual>(std::move(body), qtrain::ModelLayers{}));
  layers.push_back(std::make_unique<qtrain::GlobalAvgPool>(in.h, in.w, width));
  qtrain::LinearSpec head;
  head.in = width;
  head.out = classes;
  layers.push_back(std::make_unique<qtrain::Linear>(head, id++, seed));
  return layers;
}

// 2. The data: `count` images of four classes — horizontal stripes, vertical stripes, a checkerboard, a bright
//    square — each at a random phase or place, under noise three times as strong, all drawn from a seeded
//    counter-based generator (the same seed gives the same set in every process). Features are int8 in −127..127
//    (real value q·2^−6): the in-memory set hands them to the first layer unchanged.
qtrain::data::ImageSet make_patterns(std::size_t count, uint64_t seed) {
  const qtrain::quant::CounterRng rng(seed, /*stream=*/0);
  constexpr std::size_t kDraws = 2 + kSide * kSide;  // label, offset, one noise value per pixel
  std::vector<int8_t> features;
  std::vector<int32_t> labels;
  for (std::size_t i = 0; i < count; ++i) {
    const uint64_t at = i * kDraws;
    const auto label = static_cast<int32_t>(rng.below(at, kClasses));
    const auto offset = static_cast<std::size_t>(rng.below(at + 1, kSide - 3));  // phase / corner of the square
    for (std::size_t y = 0; y < kSide; ++y) {
      for (std::size_t x = 0; x < kSide; ++x) {
        const bool on = label == 0   ? (y + offset) % 2 == 0
                        : label == 1 ? (x + offset) % 2 == 0
                        : label == 2 ? (x + y + offset) % 2 == 0
                                     : y - offset < 4 && x - offset < 4;  // unsigned: offset ≤ y, x < offset + 4
        const int noise = static_cast<int>(rng.below(at + 2 + y * kSide + x, 2 * kNoise + 1)) - kNoise;
        features.push_back(static_cast<int8_t>((on ? kSignal : -kSignal) + noise));
      }
    }
    labels.push_back(label);
  }
  return qtrain::data::make_in_memory_set(features, labels, {kSide, kSide, 1}, kClasses, /*exponent=*/-6);
}

// The test set both processes evaluate on (another seed than the training set's).
const qtrain::data::ImageSet& test_set() {
  static const qtrain::data::ImageSet set = make_patterns(256, /*seed=*/2);
  return set;
}

// Prints the accuracy as the exact count, the line run.sh compares between the two processes.
void print_accuracy(double accuracy, const qtrain::data::ImageSet& set) {
  const long correct = std::lround(accuracy * static_cast<double>(set.count));
  std::printf("test accuracy: %ld/%zu\n", correct, set.count);
}

// 3. Training: build the registered model by name, train it with the Trainer, evaluate and save it.
int train(const std::string& path) {
  const qtrain::data::ImageSet train_set = make_patterns(1024, /*seed=*/1);
  qtrain::ModelConfig config;
  config.set("width", 8).set("bits", 4);  // recorded in the model file, so loading rebuilds the same network
  const qtrain::InputShape input{kSide, kSide, 1};
  qtrain::TrainConfig cfg;
  cfg.epochs = 3;
  cfg.batch = 32;
  cfg.lr = 0.1;
  cfg.seed = 7;
  qtrain::Trainer trainer(cfg, train_set, qtrain::build_registered_model(kModelName, config, input, kClasses, cfg.seed),
                          qtrain::data::fit_pixel_norm(train_set));
  for (int epoch = 1; epoch <= cfg.epochs; ++epoch) {
    const qtrain::EpochMetrics m = trainer.train_epoch(epoch, &test_set());
    std::printf("epoch %d: loss %.4f, train accuracy %.3f, test accuracy %.3f\n", m.epoch, m.loss, m.train_accuracy,
                m.test_accuracy);
  }
  print_accuracy(trainer.evaluate(test_set()), test_set());
  qtrain::save_model(path, trainer.model(), trainer.norm());  // atomic: a crash never leaves half a file
  std::printf("saved %s (%zu parameters)\n", path.c_str(), trainer.model().parameter_count());
  return 0;
}

// 4. Loading in another process: the file names the model, and the registry (set up in main) rebuilds it. The
//    evaluation runs on two threads (training ran on one): integer sums give the same bits whatever the count.
int eval(const std::string& path) {
  const qtrain::LoadedModel loaded = qtrain::load_model(path);
  std::printf("loaded %s: %s\n", path.c_str(), loaded.model->spec().describe().c_str());
  qtrain::kernels::ThreadPool pool(2);
  print_accuracy(qtrain::evaluate_model(*loaded.model, test_set(), loaded.norm, &pool), test_set());
  return 0;
}

// The SIMD GEMM (the best target of this CPU, single-threaded and on a thread pool) against the scalar reference.
int gemm() {
  namespace k = qtrain::kernels;
  constexpr std::size_t n = 5, m = 7, kk = 9;  // not multiples of any tile
  const qtrain::quant::CounterRng rng(/*seed=*/42, /*stream=*/1);
  std::vector<int8_t> xw((n + m) * kk);  // X (n × kk) then W (m × kk), values −127..127
  for (std::size_t i = 0; i < xw.size(); ++i) xw[i] = static_cast<int8_t>(static_cast<int>(rng.below(i, 255)) - 127);
  const int8_t *x = xw.data(), *w = xw.data() + n * kk;
  std::vector<int32_t> expect(n * m), single(n * m, -1), pooled(n * m, -1);
  k::ref::gemm_forward(x, w, expect.data(), n, m, kk);
  k::gemm_forward(x, w, single.data(), n, m, kk, nullptr);
  k::ThreadPool pool(2);
  k::gemm_forward(x, w, pooled.data(), n, m, kk, &pool);
  if (single != expect || pooled != expect) {
    std::fprintf(stderr, "consumer: gemm_forward differs from the reference\n");
    return 1;
  }
  std::printf("%zux%zux%zu gemm_forward matches the reference (%zu threads)\n", n, m, kk, pool.threads());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (!((argc == 3 && (mode == "train" || mode == "eval")) || (argc == 2 && mode == "gemm"))) {
    std::fprintf(stderr, "usage: consumer train FILE | consumer eval FILE | consumer gemm\n");
    return 2;
  }
  try {
    // Every process that builds or loads the model registers its factory first, under the same name.
    qtrain::register_model(kModelName, tiny_resnet);
    if (mode == "train") return train(argv[2]);
    if (mode == "eval") return eval(argv[2]);
    return gemm();
  } catch (const qtrain::UsageError& e) {  // bad settings: names the setting and its valid range
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 2;
  } catch (const qtrain::InputError& e) {  // a missing or corrupt file: names the file
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
  }
}
