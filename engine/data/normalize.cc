#include "engine/data/normalize.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "quant/error.h"

namespace qtrain::data {

PixelNorm fit_pixel_norm(const ImageSet& train) {
  if (train.pixels.empty()) throw InputError("pixel normalization: the training set has no pixels");
  // A histogram makes the statistics exact in integers and independent of summation order.
  std::array<uint64_t, 256> hist{};
  for (const uint8_t p : train.pixels) ++hist[p];
  uint64_t n = 0, sum = 0;
  for (int p = 0; p < 256; ++p) {
    n += hist[p];
    sum += hist[p] * static_cast<uint64_t>(p);
  }
  const double mean_byte = static_cast<double>(sum) / static_cast<double>(n);
  double var_byte = 0.0;
  for (int p = 0; p < 256; ++p) {
    const double d = p - mean_byte;
    var_byte += static_cast<double>(hist[p]) * d * d;
  }
  var_byte /= static_cast<double>(n);
  if (!(var_byte > 0.0)) {
    throw InputError("pixel normalization: every training pixel has the value " + std::to_string(train.pixels.front()) +
                     ", so there is no spread to normalize by");
  }
  return make_pixel_norm(mean_byte / 255.0, std::sqrt(var_byte) / 255.0);
}

PixelNorm make_pixel_norm(double mean, double stddev) {
  if (!std::isfinite(mean) || !std::isfinite(stddev) || !(stddev > 0.0)) {
    throw InputError("pixel normalization: mean " + std::to_string(mean) + " / standard deviation " +
                     std::to_string(stddev) + " are invalid (need finite values and a positive deviation)");
  }
  PixelNorm norm;
  norm.mean = mean;
  norm.stddev = stddev;
  const double bound = std::max(std::fabs((0.0 - mean) / stddev), std::fabs((1.0 - mean) / stddev));
  if (!std::isfinite(bound)) {
    throw InputError("pixel normalization: standard deviation " + std::to_string(stddev) + " is too small");
  }
  // Smallest e with bound ≤ 127·2^e: start from the logarithm, then settle it exactly.
  int e = static_cast<int>(std::ceil(std::log2(bound / 127.0)));
  while (127.0 * std::ldexp(1.0, e) < bound) ++e;
  while (127.0 * std::ldexp(1.0, e - 1) >= bound) --e;
  norm.exponent = e;
  for (int p = 0; p < 256; ++p) {
    const double x = (p / 255.0 - mean) / stddev;
    const double q = std::round(std::ldexp(x, -e));  // half away from zero
    norm.table[static_cast<std::size_t>(p)] = static_cast<int8_t>(std::clamp(q, -127.0, 127.0));
  }
  return norm;
}

}  // namespace qtrain::data
