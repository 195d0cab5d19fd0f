// Multi-head self-attention on integers, over N sequences of `tokens` tokens (x: N·tokens × dim, pre-normed):
//
//   Q = x·W_qᵀ + b_q   K = x·W_kᵀ + b_k   V = x·W_vᵀ + b_v          Linear layers (linear.h), int32 per-column exp.
//   S_j = Q_j · K_jᵀ                        QMatMul (ops/qmatmul.h): Q, K quantized to `attn_bits` signed, one
//                                           exponent each; int32 accumulator, [N·heads·tokens × tokens] stacked
//   P_j = softmax(S_j / √d_head)            ops/softmax.h: the 1/√d_head is folded into the softmax's fixed-point
//                                           multiplier — an exact shift when d_head is a power of 4, a dyadic
//                                           factor otherwise; optional causal mask (row i sees tokens j ≤ i)
//   O_j = P_j · V_j                         QMatMul: P (Q15) and V quantized to `attn_bits`; O [N·tokens × dim]
//   y = O·W_oᵀ + b_o                        Linear
// for every matrix j = (sequence, head); the per-head matrices are read in place (MatrixLayout::kPerHead).
// Backward: each piece's own (ShiftQuant on the output gradients of the two products with `grad_bits`, rounding
// streams (this module's id, kMatmulGradSlot / kSecondMatmulGradSlot); the softmax's fixed-point backward).
// Float formula: y = softmax(Q(xW_q)Q(xW_k)ᵀ/√d)·Q(xW_v)·W_oᵀ with every product quantized as described.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "qtrain/engine/core/layer.h"
#include "qtrain/engine/layers/linear.h"

namespace qtrain {

struct AttentionSpec {
  std::size_t dim = 64, heads = 4, tokens = 16;
  LinearSpec projection;   // bits, groups and scale rule of the four projections (in/out are set to dim)
  int attn_bits = 8;       // operands of Q·Kᵀ and P·V
  int attn_grad_bits = 8;  // ShiftQuant bits of their output gradients
  int attn_grad_groups = 1;
  bool causal = false;
  // UsageError naming the field and the valid range.
  void validate() const;
};

class MultiHeadAttention final : public Layer {
 public:
  // Uses layer ids first_id (its two products' rounding streams) and first_id + 1 … first_id + 4 (the Q, K, V and
  // output projections): kLayerIds in all.
  static constexpr uint32_t kLayerIds = 5;
  MultiHeadAttention(const AttentionSpec& spec, uint32_t first_id, uint64_t seed);
  VarPtr forward(const StepContext& ctx, const VarPtr& x) override;
  std::vector<Layer*> children() override { return {q_.get(), k_.get(), v_.get(), out_.get()}; }
  std::string name() const override;
  const AttentionSpec& spec() const { return spec_; }

 private:
  AttentionSpec spec_;
  uint32_t id_;
  std::unique_ptr<Linear> q_, k_, v_, out_;
};

}  // namespace qtrain
