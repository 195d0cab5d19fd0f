#include "qtrain/engine/train/trainer.h"

#include <zlib.h>

#include <algorithm>
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

// A batch as the model's input: n × (H·W·C) for the MLP, N·H·W × C (NHWC) for convolutional models.
VarPtr batch_input(const ModelSpec& spec, const Batch& batch) {
  const std::size_t n = batch.labels.size(), isz = input_size(spec);
  if (n == 0 || batch.inputs.size() != n * isz)
    throw std::invalid_argument("batch of " + std::to_string(n) + " labels and " + std::to_string(batch.inputs.size()) +
                                " input values does not fit the model's " + std::to_string(isz) + " per example");
  const std::size_t cols = spec.convolutional() ? spec.in_c : isz;
  Tensor x(n * isz / cols, cols, DType::kI8, batch.exponent);
  std::copy(batch.inputs.begin(), batch.inputs.end(), x.data<int8_t>());
  return make_input(std::move(x));
}

std::string shape_text(std::size_t h, std::size_t w, std::size_t c) {
  return std::to_string(h) + "x" + std::to_string(w) + "x" + std::to_string(c);
}
}  // namespace

LossResult softmax_ce_loss(const StepContext& ctx, const VarPtr& logits, const Batch& batch) {
  if (batch.labels.size() != logits->value.rows())
    throw std::invalid_argument("softmax_ce_loss: " + std::to_string(batch.labels.size()) + " labels for " +
                                std::to_string(logits->value.rows()) + " rows of logits");
  return softmax_cross_entropy(ctx, logits, batch.labels.data(), batch.mean_over);
}

std::size_t input_size(const ModelSpec& spec) {
  return spec.convolutional() ? spec.in_h * spec.in_w * spec.in_c : spec.sizes.front();
}

void check_input_fits(const ModelSpec& spec, const data::ImageSet& set) {
  const std::string data_shape = shape_text(set.rows, set.cols, set.channels);
  const bool fits = spec.convolutional() ? spec.in_h == set.rows && spec.in_w == set.cols && spec.in_c == set.channels
                                         : spec.sizes.front() == set.image_size();
  if (!fits)
    throw UsageError("the model's input (" + spec.describe() + ": " +
                     (spec.convolutional() ? shape_text(spec.in_h, spec.in_w, spec.in_c) + " images"
                                           : std::to_string(spec.sizes.front()) + " values per image") +
                     ") does not match the data's " + data_shape + " images (" + std::to_string(set.image_size()) +
                     " values)");
  const std::size_t outputs = spec.convolutional() ? spec.classes : spec.sizes.back();
  if (set.classes > outputs)
    throw UsageError("the data's " + std::to_string(set.classes) + " classes do not fit the model's " +
                     std::to_string(outputs) + " outputs (" + spec.describe() + ")");
}

void TrainConfig::validate() const {
  model.validate();
  if (epochs < 1) throw UsageError("--epochs " + std::to_string(epochs) + " is out of range: must be >= 1");
  if (batch < 1 || batch > 65536)
    throw UsageError("--batch " + std::to_string(batch) + " is out of range 1..65536");
  if (!(lr > 0 && lr < 100)) throw UsageError("--lr " + std::to_string(lr) + " is out of range (0, 100)");
  if (!(warmup_epochs >= 0 && warmup_epochs <= epochs))
    throw UsageError("--warmup-epochs " + std::to_string(warmup_epochs) + " is out of range [0, --epochs = " +
                     std::to_string(epochs) + "]");
  make_optimizer(optimizer, optimizer_config());  // validates the name and the hyperparameters
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
      optimizer_(make_optimizer(cfg.optimizer, cfg.optimizer_config())),
      health_(cfg.health) {
  cfg_.model = model_->spec();
  check_input_fits(cfg_.model, train);
  if (cfg_.policy) check_policy(*cfg_.policy, model_->named_layers(), cfg_.policy->source);
  params_ = model_->params();
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
  schedule_.warmup_steps = static_cast<uint64_t>(std::llround(cfg.warmup_epochs * static_cast<double>(batcher_.batches())));
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

LossResult Trainer::accumulate(const Batch& batch, const LossFn& loss, uint32_t pass) {
  StepProfile* const prof = profile_.get();
  Tape tape;
  StepContext ctx{&pool_, &tape, cfg_.seed, state_.global_step, prof};
  ctx.pass = pass;
  ctx.policy = cfg_.policy ? &*cfg_.policy : nullptr;
  VarPtr logits = model_->forward(ctx, batch_input(model_->spec(), batch));
  const int64_t loss_t = prof != nullptr ? StepProfile::now_ns() : 0;
  const LossResult r = loss ? loss(ctx, logits, batch) : softmax_ce_loss(ctx, logits, batch);
  if (prof != nullptr) prof->add(StepProfile::Phase::kLoss, StepProfile::now_ns() - loss_t);
  tape.backward(prof);
  return r;
}

UpdateResult Trainer::update() {
  StepProfile* const prof = profile_.get();
  UpdateResult u;
  u.weight_grads_zero = weight_grads_zero(params_);
  const int64_t opt_t = prof != nullptr ? StepProfile::now_ns() : 0;
  optimizer_->step(params_, schedule_.at(state_.global_step), state_.global_step, cfg_.seed, &pool_);
  if (prof != nullptr) {
    prof->add(StepProfile::Phase::kOptimizer, StepProfile::now_ns() - opt_t);
    prof->add_step();
  }
  ++state_.global_step;
  return u;
}

Trainer::StepResult Trainer::step(const Batch& batch, const LossFn& loss) {
  StepResult r;
  r.loss = accumulate(batch, loss, 0);
  r.weight_grads_zero = update().weight_grads_zero;
  return r;
}

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
  std::vector<int32_t> labels(cfg_.batch);
  const double t0 = now_seconds();
  std::size_t seen_now = 0;
  const double total = static_cast<double>(cfg_.epochs) * static_cast<double>(steps);
  StepProfile* const prof = profile_.get();
  for (std::size_t b = st.step_in_epoch; b < steps; ++b) {
    const int64_t gather_t = prof != nullptr ? StepProfile::now_ns() : 0;
    const std::size_t n = batcher_.fill(b, images.data(), labels.data());
    if (prof != nullptr) prof->add(StepProfile::Phase::kGather, StepProfile::now_ns() - gather_t);
    const Batch batch{.inputs = {images.data(), n * isz}, .exponent = norm_.exponent, .labels = {labels.data(), n}};
    const LossResult r = accumulate(batch, loss_, 0);
    const bool grads_zero = update().weight_grads_zero;
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
    // One byte per label while every label fits one (IDX, CIFAR-10: the CRCs of older checkpoints), else four
    // (little-endian); int8 features add a marker and their exponent.
    const bool bytes =
        std::all_of(train_.labels.begin(), train_.labels.end(), [](int32_t l) { return l >= 0 && l < 256; });
    std::vector<uint8_t> label_bytes;
    label_bytes.reserve(train_.labels.size() * (bytes ? 1 : 4));
    for (const int32_t l : train_.labels)
      for (int k = 0; k < (bytes ? 1 : 4); ++k)
        label_bytes.push_back(static_cast<uint8_t>(static_cast<uint32_t>(l) >> (8 * k)));
    crc = crc32_z(crc, label_bytes.data(), label_bytes.size());
    if (train_.int8_features) {
      const int32_t marker[2] = {0x38544e49 /* "INT8" */, train_.feature_exponent};
      crc = crc32(crc, reinterpret_cast<const Bytef*>(marker), sizeof marker);
    }
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
  check_input_fits(model.spec(), set);
  constexpr std::size_t kBatch = 500;
  data::Batcher batcher(set, norm, kBatch, 0, /*shuffle=*/false, /*drop_last=*/false);
  const std::size_t isz = batcher.image_size();
  std::vector<int8_t> images(kBatch * isz);
  std::vector<int32_t> labels(kBatch);
  std::size_t correct = 0;
  for (std::size_t b = 0; b < batcher.batches(); ++b) {
    const std::size_t n = batcher.fill(b, images.data(), labels.data());
    StepContext ctx{pool, nullptr, 0, 0};
    const Batch batch{.inputs = {images.data(), n * isz}, .exponent = norm.exponent, .labels = {labels.data(), n}};
    ctx.policy = policy;
    VarPtr logits = model.forward(ctx, batch_input(model.spec(), batch));
    correct += softmax_ce_loss(ctx, logits, batch).correct;
  }
  return set.count ? static_cast<double>(correct) / static_cast<double>(set.count) : 0.0;
}

}  // namespace qtrain
