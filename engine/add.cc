#include "engine/add.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "engine/narrow.h"
#include "kernels/eltwise.h"
#include "quant/pow2.h"

namespace qtrain {

namespace {
int64_t element(const Tensor& t, std::size_t i) {
  return t.dtype() == DType::kI8 ? int64_t{t.data<int8_t>()[i]} : int64_t{t.data<int32_t>()[i]};
}

// Working exponent of one column (or of the whole tensor): the finer exponent, unless the operands are more than
// 31 octaves apart and the coarser one has a non-zero value in the column.
int working_exponent(int ea, int eb, bool coarse_nonzero) {
  const int fine = std::min(ea, eb), coarse = std::max(ea, eb);
  return coarse_nonzero ? std::max(fine, coarse - 31) : fine;
}
}  // namespace

VarPtr add(const StepContext& ctx, const VarPtr& a, const VarPtr& b) {
  const Tensor& av = a->value;
  const Tensor& bv = b->value;
  if (av.rows() != bv.rows() || av.cols() != bv.cols() || av.axis() == ScaleAxis::kRow || bv.axis() == ScaleAxis::kRow)
    throw std::invalid_argument("add: operands " + av.describe() + " and " + bv.describe() +
                                " must have the same shape and per-tensor or per-column exponents");
  const std::size_t rows = av.rows(), cols = av.cols();
  const bool per_col = av.axis() == ScaleAxis::kCol || bv.axis() == ScaleAxis::kCol;
  auto out = std::make_shared<Var>();
  // Fast path: int32 operands whose exponents are at most 31 octaves apart in every column. The working exponent
  // is then the finer one whatever the values (working_exponent), so both operands move by exact left shifts
  // ≤ 31 and the kernels' int64 lanes hold every sum; the narrowing is narrow_per_col / narrow_tensor's.
  bool fast = av.dtype() == DType::kI32 && bv.dtype() == DType::kI32;
  for (std::size_t c = 0; fast && c < (per_col ? cols : 1); ++c) {
    const int ea = av.exponent_at(0, c), eb = bv.exponent_at(0, c);
    fast = std::max(ea, eb) - std::min(ea, eb) <= 31;
  }
  if (fast && per_col) {
    std::vector<int> la(cols), lb(cols), e(cols), t(cols);
    for (std::size_t c = 0; c < cols; ++c) {
      const int ea = av.exponent_at(0, c), eb = bv.exponent_at(0, c);
      e[c] = std::min(ea, eb);
      la[c] = ea - e[c];
      lb[c] = eb - e[c];
    }
    std::vector<uint64_t> colmax(cols);
    kernels::aligned_sum_col_max(av.data<int32_t>(), bv.data<int32_t>(), rows, cols, la.data(), lb.data(),
                                 colmax.data());
    for (std::size_t c = 0; c < cols; ++c) {
      t[c] = narrowing_shift(colmax[c]);
      e[c] += t[c];
    }
    out->value = Tensor::uninitialized(rows, cols, DType::kI32);
    kernels::aligned_sum_narrow_cols(av.data<int32_t>(), bv.data<int32_t>(), rows, cols, la.data(), lb.data(),
                                     t.data(), out->value.data<int32_t>());
    out->value.set_exponents(ScaleAxis::kCol, std::move(e));
  } else if (fast) {
    const int ea = av.exponent(), eb = bv.exponent(), e = std::min(ea, eb);
    out->value = Tensor::uninitialized(rows, cols, DType::kI32);
    int32_t* o = out->value.data<int32_t>();
    // One pass writes the sums at shift 0; a second one only if some sum needs a coarser exponent.
    const uint64_t mx = kernels::aligned_sum_max(av.data<int32_t>(), bv.data<int32_t>(), av.size(), ea - e, eb - e, o);
    const int t = narrowing_shift(mx);
    if (t != 0) kernels::aligned_sum_narrow(av.data<int32_t>(), bv.data<int32_t>(), av.size(), ea - e, eb - e, t, o);
    out->value.set_exponent(e + t);
  } else {
    // Does the coarser operand have a non-zero value in column c (any column when per tensor)?
    std::vector<char> coarse_nonzero(cols, 0);
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t c = 0; c < cols; ++c) {
        const bool a_coarse = av.exponent_at(0, c) >= bv.exponent_at(0, c);
        if (element(a_coarse ? av : bv, r * cols + c) != 0) coarse_nonzero[c] = 1;
      }
    const bool any = std::any_of(coarse_nonzero.begin(), coarse_nonzero.end(), [](char v) { return v != 0; });
    const int e_tensor = per_col ? 0 : working_exponent(av.exponent(), bv.exponent(), any);
    std::vector<int> e(cols, e_tensor);
    if (per_col)
      for (std::size_t c = 0; c < cols; ++c)
        e[c] = working_exponent(av.exponent_at(0, c), bv.exponent_at(0, c), coarse_nonzero[c] != 0);
    // a·2^(e_a − e) + b·2^(e_b − e): shifts ≤ 31, so each term < 2^62 and the sum < 2^63.
    std::vector<int64_t> sum(rows * cols);
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t c = 0; c < cols; ++c) {
        const std::size_t i = r * cols + c;
        sum[i] = quant::shift_round_even(element(av, i), e[c] - av.exponent_at(0, c)) +
                 quant::shift_round_even(element(bv, i), e[c] - bv.exponent_at(0, c));
      }
    out->value = per_col ? narrow_per_col(sum.data(), rows, cols, e) : narrow_tensor(sum.data(), rows, cols, e_tensor);
  }
  if (!ctx.training() || (!a->requires_grad && !b->requires_grad)) return out;
  ctx.tape->record([a, b, out] {
    if (!out->has_grad) return;
    // Both inputs receive dy: a copy for the first, the consumed gradient itself for the second.
    if (a->requires_grad && b->requires_grad) {
      accumulate_grad(*a, static_cast<const Tensor&>(out->grad));
      accumulate_grad(*b, take_grad(*out));
    } else {
      accumulate_grad(a->requires_grad ? *a : *b, take_grad(*out));
    }
  });
  return out;
}

}  // namespace qtrain
