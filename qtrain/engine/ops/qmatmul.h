// A quantized product of two activations — attention's scores Q·Kᵀ and its output P·V — over a batch of matrices read
// in place from 2-D tensors (MatrixLayout): Y_j = A_j · B_j, or A_j · B_jᵀ with transpose_b, for j < batch·heads.
//
// Forward   A, B (int32 or int8, one exponent or one per column) → A_q, B_q: signed b_a- and b_b-bit int8 with one
//           exponent each (e_a, e_b), the finest power of two covering max|·|, nearest-even (quantize_activation)
//           Y_j[i,c] = Σ_p A_q,j[i,p]·B_q,j[p,c]        int32, exponent e_a + e_b; exact while k ≤ kMaxReduction
// Backward  dY (int32, one exponent) → ShiftQuant (b_g bits, N_G power-of-two groups over Y's columns, stochastic,
//           stream (layer, grad_slot)) → dY_s, the shifted operand: the quantized dY exactly, with one exponent
//           e_s = e0 − (N_G − 1)
//           dA_j = dY_s,j · B_q,jᵀ   (Bᵀ: dY_s,j · B_q,j)   int32, exponent e_s + e_b; exact while m ≤ kMaxReduction
//           dB_j = A_q,jᵀ · dY_s,j   (Bᵀ: dY_s,jᵀ · A_q,j)  int32, exponent e_s + e_a; exact while n ≤ kMaxReduction
//           both added into the inputs' gradients (accumulate_grad: a Var that is both A and B gets dA + dB)
// Float formula: y = Q(a)·Q(b), da = Q_g(dy)·Q(b)ᵀ, db = Q(a)ᵀ·Q_g(dy);
//           transpose_b: y = Q(a)·Q(b)ᵀ, da = Q_g(dy)·Q(b), db = Q_g(dy)ᵀ·Q(a).
// Shapes: A_j is n × k, B_j is k × m (m × k with transpose_b), Y_j is n × m; all GEMMs are the batched int8 kernels
// (kernels/gemm.h), so per-head matrices are never copied out of their tensors.
#pragma once

#include <cstddef>
#include <cstdint>

#include "qtrain/engine/core/autograd.h"

namespace qtrain {

// How a 2-D tensor holds the batch·heads matrices (rows × cols each) of a QMatMul operand or output; matrix
// j = b·heads + h in both.
enum class MatrixLayout {
  kStacked,  // [batch·heads·rows × cols]: matrix j is rows j·rows … (attention's scores and probabilities)
  kPerHead,  // [batch·rows × heads·cols]: matrix (b, h) is rows b·rows …, columns h·cols … (Q, K, V and the output)
};

struct QMatMulConfig {
  std::size_t batch = 1;  // sequences
  std::size_t heads = 1;  // matrices per sequence
  MatrixLayout a = MatrixLayout::kStacked, b = MatrixLayout::kStacked, y = MatrixLayout::kStacked;
  bool transpose_b = false;  // Y = A · Bᵀ
  int a_bits = 8, b_bits = 8;
  int grad_bits = 8;
  int grad_groups = 1;                   // ShiftQuant N_G of dY
  uint32_t grad_slot = kMatmulGradSlot;  // the layer's rounding stream for dY (autograd.h)
  // Throws UsageError naming the valid range.
  void validate() const;
};

// Y = A_q · B_q (or · B_qᵀ) with its backward recorded on the tape when training. `layer` keys dY's rounding stream
// with cfg.grad_slot. Throws std::invalid_argument naming both shapes when they do not form cfg's batch of
// products, or a reduction exceeds kMaxReduction.
VarPtr qmatmul(const StepContext& ctx, uint32_t layer, const QMatMulConfig& cfg, const VarPtr& a, const VarPtr& b);

}  // namespace qtrain
