// The exact sum of two int32 (or int8) tensors with power-of-two exponents, narrowed back to int32: the one piece
// behind a residual add's forward (ops/add.cc) and the accumulation of gradients (accumulate_grad, for variables
// and parameters).
//
// Per group of elements with one exponent pair e_a, e_b (the tensor, a column or a row): both operands move to the
// finer exponent e = min(e_a, e_b) (exact left shifts) and are summed in int64; the sums are then narrowed to int32
// at the finest exponent that fits, round-to-nearest-even (narrow.h). The result is the exact sum rounded once.
// Bound: shifts are capped at 31 (|a|·2^31 + |b| < 2^63). When the exponents differ by more than 31 octaves and the
// coarser operand is not all zero in the group, the finer operand is first rounded (nearest-even) to 2^−31 of the
// coarser exponent — a case real networks do not meet; the error is then ≤ ½ ulp more. When the coarser operand is
// all zero there, the sum is the finer operand exactly, however far apart the exponents are.
#pragma once

#include "qtrain/engine/core/tensor.h"
#include "qtrain/kernels/thread_pool.h"

namespace qtrain {

// a + b for operands of the same shape, each with exponents per tensor, per column or per row (one operand per
// column and the other per row is refused: std::invalid_argument). The result has one exponent when both operands
// do, else exponents along the operands' axis. With `relu`, relu(a + b) exactly, with its non-negative maximum set.
// The passes split over `pool` when it pays; the result does not depend on it.
Tensor aligned_sum(kernels::ThreadPool* pool, const Tensor& a, const Tensor& b, bool relu = false);

}  // namespace qtrain
