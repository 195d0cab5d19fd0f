// Fully-connected layer Y = X·Wᵀ + b on integers.
//
// Forward   X (int32 or int8) → X_q: b_a-bit, one power-of-two exponent e_x (nearest-even; unsigned after ReLU)
//           W (int32 master)  → W_q: b_w-bit, one exponent per output channel e_w[c] (nearest-even)
//           Y[n,c] = Σ_k X_q[n,k]·W_q[c,k]  (int8 GEMM, int32 accumulator), exponent e_x + e_w[c]; + b[c] aligned
// Backward  dY (int32, one exponent) → ShiftQuant (b_g bits, N_G groups, stochastic rounding)
//           dX = dY_shifted · W_aligned          (one int8 GEMM, exact grouped product; straight-through X_q)
//           dW[c,:] = Σ_n dY_q[n,c]·X_q[n,:]     (int8 GEMMs over ≤ kMaxReduction rows, chunks summed in int64;
//                                                 exponent e0 − k_c + e_x per row)
//           db[c]   = Σ_n dY[n,c]                (exact int64 sum of the unquantized int32 gradient)
// Float formula it implements: y = Q(x)·Q(W)ᵀ + b, dx = Q_g(dy)·Q(W), dW = Q_g(dy)ᵀ·Q(x), db = Σ dy.
// With `relu` the layer is Linear followed by ReLU as one op: y = max(X_q·W_qᵀ + b, 0) in the GEMM's epilogue (no
// pass of its own), and backward first masks dY by [y > 0] — the same values and gradients as the two ops.
// The quantizers, the weight cache and the dX/dW GEMMs are the shared QGemmOp (qgemm_op.h), as in Conv2d. The bits,
// N_G, activation groups, scale rule and weight granularity are the spec's unless ctx.policy overrides them for
// this layer's name and the step's pass (core/quant_policy.h).
#pragma once

#include <cstddef>

#include "qtrain/engine/core/layer.h"
#include "qtrain/engine/ops/qgemm_op.h"

namespace qtrain {

struct LinearSpec {
  std::size_t in = 0, out = 0;
  int weight_bits = 8;
  int act_bits = 8;
  int grad_bits = 8;
  int groups = 1;              // ShiftQuant N_G for this layer's output gradient
  bool signed_input = false;   // false: the input is non-negative (after ReLU) and uses the unsigned range
  bool needs_input_grad = true;
  quant::ScaleRule scale = quant::ScaleRule::kCover;  // how X_q's power of two is chosen
  int act_groups = 1;  // power-of-two channel groups of the quantized input (QGemmConfig::act_groups)
  bool relu = false;   // a ReLU fused after the bias (see above)
};

class Linear : public Layer, public QuantizedLayer {
 public:
  Linear(const LinearSpec& spec, uint32_t layer_id, uint64_t seed);
  VarPtr forward(const StepContext& ctx, const VarPtr& x) override;
  std::vector<Param*> own_params() override { return {&weight_, &bias_}; }
  std::string name() const override;
  std::string layer_name() const override { return "linear" + std::to_string(id_); }
  const QGemmConfig& own_quant_config() const override { return op_.config(); }
  const LinearSpec& spec() const { return spec_; }
  Param& weight() { return weight_; }
  Param& bias() { return bias_; }

 private:
  LinearSpec spec_;
  uint32_t id_;
  Param weight_;  // out × in
  Param bias_;    // 1 × out
  QGemmOp op_;    // input quantizer, per-version W_q cache, backward GEMMs
};

}  // namespace qtrain
