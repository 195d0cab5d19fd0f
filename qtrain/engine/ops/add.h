// Residual add y = a + b of two variables of the same shape (int32 or int8; per-tensor or per-column exponents).
//
// Forward  per column c, with exponents e_a, e_b: both operands move to the finer exponent e = min(e_a, e_b)
//          (exact left shifts) and are summed in int64; the sums are then narrowed to int32 at the finest exponent
//          that fits, round-to-nearest-even (narrow.h). The result is the exact sum rounded once.
//          Bound: shifts are capped at 31 (|a|·2^31 + |b| < 2^63), so when the exponents differ by more than 31
//          octaves and the coarser column is not all zero, the finer operand is first rounded (nearest-even) to
//          2^−31 of the coarser exponent — a case real networks do not meet; error then ≤ ½ ulp more.
//          Output exponents are per column when either input's are, else one for the tensor.
// Backward dx_a = dy, dx_b = dy (accumulate_grad; the same Var twice gets 2·dy).
// Float formula: y = a + b, da = dy, db = dy.
#pragma once

#include "qtrain/engine/core/autograd.h"

namespace qtrain {

VarPtr add(const StepContext& ctx, const VarPtr& a, const VarPtr& b);

// relu(add(a, b)) as one op (one pass over the operands, one Var): the same values, exponents and gradients —
// dx_a = dx_b = dy·[y > 0] — as Relu applied to add's output. Used by residual blocks.
VarPtr add_relu(const StepContext& ctx, const VarPtr& a, const VarPtr& b);

}  // namespace qtrain
