// Integer SGD with momentum and weight decay on int32 fixed-point master weights (PyTorch's SGD formula):
//   v ← μ·v + (g + λ·w)        w ← w − η·v
// μ, λ and η are control-plane scalars turned into dyadic numbers (m·2^−s) each step; everything else is integer.
// All terms are summed in int64 at the master exponent E (2^24 steps per initial weight bound), so a gradient is
// never rounded away before it reaches the buffer. η·v is rounded into E stochastically: an update smaller than
// one step still moves the weight by the right amount on average (the classic failure of low-precision updates).
// The momentum buffer is stored as int32 at the finest exponent that holds it; the master weights move to a
// coarser exponent when |w| would need more than 30 bits (|w| ≤ 2^30 after it), so neither overflows.
#pragma once

#include <cstdint>
#include <vector>

#include "qtrain/engine/core/param.h"
#include "qtrain/quant/uninit_vector.h"

namespace qtrain {

namespace kernels {
class ThreadPool;
}  // namespace kernels

struct SgdConfig {
  double momentum = 0.9;
  double weight_decay = 5e-4;
};

class Sgd {
 public:
  explicit Sgd(const SgdConfig& cfg);
  // One update of every parameter that has a gradient; clears the gradients. `step` and `seed` key the
  // stochastic rounding. A large tensor's update is split over `pool` (when given) in ranges of whole blocks;
  // the result does not depend on the number of threads.
  void step(const std::vector<Param*>& params, double lr, uint64_t step, uint64_t seed,
            kernels::ThreadPool* pool = nullptr);
  const SgdConfig& config() const { return cfg_; }

 private:
  SgdConfig cfg_;
  UninitVector<int64_t> scratch_;  // the int64 accumulators, every element written before it is read
};

}  // namespace qtrain
