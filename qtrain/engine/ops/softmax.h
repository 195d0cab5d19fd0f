// Attention's softmax on integers: P = softmax(scale · x) per row, fed from the int32 Q·Kᵀ accumulator.
//
// Forward   z = x in Q16 (nearest-even, clamped to ±2^30 real units: e^−2^30 is 0 anyway), times the scale as a
//           dyadic m·2^−s (quant::to_dyadic, m in [2^15, 2^16]: exact for any power of two, 1/√d_head = 1/4 for d_head = 16 is a
//           shift; 1/√8 = 46341·2^−17), then the exponentials of softmax_rows.h (base 2 with log2 e folded into a
//           Q16 multiplier, max first, Q30 mantissas summed exactly in int64).
//           P_i = e_i·2^15 / S in Q15 (int32, exponent −15), rounded so that EVERY ROW SUMS TO EXACTLY 2^15:
//           each quotient floored, then the missing units (fewer than the row's columns) go one each to the
//           largest remainders, ties to the lower column. |P_i − e_i/S| < 2^−15.
//           Causal mask: row i of each matrix of `rows_per_matrix` rows sees columns j ≤ i (the rest exactly 0).
// Backward  dY (int32, one exponent e_g) → u = R(dY, k), the 16-bit working gradient (k the smallest shift with
//           |u| ≤ 2^15); T = Σ_j P_j·u_j (|T| ≤ 2^30, since ΣP = 2^15); dS_i = P_i·((u_i << 15) − T)·m (|·| < 2^62),
//           exponent e_g + k − 30 − s, narrowed once to the finest int32 exponent (narrow.h); added to x's gradient.
// Kernels   the row passes are kernels/int_softmax.h (SIMD, the same bits on every target and thread count); there
//           z − max is clamped at −2^21 before the log2 e multiply (e is 0 below it anyway), which keeps the product
//           in int64 for every scale up to 256 (unclamped it could overflow for scales above ~44 at |z| near 2^40).
// Float formula: p = softmax(c·x), dx = c·p ⊙ (dy − Σ p ⊙ dy) (the usual straight-through choice: the stored p).
#pragma once

#include <cstddef>

#include "qtrain/engine/core/autograd.h"

namespace qtrain {

struct SoftmaxConfig {
  double scale = 1.0;               // c, the real factor applied to x first: 2^−20 ≤ c ≤ 2^8
  bool causal = false;              // row i of each matrix sees columns j ≤ i
  std::size_t rows_per_matrix = 0;  // rows of one attention matrix (causal: must equal the columns; 0 = cols)
  void validate() const;            // UsageError naming the field and the range
};

// P (int32, Q15) = softmax(c·x) row by row, backward recorded when training. x: int32 or int8, any exponents.
// std::invalid_argument when a causal x's rows are not whole matrices of cols rows.
VarPtr softmax(const StepContext& ctx, const SoftmaxConfig& cfg, const VarPtr& x);

}  // namespace qtrain
