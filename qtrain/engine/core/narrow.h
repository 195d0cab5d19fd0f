// Narrowing exact int64 sums back to the int32 data plane.
//
// Ops that add many int32 values (col2im, pooling, residual adds, split-K weight gradients) sum them exactly in
// int64 and then pick the finest exponent at which every sum fits int32:
//   s = the smallest shift ≥ 0 with |round_even(v / 2^s)| ≤ 2^31 − 1 for every v,   exponent e + s
// Exact when s = 0 (the common case); otherwise one round-to-nearest-even per value, error ≤ ½·2^(e+s).
// Valid for |v| < 2^62 (every caller's bound is far below: at most a few thousand int32 terms, or int32 × 2^16).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "qtrain/engine/core/tensor.h"

namespace qtrain {

// The shift s above for a set of values whose largest magnitude is `maxabs`.
int narrowing_shift(uint64_t maxabs);

// v (rows×cols, exponent e for every value) → int32 tensor with one exponent e + s.
Tensor narrow_tensor(const int64_t* v, std::size_t rows, std::size_t cols, int e);
// v with exponent e_col[c] in column c → int32 tensor with per-column exponents e_col[c] + s_c.
Tensor narrow_per_col(const int64_t* v, std::size_t rows, std::size_t cols, const std::vector<int>& e_col);
// v with exponent e_col[c] in column c → int32 tensor with ONE exponent (a gradient): the finest T ≥ min e_col at
// which every column fits int32. Columns with e_col[c] > T are shifted left (exact), columns with e_col[c] < T are
// rounded to nearest even: each value is exact or rounded once. Needs |v|·2^(e_col[c] − T) < 2^62 on the exact side,
// which holds because T is chosen so every value fits int32.
Tensor narrow_cols_to_tensor(const int64_t* v, std::size_t rows, std::size_t cols, const std::vector<int>& e_col);
// v with exponent e_row[r] in row r → int32 tensor with per-row exponents e_row[r] + s_r.
Tensor narrow_per_row(const int64_t* v, std::size_t rows, std::size_t cols, const std::vector<int>& e_row);

}  // namespace qtrain
