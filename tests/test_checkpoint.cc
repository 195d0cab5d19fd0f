// Checkpoints: bit-exact resume (epoch boundary, mid-epoch, other thread counts, from format version 1), crash
// safety (a child process SIGKILLed while writing), and every kind of hostile checkpoint and model file: a clear
// InputError naming the file, never a crash or a huge allocation.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <tuple>

#include "qtrain/engine/data/cifar.h"
#include "qtrain/engine/data/idx.h"
#include "qtrain/engine/io/checkpoint.h"
#include "qtrain/engine/io/serialize.h"
#include "qtrain/engine/train/trainer.h"
#include "qtrain/quant/error.h"

namespace qtrain {
namespace {

namespace fs = std::filesystem;

const data::ImageSet& full_train() {
  static const data::ImageSet s = data::load_mnist_dir(data::kDefaultFashionMnistDir, data::Split::kTrain);
  return s;
}
const data::ImageSet& small_train() {
  static const data::ImageSet s = data::take_first(full_train(), 1280);  // 20 steps of 64
  return s;
}

TrainConfig config(int bits, int epochs, std::size_t threads = 1) {
  TrainConfig cfg;
  cfg.model.bits = {bits, bits, bits};
  cfg.epochs = epochs;
  cfg.batch = 64;
  cfg.seed = 7;
  cfg.threads = threads;
  return cfg;
}

void append_tensor(std::string& s, const Tensor& t) {
  const int e = t.exponent();
  s.append(reinterpret_cast<const char*>(&e), sizeof e);
  s.append(reinterpret_cast<const char*>(t.data<int32_t>()), t.size() * sizeof(int32_t));
}

// Master weights and their exponents.
std::string weights_of(Model& m) {
  std::string s;
  for (Param* p : m.params()) append_tensor(s, p->master);
  return s;
}

// An optimizer's state: names, slots, exponents and values.
std::string state_bytes(const std::vector<NamedState>& state) {
  std::string s;
  for (const NamedState& e : state) {
    s += e.param + "/" + e.slot + ":";
    append_tensor(s, e.value);
  }
  return s;
}

// Master weights, the optimizer's state (the momentum buffers) and their exponents.
std::string snapshot(Trainer& t) { return weights_of(t.model()) + state_bytes(t.optimizer().state()); }

std::string temp_path(const std::string& name) {
  return (fs::temp_directory_path() / ("qtrain_ckpt_" + std::to_string(::getpid()) + "_" + name)).string();
}

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// A straight run of cfg.epochs epochs.
struct RunResult {
  std::string weights;
  std::vector<EpochMetrics> metrics;
};
RunResult straight(const TrainConfig& cfg, const data::ImageSet& train) {
  Trainer t(cfg, train);
  RunResult r;
  for (int e = 1; e <= cfg.epochs; ++e) r.metrics.push_back(t.train_epoch(e, nullptr));
  r.weights = snapshot(t);
  return r;
}

// Resumes the checkpoint bytes in a fresh trainer (through a file, as the CLI does) and finishes the run.
RunResult finish_from(const std::string& bytes, const data::ImageSet& train, std::size_t threads) {
  const std::string path = temp_path("resume.qtc");
  write_file_atomic(path, bytes);
  Checkpoint ck = load_checkpoint(path);
  fs::remove(path);
  ck.config.threads = threads;
  std::unique_ptr<Trainer> t = resume_trainer(ck, train, path);
  RunResult r;
  r.metrics = t->state().history;
  for (int e = t->state().epoch; e <= t->config().epochs; ++e) r.metrics.push_back(t->train_epoch(e, nullptr));
  r.weights = snapshot(*t);
  return r;
}

void expect_same_run(const RunResult& a, const RunResult& b) {
  EXPECT_TRUE(a.weights == b.weights) << "weights or momentum differ";
  ASSERT_EQ(a.metrics.size(), b.metrics.size());
  for (std::size_t i = 0; i < a.metrics.size(); ++i) {
    EXPECT_EQ(a.metrics[i].loss, b.metrics[i].loss) << "epoch " << i + 1;
    EXPECT_EQ(a.metrics[i].train_accuracy, b.metrics[i].train_accuracy) << "epoch " << i + 1;
    EXPECT_EQ(a.metrics[i].lr, b.metrics[i].lr) << "epoch " << i + 1;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Bit-exact resume

TEST(CheckpointResume, TwoEpochsStraightEqualOneEpochPlusResume) {
  for (int bits : {8, 4}) {
    SCOPED_TRACE(std::to_string(bits) + "-bit");
    const TrainConfig cfg = config(bits, 2);
    const RunResult a = straight(cfg, small_train());
    Trainer t(cfg, small_train());
    t.train_epoch(1, nullptr);
    const RunResult b = finish_from(encode_checkpoint(t), small_train(), 1);
    expect_same_run(a, b);
  }
}

TEST(CheckpointResume, MidEpochCheckpointResumesBitExactlyWithAnyThreadCount) {
  const TrainConfig cfg = config(4, 2);
  const RunResult a = straight(cfg, small_train());
  for (std::size_t at : {1u, 7u, 20u}) {  // after the first step, mid-epoch, after the epoch's last step
    Trainer t(cfg, small_train());
    std::string bytes;
    t.train_epoch(1, nullptr, [&](const Progress& p) {
      if (p.step == at) bytes = encode_checkpoint(t);
    });
    ASSERT_FALSE(bytes.empty());
    for (std::size_t threads : at == 7 ? std::vector<std::size_t>{1, 3} : std::vector<std::size_t>{1}) {
      SCOPED_TRACE("checkpoint after step " + std::to_string(at) + ", resumed with " + std::to_string(threads) +
                   " threads");
      expect_same_run(a, finish_from(bytes, small_train(), threads));
    }
  }
}

TEST(CheckpointResume, SecondEpochMidCheckpoint) {
  const TrainConfig cfg = config(8, 3);
  const RunResult a = straight(cfg, small_train());
  Trainer t(cfg, small_train());
  t.train_epoch(1, nullptr);
  std::string bytes;
  t.train_epoch(2, nullptr, [&](const Progress& p) {
    if (p.step == 11) bytes = encode_checkpoint(t);
  });
  expect_same_run(a, finish_from(bytes, small_train(), 2));
}

// A convolutional model with batch norm: the running statistics (model buffers) travel in the BUFS section, and
// the augmentation settings in the configuration; the resumed run is bit-identical, running statistics included.
TEST(CheckpointResume, ConvolutionalModelWithRunningStatisticsAndAugmentation) {
  const data::ImageSet train = data::take_first(full_train(), 192);
  TrainConfig cfg = config(4, 2);
  cfg.model.kind = "cnn";
  cfg.model.set_input(28, 28, 1);
  cfg.batch = 32;
  cfg.augment = {2, true};
  auto with_buffers = [](Trainer& tr) {
    std::string s = snapshot(tr);
    for (Tensor* t : tr.model().buffers()) {
      for (std::size_t c = 0; c < t->cols(); ++c) {
        const int e = t->exponent_at(0, c);
        s.append(reinterpret_cast<const char*>(&e), sizeof e);
      }
      s.append(reinterpret_cast<const char*>(t->data<int32_t>()), t->size() * sizeof(int32_t));
    }
    return s;
  };
  Trainer a(cfg, train);
  for (int e = 1; e <= 2; ++e) a.train_epoch(e, nullptr);
  ASSERT_FALSE(a.model().buffers().empty());
  Trainer b(cfg, train);
  std::string bytes;
  b.train_epoch(1, nullptr, [&](const Progress& p) {
    if (p.step == 2) bytes = encode_checkpoint(b);
  });
  Checkpoint ck = parse_checkpoint("cnn.qtc", bytes);
  EXPECT_EQ(ck.config.augment.pad, 2);
  EXPECT_TRUE(ck.config.augment.flip);
  std::unique_ptr<Trainer> r = resume_trainer(ck, train, "cnn.qtc");
  for (int e = 1; e <= 2; ++e) r->train_epoch(e, nullptr);
  EXPECT_TRUE(with_buffers(a) == with_buffers(*r)) << "weights, momentum or running statistics differ";
  EXPECT_EQ(a.state().history[1].loss, r->state().history[1].loss);
}

TEST(CheckpointResume, StateFieldsSurviveTheFile) {
  TrainConfig cfg = config(4, 3);
  cfg.lr = 0.03;
  cfg.schedule = ScheduleKind::kCosine;
  cfg.sgd.momentum = 0.8;
  cfg.sgd.weight_decay = 1e-4;
  cfg.seed = 0xFFFFFFFFFFFFFFFFull;
  Trainer t(cfg, small_train());
  t.train_epoch(1, nullptr);
  try {
    t.train_epoch(2, nullptr, [&](const Progress& p) {
      if (p.step == 5) throw std::runtime_error("stop");
    });
  } catch (const std::runtime_error&) {
  }
  const Checkpoint c = parse_checkpoint("mem.qtc", encode_checkpoint(t));
  EXPECT_EQ(c.config.seed, cfg.seed);
  EXPECT_EQ(c.config.lr, cfg.lr);
  EXPECT_EQ(c.config.schedule, cfg.schedule);
  EXPECT_EQ(c.config.sgd.momentum, cfg.sgd.momentum);
  EXPECT_EQ(c.config.sgd.weight_decay, cfg.sgd.weight_decay);
  EXPECT_EQ(c.config.epochs, 3);
  EXPECT_EQ(c.config.batch, 64u);
  EXPECT_EQ(c.config.model.describe(), t.model().spec().describe());
  EXPECT_EQ(c.state.epoch, 2);
  EXPECT_EQ(c.state.step_in_epoch, 5u);
  EXPECT_EQ(c.state.global_step, 25u);
  EXPECT_EQ(c.state.loss_sum, t.state().loss_sum);
  EXPECT_EQ(c.state.seen, 5u * 64);
  EXPECT_EQ(c.state.history.size(), 1u);
  EXPECT_EQ(c.state.history[0].loss, t.state().history[0].loss);
  EXPECT_EQ(c.state.health.reference, t.state().health.reference);
  EXPECT_EQ(c.train_count, 1280u);
  EXPECT_EQ(c.train_crc, t.training_data_crc());
  EXPECT_TRUE(c.norm == t.norm());
  EXPECT_EQ(c.config.optimizer, "sgd");
  EXPECT_EQ(weights_of(*c.model), weights_of(t.model()));
  EXPECT_EQ(c.optimizer_state.size(), t.model().params().size());
  EXPECT_EQ(state_bytes(c.optimizer_state), state_bytes(t.optimizer().state()));
}

TEST(CheckpointResume, OtherTrainingDataIsRefused) {
  Trainer t(config(8, 1), small_train());
  Checkpoint c = parse_checkpoint("run.qtc", encode_checkpoint(t));
  const data::ImageSet fewer = data::take_first(full_train(), 640);
  try {
    resume_trainer(c, fewer, "run.qtc");
    FAIL() << "resumed on other data";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("run.qtc"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("1280"), std::string::npos) << e.what();
  }
  // Same size, other images: the CRC catches it.
  data::ImageSet other = small_train();
  other.pixels[100] ^= 1;
  Checkpoint c2 = parse_checkpoint("run.qtc", encode_checkpoint(t));
  EXPECT_THROW(resume_trainer(c2, other, "run.qtc"), InputError);
}

// ---------------------------------------------------------------------------------------------------------------
// Crash safety: a child writes checkpoints in a loop and is SIGKILLed at random moments; the file must always
// load and hold one of the states written.

TEST(CheckpointCrash, KillWhileWritingLeavesACompleteCheckpoint) {
  Trainer t(config(8, 1), small_train());
  std::string states[2];
  t.train_epoch(1, nullptr, [&](const Progress& p) {
    if (p.step == 3) states[0] = encode_checkpoint(t);
    if (p.step == 4) states[1] = encode_checkpoint(t);
  });
  ASSERT_NE(states[0], states[1]);
  const fs::path dir = fs::temp_directory_path() / ("qtrain_kill_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "run.qtc").string();
  write_file_atomic(path, states[0]);
  std::mt19937 rng(1234);
  int kills_mid_write = 0;
  for (int round = 0; round < 25; ++round) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      for (uint64_t i = 0;; ++i) {
        try {
          write_file_atomic(path, states[i % 2]);
        } catch (...) {
          ::_exit(3);
        }
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(200, 30000)(rng)));
    ::kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the writer exited by itself (status " << status << ")";
    const std::string bytes = read_all(path);
    ASSERT_TRUE(bytes == states[0] || bytes == states[1]) << "round " << round << ": the checkpoint is neither state";
    EXPECT_NO_THROW(load_checkpoint(path)) << "round " << round;
    // A killed writer may leave its temporary file behind (never the checkpoint itself).
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().filename() != "run.qtc") {
        ++kills_mid_write;
        fs::remove(e.path());
      }
  }
  std::printf("25 kills, %d of them while a temporary file was open\n", kills_mid_write);
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------------------------
// Hostile checkpoints

const std::string& good_checkpoint() {
  static const std::string bytes = [] {
    Trainer t(config(4, 2), small_train());
    std::string b;
    t.train_epoch(1, nullptr, [&](const Progress& p) {
      if (p.step == 3) b = encode_checkpoint(t);
    });
    return b;
  }();
  return bytes;
}

uint64_t le64(const std::string& s, std::size_t at) {
  uint64_t v;
  std::memcpy(&v, s.data() + at, 8);
  return v;
}

uint32_t crc_of(const std::string& s, std::size_t at, std::size_t n) {
  return static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(s.data() + at), static_cast<uInt>(n)));
}

// The checkpoint with its HEAD JSON edited, all CRCs valid.
std::string with_header(const std::function<void(nlohmann::json&)>& edit) {
  const std::string& b = good_checkpoint();
  const uint64_t hlen = le64(b, 20);
  nlohmann::json h = nlohmann::json::parse(b.substr(28, hlen));
  edit(h);
  const std::string text = h.dump();
  std::string out = b.substr(0, 16) + "HEAD";
  const uint64_t n = text.size();
  out.append(reinterpret_cast<const char*>(&n), 8);
  out += text;
  const uint32_t c = crc_of(out, 16, out.size() - 16);
  out.append(reinterpret_cast<const char*>(&c), 4);
  out += b.substr(28 + hlen + 4);
  return out;
}

// Expects an InputError that names the file and contains `detail`.
void expect_error(const std::string& bytes, const std::string& detail) {
  try {
    parse_checkpoint("bad.qtc", bytes);
    ADD_FAILURE() << "no error; expected '" << detail << "'";
  } catch (const InputError& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind("bad.qtc: ", 0), 0u) << m;
    EXPECT_NE(m.find(detail), std::string::npos) << "expected '" << detail << "' in: " << m;
  }
}

TEST(CheckpointHostile, GoodCheckpointParses) { EXPECT_NO_THROW(parse_checkpoint("good.qtc", good_checkpoint())); }

TEST(CheckpointHostile, MagicVersionAndSectionCount) {
  expect_error("", "bad magic");
  expect_error("QTRNMDL1xxxxxxxx", "bad magic");
  std::string b = good_checkpoint();
  b[8] = 4;
  expect_error(b,
               "byte 8: checkpoint format version 4; this build reads versions 1 to 3 (written by a newer qtrain? "
               "resume it with that qtrain, or start the run again)");
  b[8] = 0;
  expect_error(b, "checkpoint format version 0; this build reads versions 1 to 3 (not a file qtrain wrote");
  b = good_checkpoint();
  b[12] = 5;
  expect_error(b, "section count 5");
}

TEST(CheckpointHostile, EveryTruncationIsAnError) {
  const std::string& b = good_checkpoint();
  for (std::size_t keep = 0; keep < b.size(); keep += 1 + keep / 7) {
    SCOPED_TRACE("kept " + std::to_string(keep) + " of " + std::to_string(b.size()));
    EXPECT_THROW(parse_checkpoint("cut.qtc", b.substr(0, keep)), InputError);
  }
  expect_error(b.substr(0, b.size() - 1), "truncated");
  expect_error(b + "x", "unexpected bytes after the last section");
}

TEST(CheckpointHostile, FlippedByteInEachSectionFailsItsChecksum) {
  const std::string& b = good_checkpoint();
  const uint64_t hlen = le64(b, 20);
  const std::size_t wght = 16 + 12 + hlen + 4, wlen = le64(b, wght + 4);
  const std::size_t momt = wght + 12 + wlen + 4;
  const std::pair<std::size_t, const char*> flips[] = {
      {28 + hlen / 2, "section HEAD: checksum mismatch"},
      {wght + 12 + 1000, "section WGHT: checksum mismatch"},
      {momt + 12 + 1000, "section OPTM: checksum mismatch"},
      {b.size() - 1, "section BUFS: checksum mismatch"}};  // the MLP's BUFS section is empty: its CRC ends the file
  for (const auto& [at, detail] : flips) {
    std::string c = b;
    c[at] = static_cast<char>(c[at] ^ 0x04);
    expect_error(c, detail);
  }
  std::string c = b;
  c[wght] = 'X';  // the section tag
  expect_error(c, "expected section WGHT, found 'XGHT'");
  c = b;
  const uint64_t huge = uint64_t{1} << 62;  // a section length far beyond the file
  std::memcpy(c.data() + 20, &huge, 8);
  expect_error(c, "truncated");
}

TEST(CheckpointHostile, HeaderFieldsAreCheckedByNameAndRange) {
  using J = nlohmann::json;
  const std::pair<std::function<void(J&)>, std::string> cases[] = {
      {[](J& h) { h["model"]["name"] = "resnet99"; },
       "section HEAD: unknown model 'resnet99': not built in and not registered; call "
       "qtrain::register_model(\"resnet99\", factory) before loading"},
      {[](J& h) { h["model"]["config"]["weight_bits"] = 9; }, "model config 'weight_bits': 9 is out of range 2..8"},
      {[](J& h) { h["model"]["config"]["grad_bits"] = 1; }, "model config 'grad_bits': 1 is out of range 2..8"},
      {[](J& h) { h["model"]["config"]["groups"] = 6; }, "N_G=6 is out of range"},
      {[](J& h) { h["model"]["config"]["act_bits"] = "four"; },
       "model config 'act_bits': must be an integer in 2..8 (found a string)"},
      {[](J& h) { h["model"]["config"]["act_bits"] = 4.5; }, "'act_bits': must be an integer in 2..8 (found a number)"},
      {[](J& h) { h["model"]["config"]["depth"] = 3; }, "model config 'depth': not a key of model 'mlp'"},
      {[](J& h) { h["model"]["config"]["bits"] = J::object(); }, "model.config.bits must be an integer, a number"},
      {[](J& h) {
         h["model"]["input"] = J::array({28, 28});
       },
       "model.input must be [height, width, channels]"},
      {[](J& h) { h["model"]["classes"] = 0; }, "model.classes must be an integer in 1..65536"},
      {[](J& h) { h["model"].erase("config"); }, "model.config is missing"},
      {[](J& h) { h["config"]["lr"] = "fast"; }, "config.lr must be a number"},
      {[](J& h) { h["config"]["lr"] = 1e300; }, "config.lr must be a finite number"},
      {[](J& h) { h["config"]["seed"] = -1; }, "config.seed must be an integer"},
      {[](J& h) { h["config"]["batch"] = 0; }, "config.batch must be an integer in 1..65536"},
      {[](J& h) { h["config"]["schedule"] = "sawtooth"; }, "unknown schedule 'sawtooth'"},
      {[](J& h) { h["model"]["config"]["hidden"][1] = 4294967296.0 * 4294967296.0; },
       "model.config.hidden[1] must be an integer"},
      {[](J& h) { h["model"]["config"]["hidden"][0] = -5; },
       "model config 'hidden[0]': -5 is out of range 1..16777216"},
      {[](J& h) {
         h["model"]["config"]["hidden"] = J::array({16777216, 16777216});
       },
       "has up to 281488331374602 values, more than a file of"},
      {[](J& h) { h["model"]["config"]["hidden"] = "wide"; }, "model config 'hidden': must be a list of 0..1022"},
      {[](J& h) { h["pixel_norm"]["table"][3] = 100; }, "pixel_norm.table[3] is 100 but the statistics give"},
      {[](J& h) { h["pixel_norm"]["stddev"] = 0; }, "pixel_norm.stddev must be a finite number"},
      {[](J& h) { h["position"]["global_step"] = 999; }, "position.global_step 999 does not match"},
      {[](J& h) { h["position"]["epoch"] = 7; }, "position.epoch must be an integer in 1..3"},
      {[](J& h) { h["position"]["seen"] = 5; }, "position.seen 5 does not match"},
      {[](J& h) { h["position"]["steps_per_epoch"] = 21; }, "position.steps_per_epoch 21 does not match"},
      {[](J& h) { h["data"]["rows"] = 27; }, "(27x28x1) does not match the model's input"},
      {[](J& h) { h["config"]["augment_flip"] = 1; }, "config.augment_flip must be true or false"},
      {[](J& h) { h["config"]["momentum"] = 1; }, "section HEAD: config.momentum must be a number in [0, 1) (found 1)"},
      {[](J& h) { h["config"]["weight_decay"] = 1; }, "config.weight_decay must be a number in [0, 1) (found 1)"},
      {[](J& h) { h["config"]["momentum"] = 1.5; }, "config.momentum must be a finite number in [0.000000, 1.000000]"},
      {[](J& h) { h["model"]["name"] = "cnn"; }, "model config 'hidden': not a key of model 'cnn'"},
      {[](J& h) { h["model"]["config"]["hidden"][0] = 200; },
       "tensors[0] 'linear0.weight' is 256x784, the model's parameter is 200x784"},
      {[](J& h) { h["tensors"][2]["name"] = "linear9.weight"; },
       "tensors[2] 'linear9.weight': the model has no parameter of that name"},
      {[](J& h) { h["tensors"][2]["name"] = "linear0.weight"; }, "tensors[2] 'linear0.weight': listed twice"},
      {[](J& h) {
         h["buffers"] = J::array({{{"name", "l1bn1.buffer0"}, {"rows", 1}, {"cols", 2}}});
       },
       "section BUFS holds 0 bytes, the listed tensors need 16"},
      {[](J& h) { h["history"] = J::array({1}); }, "history has 1 entries"},
      {[](J& h) { h["tensors"][0]["dtype"] = "f32"; }, "tensors[0].dtype must be \"i32\""},
      {[](J& h) { h["tensors"][1]["rows"] = 2; }, "section WGHT holds 940608 bytes, the listed tensors need 941632"},
      {[](J& h) { h["format"] = "something else"; }, "format is not"},
      {[](J& h) {
         h = J::array({1, 2});
       },
       "the header must be an object"},
  };
  for (const auto& [edit, detail] : cases) {
    SCOPED_TRACE(detail);
    expect_error(with_header(edit), detail);
  }
  // Not JSON at all, and JSON nested a million levels deep.
  std::string b = good_checkpoint();
  const uint64_t hlen = le64(b, 20);
  for (const std::string& text : {std::string("{\"model\": nan}"), std::string(1000000, '[')}) {
    std::string out = b.substr(0, 16) + "HEAD";
    const uint64_t n = text.size();
    out.append(reinterpret_cast<const char*>(&n), 8);
    out += text;
    const uint32_t c = crc_of(out, 16, out.size() - 16);
    out.append(reinterpret_cast<const char*>(&c), 4);
    out += b.substr(28 + hlen + 4);
    expect_error(out, "section HEAD is not valid JSON");
  }
}

// Rewrites one int32 of a section payload (at `offset` from its start) and fixes that section's CRC.
std::string with_tensor_word(int section, std::size_t offset, int32_t value) {
  std::string b = good_checkpoint();
  std::size_t pos = 16;
  for (int s = 0; s < section; ++s) pos += 12 + le64(b, pos + 4) + 4;
  const uint64_t len = le64(b, pos + 4);
  std::memcpy(b.data() + pos + 12 + offset, &value, 4);
  const uint32_t c = crc_of(b, pos, 12 + len);
  std::memcpy(b.data() + pos + 12 + len, &c, 4);
  return b;
}

TEST(CheckpointHostile, TensorValuesAndExponentsAreRangeChecked) {
  expect_error(with_tensor_word(1, 0, 5000), "parameter linear0.weight exponent 5000 is out of range -200..200");
  // The optimizer keeps |w| ≤ 2^30 (a narrowing rounded to nearest can land exactly on 2^30: a diverged run
  // showed it); one more is out of range.
  EXPECT_NO_THROW(parse_checkpoint("edge.qtc", with_tensor_word(1, 8, int32_t{1} << 30)));
  EXPECT_NO_THROW(parse_checkpoint("edge.qtc", with_tensor_word(1, 8, -(int32_t{1} << 30))));
  expect_error(with_tensor_word(1, 8, (int32_t{1} << 30) + 1), "linear0.weight element 1 = 1073741825 is out of range");
  expect_error(with_tensor_word(1, 8, INT32_MIN), "out of range");
  // OPTM: "sgd" (4 + 3 bytes), the entry count (4), then linear0.weight's entry: its name (4 + 14), "momentum"
  // (4 + 8), rows and cols (8), the exponent at 49 and the values from 53.
  expect_error(with_tensor_word(2, 49, 150), "linear0.weight momentum exponent 150 is more than 62 away");
  expect_error(with_tensor_word(2, 49, -5000), "(linear0.weight momentum) exponent -5000 is out of range -200..200");
  expect_error(with_tensor_word(2, 53, -(int32_t{1} << 30) - 1), "linear0.weight momentum element 0");
}

// ---------------------------------------------------------------------------------------------------------------
// The optimizer-state section (OPTM) and format version 1

void put32(std::string& out, uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }
void put_string(std::string& out, const std::string& s) {
  put32(out, static_cast<uint32_t>(s.size()));
  out += s;
}
void put_values(std::string& out, const Tensor& t) {
  out.append(reinterpret_cast<const char*>(t.data<int32_t>()), t.size() * sizeof(int32_t));
}

// A checkpoint's sections (tag, payload), without checking anything.
std::vector<std::pair<std::string, std::string>> sections_of(const std::string& b) {
  std::vector<std::pair<std::string, std::string>> out;
  for (std::size_t pos = 16; pos < b.size();) {
    const uint64_t len = le64(b, pos + 4);
    out.emplace_back(b.substr(pos, 4), b.substr(pos + 12, len));
    pos += 12 + len + 4;
  }
  return out;
}

// A checkpoint file of `version` with these sections, every CRC valid.
std::string assemble(uint32_t version, const std::vector<std::pair<std::string, std::string>>& sections) {
  std::string out = "QTRNCKPT";
  put32(out, version);
  put32(out, static_cast<uint32_t>(sections.size()));
  for (const auto& [tag, payload] : sections) {
    const std::size_t start = out.size();
    out += tag;
    const uint64_t n = payload.size();
    out.append(reinterpret_cast<const char*>(&n), 8);
    out += payload;
    put32(out, crc_of(out, start, out.size() - start));
  }
  return out;
}

// An OPTM payload: the optimizer's name and these entries (rows/cols as given, the values of each tensor).
struct Entry {
  std::string param, slot;
  uint32_t rows, cols;
  int32_t exponent;
  Tensor values;
};
std::string optm(const std::string& name, const std::vector<Entry>& entries, uint32_t count) {
  std::string out;
  put_string(out, name);
  put32(out, count);
  for (const Entry& e : entries) {
    put_string(out, e.param);
    put_string(out, e.slot);
    put32(out, e.rows);
    put32(out, e.cols);
    put32(out, static_cast<uint32_t>(e.exponent));
    put_values(out, e.values);
  }
  return out;
}

// good_checkpoint() with its OPTM payload replaced.
std::string with_optm(const std::string& payload) {
  auto secs = sections_of(good_checkpoint());
  secs[2].second = payload;
  return assemble(kCheckpointVersion, secs);
}

// The state of good_checkpoint() as entries.
std::vector<Entry> good_entries() {
  std::vector<Entry> out;
  for (NamedState& s : parse_checkpoint("good.qtc", good_checkpoint()).optimizer_state)
    out.push_back({s.param, s.slot, static_cast<uint32_t>(s.value.rows()), static_cast<uint32_t>(s.value.cols()),
                   s.value.exponent(), std::move(s.value)});
  return out;
}

TEST(CheckpointOptimizerState, EntriesAreCheckedAgainstTheModelAndTheOptimizer) {
  const std::vector<Entry> good = good_entries();
  ASSERT_EQ(good.size(), 6u);  // every parameter of the MLP has been updated
  ASSERT_EQ(good[0].param, "linear0.weight");
  const auto n = static_cast<uint32_t>(good.size());
  EXPECT_NO_THROW(parse_checkpoint("same.qtc", with_optm(optm("sgd", good, n))));
  // A parameter without state (never updated) is allowed; it starts from zero momentum.
  EXPECT_NO_THROW(parse_checkpoint("fewer.qtc", with_optm(optm("sgd", {good[1]}, 1))));
  expect_error(with_optm(optm("lamb", good, n)), "section OPTM: unknown optimizer 'lamb'");
  expect_error(with_optm(optm("adamw", good, n)), "section OPTM holds the state of optimizer 'adamw', section HEAD names 'sgd'");
  std::vector<Entry> e = good;
  e[1].param = "linear9.bias";
  expect_error(with_optm(optm("sgd", e, n)),
               "entry 1 (linear9.bias momentum): the model has no parameter linear9.bias");
  e = good;
  e[2].slot = "m";
  expect_error(with_optm(optm("sgd", e, n)), "linear1.weight m: SGD keeps only a \"momentum\" slot");
  e = good;
  e.push_back(good[3]);
  expect_error(with_optm(optm("sgd", e, n + 1)), "entry 6 (linear1.bias momentum): given twice");
  e = good;
  e[0].rows = 7;
  expect_error(with_optm(optm("sgd", e, n)), "entry 0 (linear0.weight momentum) is 7x784, the parameter 256x784");
  e = good;
  e[0].rows = e[0].cols = 0xFFFFFFFF;
  expect_error(with_optm(optm("sgd", e, n)), "is 4294967295x4294967295, the parameter 256x784");
  // Counts, lengths and sizes beyond the section are refused before anything is allocated.
  expect_error(with_optm(optm("sgd", good, 0xFFFFFFFF)), "section OPTM declares 4294967295 state entries");
  expect_error(with_optm(optm("sgd", good, n + 1)), "file ends inside the parameter name");
  expect_error(with_optm(optm("sgd", good, n - 1)), "unexpected bytes after the last state entry of section OPTM");
  std::string huge_name;
  put32(huge_name, 4000000000u);
  expect_error(with_optm(huge_name), "optimizer name of 4000000000 bytes (at most 4096)");
  e = good;
  e[5].values = Tensor(1, 3, DType::kI32);  // fewer values than 1x10
  expect_error(with_optm(optm("sgd", e, n)), "the section ends inside its 10 values (truncated)");
  expect_error(with_optm(""), "file ends inside the optimizer name");
  // The section is framed as every other: a wrong tag is named.
  auto secs = sections_of(good_checkpoint());
  secs[2].first = "MOMT";
  expect_error(assemble(kCheckpointVersion, secs), "expected section OPTM, found 'MOMT'");
}

// The trainer's checkpoint in format version 1, as qtrain wrote it before version 2: the same HEAD, WGHT and BUFS,
// and MOMT with every parameter's momentum (zeros at the master exponent before its first update).
// A version 2 (and 1) HEAD: the model as the ModelSpec JSON of the MLP (the checkpoints these tests write), no
// buffer list.
std::string legacy_head(const std::string& head) {
  nlohmann::json h = nlohmann::json::parse(head);
  nlohmann::json& c = h["model"]["config"];
  const nlohmann::json& in = h["model"]["input"];
  nlohmann::json sizes = nlohmann::json::array({in[0].get<int>() * in[1].get<int>() * in[2].get<int>()});
  for (const auto& w : c["hidden"]) sizes.push_back(w);
  sizes.push_back(h["model"]["classes"]);
  h["model"] = {{"kind", "mlp"},
                {"sizes", sizes},
                {"bits", {{"weight", c["weight_bits"]}, {"act", c["act_bits"]}, {"grad", c["grad_bits"]}}},
                {"input_bits", c["input_bits"]},
                {"groups", c["groups"]},
                {"scale", c["scale"]},
                {"act_groups", c["act_groups"]}};
  h.erase("buffers");
  return h.dump();
}

std::string encode_v1(Trainer& t) {
  auto secs = sections_of(encode_checkpoint(t));
  secs[0].second = legacy_head(secs[0].second);
  const auto& sgd = dynamic_cast<const Sgd&>(t.optimizer());
  std::string momt;
  for (Param* p : t.model().params()) {
    const Tensor* v = sgd.momentum(p->name);
    append_tensor(momt, v ? *v : Tensor(p->master.rows(), p->master.cols(), DType::kI32, p->master.exponent()));
  }
  secs[2] = {"MOMT", momt};
  return assemble(1, secs);
}

TEST(CheckpointVersion1, ResumesBitExactly) {
  const TrainConfig cfg = config(4, 2);
  const RunResult a = straight(cfg, small_train());
  for (std::size_t at : {0u, 7u}) {  // before the first step (all momentum zero) and mid-epoch
    SCOPED_TRACE("version 1 checkpoint after step " + std::to_string(at));
    Trainer t(cfg, small_train());
    std::string bytes = at == 0 ? encode_v1(t) : "";
    t.train_epoch(1, nullptr, [&](const Progress& p) {
      if (p.step == at) bytes = encode_v1(t);
    });
    ASSERT_FALSE(bytes.empty());
    ASSERT_EQ(bytes[8], 1);
    const Checkpoint c = parse_checkpoint("v1.qtc", bytes);
    EXPECT_EQ(c.config.optimizer, "sgd");
    EXPECT_EQ(c.optimizer_state.size(), 6u);
    expect_same_run(a, finish_from(bytes, small_train(), 2));
  }
}

TEST(CheckpointVersion1, MomentumIsRangeCheckedAndTheSectionsNamed) {
  Trainer t(config(4, 2), small_train());
  std::string v1;
  t.train_epoch(1, nullptr, [&](const Progress& p) {
    if (p.step == 3) v1 = encode_v1(t);
  });
  EXPECT_NO_THROW(parse_checkpoint("v1.qtc", v1));
  auto with_momt_word = [&](std::size_t offset, int32_t value) {
    auto secs = sections_of(v1);
    std::memcpy(secs[2].second.data() + offset, &value, 4);
    return assemble(1, secs);
  };
  expect_error(with_momt_word(0, 150), "linear0.weight momentum exponent 150 is more than 62 away");
  expect_error(with_momt_word(4, -(int32_t{1} << 30) - 1), "linear0.weight momentum element 0");
  auto secs = sections_of(v1);
  secs[2].first = "OPTM";
  expect_error(assemble(1, secs), "expected section MOMT, found 'OPTM'");
  secs = sections_of(v1);
  secs[2].second.resize(secs[2].second.size() - 4);
  expect_error(assemble(1, secs), "section MOMT holds");
}

// The genuine version-1 seeds of the fuzz corpus (written by qtrain before version 2): their MOMT becomes the SGD
// state, entry by entry, and a checkpoint of the resumed trainer (version 2) holds the same state.
TEST(CheckpointVersion1, GenuineFilesLoadTheirMomentumAsSgdState) {
  const std::string dir = QTRAIN_FUZZ_CORPUS;
  for (const char* f : {"checkpoint/v1_start", "checkpoint/v1_mid_epoch", "checkpoint/v1_epoch_end"}) {
    SCOPED_TRACE(f);
    const std::string bytes = read_all(dir + "/" + f);
    ASSERT_EQ(bytes[8], 1);
    Checkpoint c = load_checkpoint(dir + "/" + f);
    const auto secs = sections_of(bytes);
    ASSERT_EQ(secs[2].first, "MOMT");
    std::string momt;
    for (const NamedState& s : c.optimizer_state) {
      EXPECT_EQ(s.slot, "momentum");
      append_tensor(momt, s.value);
    }
    EXPECT_EQ(c.optimizer_state.size(), c.model->params().size());
    EXPECT_TRUE(momt == secs[2].second) << "the momentum differs from the file's MOMT";
    // The same state travels on through a resumed trainer into a version-2 checkpoint.
    data::ImageSet set;  // the 8 synthetic 2x2 images fuzz/make_seeds.cc trains on
    set.count = 8;
    set.rows = set.cols = 2;
    for (int i = 0; i < 32; ++i) set.pixels.push_back(static_cast<uint8_t>(i * 29));
    for (int i = 0; i < 8; ++i) set.labels.push_back(i % 10);
    const std::vector<NamedState> loaded = c.optimizer_state;
    std::unique_ptr<Trainer> t = resume_trainer(c, set, f);
    const Checkpoint v2 = parse_checkpoint("v2.qtc", encode_checkpoint(*t));
    EXPECT_EQ(state_bytes(v2.optimizer_state), state_bytes(loaded));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Hostile model files (the header checks shared with checkpoints, and the size check before allocation)

const std::string& good_model() {
  static const std::string bytes = [] {
    Trainer t(config(4, 1), small_train());
    const std::string path = temp_path("good.qtm");
    save_model(path, t.model(), t.norm());
    std::string b = read_all(path);
    fs::remove(path);
    return b;
  }();
  return bytes;
}

std::string model_with_header(const std::function<void(nlohmann::json&)>& edit) {
  const std::string& b = good_model();
  uint32_t hlen;
  std::memcpy(&hlen, b.data() + 12, 4);
  nlohmann::json h = nlohmann::json::parse(b.substr(16, hlen));
  edit(h);
  const std::string text = h.dump();
  std::string out = b.substr(0, 12);
  const auto n = static_cast<uint32_t>(text.size());
  out.append(reinterpret_cast<const char*>(&n), 4);
  out += text + b.substr(16 + hlen, b.size() - 16 - hlen - 4);
  const uint32_t c = crc_of(out, 0, out.size());
  out.append(reinterpret_cast<const char*>(&c), 4);
  return out;
}

void expect_model_error(const std::string& bytes, const std::string& detail) {
  try {
    parse_model("bad.qtm", bytes);
    ADD_FAILURE() << "no error; expected '" << detail << "'";
  } catch (const InputError& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind("bad.qtm: ", 0), 0u) << m;
    EXPECT_NE(m.find(detail), std::string::npos) << "expected '" << detail << "' in: " << m;
  }
}

TEST(ModelFileHostile, HeaderAndSizes) {
  using J = nlohmann::json;
  EXPECT_NO_THROW(parse_model("good.qtm", good_model()));
  EXPECT_NO_THROW(parse_model("same.qtm", model_with_header([](J&) {})));
  const std::pair<std::function<void(J&)>, std::string> cases[] = {
      {[](J& h) { h["model"]["name"] = "transformer"; },
       "unknown model 'transformer': not built in and not registered; call "
       "qtrain::register_model(\"transformer\", factory) before loading"},
      {[](J& h) { h["model"]["config"]["weight_bits"] = 0; }, "model config 'weight_bits': 0 is out of range 2..8"},
      {[](J& h) { h["model"]["config"]["input_bits"] = "8"; }, "'input_bits': must be an integer in 2..8"},
      {[](J& h) {
         h["model"]["config"]["hidden"] = J::array({16777216, 16777216});
       },
       "more than a file of"},
      {[](J& h) {
         h["model"]["config"]["hidden"] = J::array({200, 128});
       },
       "params[0] 'linear0.weight' is 256x784, the model's parameter is 200x784"},
      {[](J& h) {
         h["model"] = {
             {"name", "cnn"}, {"config", J::object()}, {"input", J::array({4096, 4096, 64})}, {"classes", 10}};
       },
       "more than a file of"},
      {[](J& h) {
         h["model"]["input"] = J::array({32, 32, 3, 1});
       },
       "model.input must be [height, width, channels]"},
      {[](J& h) { h["model"]["config"]["hidden"][0] = 1e30; }, "model.config.hidden[0] must be an integer"},
      {[](J& h) { h["pixel_norm"]["mean"] = "0.3"; }, "pixel_norm.mean must be a number"},
      {[](J& h) { h["pixel_norm"]["exponent"] = -300; }, "pixel_norm.exponent must be an integer in -64..64"},
      {[](J& h) { h["params"][0]["name"] = "linear7.weight"; },
       "params[0] 'linear7.weight': the model has no parameter of that name"},
      {[](J& h) { h["params"][2]["cols"] = 1u << 31; },
       "the header lists 1099512437316 bytes of parameters, statistics and checksum, the file holds 940612 "
       "(truncated)"},
      {[](J& h) { h["buffers"] = 3; }, "buffers must be an array"},
      {[](J& h) {  // 2^31 x 2^31 values: the byte count saturates at 2^62 instead of wrapping
         h["params"][0]["rows"] = 1u << 31;
         h["params"][0]["cols"] = 1u << 31;
       },
       "the header lists 4611686018427387908 bytes"},
  };
  for (const auto& [edit, detail] : cases) {
    SCOPED_TRACE(detail);
    expect_model_error(model_with_header(edit), detail);
  }
  // A header that claims more parameters than the file holds: refused before allocating.
  const std::string huge = model_with_header([](J& h) {
    h["model"]["config"]["hidden"] = J::array({4096, 4096});
    h["params"][0]["rows"] = 4096;
    h["params"][1]["cols"] = 4096;
    h["params"][2]["cols"] = 4096;
    h["params"][2]["rows"] = 4096;
    h["params"][3]["cols"] = 4096;
    h["params"][4]["cols"] = 4096;
  });
  expect_model_error(huge, "more than a file of " + std::to_string(huge.size()) + " bytes can hold");
  std::string b = good_model();
  b[8] = 3;
  expect_model_error(b, "model file version 3, this build reads versions 1 and 2");
}

// The bound the loaders check before building a model covers what build_model allocates, and is not far above it.
TEST(ModelSpec, SizeBoundCoversTheBuiltModel) {
  std::vector<ModelSpec> specs;
  for (const std::vector<std::size_t>& sizes :
       {std::vector<std::size_t>{784, 256, 128, 10}, {4, 3, 10}, {16, 10}, {8, 8, 8, 8, 8, 10}}) {
    ModelSpec s;
    s.sizes = sizes;
    specs.push_back(s);
  }
  for (const char* kind : {"cnn", "resnet8", "resnet20"})
    for (const auto& [h, w, c] : {std::tuple<std::size_t, std::size_t, std::size_t>{28, 28, 1},
                                  {32, 32, 3},
                                  {4, 4, 1},
                                  {9, 13, 2},
                                  {64, 48, 3}}) {
      ModelSpec s;
      s.kind = kind;
      s.set_input(h, w, c);
      specs.push_back(s);
    }
  for (const ModelSpec& s : specs) {
    SCOPED_TRACE(s.describe());
    const auto model = build_model(s, 0);
    std::size_t n = 0;
    for (Param* p : model->params()) n += p->master.size();
    for (Tensor* t : model->buffers()) n += t->size() + t->cols();
    EXPECT_GE(s.size_bound(), n);
    EXPECT_LE(s.size_bound(), 2 * n + (std::size_t{1} << 20));
  }
}

// The seed corpus of the fuzz targets holds valid files of the current and the older formats (the user model's
// seeds are loaded by the fuzz replay, which registers it).
TEST(FuzzCorpus, ValidSeedsLoad) {
  const std::string dir = QTRAIN_FUZZ_CORPUS;
  for (const char* f : {"checkpoint/start", "checkpoint/mid_epoch", "checkpoint/epoch_end", "checkpoint/v1_start",
                        "checkpoint/v1_mid_epoch", "checkpoint/v1_epoch_end", "checkpoint/v2_start",
                        "checkpoint/v2_mid_epoch", "checkpoint/v2_epoch_end"})
    EXPECT_NO_THROW(load_checkpoint(dir + "/" + f)) << f;
  EXPECT_NO_THROW(load_model(dir + "/model/tiny"));
  EXPECT_NO_THROW(load_model(dir + "/model/v1_tiny"));
  EXPECT_NO_THROW(data::read_cifar10({dir + "/cifar10/two_records"}));
}

}  // namespace
}  // namespace qtrain
