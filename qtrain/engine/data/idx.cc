#include "qtrain/engine/data/idx.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include "qtrain/quant/error.h"

namespace qtrain::data {

namespace {

constexpr uint32_t kImagesMagic = 0x00000803;
constexpr uint32_t kLabelsMagic = 0x00000801;

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08X", v);
  return buf;
}

// What a magic number means, for error messages.
std::string describe_magic(uint32_t m) {
  if (m == kImagesMagic) return "IDX unsigned-byte images";
  if (m == kLabelsMagic) return "IDX unsigned-byte labels";
  if ((m >> 24) == 0x1F && ((m >> 16) & 0xFF) == 0x8B) return "a gzip header inside the decompressed data";
  if ((m >> 16) == 0) {
    const unsigned type = (m >> 8) & 0xFF, dims = m & 0xFF;
    const char* name = type == 0x08   ? "unsigned byte"
                       : type == 0x09 ? "signed byte"
                       : type == 0x0B ? "short"
                       : type == 0x0C ? "int"
                       : type == 0x0D ? "float"
                       : type == 0x0E ? "double"
                                      : nullptr;
    if (name != nullptr) return "IDX " + std::string(name) + " data with " + std::to_string(dims) + " dimensions";
  }
  return "not an IDX file";
}

// Sequential reader over a raw or gzip file (zlib reads raw files transparently) that tracks the offset in the
// (decompressed) stream and formats error messages.
class IdxStream {
 public:
  explicit IdxStream(std::string path) : path_(std::move(path)) {
    errno = 0;
    file_.reset(gzopen(path_.c_str(), "rb"));
    if (!file_) {
      const int err = errno;
      throw InputError(path_ + ": cannot open (" + (err != 0 ? std::strerror(err) : "out of memory") + ")");
    }
    gzbuffer(file_.get(), 1 << 17);
    gz_ = gzdirect(file_.get()) == 0;  // reads the first bytes to tell gzip from raw
  }

  uint64_t pos() const { return pos_; }

  std::string where(uint64_t offset) const {
    return path_ + ": byte " + std::to_string(offset) + (gz_ ? " of the decompressed stream" : "");
  }
  [[noreturn]] void fail(uint64_t offset, const std::string& what) const {
    throw InputError(where(offset) + ": " + what);
  }

  // Reads up to n bytes; returns how many were read (fewer only at the end of the data).
  std::size_t read(void* dst, std::size_t n) {
    auto* out = static_cast<unsigned char*>(dst);
    std::size_t done = 0;
    while (done < n) {
      const auto want = static_cast<unsigned>(std::min<std::size_t>(n - done, 1u << 30));
      const int got = gzread(file_.get(), out + done, want);
      if (got < 0) {
        int errnum = Z_OK;
        const char* msg = gzerror(file_.get(), &errnum);
        if (errnum == Z_ERRNO) fail(pos_, std::string("read error (") + std::strerror(errno) + ")");
        std::string detail = msg != nullptr ? msg : "unknown error";
        if (detail.rfind(path_ + ": ", 0) == 0) detail.erase(0, path_.size() + 2);  // zlib prefixes the path
        fail(pos_, "corrupt gzip stream (zlib: " + detail + "; the damage is at or after this point)");
      }
      if (got == 0) break;
      done += static_cast<std::size_t>(got);
      pos_ += static_cast<uint64_t>(got);
    }
    return done;
  }

  // " — the gzip stream is cut short" when zlib saw the compressed data end early.
  std::string truncation_note() {
    int errnum = Z_OK;
    gzerror(file_.get(), &errnum);
    return gz_ && errnum == Z_BUF_ERROR ? "; the compressed stream is cut short" : "";
  }

  // Reads exactly n bytes of the named section, or fails with the section's start offset.
  void read_exact(void* dst, std::size_t n, const char* section) {
    const uint64_t start = pos_;
    const std::size_t got = read(dst, n);
    if (got < n) {
      fail(start, "file ends after " + std::to_string(got) + " of " + std::to_string(n) + " " + section +
                      " bytes (truncated" + truncation_note() + ")");
    }
  }

  // Reads n bytes into a vector that grows with the data actually present, so a header that lies about its size
  // on a short file does not allocate the declared size up front.
  std::vector<uint8_t> read_section(std::size_t n, const char* section) {
    constexpr std::size_t kChunk = std::size_t{8} << 20;
    const uint64_t start = pos_;
    std::vector<uint8_t> out;
    out.reserve(std::min(n, kChunk));
    std::size_t have = 0;
    while (have < n) {
      const std::size_t step = std::min(n - have, kChunk);
      out.resize(have + step);
      const std::size_t got = read(out.data() + have, step);
      have += got;
      if (got < step) {
        fail(start, "file ends after " + std::to_string(have) + " of " + std::to_string(n) + " " + section +
                        " bytes (truncated" + truncation_note() + ")");
      }
    }
    return out;
  }

  uint32_t read_u32(const char* section) {
    unsigned char b[4];
    read_exact(b, 4, section);
    return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
  }

  void expect_magic(uint32_t expected) {
    const uint32_t m = read_u32("header");
    if (m != expected) {
      std::string msg =
          "bad magic " + hex32(m) + ", expected " + hex32(expected) + " (" + describe_magic(expected) + ")";
      if (m == kImagesMagic || m == kLabelsMagic)
        msg += "; this is an IDX " + std::string(m == kImagesMagic ? "images" : "labels") + " file";
      else
        msg += "; found " + describe_magic(m);
      fail(0, msg);
    }
  }

  // After the declared data: any further byte (or a gzip trailer that fails its check) is an error.
  void expect_end(const std::string& declared) {
    const uint64_t end = pos_;
    unsigned char extra[256];
    const std::size_t got = read(extra, sizeof extra);
    if (got > 0) {
      fail(end, "unexpected data after the declared " + declared + " (" +
                    (got < sizeof extra ? std::to_string(got) : "at least " + std::to_string(got)) +
                    " trailing bytes; the file should end here)");
    }
  }

 private:
  struct GzClose {
    void operator()(gzFile f) const { gzclose(f); }
  };
  std::string path_;
  std::unique_ptr<gzFile_s, GzClose> file_;
  bool gz_ = false;
  uint64_t pos_ = 0;
};

}  // namespace

ImageSet read_idx(const std::string& images_path, const std::string& labels_path) {
  ImageSet set;

  // Images: magic, count, rows, cols, pixels.
  IdxStream img(images_path);
  img.expect_magic(kImagesMagic);
  uint32_t dims[3];
  static constexpr const char* kDimName[3] = {"image count", "rows", "cols"};
  for (int d = 0; d < 3; ++d) dims[d] = img.read_u32("header");
  const std::string dims_text = std::to_string(dims[0]) + "×" + std::to_string(dims[1]) + "×" + std::to_string(dims[2]);
  for (int d = 0; d < 3; ++d) {
    if (dims[d] == 0) img.fail(4 + 4 * d, "dimensions " + dims_text + " are invalid (" + kDimName[d] + " is 0)");
  }
  // Product of three 32-bit values, checked step by step so it cannot overflow.
  uint64_t elements = uint64_t{dims[0]} * dims[1];
  if (elements <= kMaxIdxElements) elements *= dims[2];
  if (elements > kMaxIdxElements) {
    img.fail(4, "dimensions " + dims_text + " are invalid (more than 2^28 = " + std::to_string(kMaxIdxElements) +
                    " pixels; refusing to allocate)");
  }
  set.count = dims[0];
  set.rows = dims[1];
  set.cols = dims[2];
  set.pixels = img.read_section(static_cast<std::size_t>(elements), "pixel");
  img.expect_end(dims_text + " pixel bytes");

  // Labels: magic, count, labels.
  IdxStream lab(labels_path);
  lab.expect_magic(kLabelsMagic);
  const uint32_t nlabels = lab.read_u32("header");
  if (nlabels != set.count) {
    lab.fail(4, "holds " + std::to_string(nlabels) + " labels but " + images_path + " holds " +
                    std::to_string(set.count) + " images (count mismatch)");
  }
  const std::vector<uint8_t> label_bytes = lab.read_section(set.count, "label");
  set.labels.assign(label_bytes.begin(), label_bytes.end());
  for (std::size_t i = 0; i < set.count; ++i) {
    if (static_cast<std::size_t>(set.labels[i]) >= set.classes) {
      lab.fail(8 + i, "label " + std::to_string(set.labels[i]) + " at index " + std::to_string(i) +
                          " is out of range 0.." + std::to_string(set.classes - 1));
    }
  }
  lab.expect_end(std::to_string(set.count) + " label bytes");
  return set;
}

ImageSet load_mnist_dir(const std::string& dir, Split split) {
  namespace fs = std::filesystem;
  const std::string prefix = split == Split::kTrain ? "train" : "t10k";
  const std::string names[2] = {prefix + "-images-idx3-ubyte", prefix + "-labels-idx1-ubyte"};
  std::string paths[2];
  std::string missing;
  for (int k = 0; k < 2; ++k) {
    std::error_code ec;
    const fs::path gz = fs::path(dir) / (names[k] + ".gz"), raw = fs::path(dir) / names[k];
    if (fs::is_regular_file(gz, ec)) {
      paths[k] = gz.string();
    } else if (fs::is_regular_file(raw, ec)) {
      paths[k] = raw.string();
    } else {
      missing += (missing.empty() ? "" : ", ") + names[k] + ".gz";
    }
  }
  if (!missing.empty()) {
    std::error_code ec;
    const std::string state =
        "missing " + missing +
        (fs::is_directory(dir, ec) ? "; raw files without .gz also work" : "; the directory does not exist");
    throw InputError("data directory '" + dir + "' has no Fashion-MNIST/MNIST IDX files (" + state +
                     "). Install the default data set with: sudo apt-get install dataset-fashion-mnist — or pass "
                     "--data DIR");
  }
  return read_idx(paths[0], paths[1]);
}

ImageSet take_first(const ImageSet& s, std::size_t n) {
  ImageSet out;
  out.count = std::min(n, s.count);
  out.rows = s.rows;
  out.cols = s.cols;
  out.channels = s.channels;
  out.classes = s.classes;
  out.int8_features = s.int8_features;
  out.feature_exponent = s.feature_exponent;
  const std::size_t px = out.count * s.image_size();
  out.pixels.assign(s.pixels.begin(), s.pixels.begin() + static_cast<std::ptrdiff_t>(px));
  out.labels.assign(s.labels.begin(), s.labels.begin() + static_cast<std::ptrdiff_t>(out.count));
  return out;
}

}  // namespace qtrain::data
