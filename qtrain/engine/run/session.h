// The run driver: a whole training run as `qtrain train` does it, for the CLI and for a library user alike.
//
//   run_training(config, data, options, events)
//     reads the training and test splits through `data`, builds a Trainer (or continues options.resume, after
//     check_resume_compatible), trains epoch after epoch and reports through `events`;
//     checkpoints to options.checkpoint every options.checkpoint_every global steps and at the end of every epoch,
//     but only while the health monitor sees no streak of bad steps (a due checkpoint waits for a clean step), so
//     the file always holds the last good state;
//     stops after global step options.stop_after with a checkpoint, to continue later with options.resume;
//     rewrites options.metrics (one JSON line per finished epoch) atomically after every epoch, so the file holds
//     complete lines only, even if the run dies.
// A resumed run is bit-identical to an uninterrupted one (whatever the thread count or kernel target) unless the
// learning rate is changed (events.note says so).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "qtrain/engine/data/idx.h"
#include "qtrain/engine/io/checkpoint.h"
#include "qtrain/engine/train/trainer.h"

namespace qtrain {

struct RunOptions {
  std::string checkpoint;        // write checkpoints here; empty: options.resume when resuming, else none
  int64_t checkpoint_every = 0;  // also every N global steps (0 = only at the end of each epoch)
  uint64_t stop_after = 0;       // stop after this global step with a checkpoint (0 = off)
  std::string metrics;           // one JSON line per finished epoch (empty = none)
  std::string resume;            // continue the run saved in this checkpoint (empty = a new run)
  std::size_t train_limit = 0;   // the first N training examples (0 = all; a resumed run uses its own count)
  std::size_t test_limit = 0;    // the first N test examples (0 = all)
  // The settings asked for explicitly, by flag name ("--bits", "--epochs", …) with the text given. Resuming, each
  // must agree with the checkpoint (check_resume_compatible); "--lr" may differ and then replaces the saved one.
  std::map<std::string, std::string> given;

  // The file checkpoints go to ("" = none).
  const std::string& checkpoint_path() const { return checkpoint.empty() ? resume : checkpoint; }
  // Throws UsageError naming the flag: checkpoint_every < 0, or checkpoint_every / stop_after without a file.
  void validate() const;
};

// Reads one split of the run's data (limit: the first N examples, 0 = all).
using DataSource = std::function<data::ImageSet(data::Split split, std::size_t limit)>;
// data::load_dataset(name, dir, split, limit).
DataSource dataset_source(const std::string& name, const std::string& dir);

// A resumed run keeps the settings it started with: every setting in options.given (flag names, see RunOptions)
// and a non-zero options.train_limit must agree with checkpoint options.resume, "--lr" excepted. Throws
// UsageError "--bits 8 differs from the checkpoint's 4,4,4 (run.qtc); a resumed run keeps the settings it started
// with (only --lr may change)". `requested` holds the settings the flags asked for.
void check_resume_compatible(const TrainConfig& requested, const RunOptions& options, const Checkpoint& ck);

// What the run is about to do, reported once before the first step.
struct RunStart {
  Trainer& trainer;
  std::size_t train_count, test_count;
  std::string resumed;    // "resuming FILE at epoch E, step S/N (global step G)", or empty for a new run
  bool already_complete;  // a resumed run whose epochs are all done
};

struct RunEvents {
  std::function<void(const std::string& line)> note;  // something the user should know (e.g. an --lr override)
  std::function<void(const RunStart&)> started;
  std::function<void(const Progress&)> progress;  // after every step
  std::function<void(const EpochMetrics&)> epoch_done;
  std::function<void(uint64_t global_step)> checkpointed;  // a checkpoint of this global step was written
};

struct RunResult {
  enum class Outcome {
    kCompleted,  // every epoch trained
    kStopped,    // stopped after options.stop_after with a checkpoint there
    kUnhealthy,  // the health monitor stopped the run (or a stop came during a streak of bad steps)
  };
  Outcome outcome = Outcome::kCompleted;
  std::string health_error;                 // kUnhealthy: what went wrong, as a sentence
  std::optional<uint64_t> last_checkpoint;  // the global step of the last checkpoint this run wrote
  // The data the trainer refers to, then the trainer (so it is destroyed first).
  std::unique_ptr<data::ImageSet> train, test;
  std::unique_ptr<Trainer> trainer;
  // The finished epoch's test accuracy (0 when no epoch finished).
  double test_accuracy() const;
};

// One training run (see the top of this file). `config` is validated first (UsageError naming the flag), then
// `options`; a resumed run takes its settings from the checkpoint, with config's threads, health and profile
// settings. Bad data or checkpoint files are InputErrors naming the file.
RunResult run_training(const TrainConfig& config, const DataSource& data, const RunOptions& options,
                       const RunEvents& events = {});

// One line of the metrics file: the epoch's metrics, the model, the thread count and the seed, as JSON.
std::string metrics_line(const EpochMetrics& m, const Trainer& trainer);

}  // namespace qtrain
