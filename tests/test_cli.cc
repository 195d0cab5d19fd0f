// End-to-end tests of the `qtrain` command line: the binary runs as a child process, and each test checks its exit
// code and what it printed (stdout and stderr together). Exit codes: 0 success, 2 bad usage or bad input.
// Runs that need the data set use tiny limits (640 training / 100-200 test images, one epoch) and are skipped when
// /usr/share/datasets/fashion-mnist is not installed.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "qtrain/kernels/dispatch.h"

#ifndef QTRAIN_BINARY
#error "QTRAIN_BINARY (path of the qtrain executable) must be defined by the build"
#endif

namespace {

namespace fs = std::filesystem;
using Args = std::vector<std::string>;
using Bytes = std::vector<uint8_t>;

constexpr const char* kDataDir = "/usr/share/datasets/fashion-mnist";

struct Result {
  int code = -1;    // exit status; -1 when the child did not exit normally
  std::string out;  // stdout and stderr, interleaved as written
};

std::string join(const Args& args) {
  std::string s = "qtrain";
  for (const auto& a : args) s += " " + a;
  return s;
}

// Runs `qtrain args...` with stdout and stderr captured through one pipe.
Result run(const Args& args) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) ADD_FAILURE() << "pipe2: " << std::strerror(errno);
  std::vector<std::string> argv_store = {QTRAIN_BINARY};
  argv_store.insert(argv_store.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_store) argv.push_back(a.data());
  argv.push_back(nullptr);

  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);  // dup2 clears O_CLOEXEC on the copies
    ::dup2(fds[1], STDERR_FILENO);
    ::execv(argv[0], argv.data());
    const char msg[] = "test_cli: execv of the qtrain binary failed\n";
    (void)!::write(STDERR_FILENO, msg, sizeof msg - 1);
    ::_exit(127);
  }
  ::close(fds[1]);
  Result r;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    r.out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

bool have_data() { return fs::exists(fs::path(kDataDir) / "train-images-idx3-ubyte.gz"); }

#define REQUIRE_DATA()                                                                      \
  do {                                                                                      \
    if (!have_data()) GTEST_SKIP() << kDataDir << " not installed (dataset-fashion-mnist)"; \
  } while (0)

// A fresh directory under the system temporary directory, removed with everything in it at the end of the test.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    std::random_device rd;
    for (int attempt = 0; attempt < 100; ++attempt) {
      path_ = fs::temp_directory_path() / ("qtrain_test_cli_" + std::to_string(::getpid()) + "_" +
                                           std::to_string(counter++) + "_" + std::to_string(rd()));
      if (fs::create_directory(path_)) return;
    }
    ADD_FAILURE() << "cannot create a temporary directory";
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << "cannot write " << path;
}
void write_bytes(const std::string& path, const Bytes& b) { write_bytes(path, std::string(b.begin(), b.end())); }

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::stringstream ss(text);
  for (std::string line; std::getline(ss, line);) lines.push_back(line);
  return lines;
}

// The "test accuracy: 12.34%" value a train or eval run prints last; empty when absent.
std::string printed_accuracy(const std::string& out) {
  static const std::regex re(R"(test accuracy: ([0-9]+\.[0-9]+%))");
  std::string last;
  for (std::sregex_iterator it(out.begin(), out.end(), re), end; it != end; ++it) last = (*it)[1];
  return last;
}

const Args kTiny = {"--train-limit", "640", "--test-limit", "200", "--epochs", "1"};

Args tiny_train(std::initializer_list<std::string> extra) {
  Args a = {"train"};
  a.insert(a.end(), kTiny.begin(), kTiny.end());
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

// ---------------------------------------------------------------------------------------------------------------
// Help

TEST(CliHelp, TopLevelHelpListsSubcommands) {
  const Result r = run({"--help"});
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("train"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("eval"), std::string::npos) << r.out;
}

TEST(CliHelp, TrainHelpListsKeyFlags) {
  const Result r = run({"train", "--help"});
  EXPECT_EQ(r.code, 0) << r.out;
  for (const char* flag :
       {"--data", "--model", "--bits", "--groups", "--epochs", "--batch", "--lr", "--momentum", "--wd", "--schedule",
        "--seed", "--threads", "--train-limit", "--test-limit", "--metrics", "--save", "--kernel-target"})
    EXPECT_NE(r.out.find(flag), std::string::npos) << "train --help does not mention " << flag << ":\n" << r.out;
}

TEST(CliHelp, EvalHelpListsKeyFlags) {
  const Result r = run({"eval", "--help"});
  EXPECT_EQ(r.code, 0) << r.out;
  for (const char* flag : {"--load", "--data", "--threads", "--test-limit"})
    EXPECT_NE(r.out.find(flag), std::string::npos) << "eval --help does not mention " << flag << ":\n" << r.out;
}

TEST(CliHelp, NoSubcommandIsAUsageError) {
  const Result r = run({});
  EXPECT_EQ(r.code, 2) << r.out;
}

// ---------------------------------------------------------------------------------------------------------------
// Data directory and IDX files

TEST(CliData, MissingDirectoryTellsHowToInstall) {
  const Result r = run({"train", "--data", "/nonexistent/qtrain-test-data", "--epochs", "1"});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("qtrain: error:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("apt-get install dataset-fashion-mnist"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--data"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("/nonexistent/qtrain-test-data"), std::string::npos) << r.out;
}

TEST(CliData, EmptyDirectoryNamesTheMissingFiles) {
  TempDir dir;
  const Result r = run({"train", "--data", dir.str(), "--epochs", "1"});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("train-images-idx3-ubyte"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("apt-get install dataset-fashion-mnist"), std::string::npos) << r.out;
}

void put_u32(Bytes& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
}

// An IDX images file: magic, count, rows, cols (big-endian), then `pixel_bytes` pixels (default: all of them).
Bytes idx_images(uint32_t count, uint32_t rows, uint32_t cols, std::size_t pixel_bytes = SIZE_MAX,
                 uint32_t magic = 0x00000803) {
  Bytes b;
  put_u32(b, magic);
  put_u32(b, count);
  put_u32(b, rows);
  put_u32(b, cols);
  const std::size_t n = std::min<std::size_t>(pixel_bytes, std::size_t{count} * rows * cols);
  for (std::size_t i = 0; i < n; ++i) b.push_back(static_cast<uint8_t>((i * 37 + i / 7) & 0xff));
  return b;
}

Bytes idx_labels(uint32_t count, int bad_index = -1, uint8_t bad_label = 10) {
  Bytes b;
  put_u32(b, 0x00000801);
  put_u32(b, count);
  for (uint32_t i = 0; i < count; ++i)
    b.push_back(static_cast<int>(i) == bad_index ? bad_label : static_cast<uint8_t>(i % 10));
  return b;
}

constexpr uint32_t kSynthCount = 128;

// A complete synthetic data directory (raw IDX files, 128 images of 28×28 per split); tests then spoil one file.
void write_valid_dir(const TempDir& dir) {
  write_bytes(dir / "train-images-idx3-ubyte", idx_images(kSynthCount, 28, 28));
  write_bytes(dir / "train-labels-idx1-ubyte", idx_labels(kSynthCount));
  write_bytes(dir / "t10k-images-idx3-ubyte", idx_images(kSynthCount, 28, 28));
  write_bytes(dir / "t10k-labels-idx1-ubyte", idx_labels(kSynthCount));
}

Result train_on(const TempDir& dir) { return run({"train", "--data", dir.str(), "--epochs", "1", "--batch", "32"}); }

// The control for the corrupt-file tests below: the same synthetic directory, unspoiled, trains fine.
TEST(CliData, ValidSyntheticDirectoryTrains) {
  TempDir dir;
  write_valid_dir(dir);
  const Result r = train_on(dir);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(printed_accuracy(r.out), "") << r.out;
}

TEST(CliTrain, HiddenSetsTheMlpWidths) {
  TempDir dir;
  write_valid_dir(dir);
  const Result r = run({"train", "--data", dir.str(), "--epochs", "1", "--batch", "32", "--hidden", "48,24,12"});
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("mlp 784-48-24-12-10"), std::string::npos) << r.out;
  // (784+1)·48 + (48+1)·24 + (24+1)·12 + (12+1)·10 parameters.
  EXPECT_NE(r.out.find(", 39286 parameters"), std::string::npos) << r.out;
}

// A model trained on 28×28 images evaluated on 14×14 ones: a usage error naming both shapes, not an internal one.
TEST(CliModel, EvalOnDataOfAnotherShapeExitsTwoNamingBothShapes) {
  TempDir dir, small;
  write_valid_dir(dir);
  write_bytes(small / "t10k-images-idx3-ubyte", idx_images(kSynthCount, 14, 14));
  write_bytes(small / "t10k-labels-idx1-ubyte", idx_labels(kSynthCount));
  const Result t = run({"train", "--data", dir.str(), "--epochs", "1", "--batch", "32", "--save", dir / "m.qtm"});
  ASSERT_EQ(t.code, 0) << t.out;
  const Result e = run({"eval", "--load", dir / "m.qtm", "--data", small.str()});
  EXPECT_EQ(e.code, 2) << e.out;
  EXPECT_EQ(e.out.rfind("qtrain: error: ", 0), 0u) << e.out;
  EXPECT_EQ(lines_of(e.out).size(), 1u) << e.out;
  EXPECT_NE(e.out.find("784 values per image"), std::string::npos) << e.out;
  EXPECT_NE(e.out.find("the data's 14x14x1 images"), std::string::npos) << e.out;
}

void expect_idx_error(const Result& r, const std::string& file, const std::string& detail) {
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_EQ(r.out.rfind("qtrain: error: ", 0), 0u) << r.out;
  EXPECT_EQ(lines_of(r.out).size(), 1u) << "expected a one-line message:\n" << r.out;
  EXPECT_NE(r.out.find(file), std::string::npos) << "message does not name " << file << ":\n" << r.out;
  EXPECT_NE(r.out.find("byte"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(detail), std::string::npos) << "expected '" << detail << "' in:\n" << r.out;
}

TEST(CliData, BadMagicNamesFileAndByte) {
  TempDir dir;
  write_valid_dir(dir);
  write_bytes(dir / "train-images-idx3-ubyte", idx_images(kSynthCount, 28, 28, SIZE_MAX, 0x00000801));
  expect_idx_error(train_on(dir), dir / "train-images-idx3-ubyte", "byte 0");
}

TEST(CliData, ZeroRowsNamesFileAndByte) {
  TempDir dir;
  write_valid_dir(dir);
  write_bytes(dir / "train-images-idx3-ubyte", idx_images(kSynthCount, 0, 28));
  expect_idx_error(train_on(dir), dir / "train-images-idx3-ubyte", "byte 8");
}

TEST(CliData, TruncatedImagesNamesFileAndByte) {
  TempDir dir;
  write_valid_dir(dir);
  write_bytes(dir / "train-images-idx3-ubyte", idx_images(kSynthCount, 28, 28, 1000));
  expect_idx_error(train_on(dir), dir / "train-images-idx3-ubyte", "truncated");
}

TEST(CliData, TruncatedTestImagesNamesFile) {
  TempDir dir;
  write_valid_dir(dir);
  write_bytes(dir / "t10k-images-idx3-ubyte", idx_images(kSynthCount, 28, 28, 5000));
  expect_idx_error(train_on(dir), dir / "t10k-images-idx3-ubyte", "truncated");
}

TEST(CliData, LabelOutOfRangeNamesFileAndByte) {
  TempDir dir;
  write_valid_dir(dir);
  write_bytes(dir / "train-labels-idx1-ubyte", idx_labels(kSynthCount, /*bad_index=*/5, /*bad_label=*/10));
  // Label i sits at byte 8 + i.
  expect_idx_error(train_on(dir), dir / "train-labels-idx1-ubyte", "byte 13");
}

TEST(CliData, LabelCountMismatchNamesFile) {
  TempDir dir;
  write_valid_dir(dir);
  write_bytes(dir / "train-labels-idx1-ubyte", idx_labels(kSynthCount - 1));
  expect_idx_error(train_on(dir), dir / "train-labels-idx1-ubyte", "mismatch");
}

TEST(CliData, TrailingBytesNamesFile) {
  TempDir dir;
  write_valid_dir(dir);
  Bytes b = idx_labels(kSynthCount);
  b.push_back(0);
  write_bytes(dir / "train-labels-idx1-ubyte", b);
  expect_idx_error(train_on(dir), dir / "train-labels-idx1-ubyte", "trailing");
}

// ---------------------------------------------------------------------------------------------------------------
// Flags out of range: exit 2 and a message that states the valid range or names. The data directory does not
// exist, so these also check that flags are validated before any data is read.

struct BadFlag {
  const char* name;  // test name suffix
  Args args;         // after "train --data /nonexistent..."
  const char* expect;
};

void PrintTo(const BadFlag& f, std::ostream* os) { *os << f.name; }

class CliBadFlag : public ::testing::TestWithParam<BadFlag> {};

TEST_P(CliBadFlag, ExitsTwoAndStatesTheValidRange) {
  const BadFlag& f = GetParam();
  Args args = {"train", "--data", "/nonexistent/qtrain-test-data"};
  args.insert(args.end(), f.args.begin(), f.args.end());
  const Result r = run(args);
  EXPECT_EQ(r.code, 2) << join(args) << "\n" << r.out;
  EXPECT_NE(r.out.find(f.expect), std::string::npos) << join(args) << ": expected '" << f.expect << "' in:\n" << r.out;
  EXPECT_EQ(r.out.find("apt-get"), std::string::npos) << join(args) << ": the flag must be rejected before the data "
                                                      << "is read:\n"
                                                      << r.out;
}

INSTANTIATE_TEST_SUITE_P(
    Flags, CliBadFlag,
    ::testing::Values(BadFlag{"Bits1", {"--bits", "1"}, "2..8"},                     //
                      BadFlag{"Bits9", {"--bits", "9"}, "2..8"},                     //
                      BadFlag{"BitsTwoValues", {"--bits", "4,4"}, "three"},          //
                      BadFlag{"BitsThirdOutOfRange", {"--bits", "4,4,12"}, "2..8"},  //
                      BadFlag{"BitsNotANumber", {"--bits", "x"}, "not an integer"},  //
                      BadFlag{"BitsEmpty", {"--bits", ""}, "--bits"},                //
                      BadFlag{"Groups6Bits4", {"--groups", "6", "--bits", "4"}, "1..5"},
                      BadFlag{"Groups2Bits8", {"--groups", "2", "--bits", "8"}, "1..1"},
                      BadFlag{"GroupsNegative", {"--groups", "-1", "--bits", "4"}, "1..5"},
                      BadFlag{"ScaleUnknown", {"--scale", "p99"}, "max, mse"},
                      BadFlag{"ActGroups5Bits4", {"--act-groups", "5", "--bits", "4"}, "0..4"},
                      BadFlag{"ActGroups2Bits8", {"--act-groups", "2", "--bits", "8"}, "0..1"},
                      BadFlag{"ActGroupsNegative", {"--act-groups", "-1", "--bits", "4"}, "0..4"},
                      BadFlag{"Batch0", {"--batch", "0"}, "1..65536"},          //
                      BadFlag{"BatchHuge", {"--batch", "100000"}, "1..65536"},  //
                      BadFlag{"ModelUnknown", {"--model", "resnet99"}, "mlp"},  //
                      BadFlag{"Epochs0", {"--epochs", "0"}, ">= 1"},            //
                      BadFlag{"EpochsNotANumber", {"--epochs", "abc"}, "--epochs"},
                      BadFlag{"Momentum1_5", {"--momentum", "1.5"}, "[0, 1)"},  //
                      BadFlag{"WeightDecay1", {"--wd", "1"}, "[0, 1)"},         //
                      BadFlag{"Lr0", {"--lr", "0"}, "(0, 100)"},                //
                      BadFlag{"Beta1One", {"--optimizer", "adamw", "--beta1", "1"}, "--beta1 1 is out of range [0, 1 - 1e-6]"},
                      BadFlag{"Beta2Negative", {"--optimizer", "adamw", "--beta2", "-0.5"}, "--beta2 -0.5 is out of range"},
                      BadFlag{"AdamEps0", {"--optimizer", "adamw", "--adam-eps", "0"}, "--adam-eps 0 is out of range (0, 1]"},
                      BadFlag{"AdamWDecay1", {"--optimizer", "adamw", "--wd", "1"}, "[0, 1) (AdamW's decoupled weight decay)"},
                      BadFlag{"Beta1WithSgd", {"--beta1", "0.8"}, "--beta1 is an AdamW setting; add --optimizer adamw"},
                      BadFlag{"MomentumWithAdamW", {"--optimizer", "adamw", "--momentum", "0.8"}, "AdamW's first-moment decay is --beta1"},
                      BadFlag{"OptimizerUnknown", {"--optimizer", "lamb"}, "valid optimizers are sgd, adamw"},
                      BadFlag{"WarmupWithOnecycle", {"--warmup-epochs", "2"}, "--warmup-epochs sets the warm-up of --schedule warmup-cosine"},
                      BadFlag{"WarmupBeyondEpochs", {"--schedule", "warmup-cosine", "--epochs", "2", "--warmup-epochs", "3"}, "[0, --epochs = 2]"},
                      BadFlag{"ScheduleUnknown", {"--schedule", "foo"}, "constant, step, cosine, onecycle, warmup-cosine"},
                      BadFlag{"ThreadsNegative", {"--threads", "-1"}, "0 (all processors)"},
                      BadFlag{"KernelTargetUnknown", {"--kernel-target", "BOGUS"}, "available"},
                      BadFlag{"UnknownFlag", {"--frobnicate"}, "--frobnicate"},
                      BadFlag{"HiddenZero", {"--hidden", "256,0"}, "width 0 is out of range 1..65536"},
                      BadFlag{"HiddenNotANumber", {"--hidden", "64,x"}, "'x' is not an integer"},
                      BadFlag{"HiddenEmpty", {"--hidden", ""}, "--hidden"},
                      BadFlag{"HiddenOnCnn", {"--model", "cnn", "--hidden", "64"}, "--model cnn has fixed widths"}),
    [](const ::testing::TestParamInfo<BadFlag>& p) { return std::string(p.param.name); });

// Errors the library reports (UsageError) are one line starting with "qtrain: error:".
TEST(CliFlags, UsageErrorIsOneLine) {
  const Result r = run({"train", "--data", "/nonexistent/qtrain-test-data", "--bits", "9"});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_EQ(r.out.rfind("qtrain: error: ", 0), 0u) << r.out;
  EXPECT_EQ(lines_of(r.out).size(), 1u) << r.out;
}

TEST(CliFlags, DatasetChoices) {
  Result r = run({"train", "--dataset", "imagenet"});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("fashion-mnist, mnist, cifar10"), std::string::npos) << r.out;
  r = run({"train", "--dataset", "cifar10"});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--data DIR"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("cifar-10-binary"), std::string::npos) << r.out;
  r = run({"train", "--augment", "17"});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("0..16"), std::string::npos) << r.out;
}

// A tiny generated CIFAR-10 binary set (the real one is not packaged): the whole CLI path for 3-channel images.
TEST(CliTrain, Cifar10BinaryFilesTrainAnMlp) {
  TempDir dir;
  auto batch = [&](const std::string& name, int records, int salt) {
    std::string b;
    for (int r = 0; r < records; ++r) {
      const int label = (r + salt) % 10;
      b.push_back(static_cast<char>(label));
      for (int i = 0; i < 3072; ++i) b.push_back(static_cast<char>((label * 25 + (i * 7 + r) % 13) & 0xff));
    }
    write_bytes(dir / name, b);
  };
  for (int i = 1; i <= 5; ++i) batch("data_batch_" + std::to_string(i) + ".bin", 64, i);
  batch("test_batch.bin", 64, 0);
  const Result r = run({"train", "--dataset", "cifar10", "--data", dir.str(), "--epochs", "1", "--augment", "4"});
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("mlp 3072-256-128-10"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("320 training / 64 test images"), std::string::npos) << r.out;
}

TEST(CliFlags, UnknownSubcommand) {
  const Result r = run({"frobnicate"});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("unknown command 'frobnicate'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("train, eval"), std::string::npos) << r.out;
  EXPECT_EQ(lines_of(r.out).size(), 1u) << r.out;
}

TEST(CliFlags, EvalWithoutLoad) {
  const Result r = run({"eval"});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--load"), std::string::npos) << r.out;
}

TEST(CliFlags, EvalThreadsNegative) {
  TempDir dir;
  const Result r = run({"eval", "--load", dir / "model.qtm", "--threads", "-1"});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("0 (all processors)"), std::string::npos) << r.out;
}

// ---------------------------------------------------------------------------------------------------------------
// Saved models: round trip and every kind of bad model file.

// Trains the tiny model once per test that needs it and saves it to dir/model.qtm; returns the training output.
Result train_and_save(const TempDir& dir) {
  const Result r =
      run({"train", "--train-limit", "640", "--test-limit", "100", "--epochs", "1", "--save", dir / "model.qtm"});
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(fs::exists(dir / "model.qtm")) << r.out;
  return r;
}

void expect_model_error(const Result& r, const std::string& file, const std::string& detail) {
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_EQ(r.out.rfind("qtrain: error: ", 0), 0u) << r.out;
  EXPECT_EQ(lines_of(r.out).size(), 1u) << "expected a one-line message:\n" << r.out;
  EXPECT_NE(r.out.find(file), std::string::npos) << "message does not name " << file << ":\n" << r.out;
  EXPECT_NE(r.out.find(detail), std::string::npos) << "expected '" << detail << "' in:\n" << r.out;
}

TEST(CliModel, SaveThenEvalPrintsTheSameAccuracy) {
  REQUIRE_DATA();
  TempDir dir;
  const Result t = train_and_save(dir);
  const std::string trained = printed_accuracy(t.out);
  ASSERT_NE(trained, "") << t.out;
  const Result e = run({"eval", "--load", dir / "model.qtm", "--test-limit", "100"});
  EXPECT_EQ(e.code, 0) << e.out;
  EXPECT_EQ(printed_accuracy(e.out), trained) << "train printed:\n" << t.out << "eval printed:\n" << e.out;
  EXPECT_NE(e.out.find("(100 images)"), std::string::npos) << e.out;
  // The accuracy of a loaded model does not depend on the thread count.
  const Result e4 = run({"eval", "--load", dir / "model.qtm", "--test-limit", "100", "--threads", "4"});
  EXPECT_EQ(e4.code, 0) << e4.out;
  EXPECT_EQ(printed_accuracy(e4.out), trained) << e4.out;
}

TEST(CliModel, MissingFile) {
  TempDir dir;
  const std::string f = dir / "no-such-model.qtm";
  expect_model_error(run({"eval", "--load", f}), f, "cannot open");
}

TEST(CliModel, DirectoryInsteadOfFile) {
  TempDir dir;
  const Result r = run({"eval", "--load", dir.str()});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find(dir.str()), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("is a directory"), std::string::npos) << r.out;
}

TEST(CliModel, GarbageFileBadMagic) {
  TempDir dir;
  const std::string f = dir / "garbage.qtm";
  write_bytes(f, std::string("this is not a qtrain model file, just some text\n"));
  expect_model_error(run({"eval", "--load", f}), f, "byte 0");
  EXPECT_NE(run({"eval", "--load", f}).out.find("magic"), std::string::npos);
}

TEST(CliModel, EmptyFile) {
  TempDir dir;
  const std::string f = dir / "empty.qtm";
  write_bytes(f, std::string());
  expect_model_error(run({"eval", "--load", f}), f, "byte");
}

TEST(CliModel, TruncatedFile) {
  REQUIRE_DATA();
  TempDir dir;
  train_and_save(dir);
  const std::string full = read_bytes(dir / "model.qtm");
  ASSERT_GT(full.size(), 1000u);
  // Cut inside the parameter data, and inside the header.
  for (std::size_t keep : {full.size() / 2, std::size_t{20}, full.size() - 2}) {
    const std::string f = dir / ("truncated_" + std::to_string(keep) + ".qtm");
    write_bytes(f, full.substr(0, keep));
    SCOPED_TRACE("kept " + std::to_string(keep) + " of " + std::to_string(full.size()) + " bytes");
    expect_model_error(run({"eval", "--load", f}), f, "byte");
    EXPECT_NE(run({"eval", "--load", f}).out.find("truncated"), std::string::npos);
  }
}

uint32_t le_u32(const std::string& s, std::size_t at) {
  uint32_t v = 0;
  for (int k = 3; k >= 0; --k) v = (v << 8) | static_cast<uint8_t>(s[at + static_cast<std::size_t>(k)]);
  return v;
}

TEST(CliModel, FlippedParameterByteFailsTheChecksum) {
  REQUIRE_DATA();
  TempDir dir;
  train_and_save(dir);
  std::string bytes = read_bytes(dir / "model.qtm");
  // Layout: "QTRNMDL1" | u32 version | u32 header bytes | header | (i32 exponent, i32 weights...)... | u32 CRC.
  ASSERT_EQ(bytes.substr(0, 8), "QTRNMDL1");
  const std::size_t params_at = 16 + le_u32(bytes, 12);
  const std::size_t crc_at = bytes.size() - 4;
  const std::size_t flip_at = params_at + 4 + 1001;  // a weight of the first parameter, past its exponent
  ASSERT_LT(flip_at, crc_at);
  bytes[flip_at] = static_cast<char>(bytes[flip_at] ^ 0x10);
  const std::string f = dir / "flipped.qtm";
  write_bytes(f, bytes);
  expect_model_error(run({"eval", "--load", f}), f, "checksum");
  EXPECT_NE(run({"eval", "--load", f}).out.find("byte " + std::to_string(crc_at)), std::string::npos)
      << run({"eval", "--load", f}).out;
}

TEST(CliModel, FlippedChecksumByte) {
  REQUIRE_DATA();
  TempDir dir;
  train_and_save(dir);
  std::string bytes = read_bytes(dir / "model.qtm");
  bytes.back() = static_cast<char>(bytes.back() ^ 0x01);
  const std::string f = dir / "badcrc.qtm";
  write_bytes(f, bytes);
  expect_model_error(run({"eval", "--load", f}), f, "checksum");
}

TEST(CliModel, TrailingBytes) {
  REQUIRE_DATA();
  TempDir dir;
  train_and_save(dir);
  const std::string f = dir / "trailing.qtm";
  write_bytes(f, read_bytes(dir / "model.qtm") + "xyz");
  expect_model_error(run({"eval", "--load", f}), f, "byte");
}

// ---------------------------------------------------------------------------------------------------------------
// --metrics

void expect_metrics_line(const std::string& line, int epoch) {
  SCOPED_TRACE(line);
  nlohmann::json j;
  ASSERT_NO_THROW(j = nlohmann::json::parse(line));
  ASSERT_TRUE(j.is_object());
  for (const char* key : {"loss", "train_accuracy", "test_accuracy", "images_per_second"}) {
    ASSERT_TRUE(j.contains(key)) << key;
    ASSERT_TRUE(j[key].is_number()) << key;
    EXPECT_TRUE(std::isfinite(j[key].get<double>())) << key;
  }
  EXPECT_GT(j["loss"].get<double>(), 0.0);
  for (const char* key : {"train_accuracy", "test_accuracy"}) {
    EXPECT_GE(j[key].get<double>(), 0.0) << key;
    EXPECT_LE(j[key].get<double>(), 1.0) << key;
  }
  EXPECT_GT(j["images_per_second"].get<double>(), 0.0);
  if (j.contains("epoch")) {
    EXPECT_EQ(j["epoch"].get<int>(), epoch);
  }
}

TEST(CliMetrics, OneEpochWritesOneJsonLine) {
  REQUIRE_DATA();
  TempDir dir;
  const std::string f = dir / "metrics.jsonl";
  const Result r = run(tiny_train({"--metrics", f}));
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string text = read_bytes(f);
  const auto lines = lines_of(text);
  ASSERT_EQ(lines.size(), 1u) << text;
  expect_metrics_line(lines[0], 1);
  // The file's test accuracy is the one printed.
  const auto j = nlohmann::json::parse(lines[0]);
  char printed[32];
  std::snprintf(printed, sizeof printed, "%.2f%%", 100.0 * j["test_accuracy"].get<double>());
  EXPECT_EQ(printed_accuracy(r.out), printed) << r.out;
}

TEST(CliMetrics, TwoEpochsWriteTwoLines) {
  REQUIRE_DATA();
  TempDir dir;
  const std::string f = dir / "metrics.jsonl";
  const Result r = run({"train", "--train-limit", "640", "--test-limit", "200", "--epochs", "2", "--metrics", f});
  ASSERT_EQ(r.code, 0) << r.out;
  const auto lines = lines_of(read_bytes(f));
  ASSERT_EQ(lines.size(), 2u);
  expect_metrics_line(lines[0], 1);
  expect_metrics_line(lines[1], 2);
}

TEST(CliTrain, TinyRunW4A4G4Succeeds) {
  REQUIRE_DATA();
  const Result r = run(tiny_train({"--bits", "4", "--groups", "5"}));
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(printed_accuracy(r.out), "") << r.out;
}

// Bit-exact whatever the thread count: the printed loss and accuracy lines match.
TEST(CliTrain, SameResultForOneAndFourThreads) {
  REQUIRE_DATA();
  TempDir dir;
  const Result a = run(tiny_train({"--threads", "1", "--metrics", dir / "a.jsonl"}));
  const Result b = run(tiny_train({"--threads", "4", "--metrics", dir / "b.jsonl"}));
  ASSERT_EQ(a.code, 0) << a.out;
  ASSERT_EQ(b.code, 0) << b.out;
  const auto ja = nlohmann::json::parse(read_bytes(dir / "a.jsonl"));
  const auto jb = nlohmann::json::parse(read_bytes(dir / "b.jsonl"));
  EXPECT_EQ(ja["loss"], jb["loss"]);
  EXPECT_EQ(ja["train_accuracy"], jb["train_accuracy"]);
  EXPECT_EQ(ja["test_accuracy"], jb["test_accuracy"]);
}

// --profile prints one row per top-level layer and phase, in ms per step, and changes nothing the run computes.
TEST(CliTrain, ProfilePrintsEveryLayerAndLeavesTheRunUnchanged) {
  REQUIRE_DATA();
  TempDir dir;
  const Result a = run(tiny_train({"--model", "cnn", "--bits", "4", "--save", dir / "a.qtm"}));
  const Result b = run(tiny_train({"--model", "cnn", "--bits", "4", "--save", dir / "b.qtm", "--profile"}));
  ASSERT_EQ(a.code, 0) << a.out;
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_TRUE(read_bytes(dir / "a.qtm") == read_bytes(dir / "b.qtm")) << "profiling changed the trained weights";
  EXPECT_EQ(a.out.find("step profile"), std::string::npos);
  ASSERT_NE(b.out.find("step profile"), std::string::npos) << b.out;
  // The CNN's top-level layers: conv, norm, pool, conv, norm, pool, flatten, linear+ReLU, linear.
  for (const char* row : {"0 Conv2d(1->32", "1 L1BatchNorm(32)+ReLU", "7 Linear(3136->128", "ReLU)", "8 Linear(128->10",
                          "batch gather", "loss", "optimizer"})
    EXPECT_NE(b.out.find(row), std::string::npos) << "no row " << row << " in\n" << b.out;
  const std::regex total(R"(total +([0-9.]+) ms per step over 10 steps)");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(b.out, m, total)) << b.out;
  EXPECT_GT(std::stod(m[1].str()), 0.0);
}

// Every lower kernel target this machine supports — forced with --kernel-target, or with QTRAIN_KERNEL_TARGET,
// as on a CPU without VNNI or without AVX-512 — runs and trains to the same bits as the best target.
TEST(CliTrain, EveryLowerKernelTargetGivesTheSameResult) {
  REQUIRE_DATA();
  TempDir dir;
  const auto targets = qtrain::kernels::available_targets();
  ASSERT_FALSE(targets.empty());
  const Result best = run(tiny_train({"--metrics", dir / "best.jsonl"}));
  ASSERT_EQ(best.code, 0) << best.out;
  EXPECT_NE(best.out.find("kernels " + targets.front().name), std::string::npos) << best.out;
  const auto jb = nlohmann::json::parse(read_bytes(dir / "best.jsonl"));
  const auto expect_same_metrics = [&](const std::string& file, const std::string& what) {
    const auto j = nlohmann::json::parse(read_bytes(file));
    EXPECT_EQ(j["loss"], jb["loss"]) << what;
    EXPECT_EQ(j["train_accuracy"], jb["train_accuracy"]) << what;
    EXPECT_EQ(j["test_accuracy"], jb["test_accuracy"]) << what;
  };
  for (std::size_t i = 1; i < targets.size(); ++i) {
    const std::string& name = targets[i].name;
    const std::string file = dir / (name + ".jsonl");
    const Result r = run(tiny_train({"--kernel-target", name, "--metrics", file}));
    ASSERT_EQ(r.code, 0) << name << ": " << r.out;
    EXPECT_NE(r.out.find("kernels " + name), std::string::npos) << r.out;
    expect_same_metrics(file, "--kernel-target " + name);
  }
  // The environment variable, with the lowest target (the child inherits this process's environment).
  const std::string lowest = targets.back().name;
  ASSERT_EQ(::setenv("QTRAIN_KERNEL_TARGET", lowest.c_str(), 1), 0);
  const Result r = run(tiny_train({"--metrics", dir / "env.jsonl"}));
  ::unsetenv("QTRAIN_KERNEL_TARGET");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("kernels " + lowest), std::string::npos) << r.out;
  expect_same_metrics(dir / "env.jsonl", "QTRAIN_KERNEL_TARGET=" + lowest);
}

// The model file of a two-step 4-bit ResNet-8 run (two batches of 64, so an update runs between two steps' draws)
// is the same bytes on 1 and 2 threads and every kernel target this machine supports.
// `train` with `args` on every SIMD target the machine has, with 1 and 2 threads: the saved model files (larger
// than 100 kB) are byte-identical.
void expect_identical_over_targets_and_threads(const Args& args) {
  TempDir dir;
  std::string reference, reference_run;
  for (const auto& target : qtrain::kernels::available_targets())
    for (const char* threads : {"1", "2"}) {
      const std::string what = target.name + " with " + threads + " thread(s)";
      const std::string file = dir / (target.name + "_" + threads + ".qtm");
      Args a = args;
      a.insert(a.end(), {"--kernel-target", target.name, "--threads", threads, "--save", file});
      const Result r = run(a);
      ASSERT_EQ(r.code, 0) << what << ": " << r.out;
      const std::string bytes = read_bytes(file);
      ASSERT_GT(bytes.size(), 100000u) << what;
      if (reference.empty()) {
        reference = bytes;
        reference_run = what;
      } else {
        EXPECT_TRUE(bytes == reference) << what << " differs from " << reference_run;
      }
    }
}

TEST(CliTrain, ResNet8TwoStepsAreByteIdenticalOverThreadsAndTargets) {
  REQUIRE_DATA();
  expect_identical_over_targets_and_threads({"train", "--model", "resnet8", "--bits", "4", "--epochs", "1",
                                             "--train-limit", "128", "--batch", "64", "--test-limit", "64"});
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Determinism, checkpoints, resume and the health check (docs/reliability.md)

namespace {

// Bit-exact whatever the thread count and across repeated runs: the saved model files are byte-identical.
TEST(CliDeterminism, RepeatedRunsAndThreadCountsGiveIdenticalModelFiles) {
  REQUIRE_DATA();
  TempDir dir;
  const std::string runs[][2] = {{"1", "a.qtm"}, {"1", "b.qtm"}, {"2", "c.qtm"}, {"3", "d.qtm"}};
  for (const auto& [threads, file] : runs) {
    const Result r = run({"train", "--train-limit", "1280", "--test-limit", "100", "--epochs", "2", "--bits", "4",
                          "--threads", threads, "--save", dir / file});
    ASSERT_EQ(r.code, 0) << r.out;
  }
  const std::string a = read_bytes(dir / "a.qtm");
  ASSERT_GT(a.size(), 100000u);
  EXPECT_TRUE(a == read_bytes(dir / "b.qtm")) << "two runs with the same flags differ";
  EXPECT_TRUE(a == read_bytes(dir / "c.qtm")) << "1 and 2 threads differ";
  EXPECT_TRUE(a == read_bytes(dir / "d.qtm")) << "1 and 3 threads differ";
}

Args ckpt_run(std::initializer_list<std::string> extra) {
  Args a = {"train", "--train-limit", "1280", "--test-limit", "100", "--epochs", "2", "--bits", "4"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

// 2 epochs straight against a run stopped mid-epoch 2 (with checkpoints every 7 steps) and resumed: the same model
// bytes and the same per-epoch metrics.
TEST(CliCheckpoint, StopAndResumeGivesTheSameModel) {
  REQUIRE_DATA();
  TempDir dir;
  const Result a = run(ckpt_run({"--save", dir / "a.qtm", "--metrics", dir / "a.jsonl"}));
  ASSERT_EQ(a.code, 0) << a.out;
  const Result s = run(ckpt_run({"--checkpoint", dir / "run.qtc", "--checkpoint-every", "7",
                                      "--stop-after-steps", "27", "--metrics", dir / "b.jsonl"}));
  ASSERT_EQ(s.code, 0) << s.out;
  EXPECT_NE(s.out.find("stopped after global step 27 (epoch 2, step 7/20)"), std::string::npos) << s.out;
  EXPECT_NE(s.out.find("--resume " + (dir / "run.qtc")), std::string::npos) << s.out;
  ASSERT_TRUE(fs::exists(dir / "run.qtc"));
  // Resume with another thread count: still bit-exact.
  const Result b = run({"train", "--resume", dir / "run.qtc", "--test-limit", "100", "--threads", "2", "--save",
                        dir / "b.qtm", "--metrics", dir / "b.jsonl"});
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_NE(b.out.find("resuming " + (dir / "run.qtc") + " at epoch 2, step 7/20 (global step 27)"),
            std::string::npos)
      << b.out;
  EXPECT_TRUE(read_bytes(dir / "a.qtm") == read_bytes(dir / "b.qtm")) << "resumed model differs";
  const auto la = lines_of(read_bytes(dir / "a.jsonl")), lb = lines_of(read_bytes(dir / "b.jsonl"));
  ASSERT_EQ(la.size(), 2u);
  ASSERT_EQ(lb.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    const auto ja = nlohmann::json::parse(la[static_cast<std::size_t>(i)]);
    const auto jb = nlohmann::json::parse(lb[static_cast<std::size_t>(i)]);
    EXPECT_EQ(ja["loss"], jb["loss"]) << "epoch " << i + 1;
    EXPECT_EQ(ja["train_accuracy"], jb["train_accuracy"]) << "epoch " << i + 1;
    EXPECT_EQ(ja["test_accuracy"], jb["test_accuracy"]) << "epoch " << i + 1;
  }
  EXPECT_EQ(printed_accuracy(a.out), printed_accuracy(b.out));
  // The checkpoint of the finished run resumes to "already complete".
  const Result c = run({"train", "--resume", dir / "run.qtc", "--test-limit", "100"});
  EXPECT_EQ(c.code, 0) << c.out;
  EXPECT_NE(c.out.find("already complete"), std::string::npos) << c.out;
}

TEST(CliCheckpoint, ResumeRefusesChangedSettings) {
  REQUIRE_DATA();
  TempDir dir;
  ASSERT_EQ(run(ckpt_run({"--checkpoint", dir / "run.qtc", "--stop-after-steps", "3"})).code, 0);
  for (const Args& extra : {Args{"--bits", "8"}, Args{"--seed", "5"}, Args{"--epochs", "3"}, Args{"--batch", "32"},
                            Args{"--train-limit", "640"}, Args{"--schedule", "cosine"}}) {
    Args a = {"train", "--resume", dir / "run.qtc"};
    a.insert(a.end(), extra.begin(), extra.end());
    const Result r = run(a);
    EXPECT_EQ(r.code, 2) << join(a) << "\n" << r.out;
    EXPECT_NE(r.out.find(extra[0] + " " + extra[1] + " differs from the checkpoint's"), std::string::npos) << r.out;
    EXPECT_EQ(lines_of(r.out).size(), 1u) << r.out;
  }
  // Repeating a setting unchanged is fine; so is a new learning rate (with a note).
  const Result same = run({"train", "--resume", dir / "run.qtc", "--bits", "4", "--stop-after-steps", "4",
                           "--test-limit", "100"});
  EXPECT_EQ(same.code, 0) << same.out;
  const Result lr = run({"train", "--resume", dir / "run.qtc", "--lr", "0.02", "--stop-after-steps", "5",
                         "--test-limit", "100"});
  EXPECT_EQ(lr.code, 0) << lr.out;
  EXPECT_NE(lr.out.find("no longer bit-identical"), std::string::npos) << lr.out;
}

TEST(CliCheckpoint, BadCheckpointFilesExitTwoNamingTheFile) {
  REQUIRE_DATA();
  TempDir dir;
  ASSERT_EQ(run(ckpt_run({"--checkpoint", dir / "run.qtc", "--stop-after-steps", "2"})).code, 0);
  const std::string good = read_bytes(dir / "run.qtc");
  std::string flipped = good;
  flipped[good.size() / 2] = static_cast<char>(flipped[good.size() / 2] ^ 1);
  const std::pair<std::string, std::string> cases[] = {
      {good.substr(0, good.size() / 3), "truncated"},
      {flipped, "checksum mismatch"},
      {"not a checkpoint at all", "bad magic"},
      {std::string(), "bad magic"}};
  int i = 0;
  for (const auto& [bytes, detail] : cases) {
    const std::string f = dir / ("bad" + std::to_string(i++) + ".qtc");
    write_bytes(f, bytes);
    const Result r = run({"train", "--resume", f});
    expect_model_error(r, f, detail);
  }
  expect_model_error(run({"train", "--resume", dir / "missing.qtc"}), dir / "missing.qtc", "cannot open");
}

TEST(CliCheckpoint, FlagChecks) {
  const std::pair<Args, std::string> cases[] = {
      {{"--checkpoint-every", "-1", "--checkpoint", "x.qtc"}, "--checkpoint-every -1 is out of range"},
      {{"--checkpoint-every", "5"}, "--checkpoint-every needs --checkpoint FILE"},
      {{"--stop-after-steps", "5"}, "--stop-after-steps needs --checkpoint FILE"}};
  for (const auto& [extra, detail] : cases) {
    Args a = {"train", "--data", "/nonexistent/qtrain-test-data"};
    a.insert(a.end(), extra.begin(), extra.end());
    const Result r = run(a);
    EXPECT_EQ(r.code, 2) << join(a) << "\n" << r.out;
    EXPECT_NE(r.out.find(detail), std::string::npos) << join(a) << "\n" << r.out;
  }
}

// A far too high learning rate: the run stops with exit code 3, says why and what to do, writes no model, and
// leaves the last good checkpoint loadable.
TEST(CliHealth, DeadRunExitsThreeAndKeepsTheLastGoodCheckpoint) {
  REQUIRE_DATA();
  TempDir dir;
  const Result r = run({"train", "--train-limit", "6400", "--test-limit", "100", "--epochs", "2", "--lr", "99",
                        "--schedule", "constant", "--checkpoint", dir / "run.qtc", "--checkpoint-every", "2", "--save",
                        dir / "model.qtm"});
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_NE(r.out.find("qtrain: training stopped: epoch 1, step"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("every weight gradient was exactly zero"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("The last good checkpoint is " + (dir / "run.qtc")), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Try a lower learning rate: --lr 24.75"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir / "model.qtm"));
  // The checkpoint loads and the run continues from it with a lower learning rate.
  const Result again = run({"train", "--resume", dir / "run.qtc", "--lr", "0.05", "--test-limit", "100",
                            "--stop-after-steps", "60", "--no-health-check"});
  EXPECT_EQ(again.code, 0) << again.out;
  // Without a checkpoint the message says how to keep one.
  const Result plain = run({"train", "--train-limit", "6400", "--test-limit", "100", "--epochs", "1", "--lr", "99",
                            "--schedule", "constant"});
  EXPECT_EQ(plain.code, 3) << plain.out;
  EXPECT_NE(plain.out.find("--checkpoint FILE keeps the last good state"), std::string::npos) << plain.out;
  // --no-health-check lets it run to the end.
  const Result off = run({"train", "--train-limit", "6400", "--test-limit", "100", "--epochs", "1", "--lr", "99",
                          "--schedule", "constant", "--no-health-check"});
  EXPECT_EQ(off.code, 0) << off.out;
}

// A model file whose header names an unknown model kind: exit 2 naming the file (the checksum is fixed up, so the
// header check itself is what rejects it).
TEST(CliModel, UnknownModelKindInHeader) {
  REQUIRE_DATA();
  TempDir dir;
  train_and_save(dir);
  std::string bytes = read_bytes(dir / "model.qtm");
  const std::size_t at = bytes.find("\"name\":\"mlp\"");
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at + 8, 3, "vgg");
  // CRC-32 (IEEE, as zlib) of everything before the last 4 bytes.
  uint32_t crc = 0xFFFFFFFFu;
  for (std::size_t i = 0; i + 4 < bytes.size(); ++i) {
    crc ^= static_cast<uint8_t>(bytes[i]);
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  crc = ~crc;
  std::memcpy(bytes.data() + bytes.size() - 4, &crc, 4);
  const std::string f = dir / "vgg.qtm";
  write_bytes(f, bytes);
  expect_model_error(run({"eval", "--load", f}), f,
                     "unknown model 'vgg': not built in and not registered; call qtrain::register_model(\"vgg\", "
                     "factory) before loading");
}

// ---------------------------------------------------------------------------------------------------------------
// Quantization policies (--policy, qtrain info)

constexpr const char* kMlpPolicy =
    R"({"format": "qtrain-policy", "version": 1, "layers": {"linear1": {"weight_bits": 4, "act_bits": 4,
        "grad_bits": 6, "grad_groups": 0, "granularity": "per_tensor"}}})";

// A model trained with --policy: the policy changes the model, is saved with it (eval gives the training run's
// accuracy, info shows the policy's bits), and a run stopped and resumed from its checkpoint is bit-exact.
TEST(CliPolicy, TrainedWithAPolicySavesLoadsAndResumes) {
  REQUIRE_DATA();
  TempDir dir;
  write_bytes(dir / "p.json", std::string(kMlpPolicy));
  const Result plain = run(ckpt_run({"--save", dir / "plain.qtm"}));
  ASSERT_EQ(plain.code, 0) << plain.out;
  const Result a = run(ckpt_run({"--policy", dir / "p.json", "--save", dir / "a.qtm"}));
  ASSERT_EQ(a.code, 0) << a.out;
  EXPECT_NE(read_bytes(dir / "a.qtm"), read_bytes(dir / "plain.qtm")) << "the policy changed nothing";
  const Result e = run({"eval", "--load", dir / "a.qtm", "--test-limit", "100"});
  ASSERT_EQ(e.code, 0) << e.out;
  EXPECT_EQ(printed_accuracy(e.out), printed_accuracy(a.out)) << a.out << e.out;

  const Result info = run({"info", "--load", dir / "a.qtm"});
  ASSERT_EQ(info.code, 0) << info.out;
  // Columns: layer, module, parameters, bits W/A/G, N_G, act groups, weights, scale.
  EXPECT_TRUE(std::regex_search(info.out, std::regex(R"((^|\n)layer +module +parameters +bits W/A/G +N_G)"))) << info.out;
  EXPECT_TRUE(std::regex_search(
      info.out, std::regex(R"(\nlinear1 +Linear\(256->128.*\) +linear1\.weight 128x256, linear1\.bias 1x128 +4/4/6 +3 +4 )"
                           R"(+per_tensor +mse\n)")))
      << info.out;
  EXPECT_NE(info.out.find("per_tensor"), std::string::npos) << info.out;
  const Result ij = run({"info", "--load", dir / "a.qtm", "--json"});
  ASSERT_EQ(ij.code, 0) << ij.out;
  const auto layers = nlohmann::json::parse(ij.out)["layers"];
  ASSERT_EQ(layers.size(), 3u) << ij.out;
  for (const auto& l : layers) {
    const bool named = l["name"] == "linear1";
    EXPECT_EQ(l["weight_bits"], 4) << l;  // --bits 4 everywhere; the policy keeps linear1's at 4
    EXPECT_EQ(l["grad_bits"], named ? 6 : 4) << l;
    EXPECT_EQ(l["granularity"], named ? "per_tensor" : "per_channel") << l;
  }
  EXPECT_EQ(layers[1]["params"][0]["rows"], 128) << ij.out;

  // Stop mid-run and resume: the same model file; --policy with another file is refused.
  const Result s =
      run(ckpt_run({"--policy", dir / "p.json", "--checkpoint", dir / "run.qtc", "--stop-after-steps", "27"}));
  ASSERT_EQ(s.code, 0) << s.out;
  const Result b = run({"train", "--resume", dir / "run.qtc", "--test-limit", "100", "--save", dir / "b.qtm"});
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_TRUE(read_bytes(dir / "a.qtm") == read_bytes(dir / "b.qtm")) << "resumed model differs";
  write_bytes(dir / "other.json", std::string(R"({"format": "qtrain-policy", "version": 1})"));
  const Result c = run({"train", "--resume", dir / "run.qtc", "--policy", dir / "other.json"});
  EXPECT_EQ(c.code, 2) << c.out;
  EXPECT_NE(c.out.find("--policy"), std::string::npos) << c.out;
}

// Every bad policy: exit 2 with one line naming the file, the key and the valid values.
TEST(CliPolicy, BadPoliciesExitTwoNamingFileKeyAndValidValues) {
  REQUIRE_DATA();
  TempDir dir;
  const std::pair<std::string, std::string> cases[] = {
      {R"({"format": "qtrain-policy", "version": 1, "layers": {"conv7": {"weight_bits": 4}}})",
       "layers.conv7: the model has no quantized layer 'conv7'; valid layer names: linear0, linear1, linear2"},
      {R"({"format": "qtrain-policy", "version": 1, "layers": {"linear0": {"act_bits": 9}}})",
       "layers.linear0.act_bits must be an integer in 2..8"},
      {R"({"format": "qtrain-policy", "version": 1, "layers": {"linear0": {"granularity": "per_row"}}})",
       "layers.linear0.granularity: unknown granularity 'per_row'; valid granularities: per_channel, per_tensor"},
      {R"({"format": "qtrain-policy", "version": 3})",
       "version: policy format version 3 is not supported; this qtrain reads version 1"},
      {R"({"format": "qtrain-policy", "version": 1, "layers": {"linear1": {"grad_bits": 8, "grad_groups": 2}}})",
       "layers.linear1.grad_groups: N_G=2 is out of range 1..1 for 8-bit gradients"},
  };
  for (const auto& [text, detail] : cases) {
    const std::string f = dir / "bad.json";
    write_bytes(f, text);
    const Result r = run(tiny_train({"--policy", f}));
    expect_model_error(r, f, detail);
  }
  expect_model_error(run(tiny_train({"--policy", dir / "missing.json"})), dir / "missing.json", "missing.json");
}

TEST(CliPolicy, InfoWithoutPolicyShowsTheModelsOwnBits) {
  REQUIRE_DATA();
  TempDir dir;
  train_and_save(dir);
  const Result r = run({"info", "--load", dir / "model.qtm"});
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(lines_of(r.out).size(), 5u) << r.out;  // the model line, the column heads and three layers
  EXPECT_TRUE(std::regex_search(
      r.out, std::regex(R"(\nlinear0 +Linear.* +linear0\.weight 256x784, linear0\.bias 1x256 +8/8/8 +1 +1 +per_channel )")))
      << r.out;
  expect_model_error(run({"info", "--load", dir / "none.qtm"}), dir / "none.qtm", "none.qtm");
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// The Vision Transformer (--model vit): learns, is bit-exact over threads, targets and a stop-and-resume, and
// refuses bad shapes.

namespace {

TEST(CliVit, LearnsFashionMnistInAShortRun) {
  REQUIRE_DATA();
  const Result r = run({"train", "--model", "vit", "--train-limit", "2000", "--test-limit", "500", "--epochs", "2",
                        "--threads", "2"});
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string acc = printed_accuracy(r.out);
  ASSERT_FALSE(acc.empty()) << r.out;
  EXPECT_GT(std::stod(acc), 50.0) << "a ViT on 2000 images, 2 epochs, learns well above chance (10%): " << r.out;
}

TEST(CliVit, TwoStepsAreByteIdenticalOverThreadsAndTargets) {
  REQUIRE_DATA();
  expect_identical_over_targets_and_threads({"train", "--model", "vit", "--bits", "6", "--depth", "2", "--epochs",
                                             "1", "--train-limit", "128", "--batch", "64", "--test-limit", "64"});
}

TEST(CliVit, StopAndResumeGivesTheSameModel) {
  REQUIRE_DATA();
  TempDir dir;
  const Args base = {"train", "--model", "vit", "--depth", "2", "--mlp-act", "relu", "--train-limit", "256",
                     "--test-limit", "64", "--epochs", "2", "--batch", "32"};
  Args a = base;
  a.insert(a.end(), {"--save", dir / "a.qtm"});
  ASSERT_EQ(run(a).code, 0);
  Args s = base;
  s.insert(s.end(), {"--checkpoint", dir / "run.qtc", "--stop-after-steps", "11"});
  ASSERT_EQ(run(s).code, 0);
  const Result b = run({"train", "--resume", dir / "run.qtc", "--threads", "2", "--save", dir / "b.qtm"});
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_TRUE(read_bytes(dir / "a.qtm") == read_bytes(dir / "b.qtm")) << "resumed ViT differs";
}

// --optimizer adamw (integer AdamW) with the warm-up + cosine schedule: learns; a ViT run stopped and resumed on
// another thread count gives the same model bytes; the same bits over SIMD targets and threads; a resumed run
// refuses changed AdamW settings.
TEST(CliAdamW, MlpLearnsWithWarmupCosine) {
  REQUIRE_DATA();
  const Result r = run({"train", "--optimizer", "adamw", "--lr", "2e-3", "--schedule", "warmup-cosine",
                        "--warmup-epochs", "0.5", "--train-limit", "2000", "--test-limit", "500", "--epochs", "2"});
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string acc = printed_accuracy(r.out);
  ASSERT_FALSE(acc.empty()) << r.out;
  EXPECT_GT(std::stod(acc), 70.0) << "AdamW on 2000 images, 2 epochs: " << r.out;
}

TEST(CliAdamW, VitStopAndResumeGivesTheSameModel) {
  REQUIRE_DATA();
  TempDir dir;
  const Args base = {"train", "--model", "vit", "--depth", "1", "--optimizer", "adamw", "--lr", "1e-3",
                     "--schedule", "warmup-cosine", "--warmup-epochs", "1", "--wd", "0.1", "--train-limit", "256",
                     "--test-limit", "64", "--epochs", "2", "--batch", "32"};
  Args a = base;
  a.insert(a.end(), {"--save", dir / "a.qtm"});
  ASSERT_EQ(run(a).code, 0);
  Args s = base;
  s.insert(s.end(), {"--checkpoint", dir / "run.qtc", "--stop-after-steps", "5"});
  ASSERT_EQ(run(s).code, 0);
  for (const Args& extra : {Args{"--wd", "0.05"}, Args{"--beta2", "0.99"}, Args{"--optimizer", "sgd"},
                            Args{"--warmup-epochs", "0.5"}}) {
    Args r = {"train", "--resume", dir / "run.qtc"};
    r.insert(r.end(), extra.begin(), extra.end());
    const Result refused = run(r);
    EXPECT_EQ(refused.code, 2) << join(r) << "\n" << refused.out;
    EXPECT_NE(refused.out.find(extra[0] + " " + extra[1] + " differs from the checkpoint's"), std::string::npos)
        << refused.out;
  }
  const Result b = run({"train", "--resume", dir / "run.qtc", "--threads", "2", "--save", dir / "b.qtm"});
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_TRUE(read_bytes(dir / "a.qtm") == read_bytes(dir / "b.qtm")) << "resumed AdamW run differs";
}

TEST(CliAdamW, TwoStepsAreByteIdenticalOverThreadsAndTargets) {
  REQUIRE_DATA();
  expect_identical_over_targets_and_threads({"train", "--optimizer", "adamw", "--lr", "1e-3", "--bits", "4",
                                             "--epochs", "1", "--train-limit", "128", "--batch", "64",
                                             "--test-limit", "64"});
}

// --pool cls: a class token instead of mean pooling; the same bits over targets and threads, and the saved model
// evaluates to the printed accuracy.
TEST(CliVit, ClassTokenIsByteIdenticalOverThreadsAndTargetsAndEvaluates) {
  REQUIRE_DATA();
  expect_identical_over_targets_and_threads({"train", "--model", "vit", "--pool", "cls", "--depth", "1", "--epochs",
                                             "1", "--train-limit", "128", "--batch", "64", "--test-limit", "64"});
  TempDir dir;
  const Result t = run({"train", "--model", "vit", "--pool", "cls", "--depth", "1", "--train-limit", "640",
                        "--test-limit", "200", "--epochs", "1", "--save", dir / "m.qtm"});
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_NE(t.out.find("gelu cls"), std::string::npos) << t.out;
  const Result e = run({"eval", "--load", dir / "m.qtm", "--test-limit", "200"});
  ASSERT_EQ(e.code, 0) << e.out;
  EXPECT_EQ(printed_accuracy(e.out), printed_accuracy(t.out));
}

TEST(CliVit, BadShapesAreUsageErrors) {
  const std::pair<Args, std::string> cases[] = {
      {{"train", "--model", "vit", "--patch", "5"}, "--patch 5 must divide the image sides 28x28"},
      {{"train", "--model", "vit", "--heads", "3"}, "--heads 3 must divide --dim 64"},
      {{"train", "--model", "vit", "--attn-bits", "9"}, "attention bit-width 9 is out of range 2..8"},
      {{"train", "--model", "vit", "--mlp-act", "tanh"}, "--mlp-act: unknown activation 'tanh'"},
      {{"train", "--model", "vit", "--pool", "max"}, "--pool: unknown pooling 'max'; valid: mean, cls"},
      {{"train", "--model", "cnn", "--pool", "cls"}, "--pool sets the vision transformer's shape"},
      {{"train", "--model", "mlp", "--depth", "2"}, "--depth sets the vision transformer's shape"},
  };
  for (const auto& [args, message] : cases) {
    const Result r = run(args);
    EXPECT_EQ(r.code, 2) << r.out;
    EXPECT_NE(r.out.find(message), std::string::npos) << r.out;
  }
}

}  // namespace
