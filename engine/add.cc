#include "engine/add.h"

#include <algorithm>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <utility>
#include <vector>

#include "engine/narrow.h"
#include "engine/parallel.h"
#include "kernels/eltwise.h"
#include "quant/pow2.h"

namespace qtrain {

namespace {
int64_t element(const Tensor& t, std::size_t i) {
  return t.dtype() == DType::kI8 ? int64_t{t.data<int8_t>()[i]} : int64_t{t.data<int32_t>()[i]};
}

// ---- The element-wise passes split over the step's pool -------------------------------------------------------
// Tasks write disjoint parts of the output; what they reduce (ranges, column maxima) is merged after each task
// with integer min/max, which no order or split changes. So every result equals the one-pass kernel call's.

// Element ranges are split in whole blocks of kBlock elements. The aligned-sum kernels try int32 lanes per block of
// 1024 elements and redo a block where a shift or the add overflowed in int64: a task's range and sums are exact
// whatever its bounds (the kernels' contract), so any split is; whole blocks also give every task the blocks of
// the one-pass call, and no short scalar tails inside the tensor.
constexpr std::size_t kBlock = 1024;

// fn(i0, i1) over element ranges covering [0, n), on the pool when a pass touching `bytes_per_element` bytes per
// element is worth splitting (parallel.h).
void for_elements(kernels::ThreadPool* pool, std::size_t n, double bytes_per_element,
                  const std::function<void(std::size_t, std::size_t)>& fn) {
  const std::size_t blocks = (n + kBlock - 1) / kBlock;
  const double work = kNsPerByte * bytes_per_element * static_cast<double>(n);
  for_tiles(pool, blocks, work,
            [&](std::size_t b0, std::size_t b1) { fn(b0 * kBlock, std::min(n, b1 * kBlock)); });
}

// kernels::aligned_sum_range over element ranges; the range (which includes 0 by definition) is the union of the
// tasks' ranges. out is written at shift 0 (must not alias a or b).
kernels::SumRange aligned_sum_range(kernels::ThreadPool* pool, const int32_t* a, const int32_t* b, std::size_t n,
                                    int la, int lb, int32_t* out, bool relu) {
  kernels::SumRange range;
  std::mutex merge;
  for_elements(pool, n, 3 * sizeof(int32_t), [&](std::size_t i0, std::size_t i1) {
    const kernels::SumRange r = kernels::aligned_sum_range(a + i0, b + i0, i1 - i0, la, lb, out + i0, relu);
    const std::lock_guard<std::mutex> lock(merge);
    range.min = std::min(range.min, r.min);
    range.max = std::max(range.max, r.max);
  });
  return range;
}

void aligned_sum_narrow(kernels::ThreadPool* pool, const int32_t* a, const int32_t* b, std::size_t n, int la, int lb,
                        int t, int32_t* out, bool relu) {
  for_elements(pool, n, 3 * sizeof(int32_t), [&](std::size_t i0, std::size_t i1) {
    kernels::aligned_sum_narrow(a + i0, b + i0, i1 - i0, la, lb, t, out + i0, relu);
  });
}

// kernels::aligned_sum_col_max over row ranges; colmax[c] is the largest of the tasks' maxima.
void aligned_sum_col_max(kernels::ThreadPool* pool, const int32_t* a, const int32_t* b, std::size_t rows,
                         std::size_t cols, const int* la, const int* lb, uint64_t* colmax) {
  std::fill(colmax, colmax + cols, uint64_t{0});
  std::mutex merge;
  const double work = kNsPerByte * static_cast<double>(rows * cols * 2 * sizeof(int32_t));  // a and b read
  for_tiles(pool, rows, work, [&](std::size_t r0, std::size_t r1) {
    std::vector<uint64_t> part(cols);
    kernels::aligned_sum_col_max(a + r0 * cols, b + r0 * cols, r1 - r0, cols, la, lb, part.data());
    const std::lock_guard<std::mutex> lock(merge);
    for (std::size_t c = 0; c < cols; ++c) colmax[c] = std::max(colmax[c], part[c]);
  });
}

void aligned_sum_narrow_cols(kernels::ThreadPool* pool, const int32_t* a, const int32_t* b, std::size_t rows,
                             std::size_t cols, const int* la, const int* lb, const int* t, int32_t* out) {
  const double work = kNsPerByte * static_cast<double>(rows * cols * 3 * sizeof(int32_t));  // a, b read, out written
  for_tiles(pool, rows, work, [&](std::size_t r0, std::size_t r1) {
    kernels::aligned_sum_narrow_cols(a + r0 * cols, b + r0 * cols, r1 - r0, cols, la, lb, t, out + r0 * cols);
  });
}

// kernels::relu_i32 in place over element ranges; returns the largest of the tasks' maxima.
uint64_t relu_in_place(kernels::ThreadPool* pool, int32_t* x, std::size_t n) {
  uint64_t mx = 0;
  std::mutex merge;
  for_elements(pool, n, 2 * sizeof(int32_t), [&](std::size_t i0, std::size_t i1) {
    const uint64_t m = kernels::relu_i32(x + i0, i1 - i0, x + i0);
    const std::lock_guard<std::mutex> lock(merge);
    mx = std::max(mx, m);
  });
  return mx;
}

// kernels::relu_backward_i32 over element ranges (dx may alias dy).
void relu_backward(kernels::ThreadPool* pool, const int32_t* dy, const int32_t* x, std::size_t n, int32_t* dx,
                   int32_t* dx2 = nullptr) {
  const double bytes = dx2 != nullptr ? 4 * sizeof(int32_t) : 3 * sizeof(int32_t);  // dy, x read; dx (dx2) written
  for_elements(pool, n, bytes, [&](std::size_t i0, std::size_t i1) {
    kernels::relu_backward_i32(dy + i0, x + i0, i1 - i0, dx + i0, dx2 != nullptr ? dx2 + i0 : nullptr);
  });
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
      if (both) accumulate_grad(*a, static_cast<const Tensor&>(g));
      accumulate_grad(b->requires_grad ? *b : *a, std::move(g));
      return;
    }
    int32_t* d = g.data<int32_t>();
    const int32_t* y = std::as_const(out->value).data<int32_t>();
    if (both) {
      Tensor ga = Tensor::uninitialized(g.rows(), g.cols(), DType::kI32);
      ga.set_exponents(g.axis(), g.exponents());
      relu_backward(pool, d, y, g.size(), ga.data<int32_t>(), d);  // one pass, both gradients
      accumulate_grad(*a, std::move(ga));
      accumulate_grad(*b, std::move(g));
      return;
    }
    relu_backward(pool, d, y, g.size(), d);
    accumulate_grad(b->requires_grad ? *b : *a, std::move(g));
  });
  return out;
}

}  // namespace

VarPtr add(const StepContext& ctx, const VarPtr& a, const VarPtr& b) { return add_impl(ctx, a, b, false); }

VarPtr add_relu(const StepContext& ctx, const VarPtr& a, const VarPtr& b) { return add_impl(ctx, a, b, true); }

}  // namespace qtrain
