// Where a training step's time goes (`qtrain train --profile`): wall-clock time per top-level layer, forward and
// backward, plus the step's other phases (batch gather, loss, optimizer), summed over the profiled steps. The
// forward time of a layer includes quantizing its weights and inputs; its backward time is the time of the
// backward closures it recorded on the tape (quantizing its output gradient, its dgrad and wgrad products). Pure
// bookkeeping: it never changes what a step computes.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace qtrain {

class StepProfile {
 public:
  enum class Phase { kGather, kLoss, kOptimizer, kCount };

  explicit StepProfile(std::vector<std::string> layer_names);

  void add_forward(std::size_t layer, int64_t ns) { forward_ns_.at(layer) += ns; }
  void add_backward(std::size_t layer, int64_t ns) { backward_ns_.at(layer) += ns; }
  void add(Phase phase, int64_t ns) { phase_ns_[static_cast<int>(phase)] += ns; }
  void add_step() { ++steps_; }

  std::size_t layers() const { return names_.size(); }
  int64_t forward_ns(std::size_t layer) const { return forward_ns_.at(layer); }
  int64_t backward_ns(std::size_t layer) const { return backward_ns_.at(layer); }
  int64_t phase_ns(Phase phase) const { return phase_ns_[static_cast<int>(phase)]; }
  int64_t total_ns() const;  // every timed part
  uint64_t steps() const { return steps_; }
  // A table: one row per layer and phase, milliseconds per step and share of the timed total.
  std::string table() const;

  // Nanoseconds since an arbitrary epoch (steady clock).
  static int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

 private:
  std::vector<std::string> names_;
  std::vector<int64_t> forward_ns_, backward_ns_;
  int64_t phase_ns_[static_cast<int>(Phase::kCount)] = {};
  uint64_t steps_ = 0;
};

}  // namespace qtrain
