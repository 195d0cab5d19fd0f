#include "qtrain/engine/data/cifar.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "qtrain/quant/error.h"

namespace qtrain::data {

namespace {

constexpr std::size_t kPlane = kCifarSide * kCifarSide;

[[noreturn]] void fail(const std::string& path, uint64_t offset, const std::string& what) {
  throw InputError(path + ": byte " + std::to_string(offset) + ": " + what);
}

}  // namespace

ImageSet read_cifar10(const std::vector<std::string>& paths) {
  namespace fs = std::filesystem;
  // Sizes first, so an absurd total is refused before anything is allocated.
  std::vector<std::size_t> records(paths.size());
  std::size_t total = 0;
  for (std::size_t f = 0; f < paths.size(); ++f) {
    std::error_code ec;
    const uintmax_t size = fs::file_size(paths[f], ec);
    if (ec) throw InputError(paths[f] + ": cannot open (" + ec.message() + ")");
    if (size == 0) fail(paths[f], 0, "file is empty (expected 3073-byte CIFAR-10 records)");
    if (size % kCifarRecordBytes != 0) {
      const uint64_t last = size - size % kCifarRecordBytes;
      fail(paths[f], last,
           "file ends after " + std::to_string(size - last) + " of 3073 bytes of record " +
               std::to_string(size / kCifarRecordBytes) + " (truncated: " + std::to_string(size) +
               " bytes is not a multiple of the 3073-byte record)");
    }
    records[f] = static_cast<std::size_t>(size / kCifarRecordBytes);
    if (records[f] > kMaxIdxElements / (kCifarRecordBytes - 1) - total) {
      fail(paths[f], 0,
           std::to_string(total + records[f]) + " records up to the end of this file hold more than 2^28 = " +
               std::to_string(kMaxIdxElements) + " pixel bytes (refusing to allocate)");
    }
    total += records[f];
  }

  ImageSet set;
  set.count = total;
  set.rows = set.cols = kCifarSide;
  set.channels = kCifarChannels;
  set.pixels.resize(total * set.image_size());
  set.labels.resize(total);
  std::vector<char> buf;
  std::size_t image = 0;
  for (std::size_t f = 0; f < paths.size(); ++f) {
    const std::size_t bytes = records[f] * kCifarRecordBytes;
    buf.resize(bytes);
    std::ifstream in(paths[f], std::ios::binary);
    if (!in) throw InputError(paths[f] + ": cannot open (" + std::strerror(errno) + ")");
    in.read(buf.data(), static_cast<std::streamsize>(bytes));
    const auto got = static_cast<std::size_t>(in.gcount());
    if (got < bytes) {
      fail(paths[f], got,
           "file ends after " + std::to_string(got) + " of " + std::to_string(bytes) +
               " bytes (truncated while reading)");
    }
    for (std::size_t r = 0; r < records[f]; ++r, ++image) {
      const auto* rec = reinterpret_cast<const uint8_t*>(buf.data()) + r * kCifarRecordBytes;
      if (rec[0] >= set.classes) {
        fail(paths[f], r * kCifarRecordBytes,
             "label " + std::to_string(rec[0]) + " of record " + std::to_string(r) + " is out of range 0.." +
                 std::to_string(set.classes - 1));
      }
      set.labels[image] = rec[0];
      // Planes R, G, B → interleaved (pixel p, channel c).
      uint8_t* dst = set.pixels.data() + image * set.image_size();
      for (std::size_t p = 0; p < kPlane; ++p)
        for (std::size_t c = 0; c < kCifarChannels; ++c) dst[p * kCifarChannels + c] = rec[1 + c * kPlane + p];
    }
  }
  return set;
}

ImageSet load_cifar10_dir(const std::string& dir, Split split) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path root(dir);
  if (!fs::exists(root / "test_batch.bin", ec) && fs::is_directory(root / "cifar-10-batches-bin", ec))
    root /= "cifar-10-batches-bin";
  std::vector<std::string> names;
  if (split == Split::kTrain) {
    for (int k = 1; k <= 5; ++k) names.push_back("data_batch_" + std::to_string(k) + ".bin");
  } else {
    names.push_back("test_batch.bin");
  }
  std::vector<std::string> paths;
  std::string missing;
  for (const auto& name : names) {
    paths.push_back((root / name).string());
    if (!fs::is_regular_file(paths.back(), ec)) missing += (missing.empty() ? "" : ", ") + name;
  }
  if (!missing.empty()) {
    throw InputError("data directory '" + dir + "' has no CIFAR-10 binary files (missing " + missing +
                     (fs::is_directory(dir, ec) ? "" : "; the directory does not exist") +
                     "). CIFAR-10 is not packaged in Debian: download the binary version from "
                     "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz, extract it (tar xzf "
                     "cifar-10-binary.tar.gz) and pass --data DIR (the extracted cifar-10-batches-bin directory)");
  }
  return read_cifar10(paths);
}

}  // namespace qtrain::data
