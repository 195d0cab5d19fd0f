// qtrain — the command line. Thin by design: parse flags, call the library, print results.
// Exit codes: 0 success, 2 bad usage or bad input (flag out of range, missing or corrupt file), 1 anything else.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "engine/data/cifar.h"
#include "engine/data/idx.h"
#include "engine/serialize.h"
#include "engine/trainer.h"
#include "kernels/dispatch.h"
#include "quant/error.h"
#include "tools/qtrain/progress.h"

namespace {

using qtrain::UsageError;

// "8" → W8A8G8; "4,4,4" → weights, activations, gradients.
qtrain::LayerBits parse_bits(const std::string& text) {
  std::vector<int> v;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      std::size_t used = 0;
      const int b = std::stoi(item, &used);
      if (used != item.size()) throw std::invalid_argument(item);
      v.push_back(b);
    } catch (const std::exception&) {
      throw UsageError("--bits '" + text + "': '" + item + "' is not an integer; use e.g. 8 or 4,4,4 (weights,activations,gradients)");
    }
  }
  if (v.size() == 1) v = {v[0], v[0], v[0]};
  if (v.size() != 3) throw UsageError("--bits '" + text + "': give one bit-width or three (weights,activations,gradients)");
  for (int b : v)
    if (b < 2 || b > 8) throw UsageError("--bits '" + text + "': bit-width " + std::to_string(b) + " is out of range 2..8");
  return {v[0], v[1], v[2]};
}

std::string percent(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f%%", 100.0 * x);
  return b;
}

struct TrainOptions {
  std::string dataset = "fashion-mnist";
  std::string data;  // empty: the dataset's default directory
  int augment = 0;
  std::string model = "mlp";
  std::string bits = "8";
  int groups = 0;
  int epochs = 5;
  long long batch = 64;
  double lr = 0.05, momentum = 0.9, wd = 5e-4;
  std::string schedule = "onecycle";
  std::string norm = "l1";
  int edge_bits = 0;
  uint64_t seed = 0;
  long long threads = 1;
  std::size_t train_limit = 0, test_limit = 0;
  std::string metrics, save, kernel_target;
};

void apply_kernel_target(const std::string& name) {
  if (name.empty()) return;
  if (!qtrain::kernels::force_target(name)) {
    std::string list;
    for (const auto& t : qtrain::kernels::available_targets()) list += (list.empty() ? "" : ", ") + t.name;
    throw UsageError("--kernel-target '" + name + "' is not available on this CPU; available: " + list);
  }
}

// Reads one split of the named data set ("fashion-mnist", "mnist": IDX files; "cifar10": the binary version).
qtrain::data::ImageSet load_split(const std::string& dataset, const std::string& dir, qtrain::data::Split split,
                                  std::size_t limit) {
  qtrain::data::ImageSet set;
  if (dataset == "cifar10") {
    if (dir.empty())
      throw UsageError("--dataset cifar10 needs --data DIR: CIFAR-10 is not packaged in Debian; download the binary "
                       "version (https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz), extract it and pass its "
                       "directory");
    set = qtrain::data::load_cifar10_dir(dir, split);
  } else if (dataset == "fashion-mnist" || dataset == "mnist") {
    if (dir.empty() && dataset == "mnist")
      throw UsageError("--dataset mnist needs --data DIR (a directory with the MNIST IDX files)");
    set = qtrain::data::load_mnist_dir(dir.empty() ? qtrain::data::kDefaultFashionMnistDir : dir, split);
  } else {
    throw UsageError("--dataset '" + dataset + "' is unknown; valid data sets: fashion-mnist, mnist, cifar10");
  }
  return limit ? qtrain::data::take_first(set, limit) : set;
}

int run_train(const TrainOptions& o) {
  apply_kernel_target(o.kernel_target);
  qtrain::TrainConfig cfg;
  cfg.model.kind = o.model;
  cfg.model.bits = parse_bits(o.bits);
  cfg.model.groups = o.groups;
  cfg.model.norm = o.norm;
  cfg.model.edge_bits = o.edge_bits;
  cfg.epochs = o.epochs;
  if (o.batch < 1) throw UsageError("--batch " + std::to_string(o.batch) + " is out of range 1..65536");
  cfg.batch = static_cast<std::size_t>(o.batch);
  cfg.lr = o.lr;
  cfg.sgd.momentum = o.momentum;
  cfg.sgd.weight_decay = o.wd;
  cfg.schedule = qtrain::parse_schedule(o.schedule);
  cfg.seed = o.seed;
  if (o.threads < 0) throw UsageError("--threads " + std::to_string(o.threads) + " is out of range: 0 (all processors) or more");
  cfg.threads = static_cast<std::size_t>(o.threads);
  if (o.augment < 0 || o.augment > 16)
    throw UsageError("--augment " + std::to_string(o.augment) + " is out of range 0..16 (crop padding in pixels; 0 = off)");
  cfg.augment = {o.augment, o.augment > 0};
  cfg.validate();  // flags first: a bad flag is reported before the data is read
  if (o.dataset != "fashion-mnist" && o.dataset != "mnist" && o.dataset != "cifar10")
    throw UsageError("--dataset '" + o.dataset + "' is unknown; valid data sets: fashion-mnist, mnist, cifar10");

  const auto train = load_split(o.dataset, o.data, qtrain::data::Split::kTrain, o.train_limit);
  const auto test = load_split(o.dataset, o.data, qtrain::data::Split::kTest, o.test_limit);
  cfg.model.set_input(train.rows, train.cols, train.channels);  // the model's input follows the data
  qtrain::Trainer trainer(cfg, train);
  std::cout << "qtrain: " << trainer.model().spec().describe() << ", " << trainer.model().parameter_count()
            << " parameters; " << train.count << " training / " << test.count << " test images; batch " << cfg.batch
            << ", " << cfg.epochs << " epochs, " << qtrain::schedule_name(cfg.schedule) << " lr " << cfg.lr << ", "
            << trainer.pool().threads() << " thread(s), kernels " << qtrain::kernels::active_target().name << "\n"
            << std::flush;

  qtrain::tools::ProgressBar bar(isatty(STDERR_FILENO) != 0);
  std::string metrics_text;
  qtrain::EpochMetrics last;
  for (int e = 1; e <= cfg.epochs; ++e) {
    last = trainer.train_epoch(e, &test, [&](const qtrain::Progress& p) { bar.update(p); });
    bar.finish();
    char line[256];
    std::snprintf(line, sizeof line, "epoch %d/%d  loss %.4f  train %s  test %s  %.0f img/s  %.1f s\n", e, cfg.epochs,
                  last.loss, percent(last.train_accuracy).c_str(), percent(last.test_accuracy).c_str(),
                  last.images_per_second, last.seconds);
    std::cout << line << std::flush;
    if (!o.metrics.empty()) {
      nlohmann::json j = {{"epoch", e},
                          {"loss", last.loss},
                          {"train_accuracy", last.train_accuracy},
                          {"test_accuracy", last.test_accuracy},
                          {"images_per_second", last.images_per_second},
                          {"seconds", last.seconds},
                          {"lr", last.lr},
                          {"model", trainer.model().spec().describe()},
                          {"threads", trainer.pool().threads()},
                          {"seed", cfg.seed}};
      metrics_text += j.dump() + "\n";
      qtrain::write_file_atomic(o.metrics, metrics_text);  // complete lines only, even if the run dies
    }
  }
  if (!o.save.empty()) {
    qtrain::save_model(o.save, trainer.model(), trainer.norm());
    std::cout << "saved model to " << o.save << "\n";
  }
  std::cout << "test accuracy: " << percent(last.test_accuracy) << "\n";
  return 0;
}

int run_eval(const std::string& load, const std::string& dataset, const std::string& data, long long threads,
             std::size_t limit, const std::string& kernel_target) {
  apply_kernel_target(kernel_target);
  if (threads < 0) throw UsageError("--threads " + std::to_string(threads) + " is out of range: 0 (all processors) or more");
  auto loaded = qtrain::load_model(load);
  const auto test = load_split(dataset, data, qtrain::data::Split::kTest, limit);
  qtrain::kernels::ThreadPool pool(static_cast<std::size_t>(threads));
  const double acc = qtrain::evaluate_model(*loaded.model, test, loaded.norm, &pool);
  std::cout << "model: " << loaded.model->spec().describe() << "\n"
            << "test accuracy: " << percent(acc) << " (" << test.count << " images)\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"qtrain — train neural networks with integer-only arithmetic (int8/int4 data plane, ShiftQuant "
               "gradients)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "qtrain 0.1.0");

  TrainOptions t;
  auto* train = app.add_subcommand("train", "Train a model on Fashion-MNIST / MNIST and report test accuracy");
  train->add_option("--dataset", t.dataset, "Data set: fashion-mnist, mnist (IDX files) or cifar10 (binary version)")->capture_default_str();
  train->add_option("--data", t.data, "Data directory (default for fashion-mnist: " +
                    std::string(qtrain::data::kDefaultFashionMnistDir) + ", from the dataset-fashion-mnist package)");
  train->add_option("--augment", t.augment, "Augmentation: random crop with this zero padding (pixels) plus horizontal flips; 0 = off")->capture_default_str();
  train->add_option("--model", t.model,
                    "Model: mlp (784-256-128-10), cnn (2 conv + 2 FC), resnet8, resnet20 (CIFAR-style ResNets)")
      ->capture_default_str();
  train->add_option("--norm", t.norm, "Normalization of the convolutional models: l1 (integer L1 batch norm) or l2")
      ->capture_default_str();
  train->add_option("--edge-bits", t.edge_bits,
                    "Weight/activation bits of the first conv and last FC of the convolutional models (0 = 8)")
      ->capture_default_str();
  train->add_option("--bits", t.bits, "Bit-widths: one value for all, or weights,activations,gradients (2..8)")->capture_default_str();
  train->add_option("--groups", t.groups, "ShiftQuant gradient groups N_G (0 = the largest the gradient bits allow)")->capture_default_str();
  train->add_option("--epochs", t.epochs, "Epochs")->capture_default_str();
  train->add_option("--batch", t.batch, "Batch size (1..65536)")->capture_default_str();
  train->add_option("--lr", t.lr, "Peak learning rate")->capture_default_str();
  train->add_option("--momentum", t.momentum, "SGD momentum [0, 1)")->capture_default_str();
  train->add_option("--wd", t.wd, "Weight decay [0, 1)")->capture_default_str();
  train->add_option("--schedule", t.schedule, "Learning-rate schedule: constant, step, cosine, onecycle")->capture_default_str();
  train->add_option("--seed", t.seed, "Random seed (initialisation, shuffling, stochastic rounding)")->capture_default_str();
  train->add_option("--threads", t.threads, "Threads (0 = all processors available); results are bit-identical for any count")->capture_default_str();
  train->add_option("--train-limit", t.train_limit, "Use only the first N training images (0 = all)");
  train->add_option("--test-limit", t.test_limit, "Use only the first N test images (0 = all)");
  train->add_option("--metrics", t.metrics, "Write one JSON line per epoch to FILE");
  train->add_option("--save", t.save, "Save the trained model to FILE");
  train->add_option("--kernel-target", t.kernel_target, "Force a lower SIMD target (e.g. AVX2, SSE4, EMU128)");

  std::string load, edata, edataset = "fashion-mnist", ekt;
  long long ethreads = 1;
  std::size_t elimit = 0;
  auto* eval = app.add_subcommand("eval", "Evaluate a saved model on the test set");
  eval->add_option("--load", load, "Model file written by 'qtrain train --save'")->required();
  eval->add_option("--dataset", edataset, "Data set: fashion-mnist, mnist or cifar10")->capture_default_str();
  eval->add_option("--data", edata, "Data directory (default for fashion-mnist: the Debian package path)");
  eval->add_option("--threads", ethreads, "Threads (0 = all processors available)")->capture_default_str();
  eval->add_option("--test-limit", elimit, "Use only the first N test images (0 = all)");
  eval->add_option("--kernel-target", ekt, "Force a lower SIMD target (e.g. AVX2, SSE4, EMU128)");

  if (argc > 1 && argv[1][0] != '-' && std::string(argv[1]) != "train" && std::string(argv[1]) != "eval") {
    std::cerr << "qtrain: error: unknown command '" << argv[1] << "'; commands: train, eval (see 'qtrain --help')\n";
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line, like every other usage error, with where to look for the valid flags.
    std::string sub;
    for (const auto* cmd : {train, eval})
      if (*cmd) sub = " " + cmd->get_name();
    std::cerr << "qtrain: error: " << e.what() << " (see 'qtrain" << sub << " --help')\n";
    return 2;
  }
  try {
    if (*train) return run_train(t);
    if (*eval) return run_eval(load, edataset, edata, ethreads, elimit, ekt);
  } catch (const qtrain::UsageError& e) {
    std::cerr << "qtrain: error: " << e.what() << "\n";
    return 2;
  } catch (const qtrain::InputError& e) {
    std::cerr << "qtrain: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "qtrain: internal error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
