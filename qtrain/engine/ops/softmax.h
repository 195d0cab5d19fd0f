// PROVISIONAL (branch h-vit only; replaced by the softmax helper's op before merging).
#pragma once
#include <cstddef>
#include "qtrain/engine/core/autograd.h"
namespace qtrain {
struct SoftmaxConfig {
  double scale = 1.0;
  bool causal = false;
  std::size_t rows_per_matrix = 0;
  void validate() const {}
};
VarPtr softmax(const StepContext& ctx, const SoftmaxConfig& cfg, const VarPtr& x);
}  // namespace qtrain
