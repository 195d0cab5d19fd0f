#include "qtrain/engine/ops/softmax_ce.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "qtrain/engine/ops/softmax_rows.h"
#include "qtrain/quant/pow2.h"

namespace qtrain {

namespace {
using softmax_rows::kZFrac;
using softmax_rows::row_exp;
using softmax_rows::row_q16;
constexpr int kPFrac = softmax_rows::kEFrac;  // probabilities as Q30, like the exponentials
}  // namespace

std::vector<int32_t> softmax_q30(const Tensor& logits) {
  const std::size_t rows = logits.rows(), cols = logits.cols();
  std::vector<int32_t> p(rows * cols);
  std::vector<int64_t> z(cols), e(cols);
  for (std::size_t r = 0; r < rows; ++r) {
    row_q16(logits, r, z.data());
    const int64_t s = row_exp(z.data(), cols, e.data());
    for (std::size_t c = 0; c < cols; ++c)
      p[r * cols + c] = static_cast<int32_t>(((e[c] << kPFrac) + s / 2) / s);
  }
  return p;
}

LossResult softmax_cross_entropy(const StepContext& ctx, const VarPtr& logits, const int32_t* labels,
                                 std::size_t mean_over) {
  const Tensor& x = logits->value;
  const std::size_t rows = x.rows(), cols = x.cols();
  if (rows == 0) throw std::invalid_argument("softmax_cross_entropy: empty batch");
  const std::size_t b = mean_over == 0 ? rows : mean_over;
  if (b < rows)
    throw std::invalid_argument("softmax_cross_entropy: mean over " + std::to_string(b) + " rows, fewer than the " +
                                std::to_string(rows) + " given");
  LossResult res;
  res.predicted.resize(rows);
  const bool grad = ctx.training() && logits->requires_grad;
  // 1/B as 2^−L·f with f = 2^L/B in (½, 1] as a Q15 multiplier (exactly 2^15 when B is a power of two).
  const int lb = quant::bit_length(b - 1);
  const int64_t f_q15 = std::llround(std::ldexp(1.0, lb + 15) / static_cast<double>(b));
  Tensor dz;
  if (grad) dz = Tensor(rows, cols, DType::kI32, -kPFrac - lb);
  std::vector<int64_t> z(cols), e(cols);
  double loss = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    if (labels[r] < 0 || static_cast<std::size_t>(labels[r]) >= cols)
      throw std::invalid_argument("label " + std::to_string(labels[r]) + " out of range 0.." +
                                  std::to_string(cols - 1));
    row_q16(x, r, z.data());
    res.predicted[r] = static_cast<int>(std::max_element(z.begin(), z.end()) - z.begin());
    if (res.predicted[r] == labels[r]) ++res.correct;
    const int64_t s = row_exp(z.data(), cols, e.data());
    const int64_t ey = std::max<int64_t>(e[labels[r]], 1);
    loss += std::log(static_cast<double>(s)) - std::log(static_cast<double>(ey));
    if (!grad) continue;
    int32_t* d = dz.data<int32_t>() + r * cols;
    for (std::size_t c = 0; c < cols; ++c) {
      const int64_t p = ((e[c] << kPFrac) + s / 2) / s;  // Q30, rounded to nearest
      const int64_t g = p - (c == static_cast<std::size_t>(labels[r]) ? (int64_t{1} << kPFrac) : 0);
      d[c] = static_cast<int32_t>(quant::shift_round_even(g * f_q15, 15));
    }
  }
  res.loss = loss / static_cast<double>(rows);
  if (grad) {
    logits->grad = std::move(dz);
    logits->has_grad = true;
  }
  return res;
}

}  // namespace qtrain
