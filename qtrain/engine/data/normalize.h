// Pixel normalization into the integer data plane, per channel.
//
// The float formula is x_c(p) = (p/255 − mean_c) / std_c for a byte p of channel c, with mean and std of the
// training values of that channel (scaled to [0, 1]). The data plane holds it as int8 q_c(p) with one power-of-two
// exponent e shared by all channels (the input is one tensor):
//   x_c(p) ≈ q_c(p) · 2^e,   q_c(p) = clamp(round(x_c(p) · 2^−e), −127, 127),
// where e is the smallest integer with max over c of max(|x_c(0)|, |x_c(255)|) ≤ 127 · 2^e — the finest exponent
// that covers every channel's range — so no entry clips and the error of every entry is at most half a unit
// (2^(e−1)). int8 0 is the real value 0, i.e. the channel's mean. Floats are used only here, to derive the
// 256-entry tables once (file I/O conversion); the per-pixel work is a table lookup.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "qtrain/engine/data/idx.h"

namespace qtrain::data {

struct ChannelNorm {
  double mean = 0.0;                // mean of the channel's training values, in [0, 1] units (recorded in saved models)
  double stddev = 1.0;              // population standard deviation of the channel's training values, in [0, 1] units
  std::array<int8_t, 256> table{};  // byte p → q_c(p)

  bool operator==(const ChannelNorm&) const = default;
};

struct PixelNorm {
  int exponent = 0;                   // e: real value of channels[c].table[p] is table[p] · 2^e
  std::vector<ChannelNorm> channels;  // one per image channel
  // The bytes are int8 values already (ImageSet::int8_features): table[p] = (int8) p, clamped to ±127, with mean 0
  // and stddev 1 recorded; no statistics are fitted.
  bool identity = false;

  bool operator==(const PixelNorm&) const = default;
};

// Per-channel mean and standard deviation of `train`, then make_pixel_norm. Throws InputError if the set has no
// pixels or a channel's values are all equal (no spread to normalize by). A set of int8 features
// (train.int8_features) gets identity_pixel_norm(train.channels, train.feature_exponent) instead.
PixelNorm fit_pixel_norm(const ImageSet& train);

// int8 values pass into the data plane unchanged, with real value q · 2^exponent (InputError unless 1 ≤ channels
// ≤ 4096 and |exponent| ≤ 64).
PixelNorm identity_pixel_norm(std::size_t channels, int exponent);

// The tables for given per-channel statistics (e.g. read back from a saved model). Throws InputError unless both
// vectors have the same, non-zero length, every mean is finite and every stddev is finite and positive.
PixelNorm make_pixel_norm(const std::vector<double>& mean, const std::vector<double>& stddev);

}  // namespace qtrain::data
