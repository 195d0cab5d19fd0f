// Little helpers shared by the binary file formats (model files, checkpoints): appending little-endian values,
// a bounds-checked reader whose errors name the file and byte offset, CRC-32, and reading a whole file with a
// size limit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "qtrain/engine/models/model.h"
#include "qtrain/engine/core/tensor.h"
#include "qtrain/quant/error.h"

namespace qtrain::binary_io {

template <typename T>
void put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // the formats are little-endian; so is every machine qtrain targets
  out.append(b, sizeof(T));
}

// Appends t's int32 values (row-major).
void put_i32_values(std::string& out, const Tensor& t);

// Sequential reader over a file's bytes; every failure is an InputError "<path>: byte <offset>: <message>".
class Reader {
 public:
  Reader(const std::string& path, const std::string& bytes, std::size_t begin = 0, std::size_t end = std::string::npos)
      : path_(path), bytes_(bytes), pos_(begin), end_(end == std::string::npos ? bytes.size() : end) {}
  template <typename T>
  T get(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string take(std::size_t n, const char* what) {
    need(n, what);
    std::string s = bytes_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  // Fills t (already shaped, int32) from the next rows·cols values; each must satisfy |v| ≤ 2^30 (the bound the
  // optimizer keeps master weights and momentum within: it narrows a tensor whose largest value needs more than
  // 30 bits, and rounding to nearest can land exactly on 2^30).
  void read_i32_values(Tensor& t, const std::string& name);
  [[noreturn]] void fail(const std::string& msg) const { fail_at(pos_, msg); }
  [[noreturn]] void fail_at(std::size_t at, const std::string& msg) const {
    throw InputError(path_ + ": byte " + std::to_string(at) + ": " + msg);
  }
  std::size_t pos() const { return pos_; }
  std::size_t remaining() const { return end_ - pos_; }
  const std::string& path() const { return path_; }

 private:
  void need(std::size_t n, const char* what) const {
    if (end_ - pos_ < n)
      fail(std::string("file ends inside the ") + what + " (truncated: " + std::to_string(bytes_.size()) +
           " bytes in all)");
  }
  const std::string& path_;
  const std::string& bytes_;
  std::size_t pos_, end_;
};

uint32_t crc32_of(const char* data, std::size_t n);

// The whole file; InputError naming the file if it is missing, a directory, unreadable or larger than max_bytes
// (checked before reading). `what` names the kind of file for messages ("model file", "checkpoint").
std::string read_file_bounded(const std::string& path, const char* what, std::size_t max_bytes);

// Throws std::runtime_error unless spec.size_bound() fits a file of `file_bytes` (at most twice its int32 values
// plus 2^21): called before build_model so a small file cannot make it allocate a huge model.
void check_size_bound(const ModelSpec& spec, std::size_t file_bytes);

}  // namespace qtrain::binary_io
