// qtrain — the command line. Thin by design: parse flags, call the library, print results.
// Exit codes: 0 success, 2 bad usage or bad input (flag out of range, missing or corrupt file), 3 training stopped
// by the health check (diverging loss, vanishing gradients), 1 anything else.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <memory>
#include <set>
#include <sstream>
#include <string>

#include "qtrain/engine/io/checkpoint.h"
#include "qtrain/engine/data/cifar.h"
#include "qtrain/engine/data/idx.h"
#include "qtrain/engine/io/policy_file.h"
#include "qtrain/engine/io/serialize.h"
#include "qtrain/engine/models/layer_info.h"
#include "qtrain/engine/train/trainer.h"
#include "qtrain/kernels/dispatch.h"
#include "qtrain/quant/error.h"
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
  std::string optimizer = "sgd";
  std::string schedule = "onecycle";
  std::string norm = "l1";
  std::string scale = "mse";
  int act_groups = 0;
  int edge_bits = 0;
  uint64_t seed = 0;
  long long threads = 0;  // all processors this process may use
  std::size_t train_limit = 0, test_limit = 0;
  std::string metrics, save, kernel_target;
  std::string checkpoint, resume;
  std::string policy;  // --policy FILE
  long long checkpoint_every = 0;
  unsigned long long stop_after = 0;
  bool no_health_check = false;
  bool profile = false;
  std::set<std::string> given;  // flags given on the command line
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
  return limit && limit < set.count ? qtrain::data::take_first(set, limit) : set;
}

std::string bits_text(const qtrain::LayerBits& b) {
  return std::to_string(b.weight) + "," + std::to_string(b.act) + "," + std::to_string(b.grad);
}

// A resumed run keeps the settings it started with: a flag given with --resume must agree with the checkpoint
// (--lr excepted: see run_train).
void check_resume_flags(const TrainOptions& o, const qtrain::TrainConfig& flags, const qtrain::Checkpoint& ck) {
  const qtrain::TrainConfig& c = ck.config;
  auto require = [&](const char* flag, bool same, const std::string& flag_value, const std::string& ck_value) {
    if (o.given.count(flag) && !same)
      throw UsageError(std::string(flag) + " " + flag_value + " differs from the checkpoint's " + ck_value + " (" +
                       o.resume + "); a resumed run keeps the settings it started with (only --lr may change)");
  };
  auto num = [](double v) {
    std::ostringstream s;
    s << v;
    return s.str();
  };
  require("--model", flags.model.kind == c.model.kind, flags.model.kind, c.model.kind);
  require("--bits", flags.model.bits.weight == c.model.bits.weight && flags.model.bits.act == c.model.bits.act &&
                        flags.model.bits.grad == c.model.bits.grad,
          o.bits, bits_text(c.model.bits));
  require("--groups", flags.model.resolved_groups() == c.model.resolved_groups(), std::to_string(o.groups),
          std::to_string(c.model.resolved_groups()));
  require("--norm", flags.model.norm == c.model.norm, flags.model.norm, c.model.norm);
  require("--scale", flags.model.scale == c.model.scale, flags.model.scale, c.model.scale);
  require("--act-groups", flags.model.resolved_act_groups() == c.model.resolved_act_groups(),
          std::to_string(flags.model.act_groups), std::to_string(c.model.resolved_act_groups()));
  require("--edge-bits", flags.model.resolved_edge_bits() == c.model.resolved_edge_bits(), std::to_string(o.edge_bits),
          std::to_string(c.model.resolved_edge_bits()));
  require("--augment", flags.augment.pad == c.augment.pad && flags.augment.flip == c.augment.flip,
          std::to_string(o.augment), std::to_string(c.augment.pad));
  require("--epochs", flags.epochs == c.epochs, std::to_string(flags.epochs), std::to_string(c.epochs));
  require("--batch", flags.batch == c.batch, std::to_string(flags.batch), std::to_string(c.batch));
  require("--optimizer", flags.optimizer == c.optimizer, flags.optimizer, c.optimizer);
  require("--momentum", flags.sgd.momentum == c.sgd.momentum, num(flags.sgd.momentum), num(c.sgd.momentum));
  require("--wd", flags.sgd.weight_decay == c.sgd.weight_decay, num(flags.sgd.weight_decay), num(c.sgd.weight_decay));
  require("--schedule", flags.schedule == c.schedule, qtrain::schedule_name(flags.schedule),
          qtrain::schedule_name(c.schedule));
  require("--policy", flags.policy == c.policy, o.policy, c.policy ? "policy" : "no policy");
  require("--seed", flags.seed == c.seed, std::to_string(flags.seed), std::to_string(c.seed));
  require("--train-limit", o.train_limit == 0 || o.train_limit == ck.train_count, std::to_string(o.train_limit),
          std::to_string(ck.train_count) + " training images");
}

// One line of the --metrics file.
std::string metrics_line(const qtrain::EpochMetrics& m, qtrain::Trainer& trainer) {
  const nlohmann::json j = {{"epoch", m.epoch},
                            {"loss", m.loss},
                            {"train_accuracy", m.train_accuracy},
                            {"test_accuracy", m.test_accuracy},
                            {"images_per_second", m.images_per_second},
                            {"seconds", m.seconds},
                            {"lr", m.lr},
                            {"model", trainer.model().spec().describe()},
                            {"threads", trainer.pool().threads()},
                            {"seed", trainer.config().seed}};
  return j.dump() + "\n";
}

void print_epoch(const qtrain::EpochMetrics& m, int epochs) {
  char line[256];
  std::snprintf(line, sizeof line, "epoch %d/%d  loss %.4f  train %s  test %s  %.0f img/s  %.1f s\n", m.epoch, epochs,
                m.loss, percent(m.train_accuracy).c_str(), percent(m.test_accuracy).c_str(), m.images_per_second,
                m.seconds);
  std::cout << line << std::flush;
}

// Thrown from the progress callback when --stop-after-steps is reached.
struct StopRequested {};

int run_train(const TrainOptions& o) {
  apply_kernel_target(o.kernel_target);
  qtrain::TrainConfig cfg;
  cfg.model.kind = o.model;
  cfg.model.bits = parse_bits(o.bits);
  cfg.model.groups = o.groups;
  cfg.model.norm = o.norm;
  cfg.model.scale = o.scale;
  cfg.model.act_groups = o.act_groups;
  cfg.model.edge_bits = o.edge_bits;
  cfg.epochs = o.epochs;
  if (o.batch < 1) throw UsageError("--batch " + std::to_string(o.batch) + " is out of range 1..65536");
  cfg.batch = static_cast<std::size_t>(o.batch);
  cfg.lr = o.lr;
  cfg.optimizer = o.optimizer;
  cfg.sgd.momentum = o.momentum;
  cfg.sgd.weight_decay = o.wd;
  cfg.schedule = qtrain::parse_schedule(o.schedule);
  cfg.seed = o.seed;
  if (o.threads < 0) throw UsageError("--threads " + std::to_string(o.threads) + " is out of range: 0 (all processors) or more");
  cfg.threads = static_cast<std::size_t>(o.threads);
  cfg.health.enabled = !o.no_health_check;
  cfg.profile = o.profile;
  if (o.augment < 0 || o.augment > 16)
    throw UsageError("--augment " + std::to_string(o.augment) + " is out of range 0..16 (crop padding in pixels; 0 = off)");
  cfg.augment = {o.augment, o.augment > 0};
  cfg.validate();  // flags first: a bad flag is reported before the data is read
  if (!o.policy.empty()) cfg.policy = qtrain::load_policy(o.policy);  // its layer names: checked by the Trainer
  if (o.dataset != "fashion-mnist" && o.dataset != "mnist" && o.dataset != "cifar10")
    throw UsageError("--dataset '" + o.dataset + "' is unknown; valid data sets: fashion-mnist, mnist, cifar10");
  const std::string ckpt_path = !o.checkpoint.empty() ? o.checkpoint : o.resume;
  if (o.checkpoint_every < 0)
    throw UsageError("--checkpoint-every " + std::to_string(o.checkpoint_every) +
                     " is out of range: 0 (only at the end of each epoch) or more steps");
  if (ckpt_path.empty() && o.given.count("--checkpoint-every"))
    throw UsageError("--checkpoint-every needs --checkpoint FILE (or --resume FILE) to write to");
  if (ckpt_path.empty() && o.stop_after > 0)
    throw UsageError("--stop-after-steps needs --checkpoint FILE (or --resume FILE): the run continues from it");

  std::unique_ptr<qtrain::Trainer> trainer;
  qtrain::data::ImageSet train;
  std::string resumed;
  if (!o.resume.empty()) {
    qtrain::Checkpoint ck = qtrain::load_checkpoint(o.resume);
    check_resume_flags(o, cfg, ck);
    if (o.given.count("--lr") && cfg.lr != ck.config.lr) {
      std::ostringstream note;
      note << "note: --lr " << cfg.lr << " replaces the checkpoint's " << ck.config.lr
           << "; the run is no longer bit-identical to an uninterrupted one\n";
      std::cout << note.str();
      ck.config.lr = cfg.lr;
    }
    ck.config.threads = cfg.threads;
    ck.config.health = cfg.health;
    ck.config.profile = cfg.profile;
    train = load_split(o.dataset, o.data, qtrain::data::Split::kTrain, ck.train_count);
    const qtrain::TrainState& st = ck.state;
    resumed = "resuming " + o.resume + " at epoch " + std::to_string(std::min(st.epoch, ck.config.epochs)) +
              ", step " + std::to_string(st.epoch > ck.config.epochs ? ck.steps_per_epoch : st.step_in_epoch) + "/" +
              std::to_string(ck.steps_per_epoch) + " (global step " + std::to_string(st.global_step) + ")";
    trainer = qtrain::resume_trainer(ck, train, o.resume);
  } else {
    train = load_split(o.dataset, o.data, qtrain::data::Split::kTrain, o.train_limit);
    cfg.model.set_input(train.rows, train.cols, train.channels);  // the model's input follows the data
  }
  const auto test = load_split(o.dataset, o.data, qtrain::data::Split::kTest, o.test_limit);
  if (!trainer) trainer = std::make_unique<qtrain::Trainer>(cfg, train);
  qtrain::Trainer& t = *trainer;
  const qtrain::TrainConfig& run = t.config();
  std::cout << "qtrain: " << t.model().spec().describe() << ", " << t.model().parameter_count() << " parameters; "
            << train.count << " training / " << test.count << " test images; batch " << run.batch << ", "
            << run.epochs << " epochs, " << qtrain::schedule_name(run.schedule) << " lr " << run.lr << ", "
            << t.pool().threads() << " thread(s), kernels " << qtrain::kernels::active_target().name << "\n";
  if (!resumed.empty()) std::cout << resumed << "\n";
  if (!resumed.empty() && t.state().epoch > run.epochs)
    std::cout << "the run in " << o.resume << " is already complete (" << run.epochs << " epochs)\n";
  std::cout << std::flush;

  std::string metrics_text;
  for (const qtrain::EpochMetrics& m : t.state().history) metrics_text += metrics_line(m, t);
  if (!o.metrics.empty() && !metrics_text.empty()) qtrain::write_file_atomic(o.metrics, metrics_text);

  // Checkpoints: every --checkpoint-every steps and at the end of each epoch, but only while the health monitor
  // sees no streak of bad steps (a due checkpoint waits for a clean step), so the file holds the last good state.
  uint64_t last_ckpt = UINT64_MAX;
  bool due = false;
  auto checkpoint_now = [&] {
    if (ckpt_path.empty() || !t.healthy()) return false;
    qtrain::save_checkpoint(ckpt_path, t);
    last_ckpt = t.global_step();
    due = false;
    return true;
  };

  qtrain::tools::ProgressBar bar(isatty(STDERR_FILENO) != 0);
  try {
    for (int e = t.state().epoch; e <= run.epochs; ++e) {
      const qtrain::EpochMetrics m = t.train_epoch(e, &test, [&](const qtrain::Progress& p) {
        bar.update(p);
        const uint64_t g = t.global_step();
        if (!ckpt_path.empty() && o.checkpoint_every > 0 && g % static_cast<uint64_t>(o.checkpoint_every) == 0)
          due = true;
        if (o.stop_after > 0 && g >= o.stop_after) throw StopRequested{};
        if (due && p.step < p.steps) checkpoint_now();  // the epoch's end writes one anyway
      });
      bar.finish();
      print_epoch(m, run.epochs);
      if (!o.metrics.empty()) {
        metrics_text += metrics_line(m, t);
        qtrain::write_file_atomic(o.metrics, metrics_text);  // complete lines only, even if the run dies
      }
      checkpoint_now();
    }
  } catch (const StopRequested&) {
    bar.finish();
    if (!checkpoint_now() && last_ckpt != t.global_step())
      throw qtrain::TrainingHealthError("stopped at global step " + std::to_string(t.global_step()) +
                                        " with a streak of anomalous steps in progress; no checkpoint written there");
    std::cout << "stopped after global step " << t.global_step() << " (epoch " << t.state().epoch << ", step "
              << t.state().step_in_epoch << "/" << t.steps_per_epoch() << "); checkpoint " << ckpt_path
              << "; continue with: qtrain train --resume " << ckpt_path << "\n";
    return 0;
  } catch (const qtrain::TrainingHealthError& e) {
    bar.finish();
    std::ostringstream msg;
    msg << "qtrain: training stopped: " << e.what() << ". ";
    if (last_ckpt != UINT64_MAX)
      msg << "The last good checkpoint is " << ckpt_path << " (global step " << last_ckpt << "). ";
    else if (!o.resume.empty())
      msg << "No checkpoint was written since resuming; " << o.resume << " is unchanged. ";
    else if (!ckpt_path.empty())
      msg << "No checkpoint was written before the problem began. ";
    else
      msg << "(--checkpoint FILE keeps the last good state of a run.) ";
    msg << "Try a lower learning rate: --lr " << run.lr / 4 << " instead of " << run.lr
        << (last_ckpt != UINT64_MAX ? " (with --resume " + ckpt_path + ", or from the start)" : "")
        << "; --no-health-check disables this check.\n";
    std::cerr << msg.str();
    return 3;
  }
  if (!o.save.empty()) {
    qtrain::save_model(o.save, t.model(), t.norm(), run.policy ? &*run.policy : nullptr);
    std::cout << "saved model to " << o.save << "\n";
  }
  const double acc = t.state().history.empty() ? 0.0 : t.state().history.back().test_accuracy;
  if (t.profile() != nullptr) std::cout << "step profile (" << t.pool().threads() << " thread(s)):\n" << t.profile()->table();
  std::cout << "test accuracy: " << percent(acc) << "\n";
  return 0;
}

int run_eval(const std::string& load, const std::string& dataset, const std::string& data, long long threads,
             std::size_t limit, const std::string& kernel_target) {
  apply_kernel_target(kernel_target);
  if (threads < 0) throw UsageError("--threads " + std::to_string(threads) + " is out of range: 0 (all processors) or more");
  auto loaded = qtrain::load_model(load);
  const auto test = load_split(dataset, data, qtrain::data::Split::kTest, limit);
  qtrain::kernels::ThreadPool pool(static_cast<std::size_t>(threads));
  const double acc =
      qtrain::evaluate_model(*loaded.model, test, loaded.norm, &pool, loaded.policy ? &*loaded.policy : nullptr);
  std::cout << "model: " << loaded.model->spec().describe() << "\n"
            << "test accuracy: " << percent(acc) << " (" << test.count << " images)\n";
  return 0;
}

// The model's layers with the bits they use (after the policy it was trained with).
int run_info(const std::string& load, bool json) {
  auto loaded = qtrain::load_model(load);
  const auto layers = qtrain::describe_layers(*loaded.model, loaded.policy ? &*loaded.policy : nullptr);
  if (json) {
    std::cout << qtrain::layers_json(layers);
  } else {
    std::cout << "model: " << loaded.model->spec().describe() << (loaded.policy ? " (with a policy)" : "") << ", "
              << loaded.model->parameter_count() << " parameters\n"
              << qtrain::layers_table(layers);
  }
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
  train->add_option("--scale", t.scale,
                    "Power-of-two choice of weights and activations: mse (least squared error) or max (cover max|x|)")
      ->capture_default_str();
  train->add_option("--act-groups", t.act_groups,
                    "Power-of-two channel groups of the inner layers' input activations (0 = the most the bits allow: 4 at 4 bits, 1 at 8; 1 = off)")
      ->capture_default_str();
  train->add_option("--edge-bits", t.edge_bits,
                    "Weight/activation/gradient bits of the first conv and last FC of the convolutional models (0 = 8)")
      ->capture_default_str();
  train->add_option("--bits", t.bits, "Bit-widths: one value for all, or weights,activations,gradients (2..8)")->capture_default_str();
  train->add_option("--groups", t.groups, "ShiftQuant gradient groups N_G (0 = the largest the gradient bits allow)")->capture_default_str();
  train->add_option("--epochs", t.epochs, "Epochs")->capture_default_str();
  train->add_option("--batch", t.batch, "Batch size (1..65536)")->capture_default_str();
  train->add_option("--lr", t.lr, "Peak learning rate")->capture_default_str();
  train->add_option("--optimizer", t.optimizer, "Optimizer: sgd")->capture_default_str();
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
  train->add_option("--checkpoint", t.checkpoint,
                    "Write a checkpoint to FILE at the end of each epoch (and every --checkpoint-every steps); "
                    "written atomically, it always holds the last good state");
  train->add_option("--checkpoint-every", t.checkpoint_every, "Also checkpoint every N steps (0 = only at epoch ends)")
      ->capture_default_str();
  train->add_option("--resume", t.resume,
                    "Continue the run saved in checkpoint FILE, bit-exactly (its settings apply; checkpoints go on "
                    "to FILE unless --checkpoint names another)");
  train->add_option("--stop-after-steps", t.stop_after,
                    "Stop after global step N with a checkpoint, to continue later with --resume (0 = off)");
  train->add_option("--policy", t.policy,
                    "Quantization policy FILE (JSON, docs/policy.md): per-layer bits, granularity, groups");
  train->add_flag("--no-health-check", t.no_health_check,
                  "Do not stop a run whose loss diverges or whose gradients stay zero (exit code 3)");
  train->add_flag("--profile", t.profile,
                  "Print where the training steps' time went: each layer's forward and backward, batch gather, loss, "
                  "optimizer (ms per step)");

  std::string load, edata, edataset = "fashion-mnist", ekt;
  long long ethreads = 0;
  std::size_t elimit = 0;
  auto* eval = app.add_subcommand("eval", "Evaluate a saved model on the test set");
  eval->add_option("--load", load, "Model file written by 'qtrain train --save'")->required();
  eval->add_option("--dataset", edataset, "Data set: fashion-mnist, mnist or cifar10")->capture_default_str();
  eval->add_option("--data", edata, "Data directory (default for fashion-mnist: the Debian package path)");
  eval->add_option("--threads", ethreads, "Threads (0 = all processors available)")->capture_default_str();
  eval->add_option("--test-limit", elimit, "Use only the first N test images (0 = all)");
  eval->add_option("--kernel-target", ekt, "Force a lower SIMD target (e.g. AVX2, SSE4, EMU128)");

  std::string iload;
  bool ijson = false;
  auto* info = app.add_subcommand("info", "List a saved model's layers: names, shapes and effective bits");
  info->add_option("--load", iload, "Model file written by 'qtrain train --save'")->required();
  info->add_flag("--json", ijson, "Print JSON instead of a table");

  const std::set<std::string> commands{"train", "eval", "info"};
  if (argc > 1 && argv[1][0] != '-' && commands.count(argv[1]) == 0) {
    std::cerr << "qtrain: error: unknown command '" << argv[1]
              << "'; commands: train, eval, info (see 'qtrain --help')\n";
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
    for (const auto* cmd : {train, eval, info})
      if (*cmd) sub = " " + cmd->get_name();
    std::cerr << "qtrain: error: " << e.what() << " (see 'qtrain" << sub << " --help')\n";
    return 2;
  }
  for (const auto* opt : train->get_options())
    if (opt->count() > 0) t.given.insert(opt->get_name());
  try {
    if (*train) return run_train(t);
    if (*eval) return run_eval(load, edataset, edata, ethreads, elimit, ekt);
    if (*info) return run_info(iload, ijson);
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
