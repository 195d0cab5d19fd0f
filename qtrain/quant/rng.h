// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11).
//
// A draw is a pure function of (seed, stream, index): no state advances, so the value used to round element i
// of a tensor is the same whichever thread rounds it and in whatever order. Streams name a use, e.g.
// stream_id(step, tensor) for stochastic rounding of one tensor in one training step; the index is the element's
// position in the tensor. This is what makes training bit-exact for every thread count.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace qtrain::quant {

// Philox4x32 with 10 rounds: 128-bit counter, 64-bit key → four 32-bit words.
std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

// Stream identifiers for the distinct uses of randomness. `purpose` keeps e.g. data shuffling and stochastic
// rounding of the same step apart.
enum class Purpose : uint32_t { kRounding = 1, kShuffle = 2, kInit = 3, kAugment = 4, kSampling = 5 };
inline uint64_t stream_id(Purpose purpose, uint64_t step, uint32_t tensor) {
  return (static_cast<uint64_t>(purpose) << 60) ^ (step << 20) ^ tensor;
}

class CounterRng {
 public:
  CounterRng(uint64_t seed, uint64_t stream)
      : key_{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)}, stream_(stream) {}

  // The 32-bit draw for position `index`.
  uint32_t u32(uint64_t index) const;
  // Draws for positions [first, first + n) into out[0..n): four positions per Philox block.
  void fill_u32(uint64_t first, std::size_t n, uint32_t* out) const;
  // Uniform in [0, bound) for position `index` (Lemire's multiply-shift; bias ≤ bound / 2^32).
  uint32_t below(uint64_t index, uint32_t bound) const;
  // Uniform double in [0, 1) for position `index` (control plane only: initialisation, sampling).
  double uniform(uint64_t index) const;
  // Standard normal for position `index` (Box–Muller over two draws; control plane only).
  double normal(uint64_t index) const;

 private:
  std::array<uint32_t, 2> key_;
  uint64_t stream_;
};

}  // namespace qtrain::quant
