#include "qtrain/engine/io/binary_io.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <vector>

namespace qtrain::binary_io {

void put_i32_values(std::string& out, const Tensor& t) {
  out.append(reinterpret_cast<const char*>(t.data<int32_t>()), t.size() * sizeof(int32_t));
}

void Reader::read_i32_values(Tensor& t, const std::string& name) {
  const std::size_t at = pos_;
  need(t.size() * sizeof(int32_t), "tensor data");
  int32_t* dst = t.data<int32_t>();
  std::memcpy(dst, bytes_.data() + pos_, t.size() * sizeof(int32_t));
  pos_ += t.size() * sizeof(int32_t);
  constexpr int32_t kLimit = int32_t{1} << 30;
  for (std::size_t i = 0; i < t.size(); ++i)
    if (dst[i] > kLimit || dst[i] < -kLimit)
      fail_at(at + 4 * i, name + " element " + std::to_string(i) + " = " + std::to_string(dst[i]) +
                              " is out of range (|value| <= 2^30)");
}

uint32_t crc32_of(const char* data, std::size_t n) {
  uLong crc = crc32(0L, Z_NULL, 0);
  while (n > 0) {
    const auto chunk = static_cast<uInt>(std::min<std::size_t>(n, 1u << 30));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(data), chunk);
    data += chunk;
    n -= chunk;
  }
  return static_cast<uint32_t>(crc);
}

std::string read_file_bounded(const std::string& path, const char* what, std::size_t max_bytes) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw InputError(path + ": is a directory, not a " + what);
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw InputError(path + ": cannot open " + what + ": " + std::strerror(errno));
  const std::streamoff end = f.tellg();
  if (end < 0) throw InputError(path + ": cannot read " + what + " (not a regular file?)");
  const auto size = static_cast<std::size_t>(end);
  if (size > max_bytes)
    throw InputError(path + ": " + std::to_string(size) + " bytes is too large for a " + what + " (at most " +
                     std::to_string(max_bytes) + ")");
  std::string bytes(size, '\0');
  f.seekg(0);
  f.read(bytes.data(), static_cast<std::streamsize>(size));
  if (static_cast<std::size_t>(f.gcount()) != size) throw InputError(path + ": read error in " + what);
  return bytes;
}

void check_size_bound(const ModelSpec& spec, std::size_t file_bytes) {
  const std::size_t bound = spec.size_bound();
  const uint64_t budget = 2 * (uint64_t{file_bytes} / 4) + (uint64_t{1} << 21);
  if (bound > budget)
    throw std::runtime_error("the model (" + spec.describe() + ") has up to " + std::to_string(bound) +
                             " values, more than a file of " + std::to_string(file_bytes) + " bytes can hold");
}

}  // namespace qtrain::binary_io
