// Integer AdamW (PyTorch's torch.optim.AdamW formula; t = the step's index + 1):
//   m ← β1·m + (1 − β1)·g        v ← β2·v + (1 − β2)·g²
//   w ← w − η·λ·w − η·(m / bc1) / (√(v / bc2) + ε),   bc_i = 1 − β_i^t
// rewritten so that the bias corrections and ε are per-step control-plane scalars:
//   w ← w − η·λ·w − K·m / (√v + ε·√bc2),   K = η·√bc2 / bc1
// Everything per element is integer (qtrain/kernels/adamw_update.h has the exact passes and bounds):
//   * m and v are int32 with one exponent each per tensor (|m|, v ≤ 2^30; v ≥ 0). The new moments are formed
//     exactly (int128) at a working exponent 62 octaves below the largest term, then rounded stochastically into
//     the finest exponent that holds the tensor's largest value: the state follows the gradients' scale up and
//     down, and a small v decays on average instead of sticking (as it would under nearest rounding).
//   * β = a/2^s and 1 − β = c/2^s with a + c = 2^s exactly (s ≤ 31, c with up to 24 significant bits), so each
//     moment is an exact convex combination; β^t for the bias corrections is the same dyadic β raised by binary
//     exponentiation in IEEE doubles (the same bits on every machine; no libm pow).
//   * √v is an exact integer square root of max(v, 1 unit)·2^30 or 2^31 (relative error < 2^−15, and never 0);
//     m/(√v + ε) is one exact integer division with at least 20 significant bits; the step K·m/D and the decay η·λ·w
//     are summed 32 bits below the master step and rounded into it stochastically, so updates below one step
//     move the weights by the right amount on average.
// The master weights move to a coarser exponent when |w| would need more than 30 bits, as SGD's do. Every pass is
// element-wise with draws keyed by element index, split over the pool in whole blocks: the bits do not depend on
// the thread count. Bias correction counts the global step (t = step + 1), as PyTorch's per-parameter count does
// when every parameter is updated every step.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "qtrain/engine/optim/optimizer.h"
#include "qtrain/engine/optim/state_table.h"
#include "qtrain/quant/uninit_vector.h"

namespace qtrain {

class AdamW final : public Optimizer {
 public:
  // UsageError (naming --beta1, --beta2, --adam-eps or --wd) unless the config is in the ranges of AdamWConfig.
  explicit AdamW(const AdamWConfig& cfg);
  std::string name() const override { return "adamw"; }
  void step(const std::vector<Param*>& params, double lr, uint64_t step, uint64_t seed,
            kernels::ThreadPool* pool = nullptr) override;
  // "m" and "v" per parameter updated so far, in the order of their first updates.
  std::vector<NamedState> state() const override;
  // Also refuses a negative v and exponents more than 250 octaves from the weights'.
  void check_state(const NamedState& s, const Param& p) const override;
  void load_state(std::vector<NamedState> state, const std::vector<Param*>& params) override;
  const AdamWConfig& config() const { return cfg_; }
  // The state tensor ("m" or "v") of the parameter called `param`, or null before its first update.
  const Tensor* moment(const std::string& param, const std::string& slot) const { return table_.find(param, slot); }

 private:
  AdamWConfig cfg_;
  StateTable table_{"AdamW", {"m", "v"}};
  UninitVector<int64_t> mz_, vz_;  // the exact new moments (mz_ then the new weights in int64)
};

}  // namespace qtrain
