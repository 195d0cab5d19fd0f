#include "qtrain/engine/train/trainer.h"

#include <zlib.h>

#include <chrono>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "qtrain/engine/ops/softmax_ce.h"
#include "qtrain/quant/error.h"

namespace qtrain {

namespace {
double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// A batch of n images as the model's input: n × (H·W·C) for the MLP, N·H·W × C (NHWC) for convolutional models.
VarPtr batch_input(const ModelSpec& spec, const int8_t* images, std::size_t n, std::size_t image_size, int exponent) {
  const std::size_t cols = spec.convolutional() ? spec.in_c : image_size;
  Tensor x(n * image_size / cols, cols, DType::kI8, exponent);
  std::copy(images, images + n * image_size, x.data<int8_t>());
  return make_input(std::move(x));
}
}  // namespace

void TrainConfig::validate() const {
  model.validate();
  if (epochs < 1) throw UsageError("--epochs " + std::to_string(epochs) + " is out of range: must be >= 1");
  if (batch < 1 || batch > 65536)
    throw UsageError("--batch " + std::to_string(batch) + " is out of range 1..65536");
  if (!(lr > 0 && lr < 100)) throw UsageError("--lr " + std::to_string(lr) + " is out of range (0, 100)");
  make_optimizer(optimizer, {sgd});  // validates the name and the hyperparameters
}

Trainer::Trainer(const TrainConfig& cfg, const data::ImageSet& train)
    : Trainer(cfg, train, nullptr, data::fit_pixel_norm(train)) {}

Trainer::Trainer(const TrainConfig& cfg, const data::ImageSet& train, std::unique_ptr<Model> model,
                 const data::PixelNorm& norm)
    : cfg_(cfg),
      train_(train),
      norm_(norm),
      model_(model ? std::move(model) : (cfg.validate(), build_model(cfg.model, cfg.seed))),
      pool_(cfg.threads),
      batcher_(train, norm_, cfg.batch, cfg.seed, /*shuffle=*/true, /*drop_last=*/true, cfg.augment),
      optimizer_(make_optimizer(cfg.optimizer, {cfg.sgd})),
      health_(cfg.health) {
  cfg_.model = model_->spec();
  const ModelSpec& ms = cfg_.model;
  const bool fits = ms.convolutional()
                        ? ms.in_h == train.rows && ms.in_w == train.cols && ms.in_c == train.channels
                        : ms.sizes.front() == train.image_size();
  if (!fits)
    throw UsageError("the model's input (" + ms.describe() + ") does not match the data's " +
                     std::to_string(train.rows) + "x" + std::to_string(train.cols) + "x" +
                     std::to_string(train.channels) + " images");
  if (cfg_.policy) check_policy(*cfg_.policy, model_->named_layers(), cfg_.policy->source);
  if (batcher_.batches() == 0)
    throw UsageError("--batch " + std::to_string(cfg.batch) + " is larger than the training set (" +
                     std::to_string(train.count) + " images)");
  if (cfg.profile) {
    std::vector<std::string> names;
    for (const auto& layer : model_->layers()) names.push_back(layer->name());
    profile_ = std::make_unique<StepProfile>(std::move(names));
  }
  schedule_.kind = cfg.schedule;
  schedule_.peak = cfg.lr;
  schedule_.total_steps = static_cast<uint64_t>(cfg.epochs) * batcher_.batches();
}

namespace {
// Every weight gradient (all parameters but biases) of this step is exactly zero.
bool weight_grads_zero(const std::vector<Param*>& params) {
  for (const Param* p : params) {
    const std::string& n = p->name;
    if (n.size() >= 5 && n.compare(n.size() - 5, 5, ".bias") == 0) continue;
    if (!p->has_grad) continue;
    const int32_t* g = p->grad.data<int32_t>();
    for (std::size_t i = 0, size = p->grad.size(); i < size; ++i)
      if (g[i] != 0) return false;
  }
  return true;
}
}  // namespace

EpochMetrics Trainer::train_epoch(int epoch, const data::ImageSet* test,
                                  const std::function<void(const Progress&)>& progress) {
  if (started_ < 0) {
    started_ = now_seconds();
    started_step_ = state_.global_step;
  }
  TrainState& st = state_;
  if (st.epoch != epoch || st.step_in_epoch > batcher_.batches()) {  // a fresh epoch
    st.epoch = epoch;
    st.step_in_epoch = 0;
    st.loss_sum = 0;
    st.correct = st.seen = 0;
  }
  batcher_.start_epoch(static_cast<uint64_t>(epoch - 1));
  const std::size_t steps = batcher_.batches(), isz = batcher_.image_size();
  std::vector<int8_t> images(cfg_.batch * isz);
  std::vector<uint8_t> labels(cfg_.batch);
  Tape tape;
  const std::vector<Param*> params = model_->params();
  const double t0 = now_seconds();
  std::size_t seen_now = 0;
  const double total = static_cast<double>(cfg_.epochs) * static_cast<double>(steps);
  StepProfile* const prof = profile_.get();
  using Phase = StepProfile::Phase;
  // Adds the time since *t to `phase` when profiling, and restarts *t.
  auto lap = [prof](Phase phase, int64_t* t) {
    if (prof == nullptr) return;
    const int64_t now = StepProfile::now_ns();
    prof->add(phase, now - *t);
    *t = now;
  };
  for (std::size_t b = st.step_in_epoch; b < steps; ++b) {
    int64_t lap_t = prof != nullptr ? StepProfile::now_ns() : 0;
    const std::size_t n = batcher_.fill(b, images.data(), labels.data());
    StepContext ctx{&pool_, &tape, cfg_.seed, st.global_step, prof};
    ctx.policy = cfg_.policy ? &*cfg_.policy : nullptr;
    VarPtr input = batch_input(model_->spec(), images.data(), n, isz, norm_.exponent);
    lap(Phase::kGather, &lap_t);
    VarPtr logits = model_->forward(ctx, input);
    if (prof != nullptr) lap_t = StepProfile::now_ns();
    const LossResult r = softmax_cross_entropy(ctx, logits, labels.data());
    lap(Phase::kLoss, &lap_t);
    tape.backward(prof);
    const bool grads_zero = weight_grads_zero(params);
    if (prof != nullptr) lap_t = StepProfile::now_ns();
    optimizer_->step(params, schedule_.at(st.global_step), st.global_step, cfg_.seed, &pool_);
    lap(Phase::kOptimizer, &lap_t);
    if (prof != nullptr) prof->add_step();
    ++st.global_step;
    st.step_in_epoch = b + 1;
    st.loss_sum += r.loss * static_cast<double>(n);
    st.correct += r.correct;
    st.seen += n;
    seen_now += n;
    const double running = st.loss_sum / static_cast<double>(st.seen);
    const std::string verdict = health_.observe(epoch, running, r.loss, grads_zero);
    st.health = health_.state();
    if (!verdict.empty())
      throw TrainingHealthError("epoch " + std::to_string(epoch) + ", step " + std::to_string(b + 1) + "/" +
                                std::to_string(steps) + " (global step " + std::to_string(st.global_step) +
                                "): " + verdict);
    if (progress) {
      const double t = now_seconds();
      Progress p;
      p.epoch = epoch;
      p.epochs = cfg_.epochs;
      p.step = b + 1;
      p.steps = steps;
      p.loss = running;
      p.images_per_second = static_cast<double>(seen_now) / std::max(t - t0, 1e-9);
      const double done = static_cast<double>(st.global_step - started_step_);
      p.eta_seconds = (t - started_) / done * std::max(0.0, total - static_cast<double>(st.global_step));
      progress(p);
    }
  }
  EpochMetrics m;
  m.epoch = epoch;
  m.seconds = now_seconds() - t0;
  m.loss = st.seen ? st.loss_sum / static_cast<double>(st.seen) : 0.0;
  m.train_accuracy = st.seen ? static_cast<double>(st.correct) / static_cast<double>(st.seen) : 0.0;
  m.images_per_second = static_cast<double>(seen_now) / std::max(m.seconds, 1e-9);
  m.lr = schedule_.at(st.global_step == 0 ? 0 : st.global_step - 1);
  if (test) m.test_accuracy = evaluate(*test);
  st.history.push_back(m);
  st.epoch = epoch + 1;
  st.step_in_epoch = 0;
  st.loss_sum = 0;
  st.correct = st.seen = 0;
  return m;
}

void Trainer::restore(const TrainState& s) {
  const std::size_t steps = batcher_.batches();
  auto fail = [](const std::string& msg) { throw std::invalid_argument("cannot resume: " + msg); };
  if (s.epoch < 1 || s.epoch > cfg_.epochs + 1)
    fail("epoch " + std::to_string(s.epoch) + " is outside the run's 1.." + std::to_string(cfg_.epochs));
  if (s.step_in_epoch > steps || (s.epoch == cfg_.epochs + 1 && s.step_in_epoch != 0))
    fail("step " + std::to_string(s.step_in_epoch) + " is outside the epoch's " + std::to_string(steps) + " steps");
  const uint64_t expect = static_cast<uint64_t>(s.epoch - 1) * steps + s.step_in_epoch;
  if (s.global_step != expect)
    fail("global step " + std::to_string(s.global_step) + " does not match epoch " + std::to_string(s.epoch) +
         ", step " + std::to_string(s.step_in_epoch) + " at " + std::to_string(steps) + " steps per epoch (expected " +
         std::to_string(expect) + ")");
  if (s.seen != s.step_in_epoch * cfg_.batch || s.correct > s.seen)
    fail("the epoch's counters (" + std::to_string(s.seen) + " images seen, " + std::to_string(s.correct) +
         " correct) do not match step " + std::to_string(s.step_in_epoch) + " at batch " + std::to_string(cfg_.batch));
  if (s.history.size() != static_cast<std::size_t>(s.epoch - 1))
    fail(std::to_string(s.history.size()) + " finished epochs recorded before epoch " + std::to_string(s.epoch));
  if (!std::isfinite(s.loss_sum) || s.loss_sum < 0) fail("the epoch's loss sum is not a finite non-negative number");
  state_ = s;
  health_.set_state(s.health);
}

uint32_t Trainer::training_data_crc() const {
  if (!data_crc_known_) {
    uLong crc = crc32(0L, Z_NULL, 0);
    const uint64_t dims[4] = {train_.count, train_.rows, train_.cols, train_.channels};
    crc = crc32(crc, reinterpret_cast<const Bytef*>(dims), sizeof dims);
    crc = crc32_z(crc, train_.pixels.data(), train_.pixels.size());
    crc = crc32_z(crc, train_.labels.data(), train_.labels.size());
    data_crc_ = static_cast<uint32_t>(crc);
    data_crc_known_ = true;
  }
  return data_crc_;
}

double Trainer::evaluate(const data::ImageSet& set) {
  return evaluate_model(*model_, set, norm_, &pool_, cfg_.policy ? &*cfg_.policy : nullptr);
}

double evaluate_model(Model& model, const data::ImageSet& set, const data::PixelNorm& norm, kernels::ThreadPool* pool,
                      const QuantPolicy* policy) {
  constexpr std::size_t kBatch = 500;
  data::Batcher batcher(set, norm, kBatch, 0, /*shuffle=*/false, /*drop_last=*/false);
  const std::size_t isz = batcher.image_size();
  std::vector<int8_t> images(kBatch * isz);
  std::vector<uint8_t> labels(kBatch);
  std::size_t correct = 0;
  for (std::size_t b = 0; b < batcher.batches(); ++b) {
    const std::size_t n = batcher.fill(b, images.data(), labels.data());
    StepContext ctx{pool, nullptr, 0, 0};
    ctx.policy = policy;
    VarPtr logits = model.forward(ctx, batch_input(model.spec(), images.data(), n, isz, norm.exponent));
    correct += softmax_cross_entropy(ctx, logits, labels.data()).correct;
  }
  return set.count ? static_cast<double>(correct) / static_cast<double>(set.count) : 0.0;
}

}  // namespace qtrain
