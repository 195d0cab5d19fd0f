// A trainable parameter: int32 fixed-point master weights with one exponent and the gradient of the current step.
// The optimizer keeps its own per-parameter state (qtrain/engine/optim/optimizer.h), keyed by `name`.
#pragma once

#include <cstdint>
#include <string>

#include "qtrain/engine/core/tensor.h"

namespace qtrain {

struct Param {
  std::string name;
  uint32_t id = 0;        // stable id: keys this parameter's random streams
  Tensor master;          // int32, one exponent; the optimizer keeps |master| ≤ 2^30 by moving the exponent
  Tensor grad;            // int32, one exponent per row or per tensor; valid while has_grad
  bool has_grad = false;
  bool decay = true;      // weight decay applies
  // Changes whenever the master weights may have changed (an optimizer step, a load, any mutable access to
  // `master`; Tensor::generation): lets layers cache the quantized weights of one version.
  uint64_t version() const { return master.generation(); }
};

// Fill `p.master` (rows×cols) with the integer uniform distribution U(−bound, bound), bound = 1/√fan_in
// (PyTorch's default for Linear weights and biases), at an exponent that gives 2^24 steps per bound.
void init_uniform(Param& p, std::size_t rows, std::size_t cols, std::size_t fan_in, uint64_t seed);
// The same with the bound given (> 0): U(−bound, bound) at 2^24 steps per bound.
void init_uniform_bound(Param& p, std::size_t rows, std::size_t cols, double bound, uint64_t seed);

}  // namespace qtrain
