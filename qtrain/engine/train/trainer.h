// The training loop: batches → forward → loss (by default the integer softmax cross-entropy) → backward → the
// optimizer, with the learning-rate schedule, evaluation and progress reporting. The run driver (train/session.h),
// the CLI and the benches drive it; so can a user, one step at a time:
//   step(batch)                       forward, backward and one optimizer update
//   accumulate(batch, loss, pass) ×k  then update(): k forward/backward passes per update (micro-batches, sandwich
//                                     sub-networks); the parameters' gradients are the exact sum of the passes'
//                                     (Param gradients accumulate, aligned_sum.h), and pass p draws its own
//                                     stochastic rounding (StepContext::pass), pass 0 the draws of a plain step.
// Micro-batches versus one batch: with Batch::mean_over set to the whole update's rows, every row's loss gradient
// dz equals its dz in the one big batch, bit for bit; the weight gradients do not, because each pass quantizes its
// own dY (ShiftQuant ranges and exponents per tensor, so per micro-batch) and draws its own rounding. They agree in
// expectation, and the update is the exact sum of what the passes computed (tests/test_training.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <optional>
#include <string>
#include <vector>

#include "qtrain/engine/core/profile.h"
#include "qtrain/engine/data/batcher.h"
#include "qtrain/engine/data/idx.h"
#include "qtrain/engine/data/normalize.h"
#include "qtrain/engine/models/model.h"
#include "qtrain/engine/ops/softmax_ce.h"
#include "qtrain/engine/core/quant_policy.h"
#include "qtrain/engine/optim/optimizer.h"
#include "qtrain/engine/optim/schedule.h"
#include "qtrain/engine/train/health.h"
#include "qtrain/kernels/thread_pool.h"

namespace qtrain {

struct TrainConfig {
  ModelSpec model;
  int epochs = 5;
  std::size_t batch = 64;
  double lr = 0.05;  // peak of the schedule
  ScheduleKind schedule = ScheduleKind::kOneCycle;
  double warmup_epochs = 1.0;     // warmup-cosine: the linear warm-up's length in epochs, [0, epochs]
  std::string optimizer = "sgd";  // make_optimizer's name (qtrain/engine/optim/optimizer.h)
  SgdConfig sgd;
  AdamWConfig adamw;
  OptimizerConfig optimizer_config() const { return {sgd, adamw}; }
  uint64_t seed = 0;
  std::size_t threads = 1;  // 0: every processor available to the process
  data::Augment augment;    // random crop with zero padding and horizontal flips (off by default)
  HealthConfig health;      // stop a diverging or dead run (qtrain/engine/train/health.h)
  bool profile = false;     // time every step's layers and phases (Trainer::profile(), qtrain/engine/core/profile.h)
  // Per-layer quantization overrides for training and evaluation (core/quant_policy.h; checked against the model
  // when the trainer is made). Part of the model: saved with it and in checkpoints. None: the model's own bits.
  std::optional<QuantPolicy> policy;
  void validate() const;    // throws UsageError naming the flag and its valid range
};

struct EpochMetrics {
  int epoch = 0;  // 1-based
  double loss = 0, train_accuracy = 0, test_accuracy = 0;
  double images_per_second = 0, seconds = 0, lr = 0;
};

// Where a run is, and everything besides the weights and the optimizer's state it needs to continue bit-exactly. The
// data order is a pure function of (seed, epoch) and every stochastic rounding of (seed, global step, tensor), so
// (seed, global_step) is the whole random-generator state; the learning rate is a function of global_step too.
struct TrainState {
  uint64_t global_step = 0;       // steps done in the whole run
  int epoch = 1;                  // the epoch in progress (1-based), or the next one when step_in_epoch is 0
  std::size_t step_in_epoch = 0;  // steps of `epoch` already done
  double loss_sum = 0;            // Σ loss·images over those steps (the epoch's metrics continue from them)
  std::size_t correct = 0, seen = 0;
  HealthState health;
  std::vector<EpochMetrics> history;  // the finished epochs, in order
};

struct Progress {
  int epoch = 0, epochs = 0;  // epoch is 1-based
  std::size_t step = 0, steps = 0;
  double loss = 0;             // running mean over the epoch so far
  double images_per_second = 0;
  double eta_seconds = 0;      // for the whole run
};

// One pass's data as the model's input, already in the data plane: labels.size() examples of the model's input
// size each (image-major, each image HWC; real value q·2^exponent), and their labels.
struct Batch {
  std::span<const int8_t> inputs;
  int exponent = 0;
  std::span<const int32_t> labels;
  std::size_t mean_over = 0;  // the B of the loss's mean (0 = labels.size()); micro-batches pass the update's rows
};

// A loss: the logits of a batch → its metrics, seeding the logits' gradient on the tape when ctx is training.
using LossFn = std::function<LossResult(const StepContext& ctx, const VarPtr& logits, const Batch& batch)>;

// The default loss: softmax_cross_entropy(ctx, logits, batch.labels, batch.mean_over).
LossResult softmax_ce_loss(const StepContext& ctx, const VarPtr& logits, const Batch& batch);

struct UpdateResult {
  bool weight_grads_zero = false;  // every weight gradient (biases aside) of the update was exactly zero
};

// The model's int8 input values per example: H·W·C (or the MLP's input width).
std::size_t input_size(const ModelSpec& spec);
// Throws UsageError naming both shapes unless `set`'s examples fit the model's input and its classes fit the
// model's outputs.
void check_input_fits(const ModelSpec& spec, const data::ImageSet& set);

class Trainer {
 public:
  // `train` must outlive the trainer. The pixel normalization is fitted on `train`.
  Trainer(const TrainConfig& cfg, const data::ImageSet& train);
  // Continue training a loaded model (its spec replaces cfg.model).
  Trainer(const TrainConfig& cfg, const data::ImageSet& train, std::unique_ptr<Model> model,
          const data::PixelNorm& norm);

  // One epoch over the training set (epoch is 1-based). `test` may be null: test accuracy is then 0. If the state
  // is inside `epoch` (restore() of a mid-epoch checkpoint), the epoch continues from there. `progress` runs after
  // every step with state() consistent (it may save a checkpoint). Throws TrainingHealthError when the health
  // monitor (cfg.health) stops the run.
  EpochMetrics train_epoch(int epoch, const data::ImageSet* test,
                           const std::function<void(const Progress&)>& progress = {});
  // Forward, loss and backward of one pass (0-based `pass` of this update); the gradients add to the parameters'.
  // An empty `loss` is softmax_ce_loss. Throws std::invalid_argument if the batch's sizes do not fit the model.
  LossResult accumulate(const Batch& batch, const LossFn& loss = {}, uint32_t pass = 0);
  // One optimizer step on the accumulated gradients at the schedule's learning rate; the global step advances.
  UpdateResult update();
  struct StepResult {
    LossResult loss;
    bool weight_grads_zero = false;
  };
  // accumulate(batch, loss, 0) then update().
  StepResult step(const Batch& batch, const LossFn& loss = {});
  // The loss train_epoch uses (default: softmax_ce_loss).
  void set_loss(LossFn loss) { loss_ = std::move(loss); }

  // Continue from a saved position (the model's weights and the optimizer's state must already be the saved ones).
  // Throws std::invalid_argument when the state does not fit this run (epochs, steps per epoch, batch).
  void restore(const TrainState& state);
  const TrainState& state() const { return state_; }
  // No streak of anomalous steps in progress (see HealthMonitor::clean): a good moment for a checkpoint.
  bool healthy() const { return health_.clean(); }
  std::size_t steps_per_epoch() const { return batcher_.batches(); }
  const data::ImageSet& train_set() const { return train_; }
  // CRC-32 of the training set (count, image size, pixels, labels), computed once: checkpoints record it so a run
  // cannot resume on other data by mistake.
  uint32_t training_data_crc() const;
  // Accuracy (fraction) on `set` with the current weights.
  double evaluate(const data::ImageSet& set);

  Model& model() { return *model_; }
  const Model& model() const { return *model_; }
  const data::PixelNorm& norm() const { return norm_; }
  const TrainConfig& config() const { return cfg_; }
  kernels::ThreadPool& pool() { return pool_; }
  const kernels::ThreadPool& pool() const { return pool_; }
  Optimizer& optimizer() { return *optimizer_; }
  const Optimizer& optimizer() const { return *optimizer_; }
  uint64_t global_step() const { return state_.global_step; }
  // The step profile summed over this process's training steps; null unless cfg.profile.
  const StepProfile* profile() const { return profile_.get(); }

 private:
  TrainConfig cfg_;
  const data::ImageSet& train_;
  data::PixelNorm norm_;
  std::unique_ptr<Model> model_;
  std::vector<Param*> params_;
  kernels::ThreadPool pool_;
  data::Batcher batcher_;
  std::unique_ptr<Optimizer> optimizer_;
  LrSchedule schedule_;
  TrainState state_;
  HealthMonitor health_;
  std::unique_ptr<StepProfile> profile_;
  LossFn loss_;
  double started_ = -1;  // wall-clock start of this process's part of the run, for the ETA
  uint64_t started_step_ = 0;
  mutable uint32_t data_crc_ = 0;
  mutable bool data_crc_known_ = false;
};

// Accuracy of `model` on `set` (batches of 500, no tape), with `policy`'s bits (null: the model's own).
// Throws UsageError (check_input_fits) when the set's shape does not fit the model.
double evaluate_model(Model& model, const data::ImageSet& set, const data::PixelNorm& norm, kernels::ThreadPool* pool,
                      const QuantPolicy* policy = nullptr);

}  // namespace qtrain
