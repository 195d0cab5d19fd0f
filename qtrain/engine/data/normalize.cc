#include "qtrain/engine/data/normalize.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "qtrain/quant/error.h"

namespace qtrain::data {

PixelNorm identity_pixel_norm(std::size_t channels, int exponent) {
  if (channels < 1 || channels > 4096 || exponent < -64 || exponent > 64)
    throw InputError("identity normalization: " + std::to_string(channels) + " channels (valid 1..4096), exponent " +
                     std::to_string(exponent) + " (valid -64..64)");
  PixelNorm norm;
  norm.identity = true;
  norm.exponent = exponent;
  norm.channels.resize(channels);
  for (ChannelNorm& ch : norm.channels)
    for (int p = 0; p < 256; ++p)
      ch.table[static_cast<std::size_t>(p)] = static_cast<int8_t>(std::max(static_cast<int8_t>(p), int8_t{-127}));
  return norm;
}

PixelNorm fit_pixel_norm(const ImageSet& train) {
  if (train.int8_features) return identity_pixel_norm(train.channels, train.feature_exponent);
  if (train.pixels.empty()) throw InputError("pixel normalization: the training set has no pixels");
  const std::size_t channels = train.channels;
  if (channels == 0 || train.pixels.size() % channels != 0) {
    throw InputError("pixel normalization: " + std::to_string(train.pixels.size()) + " values do not split into " +
                     std::to_string(channels) + " channels");
  }
  // Histograms make the statistics exact in integers and independent of summation order.
  std::vector<std::array<uint64_t, 256>> hist(channels);
  for (std::size_t j = 0; j < train.pixels.size(); j += channels)
    for (std::size_t c = 0; c < channels; ++c) ++hist[c][train.pixels[j + c]];
  std::vector<double> mean(channels), stddev(channels);
  for (std::size_t c = 0; c < channels; ++c) {
    uint64_t n = 0, sum = 0;
    for (int p = 0; p < 256; ++p) {
      n += hist[c][p];
      sum += hist[c][p] * static_cast<uint64_t>(p);
    }
    const double mean_byte = static_cast<double>(sum) / static_cast<double>(n);
    double var_byte = 0.0;
    for (int p = 0; p < 256; ++p) {
      const double d = p - mean_byte;
      var_byte += static_cast<double>(hist[c][p]) * d * d;
    }
    var_byte /= static_cast<double>(n);
    if (!(var_byte > 0.0)) {
      throw InputError("pixel normalization: every training pixel" +
                       (channels > 1 ? " of channel " + std::to_string(c) : std::string()) + " has the value " +
                       std::to_string(train.pixels[c]) + ", so there is no spread to normalize by");
    }
    mean[c] = mean_byte / 255.0;
    stddev[c] = std::sqrt(var_byte) / 255.0;
  }
  return make_pixel_norm(mean, stddev);
}

PixelNorm make_pixel_norm(const std::vector<double>& mean, const std::vector<double>& stddev) {
  if (mean.empty() || mean.size() != stddev.size()) {
    throw InputError("pixel normalization: " + std::to_string(mean.size()) + " means and " +
                     std::to_string(stddev.size()) + " standard deviations (need one of each per channel)");
  }
  PixelNorm norm;
  norm.channels.resize(mean.size());
  double bound = 0.0;  // the largest |x_c(p)| over all channels
  for (std::size_t c = 0; c < mean.size(); ++c) {
    const std::string which = mean.size() > 1 ? " of channel " + std::to_string(c) : "";
    if (!std::isfinite(mean[c]) || !std::isfinite(stddev[c]) || !(stddev[c] > 0.0)) {
      throw InputError("pixel normalization: mean " + std::to_string(mean[c]) + " / standard deviation " +
                       std::to_string(stddev[c]) + which +
                       " are invalid (need finite values and a positive deviation)");
    }
    const double b = std::max(std::fabs((0.0 - mean[c]) / stddev[c]), std::fabs((1.0 - mean[c]) / stddev[c]));
    if (!std::isfinite(b)) {
      throw InputError("pixel normalization: standard deviation " + std::to_string(stddev[c]) + which +
                       " is too small");
    }
    bound = std::max(bound, b);
    norm.channels[c].mean = mean[c];
    norm.channels[c].stddev = stddev[c];
  }
  // Smallest e with bound ≤ 127·2^e: start from the logarithm, then settle it exactly.
  int e = static_cast<int>(std::ceil(std::log2(bound / 127.0)));
  while (127.0 * std::ldexp(1.0, e) < bound) ++e;
  while (127.0 * std::ldexp(1.0, e - 1) >= bound) --e;
  norm.exponent = e;
  for (ChannelNorm& ch : norm.channels) {
    for (int p = 0; p < 256; ++p) {
      const double x = (p / 255.0 - ch.mean) / ch.stddev;
      const double q = std::round(std::ldexp(x, -e));  // half away from zero
      ch.table[static_cast<std::size_t>(p)] = static_cast<int8_t>(std::clamp(q, -127.0, 127.0));
    }
  }
  return norm;
}

}  // namespace qtrain::data
