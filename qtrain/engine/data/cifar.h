// CIFAR-10, the "binary version" (https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz, which extracts to
// cifar-10-batches-bin/): data_batch_1.bin … data_batch_5.bin (50000 training images) and test_batch.bin (10000).
//
// Each file is a sequence of 3073-byte records: 1 label byte (0..9), then 3072 pixel bytes — 1024 red, 1024 green,
// 1024 blue, each plane a row-major 32×32 image. The reader converts the planes to the interleaved HWC layout of
// ImageSet (channels = 3). Every problem is a qtrain::InputError naming the file and the byte offset, e.g.
//   …/data_batch_3.bin: byte 6146: label 12 of record 2 is out of range 0..9
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "qtrain/engine/data/idx.h"

namespace qtrain::data {

inline constexpr std::size_t kCifarSide = 32, kCifarChannels = 3;
inline constexpr std::size_t kCifarRecordBytes = 1 + kCifarSide * kCifarSide * kCifarChannels;  // 3073

// Reads the records of `paths`, in order, into one set. Checks that every file exists, is non-empty, holds a whole
// number of records and every label is in 0..9; refuses (before allocating) files that together hold more than
// kMaxIdxElements pixel bytes.
ImageSet read_cifar10(const std::vector<std::string>& paths);

// Loads <dir>/data_batch_{1..5}.bin (kTrain) or <dir>/test_batch.bin (kTest). `dir` may also be the directory
// that holds the extracted cifar-10-batches-bin/. Missing files are an InputError that tells the user where to get
// the data set (it is not packaged in Debian).
ImageSet load_cifar10_dir(const std::string& dir, Split split);

}  // namespace qtrain::data
