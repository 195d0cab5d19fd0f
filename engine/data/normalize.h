// Pixel normalization into the integer data plane.
//
// The float formula is x(p) = (p/255 − mean) / std for a pixel byte p, with mean and std of the training pixels
// (scaled to [0, 1]). The data plane holds it as int8 q(p) with one power-of-two exponent e for the whole input:
//   x(p) ≈ q(p) · 2^e,   q(p) = clamp(round(x(p) · 2^−e), −127, 127),
// where e is the smallest integer with max(|x(0)|, |x(255)|) ≤ 127 · 2^e, so no entry clips and the error of every
// entry is at most half a unit (2^(e−1)). Floats are used only here, to derive the 256-entry table once
// (file I/O conversion); the per-pixel work is a table lookup.
#pragma once

#include <array>
#include <cstdint>

#include "engine/data/idx.h"

namespace qtrain::data {

struct PixelNorm {
  int exponent = 0;                 // e: real value of table[p] is table[p] · 2^e
  std::array<int8_t, 256> table{};  // pixel byte p → q(p)
  double mean = 0.0;                // mean of the training pixels, in [0, 1] units (recorded in saved models)
  double stddev = 1.0;              // population standard deviation of the training pixels, in [0, 1] units
};

// Mean and standard deviation of every pixel of `train`, then make_pixel_norm. Throws InputError if the set has
// no pixels or all of its pixels are equal (no spread to normalize by).
PixelNorm fit_pixel_norm(const ImageSet& train);

// The table for given statistics (e.g. read back from a saved model). Throws InputError unless mean is finite and
// stddev is finite and positive.
PixelNorm make_pixel_norm(double mean, double stddev);

}  // namespace qtrain::data
