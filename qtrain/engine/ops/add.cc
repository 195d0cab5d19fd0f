#include "qtrain/engine/ops/add.h"

#include <algorithm>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <utility>
#include <vector>

#include "qtrain/engine/core/narrow.h"
#include "qtrain/engine/core/parallel.h"
#include "qtrain/engine/core/split_eltwise.h"
#include "qtrain/kernels/eltwise.h"
#include "qtrain/quant/pow2.h"

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

// The narrowed sum of a and b (see add.h), with a ReLU applied to it when `relu` (exactly relu(add(a, b))).
Tensor sum_values(kernels::ThreadPool* pool, const Tensor& av, const Tensor& bv, bool relu) {
  if (av.rows() != bv.rows() || av.cols() != bv.cols() || av.axis() == ScaleAxis::kRow || bv.axis() == ScaleAxis::kRow)
    throw std::invalid_argument("add: operands " + av.describe() + " and " + bv.describe() +
                                " must have the same shape and per-tensor or per-column exponents");
  const std::size_t rows = av.rows(), cols = av.cols();
  const bool per_col = av.axis() == ScaleAxis::kCol || bv.axis() == ScaleAxis::kCol;
  // Fast path: int32 operands whose exponents are at most 31 octaves apart in every column. The working exponent
  // is then the finer one whatever the values (working_exponent), so both operands move by exact left shifts
  // ≤ 31 and the kernels' int64 lanes hold every sum; the narrowing is narrow_per_col / narrow_tensor's.
  bool fast = av.dtype() == DType::kI32 && bv.dtype() == DType::kI32;
  for (std::size_t c = 0; fast && c < (per_col ? cols : 1); ++c) {
    const int ea = av.exponent_at(0, c), eb = bv.exponent_at(0, c);
    fast = std::max(ea, eb) - std::min(ea, eb) <= 31;
  }
  if (fast && !per_col) {
    const int ea = av.exponent(), eb = bv.exponent(), e = std::min(ea, eb);
    Tensor out = Tensor::uninitialized(rows, cols, DType::kI32);
    int32_t* o = out.data<int32_t>();
    // One pass writes the sums at shift 0; a second one only if some sum needs a coarser exponent.
    const kernels::SumRange range =
        aligned_sum_range(pool, av.data<int32_t>(), bv.data<int32_t>(), av.size(), ea - e, eb - e, o, relu);
    const int t = narrowing_shift(range.max_abs());
    if (t != 0) aligned_sum_narrow(pool, av.data<int32_t>(), bv.data<int32_t>(), av.size(), ea - e, eb - e, t, o, relu);
    out.set_exponent(e + t);
    // With the ReLU every value is ≥ 0 and the largest is the narrowed largest sum (rounding is monotone).
    if (relu) out.set_nonnegative_max(static_cast<uint64_t>(quant::shift_round_even(range.max, t)));
    return out;
  }
  Tensor out;
  if (fast) {
    std::vector<int> la(cols), lb(cols), e(cols), t(cols);
    for (std::size_t c = 0; c < cols; ++c) {
      const int ea = av.exponent_at(0, c), eb = bv.exponent_at(0, c);
      e[c] = std::min(ea, eb);
      la[c] = ea - e[c];
      lb[c] = eb - e[c];
    }
    std::vector<uint64_t> colmax(cols);
    aligned_sum_col_max(pool, av.data<int32_t>(), bv.data<int32_t>(), rows, cols, la.data(), lb.data(),
                        colmax.data());
    for (std::size_t c = 0; c < cols; ++c) {
      t[c] = narrowing_shift(colmax[c]);
      e[c] += t[c];
    }
    out = Tensor::uninitialized(rows, cols, DType::kI32);
    aligned_sum_narrow_cols(pool, av.data<int32_t>(), bv.data<int32_t>(), rows, cols, la.data(), lb.data(), t.data(),
                            out.data<int32_t>());
    out.set_exponents(ScaleAxis::kCol, std::move(e));
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
    out = per_col ? narrow_per_col(sum.data(), rows, cols, e) : narrow_tensor(sum.data(), rows, cols, e_tensor);
  }
  if (relu) {
    out.set_nonnegative_max(relu_in_place(pool, out.data<int32_t>(), out.size()));
  }
  return out;
}

VarPtr add_impl(const StepContext& ctx, const VarPtr& a, const VarPtr& b, bool relu) {
  auto out = std::make_shared<Var>();
  out->value = sum_values(ctx.pool, a->value, b->value, relu);
  if (!ctx.training() || (!a->requires_grad && !b->requires_grad)) return out;
  ctx.tape->record([a, b, out, relu, pool = ctx.pool] {
    if (!out->has_grad) return;
    // Both inputs receive dy (masked by y > 0 after a ReLU, i.e. by the sum > 0): a copy for the first, the consumed
    // gradient itself for the second.
    const bool both = a->requires_grad && b->requires_grad;
    Tensor g = take_grad(*out);
    if (!relu) {
      if (both) accumulate_grad(*a, static_cast<const Tensor&>(g), pool);
      accumulate_grad(b->requires_grad ? *b : *a, std::move(g), pool);
      return;
    }
    int32_t* d = g.data<int32_t>();
    const int32_t* y = std::as_const(out->value).data<int32_t>();
    if (both) {
      Tensor ga = Tensor::uninitialized(g.rows(), g.cols(), DType::kI32);
      ga.set_exponents(g.axis(), g.exponents());
      relu_backward(pool, d, y, g.size(), ga.data<int32_t>(), d);  // one pass, both gradients
      accumulate_grad(*a, std::move(ga), pool);
      accumulate_grad(*b, std::move(g), pool);
      return;
    }
    relu_backward(pool, d, y, g.size(), d);
    accumulate_grad(b->requires_grad ? *b : *a, std::move(g), pool);
  });
  return out;
}

}  // namespace

VarPtr add(const StepContext& ctx, const VarPtr& a, const VarPtr& b) { return add_impl(ctx, a, b, false); }

VarPtr add_relu(const StepContext& ctx, const VarPtr& a, const VarPtr& b) { return add_impl(ctx, a, b, true); }

}  // namespace qtrain
