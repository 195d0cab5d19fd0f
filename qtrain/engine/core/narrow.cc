#include "qtrain/engine/core/narrow.h"

#include <algorithm>
#include <limits>

#include "qtrain/kernels/eltwise.h"
#include "qtrain/kernels/rounding.h"
#include "qtrain/kernels/sgd_update.h"
#include "qtrain/quant/pow2.h"

namespace qtrain {

int narrowing_shift(uint64_t maxabs) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  int s = std::max(0, quant::bit_length(maxabs) - 31);
  // Rounding is monotone and symmetric, so checking the largest magnitude suffices; rounding up can carry into
  // bit 31 (e.g. 2^32 − 1 → 2^31), which costs one more shift.
  if (quant::shift_round_even(static_cast<int64_t>(maxabs), s) > kMax) ++s;
  return s;
}

Tensor narrow_tensor(const int64_t* v, std::size_t rows, std::size_t cols, int e) {
  const int s = narrowing_shift(kernels::max_abs_i64(v, rows * cols));
  Tensor out = Tensor::uninitialized(rows, cols, DType::kI32, e + s);
  // int32(shift_round_even(v, s)), s ≤ 32 here (|v| < 2^62).
  kernels::sgd_narrow(v, rows * cols, s, out.data<int32_t>());
  return out;
}

Tensor narrow_per_col(const int64_t* v, std::size_t rows, std::size_t cols, const std::vector<int>& e_col) {
  std::vector<uint64_t> mx(cols, 0);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) mx[c] = std::max(mx[c], kernels::magnitude(v[r * cols + c]));
  std::vector<int> s(cols), e(cols);
  for (std::size_t c = 0; c < cols; ++c) {
    s[c] = narrowing_shift(mx[c]);
    e[c] = e_col[c] + s[c];
  }
  Tensor out = Tensor::uninitialized(rows, cols, DType::kI32);  // every element written below
  int32_t* o = out.data<int32_t>();
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c)
      o[r * cols + c] = static_cast<int32_t>(quant::shift_round_even(v[r * cols + c], s[c]));
  out.set_exponents(ScaleAxis::kCol, std::move(e));
  return out;
}

Tensor narrow_cols_to_tensor(const int64_t* v, std::size_t rows, std::size_t cols, const std::vector<int>& e_col) {
  if (cols == 0) return Tensor(rows, cols, DType::kI32);
  std::vector<uint64_t> mx(cols, 0);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) mx[c] = std::max(mx[c], kernels::magnitude(v[r * cols + c]));
  // Column c fits int32 at exponents ≥ e_col[c] + bit_length(M_c) − 31 (one more if rounding carries).
  int t = *std::min_element(e_col.begin(), e_col.end());
  for (std::size_t c = 0; c < cols; ++c)
    if (mx[c] != 0) t = std::max(t, e_col[c] + quant::bit_length(mx[c]) - 31);
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  bool carry = false;
  for (std::size_t c = 0; c < cols; ++c)
    carry = carry || (mx[c] != 0 && quant::shift_round_even(static_cast<int64_t>(mx[c]), t - e_col[c]) > kMax);
  if (carry) ++t;
  Tensor out = Tensor::uninitialized(rows, cols, DType::kI32, t);  // every element written below
  int32_t* o = out.data<int32_t>();
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c)  // all-zero columns stay 0 (their shift may be arbitrarily large)
      o[r * cols + c] = mx[c] == 0 ? 0 : static_cast<int32_t>(quant::shift_round_even(v[r * cols + c], t - e_col[c]));
  return out;
}

Tensor narrow_per_row(const int64_t* v, std::size_t rows, std::size_t cols, const std::vector<int>& e_row) {
  Tensor out = Tensor::uninitialized(rows, cols, DType::kI32);  // every element written below
  int32_t* o = out.data<int32_t>();
  std::vector<int> e(rows);
  for (std::size_t r = 0; r < rows; ++r) {
    const int64_t* vr = v + r * cols;
    uint64_t mx = 0;
    for (std::size_t c = 0; c < cols; ++c) mx = std::max(mx, kernels::magnitude(vr[c]));
    const int s = narrowing_shift(mx);
    e[r] = e_row[r] + s;
    for (std::size_t c = 0; c < cols; ++c) o[r * cols + c] = static_cast<int32_t>(quant::shift_round_even(vr[c], s));
  }
  out.set_exponents(ScaleAxis::kRow, std::move(e));
  return out;
}

}  // namespace qtrain
