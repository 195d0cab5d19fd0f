// The autograd tape. An op computes its integer forward, then records a closure that computes its integer
// backward from what the forward kept; Tape::backward runs the closures in reverse order (a topological order,
// since an op only reads variables made before it). Each op's forward and backward sit side by side in its own
// file, with the float formula they implement.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "qtrain/engine/core/tensor.h"
#include "qtrain/kernels/thread_pool.h"
#include "qtrain/quant/rng.h"

namespace qtrain {

// A value in the graph and, after backward, its gradient (int32 with one exponent).
struct Var {
  Tensor value;
  Tensor grad;
  bool has_grad = false;
  bool requires_grad = true;  // false for inputs: their gradient is never computed
  // Backward may consume an op output's gradient once the op's own backward has read it (moving it into the
  // op's input instead of copying): afterwards grad is empty and has_grad false. Set retain_grad to keep it
  // (tests that inspect an intermediate gradient).
  bool retain_grad = false;
  // The value quantized for a quantized GEMM (QGemmOp::quantize_input) and the settings that made it, kept for the
  // next consumer with the same settings: a residual block's body and shortcut convolutions read the same input.
  std::shared_ptr<const Tensor> quantized;
  uint32_t quantized_key = 0;  // 0: none
};
using VarPtr = std::shared_ptr<Var>;

VarPtr make_input(Tensor value);

// Adds g (int32, one exponent) into v's gradient, aligning exponents exactly when both exist: the sum at the finer
// exponent (exact in int64), then the finest exponent ≥ it whose int32 holds the sum (nearest-even; saturating).
// The sum's passes split over `pool` when it pays (a residual block's input gathers two large gradients).
void accumulate_grad(Var& v, Tensor&& g, kernels::ThreadPool* pool = nullptr);
// The same for a gradient the caller keeps (copied only when v has no gradient yet).
void accumulate_grad(Var& v, const Tensor& g, kernels::ThreadPool* pool = nullptr);
// The gradient of an op output for its op's backward to consume: moved out unless the Var retains it, in which
// case a copy (the Var's gradient is left as it was).
Tensor take_grad(Var& out);

class StepProfile;

class Tape {
 public:
  void record(std::function<void()> backward) { nodes_.push_back({tag_, std::move(backward)}); }
  // Runs every recorded backward in reverse order, then forgets them. With a profile, each closure's time goes to
  // the layer whose tag it was recorded under (see set_tag).
  void backward(StepProfile* profile = nullptr);
  void clear() { nodes_.clear(); }
  std::size_t size() const { return nodes_.size(); }
  // The top-level layer that closures recorded from now on belong to (Model::forward sets it when profiling).
  void set_tag(std::size_t layer) { tag_ = layer; }

 private:
  struct Node {
    std::size_t tag;
    std::function<void()> backward;
  };
  std::vector<Node> nodes_;
  std::size_t tag_ = 0;
};

// Everything an op needs to know about the step it runs in.
struct StepContext {
  kernels::ThreadPool* pool = nullptr;  // null: single thread
  Tape* tape = nullptr;                 // null: inference, nothing recorded
  uint64_t seed = 0;
  uint64_t step = 0;  // global training step: keys the stochastic-rounding streams
  StepProfile* profile = nullptr;  // non-null: Model::forward times its layers (qtrain train --profile)
  bool training() const { return tape != nullptr; }
  // The random stream for stochastic rounding of one tensor (identified by a stable id) in this step.
  quant::CounterRng rounding_rng(uint32_t tensor_id) const {
    return quant::CounterRng(seed, quant::stream_id(quant::Purpose::kRounding, step, tensor_id));
  }
};

}  // namespace qtrain
