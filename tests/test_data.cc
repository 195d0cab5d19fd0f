// Tests for engine/data: IDX reading (raw and gzip, every kind of bad input), pixel normalization, batching.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <numeric>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "qtrain/engine/data/batcher.h"
#include "qtrain/engine/data/cifar.h"
#include "qtrain/engine/data/idx.h"
#include "qtrain/engine/data/in_memory.h"
#include "qtrain/engine/data/normalize.h"
#include "qtrain/engine/io/serialize.h"
#include "qtrain/engine/models/model.h"
#include "qtrain/engine/train/trainer.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/rng.h"

namespace qtrain::data {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

void put_u32(Bytes& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
}

Bytes idx_images(uint32_t count, uint32_t rows, uint32_t cols, const Bytes& pixels, uint32_t magic = 0x00000803) {
  Bytes b;
  put_u32(b, magic);
  put_u32(b, count);
  put_u32(b, rows);
  put_u32(b, cols);
  b.insert(b.end(), pixels.begin(), pixels.end());
  return b;
}

Bytes idx_labels(uint32_t count, const Bytes& labels, uint32_t magic = 0x00000801) {
  Bytes b;
  put_u32(b, magic);
  put_u32(b, count);
  b.insert(b.end(), labels.begin(), labels.end());
  return b;
}

// IDX label bytes as the int32 labels an ImageSet holds.
std::vector<int32_t> as_labels(const Bytes& bytes) { return {bytes.begin(), bytes.end()}; }

// A valid 5-image 3×4 set: pixel j of image i is (37·i + 11·j) mod 256; labels 0, 3, 9, 1, 7.
constexpr uint32_t kCount = 5, kRows = 3, kCols = 4;
Bytes five_pixels() {
  Bytes p(kCount * kRows * kCols);
  for (std::size_t i = 0; i < kCount; ++i)
    for (std::size_t j = 0; j < kRows * kCols; ++j) p[i * kRows * kCols + j] = static_cast<uint8_t>(37 * i + 11 * j);
  return p;
}
const Bytes kFiveLabels = {0, 3, 9, 1, 7};

// A fresh directory under the system temporary directory, removed at the end of each test.
class DataFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> serial{0};
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("qtrain_test_data_" + std::to_string(::getpid()) + "_" + std::to_string(serial++) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string write_raw(const std::string& name, const Bytes& bytes) {
    const std::string path = (dir_ / name).string();
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    EXPECT_TRUE(out.good()) << path;
    return path;
  }
  std::string write_gz(const std::string& name, const Bytes& bytes) {
    const std::string path = (dir_ / name).string();
    gzFile f = gzopen(path.c_str(), "wb9");
    EXPECT_NE(f, nullptr) << path;
    if (!bytes.empty()) {
      EXPECT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
    }
    EXPECT_EQ(gzclose(f), Z_OK);
    return path;
  }
  static Bytes slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

  fs::path dir_;
};

// Runs fn, expects an InputError whose one-line message contains every one of `parts`.
void expect_input_error(const std::function<void()>& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "no InputError thrown";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (const auto& part : parts)
      EXPECT_NE(msg.find(part), std::string::npos) << "missing '" << part << "' in: " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

void expect_five(const ImageSet& s) {
  EXPECT_EQ(s.count, kCount);
  EXPECT_EQ(s.rows, kRows);
  EXPECT_EQ(s.cols, kCols);
  EXPECT_EQ(s.classes, 10u);
  EXPECT_EQ(s.pixels, five_pixels());
  EXPECT_EQ(s.labels, as_labels(kFiveLabels));
}

// ---------------------------------------------------------------------------------------------------------------
// Valid files

TEST_F(DataFiles, RoundTripRaw) {
  const auto img = write_raw("img", idx_images(kCount, kRows, kCols, five_pixels()));
  const auto lab = write_raw("lab", idx_labels(kCount, kFiveLabels));
  expect_five(read_idx(img, lab));
}

TEST_F(DataFiles, RoundTripGzip) {
  const auto img = write_gz("img.gz", idx_images(kCount, kRows, kCols, five_pixels()));
  const auto lab = write_gz("lab.gz", idx_labels(kCount, kFiveLabels));
  expect_five(read_idx(img, lab));
}

TEST_F(DataFiles, LoadDirPrefersGzipAndFallsBackToRaw) {
  // train: .gz valid, raw copies corrupt → the .gz must be the ones read.
  write_gz("train-images-idx3-ubyte.gz", idx_images(kCount, kRows, kCols, five_pixels()));
  write_gz("train-labels-idx1-ubyte.gz", idx_labels(kCount, kFiveLabels));
  write_raw("train-images-idx3-ubyte", Bytes{1, 2, 3});
  write_raw("train-labels-idx1-ubyte", Bytes{1, 2, 3});
  expect_five(load_mnist_dir(dir_.string(), Split::kTrain));
  // test: raw only.
  write_raw("t10k-images-idx3-ubyte", idx_images(kCount, kRows, kCols, five_pixels()));
  write_raw("t10k-labels-idx1-ubyte", idx_labels(kCount, kFiveLabels));
  expect_five(load_mnist_dir(dir_.string(), Split::kTest));
}

TEST_F(DataFiles, TakeFirst) {
  const auto img = write_raw("img", idx_images(kCount, kRows, kCols, five_pixels()));
  const auto lab = write_raw("lab", idx_labels(kCount, kFiveLabels));
  const ImageSet all = read_idx(img, lab);
  const ImageSet two = take_first(all, 2);
  EXPECT_EQ(two.count, 2u);
  EXPECT_EQ(two.rows, kRows);
  EXPECT_EQ(two.cols, kCols);
  EXPECT_EQ(two.pixels, Bytes(all.pixels.begin(), all.pixels.begin() + 2 * kRows * kCols));
  EXPECT_EQ(two.labels, (std::vector<int32_t>{0, 3}));
  EXPECT_EQ(take_first(all, 100).count, kCount);
  EXPECT_EQ(take_first(all, 0).pixels.size(), 0u);
}

// ---------------------------------------------------------------------------------------------------------------
// Bad input: each is an InputError naming the file and the byte offset

TEST_F(DataFiles, BadMagic) {
  const auto lab = write_raw("lab", idx_labels(kCount, kFiveLabels));
  const auto img = write_raw("bad-images", idx_images(kCount, kRows, kCols, five_pixels(), 0x00000804));
  expect_input_error([&] { read_idx(img, lab); },
                     {img + ": byte 0: bad magic 0x00000804, expected 0x00000803 (IDX unsigned-byte images)"});
  const auto imggz = write_gz("bad-images.gz", idx_images(kCount, kRows, kCols, five_pixels(), 0x00000804));
  expect_input_error([&] { read_idx(imggz, lab); }, {imggz + ": byte 0 of the decompressed stream: bad magic"});
  // Files swapped: says which kind of file it is.
  expect_input_error([&] { read_idx(lab, img); }, {lab + ": byte 0:", "this is an IDX labels file"});
  const auto img_ok = write_raw("img", idx_images(kCount, kRows, kCols, five_pixels()));
  expect_input_error([&] { read_idx(img_ok, img_ok); },
                     {img_ok + ": byte 0: bad magic 0x00000803, expected 0x00000801", "images file"});
}

TEST_F(DataFiles, ZeroDimensions) {
  const auto lab = write_raw("lab", idx_labels(kCount, kFiveLabels));
  const auto img0 = write_raw("img-count0", idx_images(0, 28, 28, {}));
  expect_input_error([&] { read_idx(img0, lab); }, {img0 + ": byte 4: dimensions 0×28×28 are invalid"});
  const auto img1 = write_raw("img-rows0", idx_images(5, 0, 28, {}));
  expect_input_error([&] { read_idx(img1, lab); }, {img1 + ": byte 8: dimensions 5×0×28 are invalid"});
  const auto img2 = write_raw("img-cols0", idx_images(5, 28, 0, {}));
  expect_input_error([&] { read_idx(img2, lab); }, {img2 + ": byte 12: dimensions 5×28×0 are invalid"});
}

TEST_F(DataFiles, HugeDimensionsRefusedBeforeAllocating) {
  const auto lab = write_raw("lab", idx_labels(kCount, kFiveLabels));
  const auto img = write_raw("img-huge", idx_images(100000, 1000, 1000, {}));
  expect_input_error([&] { read_idx(img, lab); }, {img + ": byte 4: dimensions 100000×1000×1000 are invalid", "2^28"});
  // The product of three 32-bit dimensions overflows 64 bits if computed naively.
  const auto img2 = write_raw("img-overflow", idx_images(0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, {}));
  expect_input_error([&] { read_idx(img2, lab); }, {img2 + ": byte 4: dimensions", "2^28"});
  // Just above the limit.
  const auto img3 = write_raw("img-limit", idx_images((1u << 28) / 16 + 1, 4, 4, {}));
  expect_input_error([&] { read_idx(img3, lab); }, {img3 + ": byte 4:", "2^28"});
}

TEST_F(DataFiles, ShortFiles) {
  const auto lab = write_raw("lab", idx_labels(kCount, kFiveLabels));
  Bytes short_pixels = five_pixels();
  short_pixels.resize(50);
  const auto img = write_raw("img-short", idx_images(kCount, kRows, kCols, short_pixels));
  expect_input_error([&] { read_idx(img, lab); }, {img + ": byte 16: file ends after 50 of 60 pixel bytes (truncated"});
  const auto imggz = write_gz("img-short.gz", idx_images(kCount, kRows, kCols, short_pixels));
  expect_input_error([&] { read_idx(imggz, lab); },
                     {imggz + ": byte 16 of the decompressed stream: file ends after 50 of 60 pixel bytes"});
  // Header cut inside the rows field.
  Bytes header = idx_images(kCount, kRows, kCols, {});
  header.resize(10);
  const auto imgh = write_raw("img-header", header);
  expect_input_error([&] { read_idx(imgh, lab); }, {imgh + ": byte 8: file ends after 2 of 4 header bytes"});
  const auto empty = write_raw("img-empty", {});
  expect_input_error([&] { read_idx(empty, lab); }, {empty + ": byte 0: file ends after 0 of 4 header bytes"});
  // Labels cut short.
  const auto img_ok = write_raw("img", idx_images(kCount, kRows, kCols, five_pixels()));
  const auto lab_short = write_raw("lab-short", idx_labels(kCount, Bytes{0, 1, 2}));
  expect_input_error([&] { read_idx(img_ok, lab_short); },
                     {lab_short + ": byte 8: file ends after 3 of 5 label bytes (truncated"});
}

TEST_F(DataFiles, TruncatedGzipStream) {
  const auto lab = write_raw("lab", idx_labels(kCount, kFiveLabels));
  const auto full = write_gz("full.gz", idx_images(kCount, kRows, kCols, five_pixels()));
  Bytes gz = slurp(full);
  gz.resize(gz.size() / 2);
  const auto img = write_raw("cut.gz", gz);
  expect_input_error([&] { read_idx(img, lab); }, {img + ": byte ", "of the decompressed stream", "truncated"});
}

TEST_F(DataFiles, CorruptGzipStream) {
  const auto lab = write_raw("lab", idx_labels(kCount, kFiveLabels));
  const auto full = write_gz("full.gz", idx_images(kCount, kRows, kCols, five_pixels()));
  // A wrong CRC-32 in the trailer: the data decompresses, the check fails.
  Bytes crc = slurp(full);
  crc[crc.size() - 8] ^= 0xFF;
  const auto img1 = write_raw("crc.gz", crc);
  expect_input_error(
      [&] { read_idx(img1, lab); },
      {img1 + ": byte ", " of the decompressed stream: corrupt gzip stream (zlib: incorrect data check"});
  // Garbage in the deflate data: an invalid block type (BTYPE = 11).
  Bytes bad = slurp(full);
  bad[10] = 0xFF;
  const auto img2 = write_raw("garbage.gz", bad);
  expect_input_error([&] { read_idx(img2, lab); },
                     {img2 + ": byte 0 of the decompressed stream: corrupt gzip stream (zlib: "});
}

TEST_F(DataFiles, LabelOutOfRange) {
  const auto img = write_raw("img", idx_images(kCount, kRows, kCols, five_pixels()));
  const auto lab = write_raw("lab-bad", idx_labels(kCount, Bytes{0, 1, 12, 3, 4}));
  expect_input_error([&] { read_idx(img, lab); }, {lab + ": byte 10: label 12 at index 2 is out of range 0..9"});
  const auto lab2 = write_raw("lab-bad2", idx_labels(kCount, Bytes{0, 1, 2, 3, 10}));
  expect_input_error([&] { read_idx(img, lab2); }, {lab2 + ": byte 12: label 10 at index 4 is out of range 0..9"});
}

TEST_F(DataFiles, CountMismatch) {
  const auto img = write_raw("img", idx_images(kCount, kRows, kCols, five_pixels()));
  const auto lab = write_raw("lab-4", idx_labels(4, Bytes{0, 1, 2, 3}));
  expect_input_error([&] { read_idx(img, lab); }, {lab + ": byte 4: holds 4 labels but", "5 images", "mismatch"});
}

TEST_F(DataFiles, TrailingBytes) {
  Bytes pixels = five_pixels();
  pixels.insert(pixels.end(), {1, 2, 3});
  const auto lab = write_raw("lab", idx_labels(kCount, kFiveLabels));
  const auto img = write_raw("img-trailing", idx_images(kCount, kRows, kCols, pixels));
  expect_input_error([&] { read_idx(img, lab); }, {img + ": byte 76: unexpected data after", "3 trailing bytes"});
  const auto imggz = write_gz("img-trailing.gz", idx_images(kCount, kRows, kCols, pixels));
  expect_input_error([&] { read_idx(imggz, lab); }, {imggz + ": byte 76 of the decompressed stream: unexpected data"});
  const auto img_ok = write_raw("img", idx_images(kCount, kRows, kCols, five_pixels()));
  Bytes labels = kFiveLabels;
  labels.push_back(0);
  const auto lab2 = write_raw("lab-trailing", idx_labels(kCount, labels));
  expect_input_error([&] { read_idx(img_ok, lab2); }, {lab2 + ": byte 13: unexpected data after"});
}

TEST_F(DataFiles, MissingDirectoryAndFiles) {
  const std::string nodir = (dir_ / "does-not-exist").string();
  expect_input_error(
      [&] { load_mnist_dir(nodir, Split::kTrain); },
      {"data directory '" + nodir + "' has no Fashion-MNIST/MNIST IDX files (", "train-images-idx3-ubyte.gz",
       "sudo apt-get install dataset-fashion-mnist — or pass --data DIR", "does not exist"});
  write_gz("t10k-images-idx3-ubyte.gz", idx_images(kCount, kRows, kCols, five_pixels()));
  expect_input_error([&] { load_mnist_dir(dir_.string(), Split::kTest); },
                     {"data directory '" + dir_.string() + "'", "t10k-labels-idx1-ubyte.gz", "dataset-fashion-mnist"});
  const std::string nofile = (dir_ / "no-such-file").string();
  expect_input_error([&] { read_idx(nofile, nofile); }, {nofile + ": cannot open (No such file or directory)"});
}

// ---------------------------------------------------------------------------------------------------------------
// Pixel normalization

ImageSet synthetic_set(std::size_t count, std::size_t rows, std::size_t cols, uint64_t seed) {
  ImageSet s;
  s.count = count;
  s.rows = rows;
  s.cols = cols;
  s.pixels.resize(count * rows * cols);
  s.labels.resize(count);
  const quant::CounterRng rng(seed, 0);
  // Skewed like real images: many dark pixels, a spread of bright ones.
  for (std::size_t i = 0; i < s.pixels.size(); ++i) {
    const uint32_t u = rng.u32(i);
    s.pixels[i] = (u & 1) ? 0 : static_cast<uint8_t>((u >> 8) % 256);
  }
  for (std::size_t i = 0; i < count; ++i) s.labels[i] = static_cast<int32_t>(rng.below(1000000 + i, 10));
  return s;
}

TEST(PixelNorm, TableWithinHalfUnitAndExponentMinimal) {
  const ImageSet s = synthetic_set(200, 7, 9, 42);
  const PixelNorm n = fit_pixel_norm(s);
  // The statistics, computed directly.
  double sum = 0, sq = 0;
  for (const uint8_t p : s.pixels) sum += p / 255.0;
  const double mean = sum / static_cast<double>(s.pixels.size());
  for (const uint8_t p : s.pixels) sq += (p / 255.0 - mean) * (p / 255.0 - mean);
  const double sd = std::sqrt(sq / static_cast<double>(s.pixels.size()));
  ASSERT_EQ(n.channels.size(), 1u);
  const auto& table = n.channels[0].table;
  EXPECT_NEAR(n.channels[0].mean, mean, 1e-12);
  EXPECT_NEAR(n.channels[0].stddev, sd, 1e-12);
  // Smallest e with max(|x(0)|, |x(255)|) ≤ 127·2^e.
  const double bound = std::max(std::fabs(mean / sd), std::fabs((1 - mean) / sd));
  EXPECT_LE(bound, 127.0 * std::ldexp(1.0, n.exponent));
  EXPECT_GT(bound, 127.0 * std::ldexp(1.0, n.exponent - 1));
  const double ulp = std::ldexp(1.0, n.exponent);
  for (int p = 0; p < 256; ++p) {
    const double x = (p / 255.0 - mean) / sd;
    EXPECT_LE(std::fabs(table[p] * ulp - x), 0.5 * ulp + 1e-12) << "p=" << p;
    EXPECT_GE(table[p], -127);
  }
  // Normalized data has mean ≈ 0 (within the rounding of the table).
  double norm_sum = 0;
  for (const uint8_t p : s.pixels) norm_sum += table[p] * ulp;
  EXPECT_LE(std::fabs(norm_sum / static_cast<double>(s.pixels.size())), 0.5 * ulp);
}

TEST(PixelNorm, KnownValues) {
  // Half 0, half 255: mean 0.5, std 0.5, x ∈ {−1, +1}; smallest e with 1 ≤ 127·2^e is −6 → ±64.
  ImageSet s;
  s.count = 1;
  s.rows = 1;
  s.cols = 4;
  s.pixels = {0, 255, 0, 255};
  s.labels = {0};
  const PixelNorm n = fit_pixel_norm(s);
  ASSERT_EQ(n.channels.size(), 1u);
  const ChannelNorm& c = n.channels[0];
  EXPECT_DOUBLE_EQ(c.mean, 0.5);
  EXPECT_DOUBLE_EQ(c.stddev, 0.5);
  EXPECT_EQ(n.exponent, -6);
  EXPECT_EQ(c.table[0], -64);
  EXPECT_EQ(c.table[255], 64);
  EXPECT_EQ(c.table[128], 0);  // (128/255 − 0.5)/0.5 · 64 = 0.25 → 0
  // Rebuilding from the recorded statistics gives the same table.
  const PixelNorm m = make_pixel_norm({c.mean}, {c.stddev});
  EXPECT_EQ(m.exponent, n.exponent);
  EXPECT_EQ(m.channels[0].table, c.table);
}

TEST(PixelNorm, DegenerateInputs) {
  ImageSet s;
  s.count = 1;
  s.rows = 2;
  s.cols = 2;
  s.pixels = {7, 7, 7, 7};
  s.labels = {0};
  EXPECT_THROW(fit_pixel_norm(s), InputError);
  EXPECT_THROW(fit_pixel_norm(ImageSet{}), InputError);
  EXPECT_THROW(make_pixel_norm({0.5}, {0.0}), InputError);
  EXPECT_THROW(make_pixel_norm({NAN}, {1.0}), InputError);
  EXPECT_THROW(make_pixel_norm({0.5}, {1e-320}), InputError);
  EXPECT_THROW(make_pixel_norm({}, {}), InputError);
  EXPECT_THROW(make_pixel_norm({0.5, 0.5}, {0.25}), InputError);
  EXPECT_THROW(make_pixel_norm({0.5, 0.5}, {0.25, -1.0}), InputError);
}

// ---------------------------------------------------------------------------------------------------------------
// Batcher

static_assert(!std::is_constructible_v<Batcher, ImageSet&&, const PixelNorm&, std::size_t, uint64_t, bool, bool>,
              "a Batcher must not bind to a temporary ImageSet");

// The reference order: Fisher–Yates as specified in batcher.h.
std::vector<uint32_t> reference_order(std::size_t n, uint64_t seed, uint64_t epoch) {
  std::vector<uint32_t> o(n);
  std::iota(o.begin(), o.end(), 0u);
  const quant::CounterRng rng(seed, quant::StreamKey{.purpose = quant::Purpose::kShuffle, .step = epoch});
  for (std::size_t i = n; i-- > 1;) std::swap(o[i], o[rng.below(i, static_cast<uint32_t>(i + 1))]);
  return o;
}

std::vector<uint32_t> order_of(const Batcher& b) { return {b.order().begin(), b.order().end()}; }

TEST(Batcher, EpochOrderIsASeededPermutation) {
  const ImageSet s = synthetic_set(103, 2, 3, 1);
  const PixelNorm n = fit_pixel_norm(s);
  Batcher b(s, n, 10, 1234, /*shuffle=*/true, /*drop_last=*/false);
  std::vector<std::vector<uint32_t>> epochs;
  for (uint64_t e = 0; e < 4; ++e) {
    b.start_epoch(e);
    EXPECT_EQ(b.epoch(), e);
    auto o = order_of(b);
    EXPECT_EQ(o, reference_order(103, 1234, e));
    auto sorted = o;
    std::sort(sorted.begin(), sorted.end());
    std::vector<uint32_t> iota(103);
    std::iota(iota.begin(), iota.end(), 0u);
    EXPECT_EQ(sorted, iota) << "epoch " << e << " is not a permutation";
    EXPECT_NE(o, iota);
    epochs.push_back(o);
  }
  for (std::size_t i = 0; i < epochs.size(); ++i)
    for (std::size_t j = i + 1; j < epochs.size(); ++j) EXPECT_NE(epochs[i], epochs[j]) << i << " vs " << j;
  // Same seed and epoch → same order, whatever came before (a fresh Batcher, epochs visited out of order).
  Batcher c(s, n, 7, 1234, true, true);
  c.start_epoch(2);
  EXPECT_EQ(order_of(c), epochs[2]);
  b.start_epoch(1);
  EXPECT_EQ(order_of(b), epochs[1]);
  // Another seed → another order.
  Batcher d(s, n, 10, 1235, true, false);
  EXPECT_NE(order_of(d), epochs[0]);
  // No shuffling → file order every epoch.
  Batcher f(s, n, 10, 1234, false, false);
  f.start_epoch(3);
  std::vector<uint32_t> iota(103);
  std::iota(iota.begin(), iota.end(), 0u);
  EXPECT_EQ(order_of(f), iota);
}

TEST(Batcher, FillAndLastBatch) {
  const ImageSet s = synthetic_set(103, 2, 3, 2);
  const PixelNorm n = fit_pixel_norm(s);
  for (const bool drop_last : {false, true}) {
    Batcher b(s, n, 10, 99, true, drop_last);
    b.start_epoch(5);
    EXPECT_EQ(b.image_size(), 6u);
    EXPECT_EQ(b.batches(), drop_last ? 10u : 11u);
    std::vector<int8_t> images(10 * 6, 0x55);
    std::vector<int32_t> labels(10, 0xEE);
    std::vector<uint32_t> seen;
    for (std::size_t k = 0; k < b.batches(); ++k) {
      std::fill(labels.begin(), labels.end(), 0xEE);
      const std::size_t got = b.fill(k, images.data(), labels.data());
      EXPECT_EQ(got, k == 10 ? 3u : 10u);
      const auto idx = b.batch_indices(k);
      ASSERT_EQ(idx.size(), got);
      for (std::size_t i = 0; i < got; ++i) {
        seen.push_back(idx[i]);
        EXPECT_EQ(labels[i], s.labels[idx[i]]);
        for (std::size_t j = 0; j < 6; ++j) EXPECT_EQ(images[i * 6 + j], n.channels[0].table[s.pixels[idx[i] * 6 + j]]);
      }
      if (got < 10) {
        EXPECT_EQ(labels[got], 0xEE) << "wrote past the short batch";
      }
    }
    EXPECT_EQ(seen.size(), drop_last ? 100u : 103u);
    auto o = order_of(b);
    EXPECT_TRUE(std::equal(seen.begin(), seen.end(), o.begin()));
    EXPECT_THROW(b.fill(b.batches(), images.data(), labels.data()), UsageError);
    EXPECT_EQ(b.fill(0, images.data(), nullptr), 10u);  // labels optional
  }
  // Exact multiple: no short batch either way; batch larger than the set.
  const ImageSet s100 = take_first(s, 100);
  EXPECT_EQ(Batcher(s100, n, 10, 1, true, false).batches(), 10u);
  EXPECT_EQ(Batcher(s100, n, 10, 1, true, true).batches(), 10u);
  EXPECT_EQ(Batcher(s100, n, 128, 1, true, false).batches(), 1u);
  EXPECT_EQ(Batcher(s100, n, 128, 1, true, true).batches(), 0u);
  EXPECT_THROW(Batcher(s100, n, 0, 1, true, false), UsageError);
}

TEST(Batcher, ConcurrentFillIsConsistent) {
  const ImageSet s = synthetic_set(512, 8, 8, 3);
  const PixelNorm n = fit_pixel_norm(s);
  const Batcher b(s, n, 32, 7, true, false);
  std::vector<int8_t> serial(512 * 64), parallel(512 * 64);
  for (std::size_t k = 0; k < b.batches(); ++k) b.fill(k, serial.data() + k * 32 * 64, nullptr);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (std::size_t k = static_cast<std::size_t>(t); k < b.batches(); k += 4)
        b.fill(k, parallel.data() + k * 32 * 64, nullptr);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(serial, parallel);
}

// ---------------------------------------------------------------------------------------------------------------
// CIFAR-10 binary files (generated: the real set is not packaged)

// Byte of channel c (0 R, 1 G, 2 B) at position p (= row·32 + col) of the k-th record written by cifar_file.
uint8_t cifar_value(std::size_t k, std::size_t c, std::size_t p) {
  return static_cast<uint8_t>(7 * k + 101 * c + 3 * p);
}

// Records first..first+n−1 in the file layout: label, then the R, G and B planes.
Bytes cifar_records(std::size_t first, std::size_t n, const Bytes& labels) {
  Bytes b;
  for (std::size_t k = first; k < first + n; ++k) {
    b.push_back(labels[k - first]);
    for (std::size_t c = 0; c < 3; ++c)
      for (std::size_t p = 0; p < 1024; ++p) b.push_back(cifar_value(k, c, p));
  }
  return b;
}

TEST_F(DataFiles, CifarRoundTripIsHwc) {
  // Train: five files of 2, 1, 3, 1, 2 records (9 in all); test: 3 records.
  const std::size_t per_file[5] = {2, 1, 3, 1, 2};
  const Bytes train_labels = {0, 1, 2, 3, 4, 5, 6, 7, 9}, test_labels = {9, 8, 0};
  std::size_t first = 0;
  for (int f = 0; f < 5; ++f) {
    const Bytes labels(train_labels.begin() + static_cast<std::ptrdiff_t>(first),
                       train_labels.begin() + static_cast<std::ptrdiff_t>(first + per_file[f]));
    write_raw("data_batch_" + std::to_string(f + 1) + ".bin", cifar_records(first, per_file[f], labels));
    first += per_file[f];
  }
  write_raw("test_batch.bin", cifar_records(0, 3, test_labels));

  const ImageSet train = load_cifar10_dir(dir_.string(), Split::kTrain);
  EXPECT_EQ(train.count, 9u);
  EXPECT_EQ(train.rows, 32u);
  EXPECT_EQ(train.cols, 32u);
  EXPECT_EQ(train.channels, 3u);
  EXPECT_EQ(train.image_size(), 3072u);
  EXPECT_EQ(train.labels, as_labels(train_labels));
  ASSERT_EQ(train.pixels.size(), 9u * 3072);
  for (std::size_t k = 0; k < 9; ++k)
    for (std::size_t p = 0; p < 1024; ++p)
      for (std::size_t c = 0; c < 3; ++c) ASSERT_EQ(train.pixels[(k * 1024 + p) * 3 + c], cifar_value(k, c, p));
  // One pixel by hand: image 4 (second record of data_batch_3.bin), row 5, col 7, green = file byte
  // 3073 + 1 + 1024 + 5·32 + 7 of that file; in HWC it is value ((4·32 + 5)·32 + 7)·3 + 1.
  const Bytes batch3 = slurp((dir_ / "data_batch_3.bin").string());
  EXPECT_EQ(train.pixels[((4 * 32 + 5) * 32 + 7) * 3 + 1], batch3[3073 + 1 + 1024 + 5 * 32 + 7]);

  const ImageSet test = load_cifar10_dir(dir_.string(), Split::kTest);
  EXPECT_EQ(test.count, 3u);
  EXPECT_EQ(test.labels, as_labels(test_labels));
  EXPECT_EQ(test.pixels[(2 * 1024 + 1023) * 3 + 2], cifar_value(2, 2, 1023));
  // The directory that holds the extracted cifar-10-batches-bin/ works too; take_first keeps the channels.
  fs::create_directories(dir_ / "parent" / "cifar-10-batches-bin");
  write_raw("parent/cifar-10-batches-bin/test_batch.bin", cifar_records(0, 3, test_labels));
  EXPECT_EQ(load_cifar10_dir((dir_ / "parent").string(), Split::kTest).pixels, test.pixels);
  const ImageSet two = take_first(test, 2);
  EXPECT_EQ(two.channels, 3u);
  EXPECT_EQ(two.pixels, Bytes(test.pixels.begin(), test.pixels.begin() + 2 * 3072));
}

TEST_F(DataFiles, CifarBadInput) {
  // Not a whole number of records: the offset is the start of the incomplete record.
  Bytes cut = cifar_records(0, 2, {1, 2});
  cut.resize(cut.size() + 100, 0);
  const auto f1 = write_raw("cut.bin", cut);
  expect_input_error([&] { read_cifar10({f1}); },
                     {f1 + ": byte 6146: file ends after 100 of 3073 bytes of record 2", "not a multiple"});
  // A label out of range: the offset is the record's label byte.
  const auto f2 = write_raw("label.bin", cifar_records(0, 3, {0, 12, 3}));
  expect_input_error([&] { read_cifar10({f2}); }, {f2 + ": byte 3073: label 12 of record 1 is out of range 0..9"});
  const auto f3 = write_raw("label10.bin", cifar_records(0, 1, {10}));
  expect_input_error([&] { read_cifar10({f3}); }, {f3 + ": byte 0: label 10 of record 0 is out of range 0..9"});
  // Empty and missing files.
  const auto f4 = write_raw("empty.bin", {});
  expect_input_error([&] { read_cifar10({f4}); }, {f4 + ": byte 0: file is empty"});
  const std::string nofile = (dir_ / "no-such-file.bin").string();
  expect_input_error([&] { read_cifar10({nofile}); }, {nofile + ": cannot open"});
}

TEST_F(DataFiles, CifarHugeFilesRefusedBeforeAllocating) {
  // Sparse files: one record more than 2^28 pixel bytes allow, and two files that pass alone but not together.
  const std::size_t limit = kMaxIdxElements / 3072;
  const auto big = write_raw("big.bin", {});
  fs::resize_file(big, (limit + 1) * kCifarRecordBytes);
  expect_input_error([&] { read_cifar10({big}); }, {big + ": byte 0: ", "2^28", "refusing to allocate"});
  const auto half = write_raw("half.bin", {});
  fs::resize_file(half, (limit / 2 + 1) * kCifarRecordBytes);
  const auto small = write_raw("small.bin", cifar_records(0, 1, {0}));
  expect_input_error([&] { read_cifar10({small, half, half}); }, {half + ": byte 0: ", "refusing to allocate"});
}

TEST_F(DataFiles, CifarMissingDirectoryAndFiles) {
  const std::string nodir = (dir_ / "does-not-exist").string();
  expect_input_error(
      [&] { load_cifar10_dir(nodir, Split::kTrain); },
      {"data directory '" + nodir + "' has no CIFAR-10 binary files", "data_batch_1.bin", "does not exist",
       "not packaged in Debian", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "--data DIR"});
  for (int f : {1, 2, 4, 5}) write_raw("data_batch_" + std::to_string(f) + ".bin", cifar_records(0, 1, {0}));
  expect_input_error([&] { load_cifar10_dir(dir_.string(), Split::kTrain); },
                     {"(missing data_batch_3.bin)", "cifar-10-binary.tar.gz"});
  expect_input_error([&] { load_cifar10_dir(dir_.string(), Split::kTest); }, {"missing test_batch.bin"});
}

// ---------------------------------------------------------------------------------------------------------------
// Per-channel normalization

// count images of rows×cols×3 whose channels have different statistics: R skewed dark, G mid-grey with little
// spread, B bright.
ImageSet three_channel_set(std::size_t count, std::size_t rows, std::size_t cols, uint64_t seed) {
  ImageSet s;
  s.count = count;
  s.rows = rows;
  s.cols = cols;
  s.channels = 3;
  s.pixels.resize(count * s.image_size());
  s.labels.assign(count, 0);
  const quant::CounterRng rng(seed, 0);
  for (std::size_t j = 0; j < s.pixels.size(); j += 3) {
    const uint32_t u = rng.u32(j);
    s.pixels[j] = (u & 1) ? 0 : static_cast<uint8_t>((u >> 8) % 256);
    s.pixels[j + 1] = static_cast<uint8_t>(120 + (u >> 16) % 16);
    s.pixels[j + 2] = static_cast<uint8_t>(255 - (u >> 24) % 64);
  }
  for (std::size_t i = 0; i < count; ++i) s.labels[i] = static_cast<uint8_t>(rng.below(1000000 + i, 10));
  return s;
}

TEST(PixelNorm, PerChannelStatisticsAndSharedExponent) {
  const ImageSet s = three_channel_set(50, 5, 6, 7);
  const PixelNorm n = fit_pixel_norm(s);
  ASSERT_EQ(n.channels.size(), 3u);
  double bound = 0;
  int finest = -1000;  // the largest of the channels' own minimal exponents
  for (std::size_t c = 0; c < 3; ++c) {
    // Channel c alone, as a single-channel set: the same statistics, exactly.
    ImageSet one;
    one.count = s.count;
    one.rows = s.rows;
    one.cols = s.cols;
    for (std::size_t j = c; j < s.pixels.size(); j += 3) one.pixels.push_back(s.pixels[j]);
    one.labels = s.labels;
    const PixelNorm alone = fit_pixel_norm(one);
    EXPECT_EQ(n.channels[c].mean, alone.channels[0].mean) << c;
    EXPECT_EQ(n.channels[c].stddev, alone.channels[0].stddev) << c;
    finest = std::max(finest, alone.exponent);
    const double m = n.channels[c].mean, sd = n.channels[c].stddev;
    bound = std::max({bound, std::fabs(m / sd), std::fabs((1 - m) / sd)});
    // Every entry within half a unit of the shared exponent.
    const double ulp = std::ldexp(1.0, n.exponent);
    for (int p = 0; p < 256; ++p)
      EXPECT_LE(std::fabs(n.channels[c].table[p] * ulp - (p / 255.0 - m) / sd), 0.5 * ulp + 1e-12) << c << " " << p;
  }
  // The statistics differ per channel, and the exponent is the finest that covers every channel.
  EXPECT_LT(n.channels[0].mean, n.channels[1].mean);
  EXPECT_LT(n.channels[1].mean, n.channels[2].mean);
  EXPECT_EQ(n.exponent, finest);
  EXPECT_LE(bound, 127.0 * std::ldexp(1.0, n.exponent));
  EXPECT_GT(bound, 127.0 * std::ldexp(1.0, n.exponent - 1));
  // Rebuilt from the recorded statistics: the same tables.
  EXPECT_TRUE(make_pixel_norm({n.channels[0].mean, n.channels[1].mean, n.channels[2].mean},
                              {n.channels[0].stddev, n.channels[1].stddev, n.channels[2].stddev}) == n);
  // A constant channel is named.
  ImageSet flat = s;
  for (std::size_t j = 1; j < flat.pixels.size(); j += 3) flat.pixels[j] = 9;
  expect_input_error([&] { fit_pixel_norm(flat); }, {"every training pixel of channel 1 has the value 9"});
}

TEST(Batcher, FillsChannelsThroughTheirOwnTables) {
  const ImageSet s = three_channel_set(20, 4, 5, 8);
  const PixelNorm n = fit_pixel_norm(s);
  Batcher b(s, n, 8, 3, true, false);
  EXPECT_EQ(b.image_size(), 60u);
  std::vector<int8_t> images(8 * 60);
  const std::size_t got = b.fill(1, images.data(), nullptr);
  const auto idx = b.batch_indices(1);
  for (std::size_t k = 0; k < got; ++k)
    for (std::size_t p = 0; p < 20; ++p)
      for (std::size_t c = 0; c < 3; ++c)
        ASSERT_EQ(images[(k * 20 + p) * 3 + c], n.channels[c].table[s.pixels[(idx[k] * 20 + p) * 3 + c]]);
  // A normalization for another channel count is refused.
  const ImageSet grey = synthetic_set(20, 4, 5, 8);
  EXPECT_THROW(Batcher(s, fit_pixel_norm(grey), 8, 3, true, false), UsageError);
  EXPECT_THROW(Batcher(grey, n, 8, 3, true, false), UsageError);
}

// ---------------------------------------------------------------------------------------------------------------
// Augmentation

// The augmented image of set image i under draw d, by the formula in batcher.h.
std::vector<int8_t> reference_augment(const ImageSet& s, const PixelNorm& n, std::size_t i, const AugmentDraw& d) {
  const auto rows = static_cast<long>(s.rows), cols = static_cast<long>(s.cols);
  const std::size_t ch = s.channels;
  std::vector<int8_t> out(s.image_size());
  for (long r = 0; r < rows; ++r) {
    for (long c = 0; c < cols; ++c) {
      const long sr = r + d.dy, sc = (d.flip ? cols - 1 - c : c) + d.dx;
      for (std::size_t k = 0; k < ch; ++k) {
        const std::size_t o = static_cast<std::size_t>(r * cols + c) * ch + k;
        out[o] =
            (sr < 0 || sr >= rows || sc < 0 || sc >= cols)
                ? int8_t{0}
                : n.channels[k].table[s.pixels[i * s.image_size() + static_cast<std::size_t>(sr * cols + sc) * ch + k]];
      }
    }
  }
  return out;
}

TEST(Augment, DrawsArePureFunctionsOfSeedEpochAndImage) {
  const ImageSet s = three_channel_set(300, 6, 7, 9);
  const PixelNorm n = fit_pixel_norm(s);
  const Augment aug{2, true};
  Batcher a(s, n, 32, 77, true, false, aug);
  Batcher b(s, n, 50, 77, false, true, aug);  // other batch size, order and drop_last: same draws
  for (uint64_t e : {0, 3, 1}) {
    a.start_epoch(e);
    b.start_epoch(e);
    const quant::CounterRng rng(77, quant::StreamKey{.purpose = quant::Purpose::kAugment, .step = e});
    for (uint32_t i = 0; i < s.count; ++i) {
      const AugmentDraw d = a.augment_draw(i), db = b.augment_draw(i);
      EXPECT_EQ(d.dy, static_cast<int>(rng.below(4 * i, 5)) - 2);
      EXPECT_EQ(d.dx, static_cast<int>(rng.below(4 * i + 1, 5)) - 2);
      EXPECT_EQ(d.flip, (rng.u32(4 * i + 2) >> 31) != 0);
      EXPECT_TRUE(d.dy == db.dy && d.dx == db.dx && d.flip == db.flip);
    }
  }
  // Another epoch or seed draws differently.
  a.start_epoch(0);
  Batcher c(s, n, 32, 78, true, false, aug);
  std::size_t same_epoch = 0, same_seed = 0;
  Batcher a1(s, n, 32, 77, true, false, aug);
  a1.start_epoch(1);
  for (uint32_t i = 0; i < s.count; ++i) {
    const AugmentDraw d = a.augment_draw(i), d1 = a1.augment_draw(i), dc = c.augment_draw(i);
    same_epoch += d.dy == d1.dy && d.dx == d1.dx && d.flip == d1.flip;
    same_seed += d.dy == dc.dy && d.dx == dc.dx && d.flip == dc.flip;
  }
  EXPECT_LT(same_epoch, s.count / 5);
  EXPECT_LT(same_seed, s.count / 5);
  // fill(b) is the reference formula applied to the draw, and equals gather(batch_indices(b)); threads agree.
  std::vector<int8_t> serial(s.count * s.image_size()), parallel(serial.size()), gathered(32 * s.image_size());
  for (std::size_t k = 0; k < a.batches(); ++k) {
    const std::size_t got = a.fill(k, serial.data() + k * 32 * s.image_size(), nullptr);
    const auto idx = a.batch_indices(k);
    a.gather(idx, gathered.data(), nullptr);
    EXPECT_TRUE(std::equal(gathered.begin(), gathered.begin() + static_cast<std::ptrdiff_t>(got * s.image_size()),
                           serial.begin() + static_cast<std::ptrdiff_t>(k * 32 * s.image_size())));
    for (std::size_t j = 0; j < got; ++j) {
      const auto ref = reference_augment(s, n, idx[j], a.augment_draw(idx[j]));
      ASSERT_TRUE(std::equal(ref.begin(), ref.end(),
                             serial.begin() + static_cast<std::ptrdiff_t>((k * 32 + j) * s.image_size())))
          << "batch " << k << " image " << j;
    }
  }
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      for (std::size_t k = static_cast<std::size_t>(t); k < a.batches(); k += 3)
        a.fill(k, parallel.data() + k * 32 * s.image_size(), nullptr);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(serial, parallel);
}

TEST(Augment, CropOffsetsWithinPadAndPaddingIsZero) {
  // Bright images normalized by dark statistics: no real pixel maps to int8 0, so the zeros are the padding.
  ImageSet s = three_channel_set(400, 8, 9, 10);
  const PixelNorm n = make_pixel_norm({0.1, 0.1, 0.1}, {0.2, 0.2, 0.2});
  for (uint8_t& p : s.pixels) p = static_cast<uint8_t>(128 + p / 2);
  for (const int pad : {1, 3}) {
    Batcher b(s, n, 400, 5, false, false, Augment{pad, false});
    std::vector<int8_t> images(400 * s.image_size());
    b.fill(0, images.data(), nullptr);
    int lo_y = 0, hi_y = 0, lo_x = 0, hi_x = 0;
    for (uint32_t i = 0; i < s.count; ++i) {
      const AugmentDraw d = b.augment_draw(i);
      EXPECT_FALSE(d.flip);
      EXPECT_LE(std::abs(d.dy), pad);
      EXPECT_LE(std::abs(d.dx), pad);
      lo_y = std::min(lo_y, d.dy), hi_y = std::max(hi_y, d.dy), lo_x = std::min(lo_x, d.dx),
      hi_x = std::max(hi_x, d.dx);
      // Zeros fill exactly the padded area: |dy| rows and |dx| columns (counted once where they cross), × 3 channels.
      const auto zeros = std::count(images.begin() + static_cast<std::ptrdiff_t>(i * s.image_size()),
                                    images.begin() + static_cast<std::ptrdiff_t>((i + 1) * s.image_size()), int8_t{0});
      const long ay = std::abs(d.dy), ax = std::abs(d.dx);
      EXPECT_EQ(zeros, 3 * (ay * 9 + ax * 8 - ay * ax)) << "image " << i;
      // The top-left output pixel is source pixel (dy, dx) when that is inside the image.
      if (d.dy >= 0 && d.dx >= 0) {
        const auto src = i * s.image_size() + static_cast<std::size_t>(d.dy * 9 + d.dx) * 3;
        EXPECT_EQ(images[i * s.image_size()], n.channels[0].table[s.pixels[src]]);
      }
    }
    // Every shift in [−P, P] occurs.
    EXPECT_EQ(lo_y, -pad);
    EXPECT_EQ(hi_y, pad);
    EXPECT_EQ(lo_x, -pad);
    EXPECT_EQ(hi_x, pad);
  }
  EXPECT_THROW(Batcher(s, n, 8, 1, true, false, Augment{-1, false}), UsageError);
  EXPECT_THROW(Batcher(s, n, 8, 1, true, false, Augment{9, false}), UsageError);  // more than min(8, 9)
}

TEST(Augment, FlipMirrorsRows) {
  const ImageSet s = three_channel_set(200, 4, 5, 11);
  const PixelNorm n = fit_pixel_norm(s);
  Batcher plain(s, n, 200, 6, false, false);
  Batcher flip(s, n, 200, 6, false, false, Augment{0, true});
  std::vector<int8_t> a(200 * 60), b(200 * 60);
  plain.fill(0, a.data(), nullptr);
  flip.fill(0, b.data(), nullptr);
  std::size_t flipped = 0;
  for (uint32_t i = 0; i < 200; ++i) {
    const AugmentDraw d = flip.augment_draw(i);
    EXPECT_EQ(d.dy, 0);
    EXPECT_EQ(d.dx, 0);
    flipped += d.flip;
    for (std::size_t r = 0; r < 4; ++r)
      for (std::size_t c = 0; c < 5; ++c)
        for (std::size_t k = 0; k < 3; ++k)
          ASSERT_EQ(b[((i * 4 + r) * 5 + c) * 3 + k], a[((i * 4 + r) * 5 + (d.flip ? 4 - c : c)) * 3 + k]);
  }
  EXPECT_GT(flipped, 70u);  // about half
  EXPECT_LT(flipped, 130u);
}

TEST(Augment, OffByDefaultLeavesBatchesUnchanged) {
  const ImageSet s = synthetic_set(103, 2, 3, 2);
  const PixelNorm n = fit_pixel_norm(s);
  Batcher a(s, n, 10, 99, true, false);
  Batcher b(s, n, 10, 99, true, false, Augment{});
  EXPECT_EQ(a.augment().pad, 0);
  EXPECT_FALSE(a.augment().flip);
  a.start_epoch(4);
  b.start_epoch(4);
  std::vector<int8_t> x(60), y(60);
  for (std::size_t k = 0; k < a.batches(); ++k) {
    const std::size_t got = a.fill(k, x.data(), nullptr);
    EXPECT_EQ(b.fill(k, y.data(), nullptr), got);
    EXPECT_EQ(x, y);
    const auto idx = a.batch_indices(k);
    for (std::size_t i = 0; i < got; ++i) {
      const AugmentDraw d = a.augment_draw(idx[i]);
      EXPECT_TRUE(d.dy == 0 && d.dx == 0 && !d.flip);
      for (std::size_t j = 0; j < 6; ++j) EXPECT_EQ(x[i * 6 + j], n.channels[0].table[s.pixels[idx[i] * 6 + j]]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Model files record the per-channel normalization; single-channel files keep the original form

TEST_F(DataFiles, ModelFileRecordsPerChannelNorm) {
  ModelSpec spec;
  spec.sizes = {12, 10};
  const auto model = build_model(spec, 1);
  const PixelNorm grey = make_pixel_norm({0.286}, {0.353});
  const PixelNorm rgb = make_pixel_norm({0.49, 0.48, 0.45}, {0.25, 0.24, 0.26});
  for (const PixelNorm* norm : {&grey, &rgb}) {
    const std::string path = (dir_ / "m.qtm").string();
    save_model(path, *model, *norm);
    EXPECT_TRUE(load_model(path).norm == *norm);
    // One channel: the original form (a number, not a one-entry array); three: one entry per channel.
    const Bytes bytes = slurp(path);
    const std::string text(bytes.begin(), bytes.end());
    EXPECT_NE(text.find(norm == &grey ? "\"mean\":0.286," : "\"mean\":[0.49,0.48,0.45]"), std::string::npos) << text;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The installed data set, when present

TEST(FashionMnist, LoadsInstalledDataSet) {
  if (!fs::is_directory(kDefaultFashionMnistDir)) {
    GTEST_SKIP() << kDefaultFashionMnistDir
                 << " not found; install it with: sudo apt-get install dataset-fashion-mnist";
  }
  const ImageSet train = load_mnist_dir(kDefaultFashionMnistDir, Split::kTrain);
  const ImageSet test = load_mnist_dir(kDefaultFashionMnistDir, Split::kTest);
  EXPECT_EQ(train.count, 60000u);
  EXPECT_EQ(test.count, 10000u);
  for (const ImageSet* s : {&train, &test}) {
    EXPECT_EQ(s->rows, 28u);
    EXPECT_EQ(s->cols, 28u);
    std::vector<std::size_t> per_class(10);
    for (const uint8_t l : s->labels) ++per_class[l];
    for (const std::size_t c : per_class) EXPECT_EQ(c, s->count / 10);  // Fashion-MNIST is balanced
  }
  const PixelNorm n = fit_pixel_norm(train);
  EXPECT_NEAR(n.channels.at(0).mean, 0.2860, 1e-3);  // the well-known Fashion-MNIST statistics
  EXPECT_NEAR(n.channels.at(0).stddev, 0.3530, 1e-3);
  EXPECT_EQ(n.exponent, -5);
  Batcher b(train, n, 256, 0, true, false);
  EXPECT_EQ(b.batches(), 235u);
}

// ---------------------------------------------------------------------------------------------------------------
// In-memory data sets (data/in_memory.h)

void expect_usage_error(const std::function<void()>& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "no UsageError thrown";
  } catch (const UsageError& e) {
    const std::string msg = e.what();
    for (const auto& part : parts)
      EXPECT_NE(msg.find(part), std::string::npos) << "missing '" << part << "' in: " << msg;
  }
}

TEST(InMemory, RefusesBadSizesLabelsAndValuesNamingThem) {
  const std::vector<int8_t> x(12, 5);
  const std::vector<int32_t> y{0, 1, 2};
  EXPECT_NO_THROW(make_feature_set(x, y, 4, 3));
  expect_usage_error([&] { make_feature_set(x, y, 5, 3); }, {"12 feature values", "3 examples of 1x5x1", "3 x 5"});
  expect_usage_error([&] { make_feature_set(x, y, 0, 3); }, {"example shape 1x0x1", "every dimension >= 1"});
  expect_usage_error([&] { make_feature_set(x, {}, 4, 3); }, {"0 labels", "1..4294967295"});
  expect_usage_error([&] { make_feature_set(x, y, 4, 1); }, {"1 classes", "2..2147483647"});
  expect_usage_error(
      [&] {
        make_feature_set(x, std::vector<int32_t>{0, 3, 1}, 4, 3);
      },
      {"label 3 of example 1", "0..2"});
  expect_usage_error([&] { make_feature_set(x, std::vector<int32_t>{0, -1, 1}, 4, 3); }, {"label -1 of example 1"});
  std::vector<int8_t> bad = x;
  bad[9] = -128;
  expect_usage_error([&] { make_feature_set(bad, y, 4, 3); }, {"-128 at index 9 (example 2)", "-127..127"});
  expect_usage_error([&] { make_feature_set(x, y, 4, 3, 65); }, {"exponent 65", "-64..64"});
  expect_usage_error([&] { make_in_memory_set(x, y, ExampleShape{2, 2, 2}, 3); }, {"3 examples of 2x2x2"});
}

TEST(InMemory, FeaturesPassThroughTheIdentityNormalization) {
  const std::vector<int8_t> x{-127, -1, 0, 1, 127, 64};
  const std::vector<int32_t> y{1, 0};
  const ImageSet s = make_in_memory_set(x, y, ExampleShape{1, 1, 3}, 2, -3);
  EXPECT_TRUE(s.int8_features);
  EXPECT_EQ(s.image_size(), 3u);
  const PixelNorm n = fit_pixel_norm(s);
  EXPECT_TRUE(n.identity);
  EXPECT_EQ(n.exponent, -3);
  ASSERT_EQ(n.channels.size(), 3u);
  Batcher b(s, n, 2, 0, /*shuffle=*/false, /*drop_last=*/false);
  std::vector<int8_t> got(6);
  std::vector<int32_t> labels(2);
  ASSERT_EQ(b.fill(0, got.data(), labels.data()), 2u);
  EXPECT_EQ(got, x);
  EXPECT_EQ(labels, y);
  EXPECT_EQ(take_first(s, 1).int8_features, true);
}

// n examples of 8 features in 3 classes (class c raises features c, c+3 over noise), as a set.
ImageSet three_blobs(std::size_t n, uint64_t seed) {
  const quant::CounterRng rng(seed, 9);
  std::vector<int8_t> x(n * 8);
  std::vector<int32_t> y(n);
  for (std::size_t i = 0; i < n; ++i) {
    y[i] = static_cast<int32_t>(rng.below(i * 16, 3));
    for (std::size_t f = 0; f < 8; ++f)
      x[i * 8 + f] = static_cast<int8_t>(static_cast<int>(rng.below(i * 16 + 1 + f, 61)) - 30 +
                                         (f % 3 == static_cast<std::size_t>(y[i]) && f < 6 ? 50 : 0));
  }
  return make_feature_set(x, y, 8, 3, -6);
}

TEST(InMemory, TrainsEvaluatesSavesAndLoadsLikeAnIdxSet) {
  const ImageSet train = three_blobs(600, 1), test = three_blobs(300, 2);
  TrainConfig cfg;
  cfg.model.sizes = {8, 32, 3};
  cfg.model.bits = {4, 4, 4};
  cfg.epochs = 3;
  cfg.batch = 32;
  Trainer t(cfg, train);
  EXPECT_TRUE(t.norm().identity);
  double before = t.evaluate(test);
  for (int e = 1; e <= cfg.epochs; ++e) t.train_epoch(e, &test);
  const double after = t.state().history.back().test_accuracy;
  EXPECT_LT(before, 0.6);
  EXPECT_GE(after, 0.9) << "chance is 1/3";
  const fs::path file = fs::temp_directory_path() / ("qtrain_inmem_" + std::to_string(::getpid()) + ".qtm");
  save_model(file.string(), t.model(), t.norm());
  auto loaded = load_model(file.string());
  fs::remove(file);
  EXPECT_EQ(loaded.norm, t.norm());
  kernels::ThreadPool pool(1);
  EXPECT_EQ(evaluate_model(*loaded.model, test, loaded.norm, &pool), after);
  // Another feature count is a usage error naming both shapes.
  const ImageSet wide = make_feature_set(std::vector<int8_t>(20, 1), std::vector<int32_t>{0, 1}, 10, 3);
  expect_usage_error([&] { evaluate_model(*loaded.model, wide, loaded.norm, &pool); },
                     {"8 values per image", "the data's 1x10x1 images"});
}

TEST(InMemory, LabelsBeyondOneByteTrain) {
  // 300 classes: labels 0..299 do not fit the old uint8 labels.
  const std::size_t n = 64;
  std::vector<int8_t> x(n * 4);
  std::vector<int32_t> y(n);
  for (std::size_t i = 0; i < n; ++i) {
    y[i] = static_cast<int32_t>(200 + i % 100);
    for (std::size_t f = 0; f < 4; ++f) x[i * 4 + f] = static_cast<int8_t>((i * 7 + f * 13) % 200 - 100);
  }
  const ImageSet s = make_feature_set(x, y, 4, 300);
  TrainConfig cfg;
  cfg.model.sizes = {4, 16, 300};
  cfg.epochs = 1;
  cfg.batch = 16;
  Trainer t(cfg, s);
  const EpochMetrics m = t.train_epoch(1, &s);
  EXPECT_TRUE(std::isfinite(m.loss));
  EXPECT_GT(m.loss, 0.0);
  // More classes than the model has outputs is refused up front.
  TrainConfig small = cfg;
  small.model.sizes = {4, 16, 250};
  expect_usage_error([&] { Trainer bad(small, s); }, {"300 classes", "250 outputs"});
}

}  // namespace
}  // namespace qtrain::data
