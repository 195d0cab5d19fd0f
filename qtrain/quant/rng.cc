#include "qtrain/quant/rng.h"

#include <cmath>
#include <numbers>
#include <stdexcept>
#include <string>

#include "qtrain/kernels/philox.h"
#include "qtrain/quant/error.h"

namespace qtrain::quant {

namespace {
const char* purpose_name(Purpose p) {
  switch (p) {
    case Purpose::kRounding:
      return "rounding";
    case Purpose::kShuffle:
      return "shuffle";
    case Purpose::kInit:
      return "init";
    case Purpose::kAugment:
      return "augment";
    case Purpose::kSampling:
      return "sampling";
    case Purpose::kUpdate:
      return "update";
  }
  return "unknown";
}

void check_field(const StreamKey& key, const char* field, uint64_t value, uint64_t limit) {
  if (value < limit) return;
  throw UsageError(std::string("random stream key (") + purpose_name(key.purpose) + "): " + field + " " +
                   std::to_string(value) + " is out of range 0.." + std::to_string(limit - 1));
}

[[noreturn]] void index_out_of_range(uint64_t index) {
  throw std::out_of_range("CounterRng: element index " + std::to_string(index) + " is beyond 2^40");
}
}  // namespace

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key) {
  return kernels::philox4x32_10(counter, key);
}

EncodedStream encode(const StreamKey& key) {
  check_field(key, "step", key.step, kMaxStep);
  check_field(key, "pass", key.pass, kMaxPass);
  uint64_t tensor = 0;
  uint64_t purpose = static_cast<uint64_t>(key.purpose);
  switch (key.purpose) {
    case Purpose::kRounding:
    case Purpose::kUpdate:
      check_field(key, key.purpose == Purpose::kRounding ? "layer id" : "parameter id", key.owner,
                  key.purpose == Purpose::kRounding ? uint64_t{1} << 17 : uint64_t{1} << 15);
      check_field(key, "slot", key.slot, 4);
      tensor = uint64_t{key.owner} * 4 + key.slot;
      if (key.purpose == Purpose::kUpdate) {
        tensor |= uint64_t{1} << 19;
        purpose = static_cast<uint64_t>(Purpose::kRounding);  // the layout of earlier releases
      }
      break;
    case Purpose::kShuffle:
    case Purpose::kInit:
    case Purpose::kAugment:
    case Purpose::kSampling:
      check_field(key, key.purpose == Purpose::kInit ? "parameter id" : "owner", key.owner, uint64_t{1} << 20);
      check_field(key, "slot", key.slot, 1);
      tensor = key.owner;
      break;
    default:
      throw UsageError("random stream key: unknown purpose " + std::to_string(static_cast<uint32_t>(key.purpose)));
  }
  return {purpose << 60 | key.step << 20 | tensor, uint64_t{key.pass} * kMaxIndex};
}

CounterRng::CounterRng(uint64_t seed, const StreamKey& key) : CounterRng(seed, uint64_t{0}) {
  const EncodedStream e = encode(key);
  stream_ = e.stream;
  offset_ = e.index_offset;
}

uint32_t CounterRng::u32(uint64_t index) const {
  if (index >= kMaxIndex) index_out_of_range(index);
  const uint64_t block = (index + offset_) >> 2;
  const auto r = philox4x32({static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                             static_cast<uint32_t>(stream_), static_cast<uint32_t>(stream_ >> 32)},
                            key_);
  return r[index & 3];
}

void CounterRng::fill_u32(uint64_t first, std::size_t n, uint32_t* out) const {
  if (first > kMaxIndex || n > kMaxIndex - first) index_out_of_range(first + n);
  std::size_t i = 0;
  // Head up to a block boundary, whole blocks with SIMD straight into `out`, then the tail. The offset is a
  // multiple of 4, so blocks of the offset stream start where blocks of the index do.
  for (; i < n && ((first + i) & 3) != 0; ++i) out[i] = u32(first + i);
  const std::size_t blocks = (n - i) / 4;
  if (blocks > 0) kernels::philox_blocks((first + i + offset_) >> 2, blocks, stream_, key_, out + i);
  for (i += 4 * blocks; i < n; ++i) out[i] = u32(first + i);
}

uint32_t CounterRng::below(uint64_t index, uint32_t bound) const {
  return static_cast<uint32_t>((static_cast<uint64_t>(u32(index)) * bound) >> 32);
}

double CounterRng::uniform(uint64_t index) const {
  // 53 random bits from two consecutive draws of a private sub-sequence.
  const uint64_t a = u32(2 * index), b = u32(2 * index + 1);
  return static_cast<double>(((a << 32) | b) >> 11) * 0x1.0p-53;
}

double CounterRng::normal(uint64_t index) const {
  const double u1 = 1.0 - uniform(2 * index);  // (0, 1]
  const double u2 = uniform(2 * index + 1);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

}  // namespace qtrain::quant
