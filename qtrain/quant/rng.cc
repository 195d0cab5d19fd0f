#include "qtrain/quant/rng.h"

#include "qtrain/kernels/philox.h"

#include <cmath>
#include <numbers>

namespace qtrain::quant {

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key) {
  return kernels::philox4x32_10(counter, key);
}

uint32_t CounterRng::u32(uint64_t index) const {
  const uint64_t block = index >> 2;
  const auto r = philox4x32({static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                             static_cast<uint32_t>(stream_), static_cast<uint32_t>(stream_ >> 32)},
                            key_);
  return r[index & 3];
}

void CounterRng::fill_u32(uint64_t first, std::size_t n, uint32_t* out) const {
  std::size_t i = 0;
  // Head up to a block boundary, whole blocks with SIMD straight into `out`, then the tail.
  for (; i < n && ((first + i) & 3) != 0; ++i) out[i] = u32(first + i);
  const std::size_t blocks = (n - i) / 4;
  if (blocks > 0) kernels::philox_blocks((first + i) >> 2, blocks, stream_, key_, out + i);
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
