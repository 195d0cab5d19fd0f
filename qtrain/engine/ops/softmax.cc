#include "qtrain/engine/ops/softmax.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "qtrain/engine/core/narrow.h"
#include "qtrain/engine/ops/softmax_rows.h"
#include "qtrain/kernels/eltwise.h"
#include "qtrain/kernels/int_softmax.h"
#include "qtrain/kernels/parallel.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/pow2.h"

namespace qtrain {

void SoftmaxConfig::validate() const {
  if (!(scale >= std::ldexp(1.0, -20) && scale <= 256.0))
    throw UsageError("softmax scale " + std::to_string(scale) + " is out of range 2^-20..256");
}

namespace {
constexpr int kPFrac = kernels::kSoftmaxPFrac;
}  // namespace

VarPtr softmax(const StepContext& ctx, const SoftmaxConfig& cfg_in, const VarPtr& x) {
  cfg_in.validate();
  const Tensor& xv = x->value;
  const std::size_t rows = xv.rows(), cols = xv.cols();
  SoftmaxConfig cfg = cfg_in;
  if (cfg.rows_per_matrix == 0) cfg.rows_per_matrix = cols;
  if (cols == 0) throw std::invalid_argument("softmax: rows of no columns");
  if (cfg.causal && (cfg.rows_per_matrix != cols || rows % cols != 0))
    throw std::invalid_argument("softmax: a causal mask needs whole square matrices; got " + xv.describe() +
                                " in matrices of " + std::to_string(cfg.rows_per_matrix) + " rows");
  const quant::Dyadic c = quant::to_dyadic(cfg.scale);  // m in [2^15, 2^16]
  auto out = std::make_shared<Var>();
  out->value = Tensor(rows, cols, DType::kI32, -kPFrac);  // masked entries stay 0
  int32_t* p = out->value.data<int32_t>();
  // Rows are split over the pool; the row passes are kernels/int_softmax.h. int32 input with one exponent per row
  // (the Q·Kᵀ accumulator) converts to Q16 inside the kernel; other inputs (int8, per-column exponents) first by
  // softmax_rows::row_q16.
  const bool direct = xv.dtype() == DType::kI32 && xv.axis() != ScaleAxis::kCol;
  std::vector<int> q16_shift(direct ? rows : 0);
  for (std::size_t r = 0; r < q16_shift.size(); ++r) q16_shift[r] = -(xv.exponent_at(r, 0) + softmax_rows::kZFrac);
  const kernels::PassSplit split(ctx.pool, rows);
  split.run(kernels::kNsPerByte * static_cast<double>(rows * cols * 16),
            [&](std::size_t, std::size_t r0, std::size_t r1) {
              const kernels::SoftmaxRows shape{r1 - r0, cols, r0, cfg.causal ? cfg.rows_per_matrix : 0};
              if (direct) {
                kernels::softmax_forward_i32(xv.data<int32_t>() + r0 * cols, q16_shift.data() + r0, shape,
                                             c.mantissa, c.shift, p + r0 * cols);
                return;
              }
              std::vector<int64_t> z((r1 - r0) * cols);
              for (std::size_t r = r0; r < r1; ++r) softmax_rows::row_q16(xv, r, z.data() + (r - r0) * cols);
              kernels::softmax_forward_q16(z.data(), shape, c.mantissa, c.shift, p + r0 * cols);
            });
  if (!ctx.training() || !x->requires_grad) return out;
  ctx.tape->record([x, out, cfg, c, rows, cols, pool = ctx.pool] {
    if (!out->has_grad) return;
    const Tensor g = take_grad(*out);
    if (g.axis() != ScaleAxis::kTensor) throw std::logic_error("softmax: gradient with several exponents");
    const int32_t* gv = g.data<int32_t>();
    const uint64_t gmax = kernels::max_abs_i32(gv, g.size(), false);
    int k = 0;
    while ((gmax >> k) > (uint64_t{1} << 15) - 1) ++k;  // then |R(g, k)| ≤ 2^15
    const int32_t* pv = out->value.data<int32_t>();
    const auto d = std::make_unique_for_overwrite<int64_t[]>(rows * cols);  // the kernel writes every entry
    const kernels::PassSplit bsplit(pool, rows);
    bsplit.run(kernels::kNsPerByte * static_cast<double>(rows * cols * 16),
               [&](std::size_t, std::size_t r0, std::size_t r1) {  // masked P are 0: so are their d
                 kernels::softmax_backward(pv + r0 * cols, gv + r0 * cols, r1 - r0, cols, k, c.mantissa,
                                           d.get() + r0 * cols);
               });
    accumulate_grad(*x, narrow_tensor(d.get(), rows, cols, g.exponent() + k - 2 * kPFrac - c.shift), pool);
  });
  return out;
}

}  // namespace qtrain
