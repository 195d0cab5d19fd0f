// PROVISIONAL (branch h-vit only): float softmax to test the attention wiring.
#include "qtrain/engine/ops/softmax.h"
#include <cmath>
#include <vector>
#include "qtrain/engine/core/narrow.h"
namespace qtrain {
VarPtr softmax(const StepContext& ctx, const SoftmaxConfig& cfg, const VarPtr& x) {
  const Tensor& xv = x->value;
  const std::size_t rows = xv.rows(), cols = xv.cols();
  auto out = std::make_shared<Var>();
  out->value = Tensor(rows, cols, DType::kI32, -15);
  int32_t* p = out->value.data<int32_t>();
  std::vector<double> z(cols);
  for (std::size_t r = 0; r < rows; ++r) {
    const std::size_t lim = cfg.causal ? (r % cfg.rows_per_matrix) + 1 : cols;
    double m = -1e300;
    for (std::size_t c = 0; c < lim; ++c) { z[c] = xv.value(r * cols + c) * cfg.scale; m = std::max(m, z[c]); }
    double s = 0;
    for (std::size_t c = 0; c < lim; ++c) { z[c] = std::exp(z[c] - m); s += z[c]; }
    for (std::size_t c = 0; c < lim; ++c) p[r * cols + c] = static_cast<int32_t>(std::lround(z[c] / s * 32768));
  }
  if (!ctx.training() || !x->requires_grad) return out;
  ctx.tape->record([x, out, cfg, rows, cols] {
    if (!out->has_grad) return;
    const Tensor g = take_grad(*out);
    const int32_t* p = out->value.data<int32_t>();
    std::vector<int64_t> d(rows * cols);
    const int32_t* gg = g.data<int32_t>();
    for (std::size_t r = 0; r < rows; ++r) {
      int64_t t = 0;
      for (std::size_t c = 0; c < cols; ++c) t += int64_t{p[r * cols + c]} * (gg[r * cols + c] >> 12);
      for (std::size_t c = 0; c < cols; ++c)
        d[r * cols + c] = (int64_t{p[r * cols + c]} * (((int64_t{gg[r * cols + c]} >> 12) << 15) - t)) >> 30;
    }
    const int sh = static_cast<int>(std::lround(std::log2(cfg.scale)));
    accumulate_grad(*x, narrow_tensor(d.data(), rows, cols, g.exponent() + 12 + sh));
  });
  return out;
}
}  // namespace qtrain
