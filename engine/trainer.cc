#include "engine/trainer.h"

#include <chrono>
#include <string>
#include <vector>

#include "engine/softmax_ce.h"
#include "quant/error.h"

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
  Sgd check(sgd);  // validates momentum and weight decay
  (void)check;
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
      sgd_(cfg.sgd) {
  cfg_.model = model_->spec();
  const ModelSpec& ms = cfg_.model;
  const bool fits = ms.convolutional()
                        ? ms.in_h == train.rows && ms.in_w == train.cols && ms.in_c == train.channels
                        : ms.sizes.front() == train.image_size();
  if (!fits)
    throw UsageError("the model's input (" + ms.describe() + ") does not match the data's " +
                     std::to_string(train.rows) + "x" + std::to_string(train.cols) + "x" +
                     std::to_string(train.channels) + " images");
  if (batcher_.batches() == 0)
    throw UsageError("--batch " + std::to_string(cfg.batch) + " is larger than the training set (" +
                     std::to_string(train.count) + " images)");
  schedule_.kind = cfg.schedule;
  schedule_.peak = cfg.lr;
  schedule_.total_steps = static_cast<uint64_t>(cfg.epochs) * batcher_.batches();
}

EpochMetrics Trainer::train_epoch(int epoch, const data::ImageSet* test,
                                  const std::function<void(const Progress&)>& progress) {
  if (started_ < 0) started_ = now_seconds();
  batcher_.start_epoch(static_cast<uint64_t>(epoch - 1));
  const std::size_t steps = batcher_.batches(), isz = batcher_.image_size();
  std::vector<int8_t> images(cfg_.batch * isz);
  std::vector<uint8_t> labels(cfg_.batch);
  Tape tape;
  const std::vector<Param*> params = model_->params();
  const double t0 = now_seconds();
  double loss_sum = 0;
  std::size_t correct = 0, seen = 0;
  double lr = 0;
  for (std::size_t b = 0; b < steps; ++b) {
    const std::size_t n = batcher_.fill(b, images.data(), labels.data());
    StepContext ctx{&pool_, &tape, cfg_.seed, step_};
    VarPtr logits = model_->forward(ctx, batch_input(model_->spec(), images.data(), n, isz, norm_.exponent));
    const LossResult r = softmax_cross_entropy(ctx, logits, labels.data());
    tape.backward();
    lr = schedule_.at(step_);
    sgd_.step(params, lr, step_, cfg_.seed);
    ++step_;
    loss_sum += r.loss * static_cast<double>(n);
    correct += r.correct;
    seen += n;
    if (progress) {
      const double t = now_seconds();
      Progress p;
      p.epoch = epoch;
      p.epochs = cfg_.epochs;
      p.step = b + 1;
      p.steps = steps;
      p.loss = loss_sum / static_cast<double>(seen);
      p.images_per_second = static_cast<double>(seen) / std::max(t - t0, 1e-9);
      const double done = static_cast<double>(epoch - 1) * static_cast<double>(steps) + static_cast<double>(b + 1);
      const double total = static_cast<double>(cfg_.epochs) * static_cast<double>(steps);
      p.eta_seconds = (t - started_) / done * (total - done);
      progress(p);
    }
  }
  EpochMetrics m;
  m.epoch = epoch;
  m.seconds = now_seconds() - t0;
  m.loss = loss_sum / static_cast<double>(seen);
  m.train_accuracy = static_cast<double>(correct) / static_cast<double>(seen);
  m.images_per_second = static_cast<double>(seen) / std::max(m.seconds, 1e-9);
  m.lr = lr;
  if (test) m.test_accuracy = evaluate(*test);
  return m;
}

double Trainer::evaluate(const data::ImageSet& set) { return evaluate_model(*model_, set, norm_, &pool_); }

double evaluate_model(Model& model, const data::ImageSet& set, const data::PixelNorm& norm, kernels::ThreadPool* pool) {
  constexpr std::size_t kBatch = 500;
  data::Batcher batcher(set, norm, kBatch, 0, /*shuffle=*/false, /*drop_last=*/false);
  const std::size_t isz = batcher.image_size();
  std::vector<int8_t> images(kBatch * isz);
  std::vector<uint8_t> labels(kBatch);
  std::size_t correct = 0;
  for (std::size_t b = 0; b < batcher.batches(); ++b) {
    const std::size_t n = batcher.fill(b, images.data(), labels.data());
    StepContext ctx{pool, nullptr, 0, 0};
    VarPtr logits = model.forward(ctx, batch_input(model.spec(), images.data(), n, isz, norm.exponent));
    correct += softmax_cross_entropy(ctx, logits, labels.data()).correct;
  }
  return set.count ? static_cast<double>(correct) / static_cast<double>(set.count) : 0.0;
}

}  // namespace qtrain
