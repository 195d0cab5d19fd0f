// The training loop: batches → forward → integer softmax cross-entropy → backward → integer SGD, with the
// learning-rate schedule, evaluation and progress reporting. The CLI and the benches drive it; so can a user.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "engine/data/batcher.h"
#include "engine/data/idx.h"
#include "engine/data/normalize.h"
#include "engine/model.h"
#include "engine/optimizer.h"
#include "engine/schedule.h"
#include "kernels/thread_pool.h"

namespace qtrain {

struct TrainConfig {
  ModelSpec model;
  int epochs = 5;
  std::size_t batch = 64;
  double lr = 0.05;  // peak of the schedule
  ScheduleKind schedule = ScheduleKind::kOneCycle;
  SgdConfig sgd;
  uint64_t seed = 0;
  std::size_t threads = 1;  // 0: every processor available to the process
  data::Augment augment;    // random crop with zero padding and horizontal flips (off by default)
  void validate() const;    // throws UsageError naming the flag and its valid range
};

struct EpochMetrics {
  int epoch = 0;  // 1-based
  double loss = 0, train_accuracy = 0, test_accuracy = 0;
  double images_per_second = 0, seconds = 0, lr = 0;
};

struct Progress {
  int epoch = 0, epochs = 0;  // epoch is 1-based
  std::size_t step = 0, steps = 0;
  double loss = 0;             // running mean over the epoch so far
  double images_per_second = 0;
  double eta_seconds = 0;      // for the whole run
};

class Trainer {
 public:
  // `train` must outlive the trainer. The pixel normalization is fitted on `train`.
  Trainer(const TrainConfig& cfg, const data::ImageSet& train);
  // Continue training a loaded model (its spec replaces cfg.model).
  Trainer(const TrainConfig& cfg, const data::ImageSet& train, std::unique_ptr<Model> model,
          const data::PixelNorm& norm);

  // One epoch over the training set (epoch is 1-based). `test` may be null: test accuracy is then 0.
  EpochMetrics train_epoch(int epoch, const data::ImageSet* test,
                           const std::function<void(const Progress&)>& progress = {});
  // Accuracy (fraction) on `set` with the current weights.
  double evaluate(const data::ImageSet& set);

  Model& model() { return *model_; }
  const data::PixelNorm& norm() const { return norm_; }
  const TrainConfig& config() const { return cfg_; }
  kernels::ThreadPool& pool() { return pool_; }
  uint64_t global_step() const { return step_; }

 private:
  TrainConfig cfg_;
  const data::ImageSet& train_;
  data::PixelNorm norm_;
  std::unique_ptr<Model> model_;
  kernels::ThreadPool pool_;
  data::Batcher batcher_;
  Sgd sgd_;
  LrSchedule schedule_;
  uint64_t step_ = 0;
  double started_ = -1;  // wall-clock start of the run, for the ETA
};

// Accuracy of `model` on `set` (batches of 500, no tape).
double evaluate_model(Model& model, const data::ImageSet& set, const data::PixelNorm& norm, kernels::ThreadPool* pool);

}  // namespace qtrain
