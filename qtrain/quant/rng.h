// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11).
//
// A draw is a pure function of (seed, stream, index): no state advances, so the value used to round element i
// of a tensor is the same whichever thread rounds it and in whatever order. A stream is named by a typed
// StreamKey (what the draws are for, whose they are, in which step and pass); the index is the element's
// position in the tensor. This is what makes training bit-exact for every thread count.
//
// Layout. The Philox counter of index i is (block low, block high, stream low, stream high), block = (i + o)/4:
//   stream = purpose' << 60 | step << 20 | tensor        (step < 2^40, tensor < 2^20)
//   o      = pass · 2^40                                  (pass < 2^20; element indices < 2^40)
// with, per purpose (purpose' is the purpose's number except for kUpdate, which is written as kRounding's):
//   kRounding  tensor = owner·4 + slot          owner = layer id < 2^17, slot < 4
//   kUpdate    tensor = 2^19 | owner·4 + slot   owner = parameter id < 2^15, slot < 4
//   others     tensor = owner                   owner < 2^20 (kInit: the parameter id; data streams: 0), slot 0
// Distinct keys give distinct (stream, block) ranges: the kRounding and kUpdate tensors differ in bit 19, and a
// pass moves the blocks above every index of pass 0. Pass 0 is the layout of earlier releases (no offset), so
// their draws are unchanged.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace qtrain::quant {

// Philox4x32 with 10 rounds: 128-bit counter, 64-bit key → four 32-bit words.
std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

// The distinct uses of randomness: e.g. data shuffling and stochastic rounding of the same step stay apart.
enum class Purpose : uint32_t {
  kRounding = 1,  // stochastic rounding inside a layer (ShiftQuant of its output gradient)
  kShuffle = 2,   // the epoch's sample order
  kInit = 3,      // parameter initialisation
  kAugment = 4,   // the epoch's data augmentation
  kSampling = 5,  // sampling from a model
  kUpdate = 6,    // the optimizer's stochastic rounding of one parameter's update
};

// Which stream: every field is range-checked when the key is encoded (see the layout above).
struct StreamKey {
  Purpose purpose = Purpose::kRounding;
  uint32_t owner = 0;  // the layer (kRounding) or parameter (kUpdate, kInit) id; 0 for the data streams
  uint32_t slot = 0;   // which tensor of the owner (kRounding, kUpdate: < 4; others: 0)
  uint32_t pass = 0;   // forward/backward pass within one optimizer step (sub-networks, micro-batches)
  uint64_t step = 0;   // training step (kRounding, kUpdate), epoch (kShuffle, kAugment), 0 (kInit)
};

// The limits of the layout (element indices, passes, steps).
inline constexpr uint64_t kMaxIndex = uint64_t{1} << 40;  // element indices are < kMaxIndex
inline constexpr uint32_t kMaxPass = uint32_t{1} << 20;
inline constexpr uint64_t kMaxStep = uint64_t{1} << 40;

// A key as the generator uses it: the 64-bit stream and the offset added to every element index.
struct EncodedStream {
  uint64_t stream = 0;
  uint64_t index_offset = 0;
};
// Throws UsageError naming the field, its value and its range when a field is out of range.
EncodedStream encode(const StreamKey& key);

class CounterRng {
 public:
  // The stream of a key (encode(key); throws as it does).
  CounterRng(uint64_t seed, const StreamKey& key);
  // A raw 64-bit stream with no index offset (kernel tests, generators outside the training streams).
  CounterRng(uint64_t seed, uint64_t stream)
      : key_{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)}, stream_(stream) {}

  // The 32-bit draw for position `index` (< kMaxIndex; throws std::out_of_range beyond).
  uint32_t u32(uint64_t index) const;
  // Draws for positions [first, first + n) into out[0..n): four positions per Philox block. first + n ≤ kMaxIndex.
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
  uint64_t offset_ = 0;  // the pass's index offset
};

}  // namespace qtrain::quant
