// The training health monitor: a diverging loss or gradients that stay zero stop the run with a clear message;
// a healthy run is never stopped.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "qtrain/engine/data/idx.h"
#include "qtrain/engine/train/health.h"
#include "qtrain/engine/train/trainer.h"

namespace qtrain {
namespace {

TEST(Health, DivergingLossStopsAfterKConsecutiveSteps) {
  HealthConfig cfg;
  cfg.diverge_steps = 5;
  HealthMonitor h(cfg);
  // First epoch: the running loss falls to 0.5, which becomes the reference (limit 5.0).
  for (double running : {2.3, 1.5, 1.0, 0.5}) EXPECT_EQ(h.observe(1, running, running, false), "");
  EXPECT_DOUBLE_EQ(h.state().reference, 0.5);
  // Later epochs do not move the reference.
  EXPECT_EQ(h.observe(2, 0.1, 0.1, false), "");
  EXPECT_DOUBLE_EQ(h.state().reference, 0.5);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(h.observe(2, 3.0, 6.0, false), "") << i;
  EXPECT_FALSE(h.clean());
  EXPECT_EQ(h.observe(2, 3.0, 4.9, false), "");  // one step below the limit resets the streak
  EXPECT_TRUE(h.clean());
  for (int i = 0; i < 4; ++i) EXPECT_EQ(h.observe(2, 3.0, 6.0, false), "");
  const std::string why = h.observe(2, 3.0, 6.0, false);
  EXPECT_NE(why.find("the loss diverged"), std::string::npos) << why;
  EXPECT_NE(why.find("5 consecutive steps"), std::string::npos) << why;
}

TEST(Health, ReferenceIgnoresAnEarlyExplosion) {
  HealthMonitor h;
  EXPECT_EQ(h.observe(1, 2.3, 2.3, false), "");
  // The running loss jumps; the reference stays at the lowest value seen.
  EXPECT_EQ(h.observe(1, 10.0, 17.7, false), "");
  EXPECT_DOUBLE_EQ(h.state().reference, 2.3);
}

TEST(Health, NonFiniteLossStopsAtOnce) {
  HealthMonitor h;
  EXPECT_NE(h.observe(1, 1.0, std::numeric_limits<double>::quiet_NaN(), false).find("not finite"), std::string::npos);
  HealthMonitor h2;
  EXPECT_NE(h2.observe(3, 1.0, INFINITY, false), "");
}

TEST(Health, ZeroGradientsInMostOfTheWindowStop) {
  HealthConfig cfg;
  cfg.zero_grad_window = 20;
  cfg.zero_grad_fraction = 0.9;  // 18 of 20
  HealthMonitor h(cfg);
  // A dead network that wakes now and then (one non-zero step in 16) is still caught.
  std::string why;
  int step = 0;
  while (why.empty() && step < 100) {
    ++step;
    why = h.observe(1, 2.3, 2.3, step % 16 != 0);
  }
  EXPECT_EQ(step, 20);
  EXPECT_NE(why.find("exactly zero in 19 of the last 20 steps"), std::string::npos) << why;
  // Occasional zero steps in a healthy run are not enough.
  HealthMonitor ok(cfg);
  for (int i = 1; i <= 200; ++i) EXPECT_EQ(ok.observe(1, 1.0, 1.0, i % 3 == 0), "") << i;
}

TEST(Health, CleanOnlyWithoutRecentZeroGradients) {
  HealthConfig cfg;
  cfg.clean_window = 4;
  HealthMonitor h(cfg);
  EXPECT_TRUE(h.clean());
  h.observe(1, 1.0, 1.0, true);
  EXPECT_FALSE(h.clean());
  for (int i = 0; i < 3; ++i) h.observe(1, 1.0, 1.0, false);
  EXPECT_FALSE(h.clean());
  h.observe(1, 1.0, 1.0, false);
  EXPECT_TRUE(h.clean());
}

TEST(Health, DisabledNeverStops) {
  HealthConfig cfg;
  cfg.enabled = false;
  HealthMonitor h(cfg);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(h.observe(1, 1.0, NAN, true), "");
}

TEST(Health, BadConfigurationIsAUsageError) {
  HealthConfig cfg;
  cfg.zero_grad_window = 65;
  EXPECT_THROW(HealthMonitor{cfg}, std::invalid_argument);
  cfg = HealthConfig{};
  cfg.loss_factor = 1;
  EXPECT_THROW(HealthMonitor{cfg}, std::invalid_argument);
}

const data::ImageSet& train_subset() {
  static const data::ImageSet s =
      data::take_first(data::load_mnist_dir(data::kDefaultFashionMnistDir, data::Split::kTrain), 6400);
  return s;
}

// A far too high learning rate kills the integer network (weights collapse, ReLUs die, gradients become zero);
// the trainer stops it within the first epoch and says why.
TEST(Health, TrainerStopsARunWithAFarTooHighLearningRate) {
  for (int bits : {8, 4}) {
    TrainConfig cfg;
    cfg.model.bits = {bits, bits, bits};
    cfg.epochs = 2;
    cfg.lr = 99;
    cfg.schedule = ScheduleKind::kConstant;
    Trainer t(cfg, train_subset());
    try {
      t.train_epoch(1, nullptr);
      t.train_epoch(2, nullptr);
      FAIL() << bits << "-bit: not stopped";
    } catch (const TrainingHealthError& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("epoch 1, step"), std::string::npos) << m;
      EXPECT_NE(m.find("every weight gradient was exactly zero"), std::string::npos) << m;
      EXPECT_LT(t.global_step(), 100u);
    }
  }
}

TEST(Health, HealthyRunIsNeverStopped) {
  TrainConfig cfg;
  cfg.model.bits = {4, 4, 4};
  cfg.epochs = 2;
  Trainer t(cfg, train_subset());
  bool unclean = false;
  for (int e = 1; e <= 2; ++e)
    EXPECT_NO_THROW(t.train_epoch(e, nullptr, [&](const Progress&) { unclean |= !t.healthy(); }));
  EXPECT_FALSE(unclean) << "a healthy run was flagged";
  EXPECT_EQ(t.state().health.diverge_streak, 0);
  EXPECT_EQ(t.state().health.zero_grad_history, 0u);
}

}  // namespace
}  // namespace qtrain
