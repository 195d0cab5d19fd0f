// A small user-defined model the model-file and checkpoint fuzz targets register (and make_seeds writes seeds of),
// so the fuzzers reach the registry's path for models that are not built in: conv3x3 → L1 norm + ReLU → global
// average pool → linear, its width ("width", 1..16) and bits ("bits", 2..8) from the configuration.
#pragma once

#include <cstdint>
#include <memory>

#include "qtrain/engine/layers/conv2d.h"
#include "qtrain/engine/layers/linear.h"
#include "qtrain/engine/layers/norm.h"
#include "qtrain/engine/layers/pool.h"
#include "qtrain/engine/models/registry.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/shiftquant.h"

namespace qtrain::fuzz {

inline constexpr const char* kUserModel = "fuzz_user_conv";

inline ModelLayers user_conv(const ModelConfig& cfg, const InputShape& in, std::size_t classes, uint64_t seed) {
  const auto width = static_cast<std::size_t>(cfg.get_int("width", 4, 1, 16));
  const int bits = static_cast<int>(cfg.get_int("bits", 8, 2, 8));
  if (in.h > 64 || in.w > 64 || in.c > 4 || classes > 16)
    throw UsageError("model '" + std::string(kUserModel) + "' takes at most 64x64x4 images and 16 classes");
  Conv2dSpec cs;
  cs.in_h = in.h;
  cs.in_w = in.w;
  cs.in_channels = in.c;
  cs.out_channels = width;
  cs.padding = 1;
  cs.weight_bits = cs.grad_bits = bits;
  cs.groups = quant::max_groups(bits);
  cs.signed_input = true;
  cs.needs_input_grad = false;
  NormOptions opt;
  opt.relu = true;
  LinearSpec ls;
  ls.in = width;
  ls.out = classes;
  ModelLayers layers;
  layers.push_back(std::make_unique<Conv2d>(cs, 0, seed));
  layers.push_back(std::make_unique<L1BatchNorm>(width, 1, opt));
  layers.push_back(std::make_unique<GlobalAvgPool>(in.h, in.w, width));
  layers.push_back(std::make_unique<Linear>(ls, 2, seed));
  return layers;
}

// Registers kUserModel once per process.
inline void register_user_model() {
  static const bool done = (register_model(kUserModel, user_conv), true);
  (void)done;
}

}  // namespace qtrain::fuzz
