// Optimizers: the interface the trainer drives (one update of every parameter per step, with state the optimizer
// owns and exposes generically for checkpoints), and the integer SGD (the integer AdamW is in adamw.h).
//
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
#include <memory>
#include <string>
#include <vector>

#include "qtrain/engine/core/param.h"
#include "qtrain/engine/core/tensor.h"
#include "qtrain/engine/optim/state_table.h"
#include "qtrain/quant/uninit_vector.h"

namespace qtrain {

namespace kernels {
class ThreadPool;
}  // namespace kernels

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // The name make_optimizer knows it by ("sgd", "adamw"); checkpoints record it.
  virtual std::string name() const = 0;
  // One update of every parameter that has a gradient, with learning rate `lr` (the control-plane schedule's
  // value); clears the gradients and bumps each updated parameter's version. `step` and `seed` key the stochastic
  // rounding. Work may be split over `pool` (when given); the result does not depend on the number of threads.
  // State is keyed by parameter name: the names in `params` must be distinct (a Model's are).
  virtual void step(const std::vector<Param*>& params, double lr, uint64_t step, uint64_t seed,
                    kernels::ThreadPool* pool = nullptr) = 0;
  // The state, as copies, in a fixed order. A parameter that was never updated has none (its state starts at
  // zero on its first update).
  virtual std::vector<NamedState> state() const = 0;
  // Throws std::invalid_argument naming the parameter and slot unless `s` can be this optimizer's state for `p`
  // (a slot it keeps, int32 with one exponent, p's shape, an exponent its update handles).
  virtual void check_state(const NamedState& s, const Param& p) const = 0;
  // Replaces the whole state (a checkpoint's). Every entry must name one of `params` and pass check_state, and no
  // (parameter, slot) may appear twice; std::invalid_argument otherwise (the state is then unchanged).
  virtual void load_state(std::vector<NamedState> state, const std::vector<Param*>& params) = 0;
};

struct SgdConfig {
  double momentum = 0.9;
  double weight_decay = 5e-4;
};

// AdamW (PyTorch's torch.optim.AdamW formula, decoupled weight decay; adamw.h has the integer form).
struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.999;  // 0 ≤ β < 1 with 1 − β ≥ 10^−6
  double eps = 1e-8;                  // (0, 1]
  double weight_decay = 0.05;         // [0, 1)
};

// The hyperparameters of every optimizer make_optimizer builds (each reads its own).
struct OptimizerConfig {
  OptimizerConfig() = default;
  OptimizerConfig(const SgdConfig& s) : sgd(s) {}     // NOLINT(google-explicit-constructor): make_optimizer("sgd", SgdConfig{…})
  OptimizerConfig(const AdamWConfig& a) : adamw(a) {}  // NOLINT(google-explicit-constructor)
  OptimizerConfig(const SgdConfig& s, const AdamWConfig& a) : sgd(s), adamw(a) {}
  SgdConfig sgd;
  AdamWConfig adamw;
};

// The names make_optimizer knows, for messages: "sgd, adamw".
const char* optimizer_names();

// The optimizer called `name` ("sgd", "adamw"), validated; UsageError for an unknown name (listing the known ones) or a
// hyperparameter out of range.
std::unique_ptr<Optimizer> make_optimizer(const std::string& name, const OptimizerConfig& config);

class Sgd final : public Optimizer {
 public:
  // UsageError unless 0 ≤ momentum < 1 and 0 ≤ weight decay < 1.
  explicit Sgd(const SgdConfig& cfg);
  std::string name() const override { return "sgd"; }
  // A large tensor's update is split over `pool` in ranges of whole blocks. A parameter's momentum buffer is
  // created on its first update: zeros at the master exponent.
  void step(const std::vector<Param*>& params, double lr, uint64_t step, uint64_t seed,
            kernels::ThreadPool* pool = nullptr) override;
  // One "momentum" entry per parameter updated so far, in the order of their first updates.
  std::vector<NamedState> state() const override;
  // The momentum exponent must lie within 62 of the master exponent (the update's shift bound).
  void check_state(const NamedState& s, const Param& p) const override;
  void load_state(std::vector<NamedState> state, const std::vector<Param*>& params) override;
  const SgdConfig& config() const { return cfg_; }
  // The momentum buffer of the parameter called `param`, or null before its first update.
  const Tensor* momentum(const std::string& param) const { return table_.find(param, "momentum"); }

 private:
  SgdConfig cfg_;
  StateTable table_{"SGD", {"momentum"}};
  UninitVector<int64_t> scratch_;  // the int64 accumulators, every element written before it is read
};

}  // namespace qtrain
