// Operands for the GEMM tests (test_gemm, test_gemm_batched).
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace qtrain::kernels {

// Uniform over [lo, hi], with both extremes planted at the start, the end and in the middle.
inline std::vector<int8_t> random_in_range(std::size_t size, int lo, int hi, std::mt19937& rng) {
  std::uniform_int_distribution<int> dist(lo, hi);
  std::vector<int8_t> v(size);
  for (auto& x : v) x = static_cast<int8_t>(dist(rng));
  if (size >= 1) v[0] = static_cast<int8_t>(lo);
  if (size >= 2) v[size - 1] = static_cast<int8_t>(hi);
  if (size >= 4) v[size / 2] = static_cast<int8_t>(lo), v[size / 2 + 1] = static_cast<int8_t>(hi);
  return v;
}

// The full int8 range.
inline std::vector<int8_t> random_int8(std::size_t size, std::mt19937& rng) {
  return random_in_range(size, -128, 127, rng);
}

// What the tests fill outputs with, to see which cells a kernel wrote.
inline constexpr int32_t kSentinel = 0x5A5A5A5A;

}  // namespace qtrain::kernels
