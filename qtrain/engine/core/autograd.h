// The autograd tape. An op computes its integer forward, then records a closure that computes its integer
// backward from what the forward kept; Tape::backward runs the closures in reverse order (a topological order,
// since an op only reads variables made before it). Each op's forward and backward sit side by side in its own
// file, with the float formula they implement.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "qtrain/engine/core/param.h"
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

// Adds g (int32) into v's gradient. The first gradient is moved in (no copy, no pass); a second one is summed with
// aligned_sum (aligned_sum.h): exact at the finer exponent, then the finest exponent whose int32 holds the sum
// (nearest-even). The sum's passes split over `pool` when it pays (a residual block's input gathers two large
// gradients).
void accumulate_grad(Var& v, Tensor&& g, kernels::ThreadPool* pool = nullptr);
// The same for a gradient the caller keeps (copied only when v has no gradient yet).
void accumulate_grad(Var& v, const Tensor& g, kernels::ThreadPool* pool = nullptr);
// The same for a parameter used more than once in a step (tied weights, micro-batches, sub-networks sharing
// weights): g (int32, the master's shape, one exponent or one per row as a weight gradient has) is moved in when
// p has no gradient yet, else summed per row. Throws std::logic_error for another shape or per-column exponents.
void accumulate_grad(Param& p, Tensor&& g, kernels::ThreadPool* pool = nullptr);
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

// The rounding-stream slots of a layer (StepContext::rounding_rng): which of its tensors a stream rounds. A layer
// id owns four slots (quant/rng.h), so a layer may hold a quantized GEMM and two activation products (QMatMul) —
// attention: its projections, then Q·Kᵀ and P·V — each with a stream of its own.
inline constexpr uint32_t kOutputGradSlot = 1;        // ShiftQuant of the layer's output gradient (QGemmOp)
inline constexpr uint32_t kMatmulGradSlot = 2;        // ShiftQuant of its first QMatMul's output gradient (Q·Kᵀ)
inline constexpr uint32_t kSecondMatmulGradSlot = 3;  // ShiftQuant of its second QMatMul's output gradient (P·V)

struct QuantPolicy;

// Everything an op needs to know about the step it runs in.
struct StepContext {
  kernels::ThreadPool* pool = nullptr;  // null: single thread
  Tape* tape = nullptr;                 // null: inference, nothing recorded
  uint64_t seed = 0;
  uint64_t step = 0;  // global training step: keys the stochastic-rounding streams
  StepProfile* profile = nullptr;  // non-null: Model::forward times its layers (qtrain train --profile)
  // Which forward/backward pass of this optimizer step (several per update: sandwich sub-networks, micro-batches).
  // Each pass draws its own rounding; pass 0 draws what a single-pass step does.
  uint32_t pass = 0;
  // Per-layer quantization overrides, looked up by layer name and `pass` (core/quant_policy.h); null: every layer
  // uses its own settings.
  const QuantPolicy* policy = nullptr;
  bool training() const { return tape != nullptr; }
  // The random stream for stochastic rounding of tensor `slot` of layer `layer` in this step and pass (throws
  // UsageError when an id is beyond the stream layout's range, quant/rng.h).
  quant::CounterRng rounding_rng(uint32_t layer, uint32_t slot) const {
    return quant::CounterRng(
        seed, quant::StreamKey{
                  .purpose = quant::Purpose::kRounding, .owner = layer, .slot = slot, .pass = pass, .step = step});
  }
};

}  // namespace qtrain
