// The run driver (qtrain/engine/run/session.h) through the library API, on an in-memory data set: checkpoint
// cadence, stop and resume bit-exact, the metrics file, resume compatibility and option checks.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "qtrain/engine/data/in_memory.h"
#include "qtrain/engine/io/serialize.h"
#include "qtrain/engine/run/session.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/rng.h"

namespace qtrain {
namespace {

namespace fs = std::filesystem;

constexpr std::size_t kFeatures = 16, kClasses = 4;

// n examples of 16 int8 features: class c raises features 4c..4c+3 by 40 over noise in −20..20.
data::ImageSet blobs(std::size_t n, uint64_t seed) {
  const quant::CounterRng rng(seed, 1);
  std::vector<int8_t> x(n * kFeatures);
  std::vector<int32_t> y(n);
  for (std::size_t i = 0; i < n; ++i) {
    y[i] = static_cast<int32_t>(rng.below(i * 100, kClasses));
    for (std::size_t f = 0; f < kFeatures; ++f) {
      const int noise = static_cast<int>(rng.below(i * 100 + 1 + f, 41)) - 20;
      x[i * kFeatures + f] = static_cast<int8_t>(noise + (f / 4 == static_cast<std::size_t>(y[i]) ? 40 : 0));
    }
  }
  return data::make_feature_set(x, y, kFeatures, kClasses, -5);
}

DataSource blob_source() {
  return [](data::Split split, std::size_t limit) {
    data::ImageSet s = blobs(256, split == data::Split::kTrain ? 1 : 2);
    return limit && limit < s.count ? data::take_first(s, limit) : s;
  };
}

TrainConfig small_config() {
  TrainConfig c;
  c.model.sizes = {kFeatures, 32, kClasses};
  c.model.bits = {4, 4, 4};
  c.epochs = 2;
  c.batch = 32;  // 8 steps per epoch
  c.lr = 0.05;
  c.threads = 1;
  return c;
}

class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("qtrain_test_session_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

std::string model_bytes(const RunResult& r, const TempDir& dir, const std::string& name) {
  save_model(dir / name, r.trainer->model(), r.trainer->norm());
  return read_file(dir / name);
}

TEST(Session, CheckpointsEveryNStepsAndAtEpochEndsAndWritesTheMetrics) {
  TempDir dir;
  RunOptions o;
  o.checkpoint = dir / "run.qtc";
  o.checkpoint_every = 3;
  o.metrics = dir / "metrics.jsonl";
  std::vector<uint64_t> saved;
  std::vector<int> epochs_done;
  RunEvents ev;
  ev.checkpointed = [&](uint64_t g) { saved.push_back(g); };
  ev.epoch_done = [&](const EpochMetrics& m) { epochs_done.push_back(m.epoch); };
  const RunResult r = run_training(small_config(), blob_source(), o, ev);
  ASSERT_EQ(r.outcome, RunResult::Outcome::kCompleted);
  // Every 3 global steps, and at the end of each epoch (steps 8 and 16).
  EXPECT_EQ(saved, (std::vector<uint64_t>{3, 6, 8, 9, 12, 15, 16}));
  EXPECT_EQ(epochs_done, (std::vector<int>{1, 2}));
  ASSERT_TRUE(r.last_checkpoint.has_value());
  EXPECT_EQ(*r.last_checkpoint, 16u);
  EXPECT_EQ(load_checkpoint(o.checkpoint).state.global_step, 16u);
  std::istringstream lines(read_file(o.metrics));
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(lines, line);) rows.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(rows.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    const EpochMetrics& m = r.trainer->state().history[static_cast<std::size_t>(i)];
    EXPECT_EQ(rows[static_cast<std::size_t>(i)]["epoch"], i + 1);
    EXPECT_EQ(rows[static_cast<std::size_t>(i)]["loss"].get<double>(), m.loss);
    EXPECT_EQ(rows[static_cast<std::size_t>(i)]["test_accuracy"].get<double>(), m.test_accuracy);
  }
  EXPECT_EQ(r.test_accuracy(), r.trainer->state().history.back().test_accuracy);
}

TEST(Session, StopAndResumeThroughTheLibraryIsBitExact) {
  TempDir dir;
  const TrainConfig cfg = small_config();
  const RunResult whole = run_training(cfg, blob_source(), {});
  ASSERT_EQ(whole.outcome, RunResult::Outcome::kCompleted);

  RunOptions stop;
  stop.checkpoint = dir / "run.qtc";
  stop.stop_after = 5;  // inside epoch 1
  const RunResult first = run_training(cfg, blob_source(), stop);
  ASSERT_EQ(first.outcome, RunResult::Outcome::kStopped);
  ASSERT_TRUE(first.last_checkpoint.has_value());
  EXPECT_EQ(*first.last_checkpoint, 5u);
  EXPECT_EQ(first.trainer->global_step(), 5u);

  RunOptions resume;
  resume.resume = dir / "run.qtc";
  std::string resumed;
  RunEvents ev;
  ev.started = [&](const RunStart& s) { resumed = s.resumed; };
  TrainConfig other_threads = cfg;
  other_threads.threads = 2;  // a resumed run may use another thread count and stay bit-exact
  const RunResult rest = run_training(other_threads, blob_source(), resume, ev);
  ASSERT_EQ(rest.outcome, RunResult::Outcome::kCompleted);
  EXPECT_EQ(resumed, "resuming " + resume.resume + " at epoch 1, step 5/8 (global step 5)");
  EXPECT_EQ(rest.trainer->global_step(), 16u);
  EXPECT_EQ(model_bytes(whole, dir, "a.qtm"), model_bytes(rest, dir, "b.qtm"));
  ASSERT_EQ(rest.trainer->state().history.size(), 2u);
  for (std::size_t e = 0; e < 2; ++e) {
    EXPECT_EQ(rest.trainer->state().history[e].loss, whole.trainer->state().history[e].loss);
    EXPECT_EQ(rest.trainer->state().history[e].test_accuracy, whole.trainer->state().history[e].test_accuracy);
  }
  // Resuming the finished run trains nothing and says so.
  bool complete = false;
  ev.started = [&](const RunStart& s) { complete = s.already_complete; };
  resume.resume = dir / "run.qtc";
  const RunResult again = run_training(cfg, blob_source(), resume, ev);
  EXPECT_TRUE(complete);
  EXPECT_EQ(again.trainer->global_step(), 16u);
}

TEST(Session, ResumeRefusesAChangedSettingAndAcceptsANewLearningRate) {
  TempDir dir;
  RunOptions stop;
  stop.checkpoint = dir / "run.qtc";
  stop.stop_after = 3;
  ASSERT_EQ(run_training(small_config(), blob_source(), stop).outcome, RunResult::Outcome::kStopped);

  RunOptions resume;
  resume.resume = dir / "run.qtc";
  resume.stop_after = 4;
  TrainConfig changed = small_config();
  changed.seed = 5;
  resume.given = {{"--seed", "5"}};
  try {
    run_training(changed, blob_source(), resume);
    ADD_FAILURE() << "a changed seed was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--seed 5 differs from the checkpoint's 0 (" + resume.resume + ")"),
              std::string::npos)
        << e.what();
  }
  TrainConfig wider = small_config();
  wider.model.sizes = {kFeatures, 64, kClasses};
  resume.given = {{"--hidden", "64"}};
  try {
    run_training(wider, blob_source(), resume);
    ADD_FAILURE() << "changed hidden widths were accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--hidden 64 differs from the checkpoint's 32"), std::string::npos)
        << e.what();
  }
  // The same widths with another input width (the input follows the data) are the same model.
  TrainConfig same = small_config();
  same.model.sizes.front() = 784;
  resume.given = {{"--hidden", "32"}};
  EXPECT_EQ(run_training(same, blob_source(), resume).outcome, RunResult::Outcome::kStopped);
  // Not given: the checkpoint's seed applies whatever the config says.
  resume.given.clear();
  EXPECT_EQ(run_training(changed, blob_source(), resume).outcome, RunResult::Outcome::kStopped);

  TrainConfig faster = small_config();
  faster.lr = 0.02;
  resume.given = {{"--lr", "0.02"}};
  resume.stop_after = 5;
  std::string note;
  RunEvents ev;
  ev.note = [&](const std::string& line) { note = line; };
  const RunResult r = run_training(faster, blob_source(), resume, ev);
  EXPECT_EQ(r.outcome, RunResult::Outcome::kStopped);
  EXPECT_NE(note.find("no longer bit-identical"), std::string::npos) << note;
  EXPECT_EQ(r.trainer->config().lr, 0.02);
}

TEST(Session, OptionsNeedACheckpointFileToStopOrCheckpoint) {
  RunOptions o;
  o.stop_after = 3;
  EXPECT_THROW(run_training(small_config(), blob_source(), o), UsageError);
  o.stop_after = 0;
  o.checkpoint_every = -1;
  o.checkpoint = "x.qtc";
  EXPECT_THROW(o.validate(), UsageError);
  o.checkpoint_every = 0;
  EXPECT_NO_THROW(o.validate());
}

TEST(Session, TrainingOnInMemoryDataLearns) {
  TrainConfig cfg = small_config();
  cfg.epochs = 4;
  const RunResult r = run_training(cfg, blob_source(), {});
  ASSERT_EQ(r.outcome, RunResult::Outcome::kCompleted);
  // Four separable blobs: chance is 25 %.
  EXPECT_GE(r.test_accuracy(), 0.9);
}

}  // namespace
}  // namespace qtrain
