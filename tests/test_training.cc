// End-to-end: the MLP learns Fashion-MNIST, and a run is bit-exact whatever the thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "qtrain/engine/data/idx.h"
#include "qtrain/engine/data/in_memory.h"
#include "qtrain/engine/io/serialize.h"
#include "qtrain/engine/train/trainer.h"

namespace qtrain {
namespace {

// The data set comes from the Debian package dataset-fashion-mnist, which scripts/setup.sh installs.
const data::ImageSet& train_set() {
  static const data::ImageSet s = data::load_mnist_dir(data::kDefaultFashionMnistDir, data::Split::kTrain);
  return s;
}
const data::ImageSet& test_set() {
  static const data::ImageSet s = data::load_mnist_dir(data::kDefaultFashionMnistDir, data::Split::kTest);
  return s;
}

TrainConfig config(int bits, std::size_t threads) {
  TrainConfig cfg;
  cfg.model.bits = {bits, bits, bits};
  cfg.epochs = 1;
  cfg.batch = 64;
  cfg.seed = 0;
  cfg.threads = threads;
  return cfg;
}

// Every parameter's master bytes and exponent.
std::string snapshot(Model& m) {
  std::string s;
  for (Param* p : m.params()) {
    const int e = p->master.exponent();
    s.append(reinterpret_cast<const char*>(&e), sizeof e);
    s.append(reinterpret_cast<const char*>(p->master.data<int32_t>()), p->master.size() * sizeof(int32_t));
  }
  return s;
}

// One epoch on the first 10k training images, evaluated on the whole test set.
EpochMetrics one_epoch_on_10k(int bits) {
  const data::ImageSet train = data::take_first(train_set(), 10000);
  Trainer t(config(bits, 1), train);
  const EpochMetrics m = t.train_epoch(1, &test_set());
  std::printf("%s, 1 epoch on 10k images: loss %.4f, train %.2f%%, test %.2f%%\n",
              t.model().spec().describe().c_str(), m.loss, 100 * m.train_accuracy, 100 * m.test_accuracy);
  return m;
}

// fp32 PyTorch reaches 81.3% in the same setting (bench/reference/torch_models.py with 10k images).
TEST(Training, Mlp8BitOneEpochOn10kImagesLearns) { EXPECT_GE(one_epoch_on_10k(8).test_accuracy, 0.80); }
TEST(Training, Mlp4BitOneEpochOn10kImagesLearns) { EXPECT_GE(one_epoch_on_10k(4).test_accuracy, 0.78); }

TEST(Training, OneTwoAndThreeThreadsGiveBitIdenticalWeights) {
  const data::ImageSet train = data::take_first(train_set(), 3200);
  for (int bits : {8, 4}) {
    Trainer t1(config(bits, 1), train), t2(config(bits, 2), train), t3n(config(bits, 3), train);
    ASSERT_EQ(t2.pool().threads(), 2u);
    ASSERT_EQ(t3n.pool().threads(), 3u);
    t1.train_epoch(1, nullptr);
    t2.train_epoch(1, nullptr);
    t3n.train_epoch(1, nullptr);
    EXPECT_TRUE(snapshot(t1.model()) == snapshot(t2.model())) << bits << "-bit weights differ between 1 and 2 threads";
    EXPECT_TRUE(snapshot(t1.model()) == snapshot(t3n.model())) << bits << "-bit weights differ between 1 and 3 threads";
    // And a repeated run is identical too; a different seed is not.
    Trainer again(config(bits, 1), train);
    again.train_epoch(1, nullptr);
    EXPECT_TRUE(snapshot(t1.model()) == snapshot(again.model()));
    TrainConfig other = config(bits, 1);
    other.seed = 1;
    Trainer t3(other, train);
    t3.train_epoch(1, nullptr);
    EXPECT_FALSE(snapshot(t1.model()) == snapshot(t3.model()));
  }
}

TEST(Training, SavedModelEvaluatesIdentically) {
  const data::ImageSet train = data::take_first(train_set(), 1280);
  const data::ImageSet test = data::take_first(test_set(), 500);
  Trainer t(config(4, 1), train);
  t.train_epoch(1, nullptr);
  const double acc = t.evaluate(test);
  const auto path = std::filesystem::temp_directory_path() / ("qtrain_model_" + std::to_string(::getpid()) + ".qtm");
  save_model(path.string(), t.model(), t.norm());
  LoadedModel loaded = load_model(path.string());
  std::filesystem::remove(path);
  EXPECT_EQ(snapshot(*loaded.model), snapshot(t.model()));
  EXPECT_EQ(loaded.model->spec().describe(), t.model().spec().describe());
  EXPECT_TRUE(loaded.norm == t.norm());
  EXPECT_EQ(evaluate_model(*loaded.model, test, loaded.norm, nullptr), acc);
}

// The CNN with integer L1 batch norm at W4A4G4 (8-bit first conv and classifier) learns from 3000 images.
TEST(Training, Cnn4BitL1NormLearns) {
  const data::ImageSet train = data::take_first(train_set(), 3000);
  const data::ImageSet test = data::take_first(test_set(), 1000);
  TrainConfig cfg = config(4, 1);
  cfg.model.kind = "cnn";
  Trainer t(cfg, train);
  const EpochMetrics m = t.train_epoch(1, &test);
  std::printf("%s, 1 epoch on 3000 images: loss %.4f, train %.2f%%, test %.2f%%\n",
              t.model().spec().describe().c_str(), m.loss, 100 * m.train_accuracy, 100 * m.test_accuracy);
  EXPECT_GE(m.test_accuracy, 0.70);
}

TEST(Training, SavedConvModelKeepsRunningStatistics) {
  const data::ImageSet train = data::take_first(train_set(), 640);
  const data::ImageSet test = data::take_first(test_set(), 300);
  TrainConfig cfg = config(4, 1);
  cfg.model.kind = "resnet8";
  cfg.model.scale = "mse";    // the quantizer choices must survive the file: evaluation quantizes with them
  cfg.model.act_groups = 4;
  Trainer t(cfg, train);
  t.train_epoch(1, nullptr);
  const double acc = t.evaluate(test);
  const auto path = std::filesystem::temp_directory_path() / ("qtrain_resnet_" + std::to_string(::getpid()) + ".qtm");
  save_model(path.string(), t.model(), t.norm());
  LoadedModel loaded = load_model(path.string());
  std::filesystem::remove(path);
  EXPECT_EQ(snapshot(*loaded.model), snapshot(t.model()));
  EXPECT_EQ(loaded.model->spec().scale, "mse");
  EXPECT_EQ(loaded.model->spec().act_groups, 4);
  const auto a = t.model().buffers(), b = loaded.model->buffers();
  ASSERT_EQ(a.size(), b.size());
  ASSERT_GT(a.size(), 0u);
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i]->to_double(), b[i]->to_double()) << "buffer " << i;
  EXPECT_EQ(evaluate_model(*loaded.model, test, loaded.norm, nullptr), acc);
}

// ---------------------------------------------------------------------------------------------------------------
// The step API: micro-batches (accumulate × 2 + update) against one batch of 64.

// 64 examples of 16 int8 features in 4 classes, and a small MLP on them.
struct MicroBatchSetup {
  std::vector<int8_t> x;
  std::vector<int32_t> y;
  data::ImageSet set;
  TrainConfig cfg;
  MicroBatchSetup() : x(64 * 16), y(64) {
    const quant::CounterRng rng(4, 4);
    for (std::size_t i = 0; i < 64; ++i) {
      y[i] = static_cast<int32_t>(i % 4);
      for (std::size_t f = 0; f < 16; ++f)
        x[i * 16 + f] =
            static_cast<int8_t>(static_cast<int>(rng.below(i * 16 + f, 81)) - 40 + (f / 4 == i % 4 ? 40 : 0));
    }
    set = data::make_feature_set(x, y, 16, 4, -5);
    cfg.model.sizes = {16, 32, 4};
    cfg.model.bits = {4, 4, 4};
    cfg.batch = 64;
    cfg.threads = 1;
    cfg.sgd.weight_decay = 0;  // the update is the gradient's alone
  }
  // Examples [first, first + n) as a batch whose loss is a mean over `mean_over` rows.
  Batch half(std::size_t first, std::size_t n, std::size_t mean_over) const {
    return Batch{.inputs = {x.data() + first * 16, n * 16},
                 .exponent = -5,
                 .labels = {y.data() + first, n},
                 .mean_over = mean_over};
  }
};

// Real value of every parameter gradient, in parameter order.
std::vector<std::vector<long double>> grads(Trainer& t) {
  std::vector<std::vector<long double>> out;
  for (Param* p : t.model().params()) {
    EXPECT_TRUE(p->has_grad) << p->name;
    std::vector<long double> g(p->grad.size());
    for (std::size_t r = 0; r < p->grad.rows(); ++r)
      for (std::size_t c = 0; c < p->grad.cols(); ++c)
        g[r * p->grad.cols() + c] = std::ldexp(
            static_cast<long double>(p->grad.data<int32_t>()[r * p->grad.cols() + c]), p->grad.exponent_at(r, c));
    out.push_back(std::move(g));
  }
  return out;
}

// What holds for two micro-batches of 32 (each loss a mean over 64 rows) accumulated into one update:
//   - each parameter's gradient is the exact sum of the two passes' gradients, rounded once (within ½ unit of its
//     exponent; exact while the sum fits int32 there);
//   - pass 1 draws other rounding than pass 0: the same micro-batch gives another gradient;
//   - the update is not the one of a single batch of 64 (each pass quantizes its own dY), but close to it.
TEST(TrainerStep, TwoMicroBatchesAccumulateTheExactSumOfTheirPasses) {
  const MicroBatchSetup s;
  Trainer both(s.cfg, s.set), first(s.cfg, s.set), second(s.cfg, s.set);
  both.accumulate(s.half(0, 32, 64), {}, 0);
  both.accumulate(s.half(32, 32, 64), {}, 1);
  first.accumulate(s.half(0, 32, 64), {}, 0);
  second.accumulate(s.half(32, 32, 64), {}, 1);
  const auto sum = grads(both), g0 = grads(first), g1 = grads(second);
  const std::vector<Param*> params = both.model().params();
  std::size_t exact = 0, total = 0;
  for (std::size_t k = 0; k < params.size(); ++k) {
    const Tensor& g = params[k]->grad;
    for (std::size_t i = 0; i < g.size(); ++i, ++total) {
      const long double want = g0[k][i] + g1[k][i];
      const long double half_ulp = std::ldexp(0.5L, g.exponent_at(i / g.cols(), i % g.cols()));
      EXPECT_LE(std::fabs(sum[k][i] - want), half_ulp) << params[k]->name << "[" << i << "]";
      exact += sum[k][i] == want;
    }
  }
  EXPECT_GE(exact, total * 9 / 10) << "the sum of two gradients rarely needs rounding";

  // The same micro-batch as pass 1 draws other rounding than as pass 0.
  Trainer again(s.cfg, s.set);
  again.accumulate(s.half(0, 32, 64), {}, 1);
  EXPECT_NE(grads(again), g0);

  // Against one batch of 64: the update's direction agrees.
  Trainer one(s.cfg, s.set);
  const std::string w0 = snapshot(one.model());
  // Real master values before the update (the optimizer may move the exponent).
  auto real = [](const Param& p, std::size_t i) {
    return std::ldexp(static_cast<double>(p.master.data<int32_t>()[i]), p.master.exponent());
  };
  std::vector<std::vector<double>> start;
  for (Param* p : one.model().params()) {
    start.emplace_back(p->master.size());
    for (std::size_t i = 0; i < p->master.size(); ++i) start.back()[i] = real(*p, i);
  }
  one.step(s.half(0, 64, 0));
  both.update();
  EXPECT_EQ(one.global_step(), 1u);
  EXPECT_EQ(both.global_step(), 1u);
  double dot = 0, n1 = 0, n2 = 0;
  const std::vector<Param*> p1 = one.model().params(), p2 = both.model().params();
  for (std::size_t k = 0; k < p1.size(); ++k) {
    for (std::size_t i = 0; i < p1[k]->master.size(); ++i) {
      const double a = real(*p1[k], i) - start[k][i], b = real(*p2[k], i) - start[k][i];
      dot += a * b;
      n1 += a * a;
      n2 += b * b;
    }
  }
  ASSERT_GT(n1, 0.0);
  const double cosine = dot / std::sqrt(n1 * n2);
  std::printf("micro-batches: %zu of %zu gradient sums exact; cosine of the updates %.4f\n", exact, total, cosine);
  EXPECT_GT(cosine, 0.9) << "cosine of the two updates";
  EXPECT_NE(snapshot(one.model()), snapshot(both.model()));
  EXPECT_NE(snapshot(one.model()), w0);
}

// With mean_over, a micro-batch's loss gradient is bit for bit the rows of the whole batch's.
TEST(TrainerStep, MicroBatchLossGradientEqualsTheWholeBatchRows) {
  const std::size_t rows = 64, cols = 7;
  Tensor z(rows, cols, DType::kI32, -10);
  const quant::CounterRng rng(8, 8);
  for (std::size_t i = 0; i < z.size(); ++i) z.data<int32_t>()[i] = static_cast<int32_t>(rng.below(i, 4001)) - 2000;
  std::vector<int32_t> labels(rows);
  for (std::size_t r = 0; r < rows; ++r) labels[r] = static_cast<int32_t>(r % cols);
  auto logits = [](const Tensor& t) {
    auto v = std::make_shared<Var>();
    v->value = t;
    v->requires_grad = true;
    return v;
  };
  Tape tape;
  const StepContext ctx{nullptr, &tape, 0, 0};
  const VarPtr whole = logits(z);
  softmax_cross_entropy(ctx, whole, labels.data());
  for (std::size_t half = 0; half < 2; ++half) {
    Tensor part(32, cols, DType::kI32, -10);
    std::copy(z.data<int32_t>() + half * 32 * cols, z.data<int32_t>() + (half + 1) * 32 * cols, part.data<int32_t>());
    const VarPtr v = logits(part);
    softmax_cross_entropy(ctx, v, labels.data() + half * 32, rows);
    ASSERT_EQ(v->grad.exponent(), whole->grad.exponent());
    for (std::size_t i = 0; i < 32 * cols; ++i)
      ASSERT_EQ(v->grad.data<int32_t>()[i], whole->grad.data<int32_t>()[half * 32 * cols + i]) << half << " " << i;
  }
  EXPECT_THROW(softmax_cross_entropy(ctx, logits(z), labels.data(), 32), std::invalid_argument);
}

}  // namespace
}  // namespace qtrain
