#include "qtrain/engine/run/session.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "qtrain/engine/data/datasets.h"
#include "qtrain/engine/io/serialize.h"
#include "qtrain/quant/error.h"

namespace qtrain {

void RunOptions::validate() const {
  if (checkpoint_every < 0)
    throw UsageError("--checkpoint-every " + std::to_string(checkpoint_every) +
                     " is out of range: 0 (only at the end of each epoch) or more steps");
  if (checkpoint_path().empty() && given.count("--checkpoint-every"))
    throw UsageError("--checkpoint-every needs --checkpoint FILE (or --resume FILE) to write to");
  if (checkpoint_path().empty() && stop_after > 0)
    throw UsageError("--stop-after-steps needs --checkpoint FILE (or --resume FILE): the run continues from it");
}

DataSource dataset_source(const std::string& name, const std::string& dir) {
  return [name, dir](data::Split split, std::size_t limit) { return data::load_dataset(name, dir, split, limit); };
}

namespace {
std::string bits_text(const LayerBits& b) {
  return std::to_string(b.weight) + "," + std::to_string(b.act) + "," + std::to_string(b.grad);
}

// The MLP's widths between its input (which follows the data) and its classes.
std::vector<std::size_t> hidden_widths(const ModelSpec& m) {
  return m.sizes.size() < 2 ? std::vector<std::size_t>{}
                            : std::vector<std::size_t>(m.sizes.begin() + 1, m.sizes.end() - 1);
}

std::string hidden_text(const ModelSpec& m) {
  std::string s;
  for (const std::size_t w : hidden_widths(m)) {
    if (!s.empty()) s += ',';
    s += std::to_string(w);
  }
  return s.empty() ? "none" : s;
}

std::string number_text(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}
}  // namespace

void check_resume_compatible(const TrainConfig& flags, const RunOptions& options, const Checkpoint& ck) {
  const TrainConfig& c = ck.config;
  const std::map<std::string, std::string>& given = options.given;
  const std::string& path = options.resume;
  const ModelSpec &f = flags.model, &m = c.model;
  auto require = [&](const char* flag, bool same, const std::string& ck_value) {
    const auto it = given.find(flag);
    if (it != given.end() && !same)
      throw UsageError(std::string(flag) + " " + it->second + " differs from the checkpoint's " + ck_value + " (" +
                       path + "); a resumed run keeps the settings it started with (only --lr may change)");
  };
  require("--model", f.kind == m.kind, m.kind);
  require("--hidden", hidden_widths(f) == hidden_widths(m), hidden_text(m));
  require("--bits", f.bits.weight == m.bits.weight && f.bits.act == m.bits.act && f.bits.grad == m.bits.grad,
          bits_text(m.bits));
  require("--groups", f.resolved_groups() == m.resolved_groups(), std::to_string(m.resolved_groups()));
  require("--norm", f.norm == m.norm, m.norm);
  require("--scale", f.scale == m.scale, m.scale);
  require("--act-groups", f.resolved_act_groups() == m.resolved_act_groups(), std::to_string(m.resolved_act_groups()));
  require("--edge-bits", f.resolved_edge_bits() == m.resolved_edge_bits(), std::to_string(m.resolved_edge_bits()));
  require("--patch", f.vit.patch == m.vit.patch, std::to_string(m.vit.patch));
  require("--dim", f.vit.dim == m.vit.dim, std::to_string(m.vit.dim));
  require("--depth", f.vit.depth == m.vit.depth, std::to_string(m.vit.depth));
  require("--heads", f.vit.heads == m.vit.heads, std::to_string(m.vit.heads));
  require("--mlp-ratio", f.vit.mlp_ratio == m.vit.mlp_ratio, std::to_string(m.vit.mlp_ratio));
  require("--attn-bits", f.vit.attn_bits == m.vit.attn_bits, std::to_string(m.vit.attn_bits));
  require("--mlp-act", f.vit.act == m.vit.act, m.vit.act);
  require("--pool", f.vit.pool == m.vit.pool, m.vit.pool);
  require("--augment", flags.augment.pad == c.augment.pad && flags.augment.flip == c.augment.flip,
          std::to_string(c.augment.pad));
  require("--epochs", flags.epochs == c.epochs, std::to_string(c.epochs));
  require("--batch", flags.batch == c.batch, std::to_string(c.batch));
  require("--optimizer", flags.optimizer == c.optimizer, c.optimizer);
  require("--momentum", flags.sgd.momentum == c.sgd.momentum, number_text(c.sgd.momentum));
  // --wd is the weight decay of the optimizer that runs (SGD's L2 term or AdamW's decoupled decay).
  auto decay_of = [](const TrainConfig& t) { return t.optimizer == "adamw" ? t.adamw.weight_decay : t.sgd.weight_decay; };
  require("--wd", decay_of(flags) == decay_of(c), number_text(decay_of(c)));
  require("--beta1", flags.adamw.beta1 == c.adamw.beta1, number_text(c.adamw.beta1));
  require("--beta2", flags.adamw.beta2 == c.adamw.beta2, number_text(c.adamw.beta2));
  require("--adam-eps", flags.adamw.eps == c.adamw.eps, number_text(c.adamw.eps));
  require("--schedule", flags.schedule == c.schedule, schedule_name(c.schedule));
  require("--warmup-epochs", flags.warmup_epochs == c.warmup_epochs, number_text(c.warmup_epochs));
  require("--policy", flags.policy == c.policy, c.policy ? "policy" : "no policy");
  require("--seed", flags.seed == c.seed, std::to_string(c.seed));
  require("--train-limit", options.train_limit == 0 || options.train_limit == ck.train_count,
          std::to_string(ck.train_count) + " training images");
}

std::string metrics_line(const EpochMetrics& m, const Trainer& trainer) {
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

double RunResult::test_accuracy() const {
  return trainer && !trainer->state().history.empty() ? trainer->state().history.back().test_accuracy : 0.0;
}

namespace {
// Thrown from the progress callback when options.stop_after is reached.
struct StopRequested {};

// Opens the run: a new trainer, or the checkpointed one with its own settings.
void open_run(const TrainConfig& config, const DataSource& data, const RunOptions& o, const RunEvents& ev,
              RunResult& res, std::string& resumed) {
  TrainConfig cfg = config;
  if (o.resume.empty()) {
    res.train = std::make_unique<data::ImageSet>(data(data::Split::kTrain, o.train_limit));
    cfg.model.set_input(res.train->rows, res.train->cols, res.train->channels);  // the model's input follows the data
    res.test = std::make_unique<data::ImageSet>(data(data::Split::kTest, o.test_limit));
    res.trainer = std::make_unique<Trainer>(cfg, *res.train);
    return;
  }
  Checkpoint ck = load_checkpoint(o.resume);
  check_resume_compatible(cfg, o, ck);
  if (o.given.count("--lr") && cfg.lr != ck.config.lr) {
    std::ostringstream note;
    note << "note: --lr " << cfg.lr << " replaces the checkpoint's " << ck.config.lr
         << "; the run is no longer bit-identical to an uninterrupted one";
    if (ev.note) ev.note(note.str());
    ck.config.lr = cfg.lr;
  }
  ck.config.threads = cfg.threads;
  ck.config.health = cfg.health;
  ck.config.profile = cfg.profile;
  res.train = std::make_unique<data::ImageSet>(data(data::Split::kTrain, ck.train_count));
  const TrainState& st = ck.state;
  resumed = "resuming " + o.resume + " at epoch " + std::to_string(std::min(st.epoch, ck.config.epochs)) + ", step " +
            std::to_string(st.epoch > ck.config.epochs ? ck.steps_per_epoch : st.step_in_epoch) + "/" +
            std::to_string(ck.steps_per_epoch) + " (global step " + std::to_string(st.global_step) + ")";
  res.trainer = resume_trainer(ck, *res.train, o.resume);
  res.test = std::make_unique<data::ImageSet>(data(data::Split::kTest, o.test_limit));
}
}  // namespace

RunResult run_training(const TrainConfig& config, const DataSource& data, const RunOptions& o, const RunEvents& ev) {
  config.validate();
  o.validate();
  RunResult res;
  std::string resumed;
  open_run(config, data, o, ev, res, resumed);
  Trainer& t = *res.trainer;
  const int epochs = t.config().epochs;
  if (ev.started)
    ev.started({t, res.train->count, res.test->count, resumed, !resumed.empty() && t.state().epoch > epochs});

  std::string metrics_text;
  for (const EpochMetrics& m : t.state().history) metrics_text += metrics_line(m, t);
  if (!o.metrics.empty() && !metrics_text.empty()) write_file_atomic(o.metrics, metrics_text);

  const std::string& ckpt_path = o.checkpoint_path();
  bool due = false;
  auto checkpoint_now = [&] {
    if (ckpt_path.empty() || !t.healthy()) return false;
    save_checkpoint(ckpt_path, t);
    res.last_checkpoint = t.global_step();
    due = false;
    if (ev.checkpointed) ev.checkpointed(t.global_step());
    return true;
  };
  try {
    for (int e = t.state().epoch; e <= epochs; ++e) {
      const EpochMetrics m = t.train_epoch(e, res.test.get(), [&](const Progress& p) {
        if (ev.progress) ev.progress(p);
        const uint64_t g = t.global_step();
        if (!ckpt_path.empty() && o.checkpoint_every > 0 && g % static_cast<uint64_t>(o.checkpoint_every) == 0)
          due = true;
        if (o.stop_after > 0 && g >= o.stop_after) throw StopRequested{};
        if (due && p.step < p.steps) checkpoint_now();  // the epoch's end writes one anyway
      });
      if (ev.epoch_done) ev.epoch_done(m);
      if (!o.metrics.empty()) {
        metrics_text += metrics_line(m, t);
        write_file_atomic(o.metrics, metrics_text);  // complete lines only, even if the run dies
      }
      checkpoint_now();
    }
  } catch (const StopRequested&) {
    res.outcome = RunResult::Outcome::kStopped;
    if (!checkpoint_now() && res.last_checkpoint != t.global_step()) {
      res.outcome = RunResult::Outcome::kUnhealthy;
      res.health_error = "stopped at global step " + std::to_string(t.global_step()) +
                         " with a streak of anomalous steps in progress; no checkpoint written there";
    }
  } catch (const TrainingHealthError& e) {
    res.outcome = RunResult::Outcome::kUnhealthy;
    res.health_error = e.what();
  }
  return res;
}

}  // namespace qtrain
