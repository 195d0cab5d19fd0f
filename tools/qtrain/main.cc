// qtrain — the command line. Thin by design: parse flags, call the library, print results.
// Exit codes: 0 success, 2 bad usage or bad input (flag out of range, missing or corrupt file), 3 training stopped
// by the health check (diverging loss, vanishing gradients), 1 anything else.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include "qtrain/engine/data/datasets.h"
#include "qtrain/engine/io/serialize.h"
#include "qtrain/engine/run/session.h"
#include "qtrain/engine/io/policy_file.h"
#include "qtrain/engine/models/layer_info.h"
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

// Comma-separated positive integers, e.g. "256,128" for --hidden.
std::vector<std::size_t> parse_widths(const std::string& flag, const std::string& text) {
  constexpr std::size_t kMaxWidth = 65536, kMaxLayers = 16;
  std::vector<std::size_t> v;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    std::size_t used = 0;
    long long w = -1;
    try {
      w = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size())
      throw UsageError(flag + " '" + text + "': '" + item + "' is not an integer; use e.g. 256,128 (hidden widths)");
    if (w < 1 || w > static_cast<long long>(kMaxWidth))
      throw UsageError(flag + " '" + text + "': width " + item + " is out of range 1.." + std::to_string(kMaxWidth));
    v.push_back(static_cast<std::size_t>(w));
  }
  if (v.empty() || v.size() > kMaxLayers)
    throw UsageError(flag + " '" + text + "': give 1.." + std::to_string(kMaxLayers) + " hidden widths, e.g. 256,128");
  return v;
}

struct TrainOptions {
  std::string dataset = "fashion-mnist";
  std::string data;  // empty: the dataset's default directory
  int augment = 0;
  std::string model = "mlp";
  std::string hidden;  // empty: the MLP's default widths
  std::string bits = "8";
  int groups = 0;
  int epochs = 5;
  long long batch = 64;
  double lr = 0.05, momentum = 0.9, wd = 5e-4;  // --wd: SGD's default (AdamW's is AdamWConfig's, unless given)
  qtrain::AdamWConfig adamw;                     // --beta1, --beta2, --adam-eps
  double warmup_epochs = 1.0;
  std::string optimizer = "sgd";
  std::string schedule = "onecycle";
  std::string norm = "l1";
  qtrain::ModelSpec::ViT vit;  // --patch, --dim, --depth, --heads, --mlp-ratio, --attn-bits, --mlp-act, --pool
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
  std::map<std::string, std::string> given;  // flags given on the command line → their text
};

void apply_kernel_target(const std::string& name) {
  if (name.empty()) return;
  if (!qtrain::kernels::force_target(name)) {
    std::string list;
    for (const auto& t : qtrain::kernels::available_targets()) list += (list.empty() ? "" : ", ") + t.name;
    throw UsageError("--kernel-target '" + name + "' is not available on this CPU; available: " + list);
  }
}

std::size_t thread_count(long long threads) {
  if (threads < 0)
    throw UsageError("--threads " + std::to_string(threads) + " is out of range: 0 (all processors) or more");
  return static_cast<std::size_t>(threads);
}

// The training configuration the flags ask for (validated: a bad flag is reported before any file is read).
qtrain::TrainConfig train_config(const TrainOptions& o) {
  qtrain::TrainConfig cfg;
  cfg.model.kind = o.model;
  if (o.given.count("--hidden")) {
    if (o.model != "mlp")
      throw UsageError("--hidden sets the MLP's hidden widths; --model " + o.model + " has fixed widths");
    const std::vector<std::size_t> hidden = parse_widths("--hidden", o.hidden);
    std::vector<std::size_t> sizes{cfg.model.sizes.front()};
    sizes.insert(sizes.end(), hidden.begin(), hidden.end());
    sizes.push_back(cfg.model.sizes.back());
    cfg.model.sizes = sizes;
  }
  cfg.model.bits = parse_bits(o.bits);
  cfg.model.groups = o.groups;
  cfg.model.norm = o.norm;
  for (const char* flag : {"--patch", "--dim", "--depth", "--heads", "--mlp-ratio", "--attn-bits", "--mlp-act", "--pool"})
    if (o.given.count(flag) && o.model != "vit")
      throw UsageError(std::string(flag) + " sets the vision transformer's shape; --model " + o.model + " has none");
  cfg.model.vit = o.vit;
  cfg.model.scale = o.scale;
  cfg.model.act_groups = o.act_groups;
  cfg.model.edge_bits = o.edge_bits;
  cfg.epochs = o.epochs;
  if (o.batch < 1) throw UsageError("--batch " + std::to_string(o.batch) + " is out of range 1..65536");
  cfg.batch = static_cast<std::size_t>(o.batch);
  cfg.lr = o.lr;
  cfg.optimizer = o.optimizer;
  // Each optimizer's own flags; --wd is the weight decay of whichever runs (each has its own default). A resumed
  // run's optimizer and schedule are the checkpoint's: there the flags are compared with it instead.
  const bool adamw = o.optimizer == "adamw", fresh = o.resume.empty();
  for (const char* flag : {"--beta1", "--beta2", "--adam-eps"})
    if (fresh && o.given.count(flag) && !adamw)
      throw UsageError(std::string(flag) + " is an AdamW setting; add --optimizer adamw (the run uses " + o.optimizer + ")");
  if (fresh && o.given.count("--momentum") && adamw)
    throw UsageError("--momentum is an SGD setting; AdamW's first-moment decay is --beta1");
  cfg.sgd.momentum = o.momentum;
  cfg.sgd.weight_decay = adamw ? qtrain::SgdConfig{}.weight_decay : o.wd;
  cfg.adamw = o.adamw;
  if (adamw && o.given.count("--wd")) cfg.adamw.weight_decay = o.wd;
  cfg.schedule = qtrain::parse_schedule(o.schedule);
  if (fresh && o.given.count("--warmup-epochs") && cfg.schedule != qtrain::ScheduleKind::kWarmupCosine)
    throw UsageError("--warmup-epochs sets the warm-up of --schedule warmup-cosine (the run uses " + o.schedule + ")");
  cfg.warmup_epochs = o.warmup_epochs;
  cfg.seed = o.seed;
  cfg.threads = thread_count(o.threads);
  cfg.health.enabled = !o.no_health_check;
  cfg.profile = o.profile;
  if (o.augment < 0 || o.augment > 16)
    throw UsageError("--augment " + std::to_string(o.augment) + " is out of range 0..16 (crop padding in pixels; 0 = off)");
  cfg.augment = {o.augment, o.augment > 0};
  cfg.validate();
  if (!o.policy.empty()) cfg.policy = qtrain::load_policy(o.policy);  // its layer names: checked by the Trainer
  return cfg;
}

qtrain::RunOptions run_options(const TrainOptions& o) {
  qtrain::RunOptions r;
  r.checkpoint = o.checkpoint;
  r.checkpoint_every = o.checkpoint_every;
  r.stop_after = o.stop_after;
  r.metrics = o.metrics;
  r.resume = o.resume;
  r.train_limit = o.train_limit;
  r.test_limit = o.test_limit;
  r.given = o.given;
  return r;
}

void print_epoch(const qtrain::EpochMetrics& m, int epochs) {
  char line[256];
  std::snprintf(line, sizeof line, "epoch %d/%d  loss %.4f  train %s  test %s  %.0f img/s  %.1f s\n", m.epoch, epochs,
                m.loss, percent(m.train_accuracy).c_str(), percent(m.test_accuracy).c_str(), m.images_per_second,
                m.seconds);
  std::cout << line << std::flush;
}

void print_start(const qtrain::RunStart& s, const std::string& resume) {
  qtrain::Trainer& t = s.trainer;
  const qtrain::TrainConfig& run = t.config();
  std::cout << "qtrain: " << t.model().spec().describe() << ", " << t.model().parameter_count() << " parameters; "
            << s.train_count << " training / " << s.test_count << " test images; batch " << run.batch << ", "
            << run.epochs << " epochs, " << qtrain::schedule_name(run.schedule) << " lr " << run.lr << ", "
            << t.pool().threads() << " thread(s), kernels " << qtrain::kernels::active_target().name << "\n";
  if (!s.resumed.empty()) std::cout << s.resumed << "\n";
  if (s.already_complete)
    std::cout << "the run in " << resume << " is already complete (" << run.epochs << " epochs)\n";
  std::cout << std::flush;
}

// The health monitor stopped the run: say where the last good state is and what to try. Exit code 3.
int report_unhealthy(const qtrain::RunResult& r, const qtrain::RunOptions& o) {
  const std::string& ckpt = o.checkpoint_path();
  const double lr = r.trainer->config().lr;
  std::ostringstream msg;
  msg << "qtrain: training stopped: " << r.health_error << ". ";
  if (r.last_checkpoint)
    msg << "The last good checkpoint is " << ckpt << " (global step " << *r.last_checkpoint << "). ";
  else if (!o.resume.empty())
    msg << "No checkpoint was written since resuming; " << o.resume << " is unchanged. ";
  else if (!ckpt.empty())
    msg << "No checkpoint was written before the problem began. ";
  else
    msg << "(--checkpoint FILE keeps the last good state of a run.) ";
  msg << "Try a lower learning rate: --lr " << lr / 4 << " instead of " << lr
      << (r.last_checkpoint ? " (with --resume " + ckpt + ", or from the start)" : "")
      << "; --no-health-check disables this check.\n";
  std::cerr << msg.str();
  return 3;
}

int run_train(const TrainOptions& o) {
  apply_kernel_target(o.kernel_target);
  const qtrain::TrainConfig cfg = train_config(o);
  qtrain::data::check_dataset_name(o.dataset);
  const qtrain::RunOptions ro = run_options(o);
  ro.validate();

  qtrain::tools::ProgressBar bar(isatty(STDERR_FILENO) != 0);
  qtrain::RunEvents events;
  events.note = [](const std::string& line) { std::cout << line << "\n"; };
  int epochs = 0;  // the run's (a resumed run's comes from its checkpoint)
  events.started = [&](const qtrain::RunStart& s) {
    epochs = s.trainer.config().epochs;
    print_start(s, o.resume);
  };
  events.progress = [&](const qtrain::Progress& p) { bar.update(p); };
  events.epoch_done = [&](const qtrain::EpochMetrics& m) {
    bar.finish();
    print_epoch(m, epochs);
  };
  const qtrain::RunResult r = qtrain::run_training(cfg, qtrain::dataset_source(o.dataset, o.data), ro, events);
  bar.finish();
  const qtrain::Trainer& t = *r.trainer;
  if (r.outcome == qtrain::RunResult::Outcome::kUnhealthy) return report_unhealthy(r, ro);
  if (r.outcome == qtrain::RunResult::Outcome::kStopped) {
    std::cout << "stopped after global step " << t.global_step() << " (epoch " << t.state().epoch << ", step "
              << t.state().step_in_epoch << "/" << t.steps_per_epoch() << "); checkpoint " << ro.checkpoint_path()
              << "; continue with: qtrain train --resume " << ro.checkpoint_path() << "\n";
    return 0;
  }
  if (!o.save.empty()) {
    const auto& policy = r.trainer->config().policy;
    qtrain::save_model(o.save, r.trainer->model(), t.norm(), policy ? &*policy : nullptr);
    std::cout << "saved model to " << o.save << "\n";
  }
  if (t.profile() != nullptr) std::cout << "step profile (" << t.pool().threads() << " thread(s)):\n" << t.profile()->table();
  std::cout << "test accuracy: " << percent(r.test_accuracy()) << "\n";
  return 0;
}

int run_eval(const std::string& load, const std::string& dataset, const std::string& data, long long threads,
             std::size_t limit, const std::string& kernel_target) {
  apply_kernel_target(kernel_target);
  const std::size_t nthreads = thread_count(threads);
  auto loaded = qtrain::load_model(load);
  const auto test = qtrain::data::load_dataset(dataset, data, qtrain::data::Split::kTest, limit);
  qtrain::kernels::ThreadPool pool(nthreads);
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
  CLI::App app{"qtrain — train neural networks with integer-only arithmetic (int8 data plane, ShiftQuant "
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
                    "Model: mlp (784-256-128-10), cnn (2 conv + 2 FC), resnet8, resnet20 (CIFAR-style ResNets), vit (Vision Transformer)")
      ->capture_default_str();
  train->add_option("--hidden", t.hidden, "Hidden widths of the MLP, e.g. 256,128 (default; each 1..65536)");
  train->add_option("--patch", t.vit.patch, "vit: patch side in pixels (must divide the image sides)")->capture_default_str();
  train->add_option("--dim", t.vit.dim, "vit: token width")->capture_default_str();
  train->add_option("--depth", t.vit.depth, "vit: transformer blocks (1..256)")->capture_default_str();
  train->add_option("--heads", t.vit.heads, "vit: attention heads (must divide --dim)")->capture_default_str();
  train->add_option("--mlp-ratio", t.vit.mlp_ratio, "vit: MLP hidden width / --dim (1..64)")->capture_default_str();
  train->add_option("--attn-bits", t.vit.attn_bits,
                    "vit: bits of the attention products' operands Q, K, P, V and of their gradients (2..8)")
      ->capture_default_str();
  train->add_option("--mlp-act", t.vit.act, "vit: MLP activation: gelu (integer table) or relu")->capture_default_str();
  train->add_option("--pool", t.vit.pool, "vit: what the classifier reads: mean (of the tokens) or cls (a learned class token)")
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
  train->add_option("--optimizer", t.optimizer, "Optimizer: sgd (with momentum) or adamw (integer AdamW)")
      ->capture_default_str();
  train->add_option("--momentum", t.momentum, "sgd: momentum [0, 1)")->capture_default_str();
  train->add_option("--beta1", t.adamw.beta1, "adamw: first-moment decay [0, 1 - 1e-6]")->capture_default_str();
  train->add_option("--beta2", t.adamw.beta2, "adamw: second-moment decay [0, 1 - 1e-6]")->capture_default_str();
  train->add_option("--adam-eps", t.adamw.eps, "adamw: epsilon added to the root of the second moment (0, 1]")
      ->capture_default_str();
  train->add_option("--wd", t.wd, "Weight decay [0, 1): sgd's L2 term (default 5e-4) or adamw's decoupled decay (default 0.05)");
  train->add_option("--schedule", t.schedule,
                    "Learning-rate schedule: constant, step, cosine, onecycle, warmup-cosine (linear warm-up, then cosine to 0)")
      ->capture_default_str();
  train->add_option("--warmup-epochs", t.warmup_epochs, "warmup-cosine: epochs of linear warm-up [0, --epochs]")
      ->capture_default_str();
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
  for (const auto* opt : train->get_options()) {
    if (opt->count() == 0) continue;
    std::string text;
    for (const std::string& v : opt->results()) text += (text.empty() ? "" : ",") + v;
    t.given[opt->get_name()] = text;
  }
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
