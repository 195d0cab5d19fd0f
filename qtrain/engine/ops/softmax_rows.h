// The integer softmax's row functions, shared by the loss (softmax_ce.h) and attention's softmax (softmax.h), so
// both compute their exponentials the same way.
//
//   softmax_row_q16   row r of x (int32 or int8, any exponents) as Q16 fixed point, nearest-even, clamped to ±2^40
//   softmax_row_exp   kernels::softmax_exp_q30 (SIMD, kernels/int_softmax.h): m = max z, then e_i = 2^((z_i − m)·log2 e)
//                     as Q30 (the integer part a shift, the fraction from the 257-entry table kernels/exp_table.h with
//                     linear interpolation; relative error < 2^−17), the largest e_i exactly 2^30; returns S = Σ e_i,
//                     exact in int64 (n < 2^32)
// Bounds: z_i − m is clamped at −2^21 (e is 0 there already), times log2 e in Q16 (< 2^17): < 2^38.
#pragma once

#include <cstddef>
#include <cstdint>

#include "qtrain/engine/core/tensor.h"

namespace qtrain::softmax_rows {

inline constexpr int kZFrac = 16;  // logits as Q16
inline constexpr int kEFrac = 30;  // exponentials as Q30
inline constexpr int64_t kZLimit = int64_t{1} << 40;

void row_q16(const Tensor& x, std::size_t r, int64_t* z);
int64_t row_exp(const int64_t* z, std::size_t n, int64_t* e);

}  // namespace qtrain::softmax_rows
