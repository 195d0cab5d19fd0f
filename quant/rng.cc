#include "quant/rng.h"

#include <cmath>
#include <numbers>

namespace qtrain::quant {

namespace {
constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;

inline void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}
}  // namespace

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kMul0, c[0], hi0, lo0);
    mulhilo(kMul1, c[2], hi1, lo1);
    c = {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
    k[0] += kWeyl0;
    k[1] += kWeyl1;
  }
  return c;
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
  while (i < n) {
    const uint64_t index = first + i;
    const uint64_t block = index >> 2;
    const auto r = philox4x32({static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                               static_cast<uint32_t>(stream_), static_cast<uint32_t>(stream_ >> 32)},
                              key_);
    for (uint64_t lane = index & 3; lane < 4 && i < n; ++lane, ++i) out[i] = r[lane];
  }
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
