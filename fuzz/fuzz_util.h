// Helpers shared by the fuzz targets: an in-memory file (memfd) whose /proc path the file readers can open,
// gzip compression, and CRC fix-ups so mutated model files and checkpoints get past their checksums and exercise
// the parsers behind them (the checksum checks themselves are covered by the unit tests).
#pragma once

#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace qtrain::fuzz {

// A file that lives in memory; path() can be passed to anything that opens files by name.
class MemFile {
 public:
  explicit MemFile(const char* name) : fd_(::memfd_create(name, MFD_CLOEXEC)) {
    if (fd_ < 0) throw std::runtime_error("memfd_create failed");
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemFile() { ::close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  void set(const void* data, std::size_t n) {
    if (::ftruncate(fd_, 0) != 0) throw std::runtime_error("ftruncate failed");
    const auto* p = static_cast<const char*>(data);
    std::size_t done = 0;
    while (done < n) {
      const ssize_t w = ::pwrite(fd_, p + done, n - done, static_cast<off_t>(done));
      if (w <= 0) throw std::runtime_error("pwrite failed");
      done += static_cast<std::size_t>(w);
    }
  }
  void set(const std::string& s) { set(s.data(), s.size()); }
  const std::string& path() const { return path_; }

 private:
  int fd_;
  std::string path_;
};

// `data` as a gzip stream (what gzip(1) writes, without a file name).
inline std::string gzip(const uint8_t* data, std::size_t n) {
  z_stream z{};
  if (deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) throw std::runtime_error("deflateInit2");
  std::string out(deflateBound(&z, static_cast<uLong>(n)) + 32, '\0');
  z.next_in = const_cast<Bytef*>(data);
  z.avail_in = static_cast<uInt>(n);
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  const int rc = deflate(&z, Z_FINISH);
  deflateEnd(&z);
  if (rc != Z_STREAM_END) throw std::runtime_error("deflate");
  out.resize(z.total_out);
  return out;
}

inline uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

inline void put_be32(std::string& s, uint32_t v) {
  for (int k = 24; k >= 0; k -= 8) s.push_back(static_cast<char>((v >> k) & 0xFF));
}

// An IDX images file of `count` 1×1 images (to pair with fuzzed labels) or an IDX labels file of `count` labels.
inline std::string idx_images(uint32_t count) {
  std::string s;
  put_be32(s, 0x00000803);
  put_be32(s, count);
  put_be32(s, 1);
  put_be32(s, 1);
  for (uint32_t i = 0; i < count; ++i) s.push_back(static_cast<char>(i * 37));
  return s;
}
inline std::string idx_labels(uint32_t count) {
  std::string s;
  put_be32(s, 0x00000801);
  put_be32(s, count);
  for (uint32_t i = 0; i < count; ++i) s.push_back(static_cast<char>(i % 10));
  return s;
}

inline uint32_t crc(const char* p, std::size_t n) {
  return static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(p), static_cast<uInt>(n)));
}

// Model file: the last 4 bytes are the CRC-32 of everything before them.
inline void fix_model_crc(std::string& b) {
  if (b.size() < 4) return;
  const uint32_t c = crc(b.data(), b.size() - 4);
  std::memcpy(b.data() + b.size() - 4, &c, 4);
}

// Checkpoint: after the 16-byte preamble, sections of tag(4) | u64 length | payload | u32 CRC of all three.
inline void fix_checkpoint_crcs(std::string& b) {
  std::size_t pos = 16;
  while (pos + 12 <= b.size()) {
    uint64_t len;
    std::memcpy(&len, b.data() + pos + 4, 8);
    if (len > b.size() - pos - 12 || b.size() - pos - 12 - len < 4) return;
    const std::size_t crc_at = pos + 12 + static_cast<std::size_t>(len);
    const uint32_t c = crc(b.data() + pos, crc_at - pos);
    std::memcpy(b.data() + crc_at, &c, 4);
    pos = crc_at + 4;
  }
}

}  // namespace qtrain::fuzz
