#include "qtrain/engine/ops/softmax_ce.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "qtrain/engine/ops/exp_table.h"
#include "qtrain/quant/pow2.h"

namespace qtrain {

namespace {

constexpr int kZFrac = 16;           // logits as Q16
constexpr int kPFrac = 30;           // exponentials and probabilities as Q30
constexpr int64_t kLog2eQ16 = 94548; // log2(e)·2^16, rounded
constexpr int64_t kZLimit = int64_t{1} << 40;

// 2^(u / 2^16) for u ≤ 0 as Q30.
int64_t exp2_q16(int64_t u) {
  const int64_t ip = u >> kZFrac;  // floor: ≤ 0
  const int64_t frac = u - (ip << kZFrac);
  const auto& t = kExp2Q30;
  const int64_t j = frac >> 8, lo = frac & 0xFF;
  const int64_t mant = t[j] + (((t[j + 1] - t[j]) * lo) >> 8);  // in [2^30, 2^31)
  return quant::shift_round_even(mant, static_cast<int>(-ip));  // 0 beyond 31 octaves down
}

// Row r of the logits as Q16 fixed point.
void row_q16(const Tensor& x, std::size_t r, int64_t* z) {
  for (std::size_t c = 0; c < x.cols(); ++c) {
    const int64_t v = x.dtype() == DType::kI32 ? x.data<int32_t>()[r * x.cols() + c] : x.data<int8_t>()[r * x.cols() + c];
    const int s = -(x.exponent_at(r, c) + kZFrac);  // value·2^16 = v·2^(e+16)
    z[c] = std::clamp(quant::shift_round_even_sat(v, s), -kZLimit, kZLimit);  // saturation (2^62) clamps too
  }
}

// Pass 1 and 2 for one row: e_i (Q30, the largest is 2^30) and S = Σ e_i.
int64_t row_exp(const int64_t* z, std::size_t n, int64_t* e) {
  const int64_t m = *std::max_element(z, z + n);
  int64_t s = 0;
  for (std::size_t i = 0; i < n; ++i) {
    e[i] = exp2_q16(((z[i] - m) * kLog2eQ16) >> kZFrac);
    s += e[i];
  }
  return s;
}

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
