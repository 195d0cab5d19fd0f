#include "qtrain/engine/ops/softmax_rows.h"

#include <algorithm>

#include "qtrain/engine/ops/exp_table.h"
#include "qtrain/quant/pow2.h"

namespace qtrain::softmax_rows {

namespace {
constexpr int64_t kLog2eQ16 = 94548;  // log2(e)·2^16, rounded

// 2^(u / 2^16) for u ≤ 0 as Q30.
int64_t exp2_q16(int64_t u) {
  const int64_t ip = u >> kZFrac;  // floor: ≤ 0
  const int64_t frac = u - (ip << kZFrac);
  const auto& t = kExp2Q30;
  const int64_t j = frac >> 8, lo = frac & 0xFF;
  const int64_t mant = t[j] + (((t[j + 1] - t[j]) * lo) >> 8);  // in [2^30, 2^31)
  return quant::shift_round_even(mant, static_cast<int>(-ip));  // 0 beyond 31 octaves down
}
}  // namespace

void row_q16(const Tensor& x, std::size_t r, int64_t* z) {
  if (x.axis() != ScaleAxis::kCol && x.dtype() == DType::kI32) {  // one exponent for the row: one shift
    const int s = -(x.exponent_at(r, 0) + kZFrac);
    const int32_t* v = x.data<int32_t>() + r * x.cols();
    for (std::size_t c = 0; c < x.cols(); ++c)
      z[c] = std::clamp(quant::shift_round_even_sat(v[c], s), -kZLimit, kZLimit);
    return;
  }
  for (std::size_t c = 0; c < x.cols(); ++c) {
    const int64_t v =
        x.dtype() == DType::kI32 ? x.data<int32_t>()[r * x.cols() + c] : x.data<int8_t>()[r * x.cols() + c];
    const int s = -(x.exponent_at(r, c) + kZFrac);                            // value·2^16 = v·2^(e+16)
    z[c] = std::clamp(quant::shift_round_even_sat(v, s), -kZLimit, kZLimit);  // saturation (2^62) clamps too
  }
}

int64_t row_exp(const int64_t* z, std::size_t n, int64_t* e) {
  const int64_t m = *std::max_element(z, z + n);
  int64_t s = 0;
  for (std::size_t i = 0; i < n; ++i) {
    e[i] = exp2_q16(((z[i] - m) * kLog2eQ16) >> kZFrac);
    s += e[i];
  }
  return s;
}

}  // namespace qtrain::softmax_rows
