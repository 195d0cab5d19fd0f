// IDX files (the MNIST / Fashion-MNIST format), raw or gzip-compressed.
//
// Layout, all integers big-endian:
//   images: magic 0x00000803 (unsigned byte, 3 dimensions), count, rows, cols, then count·rows·cols pixel bytes
//   labels: magic 0x00000801 (unsigned byte, 1 dimension),  count,             then count label bytes
// Every problem with a file is a qtrain::InputError whose message is one line naming the file and the byte offset
// (for .gz files, the offset in the decompressed stream), e.g.
//   …/train-images-idx3-ubyte.gz: byte 16 of the decompressed stream: file ends after 1234 of 47040000 pixel
//   bytes (truncated)
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace qtrain::data {

// A labelled set of 8-bit images with `channels` interleaved channels (NHWC, the layout the layers consume: an
// image is a rows·cols × channels matrix): value (i, r, c, ch) is pixels[((i·rows + r)·cols + c)·channels + ch].
// Labels are int32 (classes up to kMaxClasses); the IDX and CIFAR-10 readers hold them to 0..9.
// With int8_features the bytes are a user's int8 values (two's complement, −127..127, data/in_memory.h) that enter
// the data plane unchanged: fit_pixel_norm gives them the identity normalization instead of fitted statistics.
struct ImageSet {
  std::size_t count = 0, rows = 0, cols = 0, channels = 1;
  std::vector<uint8_t> pixels;  // count·rows·cols·channels
  std::vector<int32_t> labels;  // count, each in 0..classes−1
  std::size_t classes = 10;
  bool int8_features = false;
  int feature_exponent = 0;  // int8_features: real value of byte q is (int8) q · 2^feature_exponent

  std::size_t image_size() const { return rows * cols * channels; }
};

// The most classes a set may have: labels are int32, and softmax_cross_entropy sums one Q30 exponential per class
// in int64 (cols·2^30 < 2^61), so the loss takes any int32 label.
inline constexpr std::size_t kMaxClasses = std::size_t{INT32_MAX};

// Largest number of elements (pixels) a file may declare; larger headers are refused before anything is allocated.
inline constexpr std::size_t kMaxIdxElements = std::size_t{1} << 28;

// Reads an images file and its labels file (each raw or gzip; gzip is detected from the content, not the name).
// Checks magic numbers, dimensions (non-zero, at most kMaxIdxElements pixels), that the two counts agree, that
// every label is in 0..9, that neither file is truncated and that nothing follows the declared data.
ImageSet read_idx(const std::string& images_path, const std::string& labels_path);

enum class Split { kTrain, kTest };

// Loads <dir>/train-images-idx3-ubyte + train-labels-idx1-ubyte (kTrain) or t10k-… (kTest), preferring the .gz
// file of each and falling back to the raw one. A missing directory or missing files is an InputError that tells
// the user how to install the default data set.
ImageSet load_mnist_dir(const std::string& dir, Split split);

// The first min(n, s.count) images of s (a copy).
ImageSet take_first(const ImageSet& s, std::size_t n);

// Where the Debian package dataset-fashion-mnist installs its files.
inline constexpr const char* kDefaultFashionMnistDir = "/usr/share/datasets/fashion-mnist";

}  // namespace qtrain::data
