#include "qtrain/engine/core/aligned_sum.h"

#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "qtrain/engine/core/narrow.h"
#include "qtrain/engine/core/split_eltwise.h"
#include "qtrain/kernels/eltwise.h"
#include "qtrain/kernels/parallel.h"
#include "qtrain/quant/pow2.h"

namespace qtrain {

namespace {
int64_t element(const Tensor& t, std::size_t i) {
  return t.dtype() == DType::kI8 ? int64_t{t.data<int8_t>()[i]} : int64_t{t.data<int32_t>()[i]};
}

// Working exponent of one group: the finer exponent, unless the operands are more than 31 octaves apart and the
// coarser one has a non-zero value in the group.
int working_exponent(int ea, int eb, bool coarse_nonzero) {
  const int fine = std::min(ea, eb), coarse = std::max(ea, eb);
  return coarse_nonzero ? std::max(fine, coarse - 31) : fine;
}

// The exponent of group g (a row or column index along the result's axis, 0 for the tensor) of t.
int group_exponent(const Tensor& t, std::size_t g) {
  return t.axis() == ScaleAxis::kTensor ? t.exponents()[0] : t.exponents()[g];
}

// x·2^−s rounded to nearest even; a zero stays zero whatever the shift (an all-zero coarser operand may sit any
// number of octaves above the working exponent, where a left shift of the bits would not be defined).
int64_t moved(int64_t x, int s) { return x == 0 ? 0 : quant::shift_round_even(x, s); }

// Per-row exponents, both int32, every row's exponents ≤ 31 octaves apart: the tensor path's kernels on each row.
Tensor sum_rows_fast(kernels::ThreadPool* pool, const Tensor& av, const Tensor& bv, bool relu) {
  const std::size_t rows = av.rows(), cols = av.cols();
  Tensor out = Tensor::uninitialized(rows, cols, DType::kI32);
  int32_t* o = out.data<int32_t>();
  const int32_t* a = av.data<int32_t>();
  const int32_t* b = bv.data<int32_t>();
  std::vector<int> e(rows);
  int64_t top = 0;  // with the ReLU: the largest narrowed sum
  std::mutex merge;
  const double work =
      kernels::kNsPerByte * static_cast<double>(rows * cols * 3 * sizeof(int32_t));  // a, b read, out written
  for_tiles(pool, rows, work, [&](std::size_t r0, std::size_t r1) {
    int64_t local = 0;
    for (std::size_t r = r0; r < r1; ++r) {
      const int ea = group_exponent(av, r), eb = group_exponent(bv, r), er = std::min(ea, eb);
      const std::size_t i = r * cols;
      const kernels::SumRange range = kernels::aligned_sum_range(a + i, b + i, cols, ea - er, eb - er, o + i, relu);
      const int t = narrowing_shift(range.max_abs());
      if (t != 0) kernels::aligned_sum_narrow(a + i, b + i, cols, ea - er, eb - er, t, o + i, relu);
      e[r] = er + t;
      local = std::max(local, quant::shift_round_even(range.max, t));
    }
    const std::lock_guard<std::mutex> lock(merge);
    top = std::max(top, local);
  });
  out.set_exponents(ScaleAxis::kRow, std::move(e));
  if (relu) out.set_nonnegative_max(static_cast<uint64_t>(top));
  return out;
}
}  // namespace

Tensor aligned_sum(kernels::ThreadPool* pool, const Tensor& av, const Tensor& bv, bool relu) {
  const ScaleAxis axis = av.axis() != ScaleAxis::kTensor ? av.axis() : bv.axis();
  if (av.rows() != bv.rows() || av.cols() != bv.cols() ||
      (av.axis() != ScaleAxis::kTensor && bv.axis() != ScaleAxis::kTensor && av.axis() != bv.axis()))
    throw std::invalid_argument("aligned sum: operands " + av.describe() + " and " + bv.describe() +
                                " must have the same shape and exponents along one axis");
  const std::size_t rows = av.rows(), cols = av.cols();
  const std::size_t groups = axis == ScaleAxis::kTensor ? 1 : axis == ScaleAxis::kRow ? rows : cols;
  // Fast path: int32 operands whose exponents are at most 31 octaves apart in every group. The working exponent
  // is then the finer one whatever the values (working_exponent), so both operands move by exact left shifts
  // ≤ 31 and the kernels' int64 lanes hold every sum; the narrowing is narrow.h's.
  bool fast = av.dtype() == DType::kI32 && bv.dtype() == DType::kI32;
  for (std::size_t g = 0; fast && g < groups; ++g) {
    const int ea = group_exponent(av, g), eb = group_exponent(bv, g);
    fast = std::max(ea, eb) - std::min(ea, eb) <= 31;
  }
  if (fast && axis == ScaleAxis::kTensor) {
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
  if (fast && axis == ScaleAxis::kRow) return sum_rows_fast(pool, av, bv, relu);
  Tensor out;
  if (fast) {  // per column
    std::vector<int> la(cols), lb(cols), e(cols), t(cols);
    for (std::size_t c = 0; c < cols; ++c) {
      const int ea = group_exponent(av, c), eb = group_exponent(bv, c);
      e[c] = std::min(ea, eb);
      la[c] = ea - e[c];
      lb[c] = eb - e[c];
    }
    std::vector<uint64_t> colmax(cols);
    aligned_sum_col_max(pool, av.data<int32_t>(), bv.data<int32_t>(), rows, cols, la.data(), lb.data(), colmax.data());
    for (std::size_t c = 0; c < cols; ++c) {
      t[c] = narrowing_shift(colmax[c]);
      e[c] += t[c];
    }
    out = Tensor::uninitialized(rows, cols, DType::kI32);
    aligned_sum_narrow_cols(pool, av.data<int32_t>(), bv.data<int32_t>(), rows, cols, la.data(), lb.data(), t.data(),
                            out.data<int32_t>());
    out.set_exponents(ScaleAxis::kCol, std::move(e));
  } else {
    // The group of element (r, c), and whether the coarser operand has a non-zero value in each group.
    auto group = [axis](std::size_t r, std::size_t c) {
      return axis == ScaleAxis::kTensor ? std::size_t{0} : axis == ScaleAxis::kRow ? r : c;
    };
    std::vector<char> coarse_nonzero(groups, 0);
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t c = 0; c < cols; ++c) {
        const std::size_t g = group(r, c);
        const bool a_coarse = group_exponent(av, g) >= group_exponent(bv, g);
        if (element(a_coarse ? av : bv, r * cols + c) != 0) coarse_nonzero[g] = 1;
      }
    std::vector<int> e(groups);
    for (std::size_t g = 0; g < groups; ++g)
      e[g] = working_exponent(group_exponent(av, g), group_exponent(bv, g), coarse_nonzero[g] != 0);
    // a·2^(e_a − e) + b·2^(e_b − e): a non-zero value moves by a left shift ≤ 31 or a rounding right shift, so
    // each term is ≤ 2^62 and the sum < 2^63.
    std::vector<int64_t> sum(rows * cols);
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t c = 0; c < cols; ++c) {
        const std::size_t i = r * cols + c, g = group(r, c);
        sum[i] =
            moved(element(av, i), e[g] - group_exponent(av, g)) + moved(element(bv, i), e[g] - group_exponent(bv, g));
      }
    out = axis == ScaleAxis::kCol   ? narrow_per_col(sum.data(), rows, cols, e)
          : axis == ScaleAxis::kRow ? narrow_per_row(sum.data(), rows, cols, e)
                                    : narrow_tensor(sum.data(), rows, cols, e[0]);
  }
  if (relu) out.set_nonnegative_max(relu_in_place(pool, out.data<int32_t>(), out.size()));
  return out;
}

}  // namespace qtrain
