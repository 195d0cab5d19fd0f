#include "qtrain/engine/ops/softmax_rows.h"

#include <algorithm>

#include "qtrain/kernels/int_softmax.h"
#include "qtrain/quant/pow2.h"

namespace qtrain::softmax_rows {

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

int64_t row_exp(const int64_t* z, std::size_t n, int64_t* e) { return kernels::softmax_exp_q30(z, n, e); }

}  // namespace qtrain::softmax_rows
